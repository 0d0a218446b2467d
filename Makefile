# `make demo` and `make test` set up .venv/ (tools/setup_env.sh) when it is missing or out of date;
# PYTHON=... (default python3) is the interpreter a new environment is created with, e.g.
# `make test VENV=.venv-py313 PYTHON=python3.13`.
VENV ?= .venv
PY := $(VENV)/bin/python
READY := $(VENV)/.fishnet_d2_ready
export VENV PYTHON

.PHONY: demo test test-fast gpu-check release setup clean-venv

setup: $(READY)

$(READY): tools/setup_env.sh tools/constraints.txt tools/detectron2_pypi/build.py tools/detectron2_pypi/_C.py setup.py
	bash tools/setup_env.sh

demo: $(READY)
	$(PY) tools/demo.py

test: $(READY)
	$(PY) -m pytest tests

# The inner loop: every test but those marked slow (trainings, subprocesses, torch.compile).
test-fast: $(READY)
	$(PY) -m pytest tests -m "not slow"

# One command that proves FishNet on a GPU, in at most 8 minutes (docs/performance.md, "The GPU check"):
# reports in $(GPU_CHECK_OUTPUT); exit status 3, nothing written, where CUDA is not available.
GPU_CHECK_OUTPUT ?= output/gpu_check
gpu-check: $(READY)
	$(PY) tools/gpu_check.py --output $(GPU_CHECK_OUTPUT)

# The wheel and sdist in build/release/, built from the tracked files and checked (tools/check_wheel.sh;
# CI also installs the wheel into fresh environments: FLAVOURS="v06 main").
release: $(READY)
	FLAVOURS= PY=$(PY) bash tools/check_wheel.sh

clean-venv:
	rm -rf $(VENV)

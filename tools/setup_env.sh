#!/usr/bin/env bash
# Create (or complete) the project's environment: .venv/ with torch, detectron2, and fishnet_d2.
# Idempotent: every step is skipped when what it installs is already there.
#
#   VENV=.venv          where the environment lives (an existing environment works too)
#   D2_SOURCE=pypi      how to get detectron2 when it is not importable in that environment:
#     pypi  (default)   the official v0.6 Python package from the registry, built without C++ ops,
#                       with the stand-in tools/detectron2_pypi/_C.py (see that file)
#     git               detectron2 main from GitHub, compiled with its C++/CUDA ops
#   Already importable detectron2 is used as is, whatever D2_SOURCE says.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
D2_SOURCE=${D2_SOURCE:-pypi}
CONSTRAINTS=tools/constraints.txt
PY="$VENV/bin/python"

case "$D2_SOURCE" in
  pypi|git) ;;
  *) echo "D2_SOURCE=$D2_SOURCE is not supported; use D2_SOURCE=pypi (default) or D2_SOURCE=git" >&2; exit 2;;
esac

if [ ! -x "$PY" ]; then
  echo "[setup] creating $VENV"
  python3 -m venv "$VENV"
fi
pip_install() { "$PY" -m pip install --quiet --disable-pip-version-check -c "$CONSTRAINTS" "$@"; }

if ! "$PY" -I -c "import torch, torchvision" 2>/dev/null; then
  echo "[setup] installing torch, torchvision (pinned in $CONSTRAINTS)"
  pip_install torch torchvision
fi

# detectron2's runtime dependencies and the test tools; pinned, so a second run installs nothing.
echo "[setup] checking pinned dependencies"
pip_install numpy pillow setuptools fvcore iopath pycocotools opencv-python-headless matplotlib \
  omegaconf hydra-core termcolor yacs tabulate cloudpickle tqdm tensorboard pytest hypothesis onnx

if "$PY" -I -c "import detectron2" 2>/dev/null; then
  echo "[setup] detectron2 $("$PY" -I -c 'import detectron2; print(detectron2.__version__)') already importable: used as is"
elif [ "$D2_SOURCE" = git ]; then
  echo "[setup] building detectron2 main from GitHub (C++/CUDA ops compiled)"
  # detectron2's setup.py imports torch, so it must see this environment's torch.
  pip_install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'
else
  echo "[setup] installing detectron2 v0.6 (registry, Python-only)"
  "$PY" tools/detectron2_pypi/build.py
fi

# -I: the check must not find the package through the current directory.
if ! "$PY" -I -c "import fishnet_d2" 2>/dev/null; then
  echo "[setup] installing fishnet_d2 (editable)"
  pip_install --no-build-isolation --no-deps -e .
fi
"$PY" -I -c "import detectron2.modeling, detectron2.engine, detectron2.evaluation, fishnet_d2" \
  || { echo "[setup] the environment in $VENV does not import detectron2 + fishnet_d2" >&2; exit 1; }
touch "$VENV/.fishnet_d2_ready"
echo "[setup] ready: $VENV"

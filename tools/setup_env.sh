#!/usr/bin/env bash
# Create (or complete) the project's environment: .venv/ with torch, detectron2, and fishnet_d2.
# Idempotent: every step is skipped when what it installs is already there.
#
#   VENV=.venv          where the environment lives (an existing environment works too)
#   PYTHON=python3      the interpreter a new environment is created with (tested: Python 3.11
#                       to 3.13); when given, an existing environment must have its Python version
#   D2_SOURCE=pypi      how to get detectron2 when it is not importable in that environment:
#     pypi  (default)   the official v0.6 Python package from the registry, built without C++ ops,
#                       with detectron2 main's fixes for current Pillow/NumPy and the stand-in
#                       tools/detectron2_pypi/_C.py (see tools/detectron2_pypi/build.py)
#     git               detectron2 main from GitHub, compiled with its C++/CUDA ops
#     PATH              detectron2 from a local source tree or a .tar.gz/.tgz archive of one
#                       (a mirror, a git archive), compiled with its C++/CUDA ops
#   Already importable detectron2 is used as is, whatever D2_SOURCE says; an older Python-only
#   build of this script is replaced.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON_GIVEN=${PYTHON:+yes}
PYTHON=${PYTHON:-python3}
D2_SOURCE=${D2_SOURCE:-pypi}
CONSTRAINTS=tools/constraints.txt
PY="$VENV/bin/python"

case "$D2_SOURCE" in
  pypi|git) ;;
  *)
    if [ ! -e "$D2_SOURCE" ]; then
      echo "D2_SOURCE=$D2_SOURCE: no such file or directory; allowed: pypi (default), git, or the path" \
        "of a detectron2 source tree or .tar.gz archive" >&2
      exit 2
    fi
    D2_SOURCE=$(cd "$(dirname "$D2_SOURCE")" && pwd)/$(basename "$D2_SOURCE");;
esac

py_version() { "$1" -I -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }
if [ ! -x "$PY" ] || [ -n "$PYTHON_GIVEN" ]; then
  if ! wanted=$(py_version "$PYTHON"); then
    echo "PYTHON=$PYTHON: no Python interpreter runs under that name; give a command or path of" \
      "Python 3.11 to 3.13 (default python3)" >&2
    exit 2
  fi
  if [ ! -x "$PY" ]; then
    echo "[setup] creating $VENV with $PYTHON (Python $wanted)"
    "$PYTHON" -m venv "$VENV"
  fi
  have=$(py_version "$PY")
  if [ "$have" != "$wanted" ]; then
    echo "VENV=$VENV has Python $have but PYTHON=$PYTHON is Python $wanted: choose another VENV" \
      "for this Python, or remove $VENV (make clean-venv VENV=$VENV)" >&2
    exit 2
  fi
fi
pip_install() { "$PY" -m pip install --quiet --disable-pip-version-check -c "$CONSTRAINTS" "$@"; }

if ! "$PY" -I -c "import torch, torchvision" 2>/dev/null; then
  echo "[setup] installing torch, torchvision (pinned in $CONSTRAINTS)"
  pip_install torch torchvision
fi

# detectron2's runtime dependencies and the test tools; pinned, so a second run installs nothing.
echo "[setup] checking pinned dependencies"
pip_install numpy pillow setuptools fvcore iopath pycocotools opencv-python-headless matplotlib \
  omegaconf hydra-core termcolor yacs tabulate cloudpickle tqdm tensorboard pytest hypothesis onnx onnxruntime onnxscript \
  pytorchcv timm transformers segmentation-models-pytorch build twine

# A compiled detectron2 needs a source tree: a directory as is, an archive unpacked into UNPACKED.
UNPACKED=""
trap '[ -z "$UNPACKED" ] || rm -rf "$UNPACKED"' EXIT
d2_source_tree() {
  if [ -d "$D2_SOURCE" ]; then
    D2_TREE=$D2_SOURCE
    return
  fi
  case "$D2_SOURCE" in
    *.tar.gz|*.tgz) ;;
    *) echo "D2_SOURCE=$D2_SOURCE: not a directory, .tar.gz or .tgz archive" >&2; exit 2;;
  esac
  UNPACKED=$(mktemp -d)
  tar -xzf "$D2_SOURCE" -C "$UNPACKED"
  local setup
  setup=$(find "$UNPACKED" -maxdepth 2 -name setup.py | head -1)
  if [ -z "$setup" ] || [ ! -d "$(dirname "$setup")/detectron2" ]; then
    echo "D2_SOURCE=$D2_SOURCE: holds no detectron2 source tree (setup.py beside detectron2/)" >&2
    exit 2
  fi
  D2_TREE=$(dirname "$setup")
}

installed=$("$PY" -I -c "import detectron2, importlib.metadata as m; print(m.version('detectron2'))" 2>/dev/null || true)
pyonly=$("$PY" tools/detectron2_pypi/build.py --print-version)
if [ -n "$installed" ] && { [[ "$installed" != 0.6+pb1* ]] || [ "$installed" = "$pyonly" ]; }; then
  echo "[setup] detectron2 $installed already importable: used as is"
elif [ "$D2_SOURCE" = git ]; then
  echo "[setup] building detectron2 main from GitHub (C++/CUDA ops compiled)"
  # detectron2's setup.py imports torch, so it must see this environment's torch.
  pip_install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'
elif [ "$D2_SOURCE" = pypi ]; then
  echo "[setup] installing detectron2 v0.6 (registry, Python-only, $pyonly)"
  "$PY" tools/detectron2_pypi/build.py
else
  d2_source_tree
  # Not editable: with setuptools >= 80, `setup.py develop` re-runs pip with build isolation,
  # which cannot see this environment's torch. The compiled wheel is kept in .whl/, named by the
  # archive's hash and the Python version (tools/d2_wheel_dir.sh), so that another environment
  # with this torch (tools/check_wheel.sh) installs the same build instead of compiling again.
  WHEELS=$(bash tools/d2_wheel_dir.sh "$D2_SOURCE" "$PY")
  if [ -n "$WHEELS" ] && ls "$WHEELS"/detectron2-*.whl > /dev/null 2>&1; then
    echo "[setup] installing detectron2 compiled earlier from $D2_SOURCE ($WHEELS)"
  elif [ -n "$WHEELS" ]; then
    echo "[setup] building detectron2 from $D2_SOURCE (C++/CUDA ops compiled, a few minutes)"
    "$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation -w "$WHEELS.partial" "$D2_TREE"
    mv "$WHEELS.partial" "$WHEELS"
  fi
  if [ -n "$WHEELS" ]; then
    pip_install --no-build-isolation "$WHEELS"/detectron2-*.whl
  else
    echo "[setup] building detectron2 from $D2_SOURCE (C++/CUDA ops compiled, a few minutes)"
    pip_install --no-build-isolation "$D2_TREE"
  fi
fi

# -I: the check must not find the package through the current directory.
if ! "$PY" -I -c "import fishnet_d2" 2>/dev/null; then
  echo "[setup] installing fishnet_d2 (editable)"
  pip_install --no-build-isolation --no-deps -e .
fi
"$PY" -I -c "import detectron2.modeling, detectron2.engine, detectron2.evaluation, fishnet_d2" \
  || { echo "[setup] the environment in $VENV does not import detectron2 + fishnet_d2" >&2; exit 1; }
touch "$VENV/.fishnet_d2_ready"
echo "[setup] ready: $VENV ($("$PY" -I -c "import importlib.metadata as m; print('detectron2', m.version('detectron2'))"))"

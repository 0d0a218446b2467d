#!/usr/bin/env bash
# The release as users get it: build the sdist and the wheel from the tracked files (python -m
# build: the sdist first, the wheel from it), check them (twine check, tools/check_dist.py), then
# for each detectron2 flavour install the wheel, not the source tree, into a fresh environment that
# has only torch, torchvision and detectron2 (with detectron2's own dependencies), and check it
# there (tools/check_installed.py): the core imports with the declared dependencies alone, every
# module imports with the extra [apps], and the README's path runs.
#
#   PY=.venv/bin/python   the interpreter that builds (it has build and twine: make setup)
#   FLAVOURS="v06 main"   which detectron2 flavours to install into (default v06, and main when
#                         D2_SOURCE is given; "": build and check the files only)
#   D2_SOURCE=PATH        detectron2 main's source archive (.ci/run passes the one beside the checkout)
#   DIST=build/release    where the sdist and the wheel go
#   TORCH_BASE=.venv-torch   an environment with torch and torchvision only (made when missing),
#                            which the fresh environments reach through a .pth file
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-.venv/bin/python}
D2_SOURCE=${D2_SOURCE:-}
FLAVOURS=${FLAVOURS-v06${D2_SOURCE:+ main}}
TORCH_BASE=${TORCH_BASE:-.venv-torch}
CONSTRAINTS=$ROOT/tools/constraints.txt
DIST=${DIST:-$ROOT/build/release}
# detectron2's own install_requires (main's setup.py; v0.6's Python-only build installs without
# them), less its formatter, and setuptools (detectron2.model_zoo imports pkg_resources; it also
# builds the v0.6 tree): what a user's detectron2 environment holds.
D2_DEPENDENCIES="setuptools Pillow matplotlib pycocotools termcolor yacs tabulate cloudpickle tqdm tensorboard fvcore iopath omegaconf hydra-core packaging"

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

echo "[wheel] building the sdist and the wheel from the tracked files"
rm -rf "$DIST"
mkdir -p "$DIST" "$TMP/src"
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$TMP/src"
PIP_CONSTRAINT=$CONSTRAINTS "$PY" -m build --outdir "$DIST" "$TMP/src" > "$TMP/build.log" 2>&1 \
  || { cat "$TMP/build.log"; exit 1; }
"$PY" -m twine check --strict "$DIST"/*
"$PY" tools/check_dist.py "$DIST"
WHEEL=$(ls "$DIST"/*.whl)

py_version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }
site_packages() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
pip_in() { "$1" -m pip install --quiet --disable-pip-version-check -c "$CONSTRAINTS" "${@:2}"; }

if [ -n "$FLAVOURS" ] && [ ! -f "$TORCH_BASE/.torch_ready" ]; then
  echo "[wheel] $TORCH_BASE: torch and torchvision only"
  python3 -m venv "$TORCH_BASE"
  pip_in "$TORCH_BASE/bin/python" torch torchvision
  touch "$TORCH_BASE/.torch_ready"
fi

for flavour in $FLAVOURS; do
  ENV=$ROOT/.venv-wheel-$flavour
  echo "[wheel] $flavour: a fresh environment, $ENV"
  rm -rf "$ENV"
  python3 -m venv "$ENV"
  [ "$(py_version "$ENV/bin/python")" = "$(py_version "$TORCH_BASE/bin/python")" ] \
    || { echo "[wheel] python3 is not $TORCH_BASE's Python" >&2; exit 1; }
  site_packages "$TORCH_BASE/bin/python" > "$(site_packages "$ENV/bin/python")/torch_base.pth"
  case $flavour in
    v06)
      pip_in "$ENV/bin/python" $D2_DEPENDENCIES
      "$ENV/bin/python" tools/detectron2_pypi/build.py;;
    main)
      [ -f "$D2_SOURCE" ] || { echo "[wheel] main: $D2_SOURCE is absent" >&2; exit 1; }
      # The build tools/setup_env.sh compiled for .venv-d2main, when there is one (same torch).
      WHEELS=$(bash tools/d2_wheel_dir.sh "$D2_SOURCE" "$ENV/bin/python")
      pip_in "$ENV/bin/python" setuptools
      if ls "$WHEELS"/detectron2-*.whl > /dev/null 2>&1; then
        pip_in "$ENV/bin/python" "$WHEELS"/detectron2-*.whl
      else
        echo "[wheel] main: compiling detectron2 from $D2_SOURCE"
        pip_in "$ENV/bin/python" --no-build-isolation "$D2_SOURCE"
      fi;;
    *) echo "FLAVOURS: $flavour? allowed v06, main" >&2; exit 2;;
  esac
  echo "[wheel] $flavour: the wheel alone; its core imports"
  pip_in "$ENV/bin/python" "$WHEEL"
  (cd "$TMP" && "$ENV/bin/python" -c "
import importlib, pkgutil, fishnet_d2
extras = ('fishnet_d2.apps', 'fishnet_d2.timm_models')  # the extras [apps] and [timm]
core = [m.name for m in pkgutil.walk_packages(fishnet_d2.__path__, 'fishnet_d2.') if not m.name.startswith(extras)]
for name in core:
    importlib.import_module(name)
print(f'core: {len(core)} modules import with install_requires alone')")
  echo "[wheel] $flavour: with [apps]; the README's path"
  pip_in "$ENV/bin/python" "$WHEEL[apps]"
  "$ENV/bin/python" -m pip check
  rm -rf "$TMP/tools" "$TMP/work-$flavour"
  mkdir -p "$TMP/tools" "$TMP/work-$flavour"
  cp tools/train_net.py tools/predict.py "$TMP/tools/"
  (cd "$TMP" && "$ENV/bin/python" "$ROOT/tools/check_installed.py" --tools "$TMP/tools" --work "$TMP/work-$flavour")
done
echo "[wheel] passed: $(ls "$DIST")"

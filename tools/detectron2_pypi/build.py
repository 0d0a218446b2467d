#!/usr/bin/env python
"""Install detectron2 v0.6 from the package registry, Python-only, into the running interpreter.

The registry's ``pb1-detectron2==0.6`` is an sdist whose ``detectron2/`` tree is byte-identical to
the official v0.6 release but that ships without ``detectron2/layers/csrc``, so its own setup.py
cannot build. This script:

1. downloads that sdist with pip (checked against its sha256),
2. packages the same Python tree (plus ``detectron2.projects`` and the model-zoo configs, as the
   official setup.py does) with a setup script that builds no extension,
3. adds ``tools/detectron2_pypi/_C.py`` as ``detectron2/_C.py``: a documented stand-in whose
   compiled ops raise an error naming the op and how to get a compiled build,
4. installs the result as the distribution ``detectron2``, version ``0.6+pb1.pyonly``, so that a
   later install of a compiled detectron2 replaces it cleanly.

Usage: ``python tools/detectron2_pypi/build.py`` with the interpreter of the target environment.
"""

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST = "pb1-detectron2==0.6"
SDIST_FILE = "pb1-detectron2-0.6.tar.gz"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
VERSION = "0.6+pb1.pyonly"

# The official setup.py installs these projects under detectron2.projects.
PROJECTS = {
    "detectron2.projects.point_rend": "projects/PointRend/point_rend",
    "detectron2.projects.deeplab": "projects/DeepLab/deeplab",
    "detectron2.projects.panoptic_deeplab": "projects/Panoptic-DeepLab/panoptic_deeplab",
}

SETUP_PY = f'''
from setuptools import find_packages, setup

PROJECTS = {PROJECTS!r}
setup(
    name="detectron2",
    version="{VERSION}",
    description="detectron2 v0.6 Python sources (from pb1-detectron2), built without C++ ops",
    packages=find_packages(exclude=("configs", "tests*")) + list(PROJECTS),
    package_dir=PROJECTS,
    package_data={{"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]}},
    python_requires=">=3.6",
)
'''


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def main() -> None:
    standin = Path(__file__).resolve().parent / "_C.py"
    with tempfile.TemporaryDirectory(prefix="detectron2_pypi_") as tmp:
        tmp = Path(tmp)
        # pip prepares the sdist's metadata, which imports torch: hence no build isolation.
        pip("download", "--quiet", "--no-deps", "--no-build-isolation", SDIST, "-d", str(tmp))
        archive = tmp / SDIST_FILE
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if digest != SDIST_SHA256:
            sys.exit(f"{SDIST_FILE}: sha256 {digest}, expected {SDIST_SHA256}; not installing it.")
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        source = tmp / "pb1-detectron2-0.6"
        if (source / "detectron2" / "_C.py").exists():
            sys.exit(f"{SDIST_FILE} already has detectron2/_C.py; refusing to overwrite it.")
        (source / "setup.py").write_text(SETUP_PY)
        shutil.copyfile(standin, source / "detectron2" / "_C.py")
        pip("install", "--quiet", "--no-deps", "--no-build-isolation", str(source))


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Install detectron2 v0.6 from the package registry, Python-only, into the running interpreter.

The registry's ``pb1-detectron2==0.6`` is an sdist whose ``detectron2/`` tree is byte-identical to
the official v0.6 release but that ships without ``detectron2/layers/csrc``, so its own setup.py
cannot build. This script:

1. downloads that sdist with pip (checked against its sha256),
2. packages the same Python tree (plus ``detectron2.projects`` and the model-zoo configs, as the
   official setup.py does) with a setup script that builds no extension,
3. applies :data:`MAIN_LINES`: the lines that detectron2 main itself changed so that the tree runs
   with Pillow >= 10 (``Image.LINEAR`` was removed) and NumPy >= 1.24 / 2.x (``np.bool``,
   ``np.int``, ``np.float``, ``np.str`` were removed; ``np.array(..., copy=False)`` raises where a
   copy is needed). Each v0.6 line is replaced by main's version of it, and must occur exactly as
   listed: a tree that differs is refused, not half-patched,
4. adds ``tools/detectron2_pypi/_C.py`` as ``detectron2/_C.py``: a documented stand-in whose
   compiled ops raise an error naming the op and how to get a compiled build,
5. installs the result as the distribution ``detectron2``, version :data:`VERSION`, so that a
   later install of a compiled detectron2 replaces it cleanly.

Usage: ``python tools/detectron2_pypi/build.py`` with the interpreter of the target environment;
``--print-version`` prints the version it installs, and does nothing else.
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
# The local version names the build: setup_env.sh replaces an older Python-only build by this one.
VERSION = "0.6+pb1.pyonly.mainlines"

# The official setup.py installs these projects under detectron2.projects.
PROJECTS = {
    "detectron2.projects.point_rend": "projects/PointRend/point_rend",
    "detectron2.projects.deeplab": "projects/DeepLab/deeplab",
    "detectron2.projects.panoptic_deeplab": "projects/Panoptic-DeepLab/panoptic_deeplab",
}

# (file, v0.6 line, detectron2 main's line): main's fixes for Pillow >= 10 and NumPy >= 1.24, as
# they stand in main (commit 02b5c4e, 2026-06-06). Comments and docstrings are left as they are.
MAIN_LINES = [
    ("detectron2/data/transforms/transform.py",
     "def __init__(self, src_rect, output_size, interp=Image.LINEAR, fill=0):",
     "def __init__(self, src_rect, output_size, interp=Image.BILINEAR, fill=0):"),
    ("detectron2/layers/mask_ops.py",
     "mask = np.array(mask, copy=False)",
     "mask = np.asarray(mask)"),
    ("detectron2/structures/masks.py",
     "return np.zeros((height, width)).astype(np.bool)",
     "return np.zeros((height, width)).astype(bool)"),
    ("detectron2/structures/masks.py",
     "return mask_util.decode(rle).astype(np.bool)",
     "return mask_util.decode(rle).astype(bool)"),
    ("detectron2/structures/masks.py",
     "return torch.from_numpy(np.asarray(keep, dtype=np.bool))",
     "return torch.from_numpy(np.asarray(keep, dtype=bool))"),
    ("detectron2/data/build.py",
     "histogram = np.zeros((num_classes,), dtype=np.int)",
     "histogram = np.zeros((num_classes,), dtype=int)"),
    ("detectron2/data/build.py",
     '[x["category_id"] for x in annos if not x.get("iscrowd", 0)], dtype=np.int',
     '[x["category_id"] for x in annos if not x.get("iscrowd", 0)], dtype=int'),
    ("detectron2/data/datasets/pascal_voc.py",
     "fileids = np.loadtxt(f, dtype=np.str)",
     "fileids = np.loadtxt(f, dtype=str)"),
    ("detectron2/evaluation/pascal_voc_evaluation.py",
     'difficult = np.array([x["difficult"] for x in R]).astype(np.bool)',
     'difficult = np.array([x["difficult"] for x in R]).astype(bool)'),
    ("detectron2/evaluation/sem_seg_evaluation.py",
     "pred = np.array(output, dtype=np.int)",
     "pred = np.array(output, dtype=int)"),
    ("detectron2/evaluation/sem_seg_evaluation.py",
     "gt = np.array(Image.open(f), dtype=np.int)",
     "gt = np.array(Image.open(f), dtype=int)"),  # main: self.sem_seg_loading_fn(gt_filename, dtype=int)
    ("detectron2/evaluation/sem_seg_evaluation.py",
     "acc = np.full(self._num_classes, np.nan, dtype=np.float)",
     "acc = np.full(self._num_classes, np.nan, dtype=float)"),
    ("detectron2/evaluation/sem_seg_evaluation.py",
     "iou = np.full(self._num_classes, np.nan, dtype=np.float)",
     "iou = np.full(self._num_classes, np.nan, dtype=float)"),
    ("detectron2/evaluation/sem_seg_evaluation.py",
     "tp = self._conf_matrix.diagonal()[:-1].astype(np.float)",
     "tp = self._conf_matrix.diagonal()[:-1].astype(float)"),
    ("detectron2/evaluation/sem_seg_evaluation.py",
     "pos_gt = np.sum(self._conf_matrix[:-1, :-1], axis=0).astype(np.float)",
     "pos_gt = np.sum(self._conf_matrix[:-1, :-1], axis=0).astype(float)"),
    ("detectron2/evaluation/sem_seg_evaluation.py",
     "pos_pred = np.sum(self._conf_matrix[:-1, :-1], axis=1).astype(np.float)",
     "pos_pred = np.sum(self._conf_matrix[:-1, :-1], axis=1).astype(float)"),
    ("detectron2/utils/visualizer.py",
     "return (self._seg != empty_ids[0]).numpy().astype(np.bool)",
     "return (self._seg != empty_ids[0]).numpy().astype(bool)"),
    ("detectron2/utils/visualizer.py",
     "yield (self._seg == sid).numpy().astype(np.bool), sinfo",
     "yield (self._seg == sid).numpy().astype(bool), sinfo"),
    ("detectron2/utils/visualizer.py",
     "mask = (self._seg == sid).numpy().astype(np.bool)",
     "mask = (self._seg == sid).numpy().astype(bool)"),
    ("detectron2/utils/video_visualizer.py",
     "is_crowd = np.zeros((len(instances),), dtype=np.bool)",
     "is_crowd = np.zeros((len(instances),), dtype=bool)"),
]  # fmt: skip

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


def apply_main_lines(source: Path) -> None:
    """Replace each v0.6 line of :data:`MAIN_LINES` in ``source`` by main's; every v0.6 line must
    occur exactly once, else nothing is installed."""
    for relative, old, new in MAIN_LINES:
        path = source / relative
        text = path.read_text()
        count = text.count(old)
        if count != 1:
            sys.exit(f"{relative}: expected the v0.6 line {old!r} once, found it {count} times; not installing.")
        path.write_text(text.replace(old, new))


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
        apply_main_lines(source)
        (source / "setup.py").write_text(SETUP_PY)
        shutil.copyfile(standin, source / "detectron2" / "_C.py")
        pip("install", "--quiet", "--no-deps", "--no-build-isolation", str(source))


if __name__ == "__main__":
    if sys.argv[1:] == ["--print-version"]:
        print(VERSION)
    else:
        main()

#!/usr/bin/env python
"""fishnet-d2: FishNet (Sun et al., NeurIPS 2018) as a Detectron2 backbone plugin.

Like every Detectron2 plugin, it does not list torch, torchvision or detectron2: install those for
your platform first (README.md); fishnet_d2 refuses ones older than it needs when it is imported
(fishnet_d2/requirements.py). Listed here is what fishnet_d2 itself imports: the core in
``install_requires``; the programs behind tools/ (predict, export, the demo, the benchmark) in the
extra ``apps``; the test suite's tools in ``test``. .ci/run installs the built wheel into fresh
environments with only torch, torchvision and detectron2, and checks that this is enough.
"""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
version = {}
exec((HERE / "fishnet_d2" / "version.py").read_text(), version)


def link_configs() -> None:
    """Make the repository's configs/ (the one copy) package data of fishnet_d2.model_zoo, through
    a symlink that the build follows, as Detectron2's setup.py does for its model zoo."""
    link = HERE / "fishnet_d2" / "model_zoo" / "configs"
    if (HERE / "configs").is_dir() and not link.exists():
        link.symlink_to(Path("..", "..", "configs"), target_is_directory=True)


link_configs()

APPS = [
    "opencv-python-headless",  # predict: images and video (cv2; Detectron2 does not install it)
    "matplotlib",  # the demo's figures, the benchmark's plot
    "Pillow",
    "pycocotools",  # the demo's dataset, predict --dataset
    "fvcore",  # the benchmark's FLOP count
    "tabulate",
    "onnx",  # export --format onnx, and its check in onnxruntime
    "onnxruntime",
    "onnxscript",  # export --export-method export --format onnx: torch's dynamo ONNX exporter
]

setup(
    name="fishnet-d2",
    version=version["__version__"],
    description="FishNet backbones (tail, body, head) for Detectron2, with the official ImageNet weights",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=find_packages(include=("fishnet_d2", "fishnet_d2.*")),
    package_data={"fishnet_d2.model_zoo": ["configs/*.yaml", "configs/**/*.yaml", "configs/**/*.py"]},
    # What CI tests (.ci/run): Python 3.11 (both detectron2 flavours), 3.13 (the fast suite).
    python_requires=">=3.11",
    install_requires=["numpy", "iopath", "portalocker", "tqdm"],
    extras_require={
        "apps": APPS,
        "timm": ["timm"],  # fishnet_d2.timm_models: FishNet in timm (docs/timm.md)
        "test": APPS + ["pytest", "hypothesis", "pytorchcv", "build", "twine", "timm", "transformers", "segmentation-models-pytorch"],
    },
    entry_points={"console_scripts": ["fishnet-d2-convert=fishnet_d2.weights.convert:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.13",
        "License :: OSI Approved :: MIT License",
        "Operating System :: POSIX :: Linux",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)

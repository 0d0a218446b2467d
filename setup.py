#!/usr/bin/env python
"""fishnet-d2: FishNet (Sun et al., NeurIPS 2018) as a Detectron2 backbone plugin.

Like every Detectron2 plugin, it does not list torch, torchvision or detectron2: install those for
your platform first (see README.md). Listed here are only the light dependencies fishnet_d2 imports.
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

setup(
    name="fishnet-d2",
    version=version["__version__"],
    description="FishNet backbones (tail, body, head) for Detectron2, with the official ImageNet weights",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=("fishnet_d2", "fishnet_d2.*")),
    package_data={"fishnet_d2.model_zoo": ["configs/*.yaml", "configs/**/*.yaml", "configs/**/*.py"]},
    python_requires=">=3.10",
    install_requires=["fvcore", "iopath", "numpy", "pycocotools", "matplotlib"],
    extras_require={"test": ["pytest", "hypothesis", "onnx", "pytorchcv"]},
    entry_points={"console_scripts": ["fishnet-d2-convert=fishnet_d2.weights.convert:main"]},
    classifiers=["Programming Language :: Python :: 3", "License :: OSI Approved :: MIT License"],
)

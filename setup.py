#!/usr/bin/env python
"""fishnet-d2: FishNet (Sun et al., NeurIPS 2018) as a Detectron2 backbone plugin.

Like every Detectron2 plugin, it does not list torch, torchvision or detectron2: install those for
your platform first (see README.md). Listed here are only the light dependencies fishnet_d2 imports.
"""
from pathlib import Path

from setuptools import find_packages, setup

version = {}
exec((Path(__file__).parent / "fishnet_d2" / "version.py").read_text(), version)

setup(
    name="fishnet-d2",
    version=version["__version__"],
    description="FishNet backbones (tail, body, head) for Detectron2, with the official ImageNet weights",
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=("fishnet_d2", "fishnet_d2.*")),
    python_requires=">=3.10",
    install_requires=["fvcore", "iopath", "numpy", "pycocotools", "matplotlib"],
    extras_require={"test": ["pytest", "hypothesis", "onnx"]},
    entry_points={"console_scripts": ["fishnet-d2-convert=fishnet_d2.convert:main"]},
    classifiers=["Programming Language :: Python :: 3", "License :: OSI Approved :: MIT License"],
)

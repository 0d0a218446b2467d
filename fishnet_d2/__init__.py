"""FishNet backbones for Detectron2.

Importing this package registers ``build_fishnet_backbone``, ``build_fishnet_fpn_backbone`` and
``build_retinanet_fishnet_fpn_backbone`` in Detectron2's ``BACKBONE_REGISTRY``; call
``add_fishnet_config(cfg)`` before merging a FishNet config file.
"""

from .weights.checkpointer import FishNetCheckpointer
from .config import add_fishnet_config
from .modeling import (
    FISHNET_VARIANTS,
    FISHNEXT_VARIANTS,
    FishNet,
    FishNetArch,
    build_fishnet_backbone,
    fishnet_arch,
    build_fishnet_fpn_backbone,
    build_retinanet_fishnet_fpn_backbone,
)
from .version import __version__

__all__ = [
    "add_fishnet_config",
    "FishNetCheckpointer",
    "FISHNET_VARIANTS",
    "FISHNEXT_VARIANTS",
    "FishNet",
    "FishNetArch",
    "fishnet_arch",
    "build_fishnet_backbone",
    "build_fishnet_fpn_backbone",
    "build_retinanet_fishnet_fpn_backbone",
    "__version__",
]

from .arch import FISHNET_VARIANTS, FishNetArch
from .build import (
    build_fishnet_backbone,
    build_fishnet_fpn_backbone,
    build_retinanet_fishnet_fpn_backbone,
    fishnet_arch_from_config,
)
from .fishnet import FishNet

__all__ = [
    "FISHNET_VARIANTS",
    "FishNetArch",
    "FishNet",
    "build_fishnet_backbone",
    "build_fishnet_fpn_backbone",
    "build_retinanet_fishnet_fpn_backbone",
    "fishnet_arch_from_config",
]

from .arch import FISHNET_VARIANTS, FISHNEXT_VARIANTS, FishNetArch, fishnet_arch
from .build import (
    build_fishnet,
    build_fishnet_backbone,
    build_fishnet_fpn_backbone,
    build_retinanet_fishnet_fpn_backbone,
    fishnet_arch_from_config,
    fishnet_arch_to_config,
    inference_fishnet_config,
)
from .errors import InvalidValue
from .fishnet import FishNet
from .optimize import optimize_fishnet

__all__ = [
    "FISHNET_VARIANTS",
    "FISHNEXT_VARIANTS",
    "FishNetArch",
    "FishNet",
    "InvalidValue",
    "fishnet_arch",
    "build_fishnet",
    "optimize_fishnet",
    "build_fishnet_backbone",
    "build_fishnet_fpn_backbone",
    "build_retinanet_fishnet_fpn_backbone",
    "inference_fishnet_config",
    "fishnet_arch_from_config",
    "fishnet_arch_to_config",
]

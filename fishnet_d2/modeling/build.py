"""The registered builders: the only code that reads ``cfg.MODEL.FISHNET`` (what other code
needs of it comes from here: :func:`eager_fishnet_config`)."""

import dataclasses
from typing import Any, Dict, List, Tuple

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7

from .arch import VARIANT_OPTIONS, FishNetArch, fishnet_arch
from .errors import InvalidValue
from .fishnet import FishNet

__all__ = [
    "fishnet_arch_config_defaults",
    "fishnet_arch_from_config",
    "fishnet_arch_to_config",
    "eager_fishnet_config",
    "build_fishnet_backbone",
    "build_fishnet_fpn_backbone",
    "build_retinanet_fishnet_fpn_backbone",
]

# FishNetArch's fields that MODEL.FISHNET.ARCH holds, each as the upper-case key; the others
# (VARIANT_OPTIONS) are keys of MODEL.FISHNET itself, as they apply to the official variants too.
_ARCH_FIELDS = [f for f in dataclasses.fields(FishNetArch) if f.name not in VARIANT_OPTIONS]
ARCH_KEYS = [f.name for f in _ARCH_FIELDS]


def _unset(field: dataclasses.Field) -> Any:
    """The value of an ARCH key that leaves its field to DEPTH: 0 for a number, [] for a list."""
    return 0 if field.type is int else []


def fishnet_arch_config_defaults() -> Dict[str, Any]:
    """The keys of ``MODEL.FISHNET`` made from FishNetArch's fields, with their defaults, as
    nested dicts (:func:`~fishnet_d2.config.add_fishnet_config` adds them): VARIANT_OPTIONS
    (BODY_DILATIONS, GROUP_WIDTH, DOWNSAMPLE, DILATED_PARTS) with FishNetArch's defaults (the
    official model's), and ``ARCH`` with the other fields unset (0, []). What each key means is
    its field's ``metadata["doc"]``."""
    return {
        **{f.name.upper(): _plain(f.default) for f in dataclasses.fields(FishNetArch) if f.name in VARIANT_OPTIONS},
        "ARCH": {f.name.upper(): _unset(f) for f in _ARCH_FIELDS},
    }


def _plain(value: Any) -> Any:
    """A config value: tuples as lists, as YAML files give them."""
    return list(value) if isinstance(value, tuple) else value


def config_key(name: str) -> str:
    """The config key of a FishNetArch field or a FishNet argument."""
    if name == "in_channels":
        return "input_shape.channels"
    if name == "activation_checkpointing":
        return "MODEL.FISHNET.CHECKPOINT"
    if name == "compile_backend":
        return "MODEL.FISHNET.COMPILE"
    if name in ARCH_KEYS:
        return f"MODEL.FISHNET.ARCH.{name.upper()}"
    return f"MODEL.FISHNET.{name.upper()}"


def fishnet_arch_from_config(cfg: CfgNode) -> FishNetArch:
    """The architecture ``MODEL.FISHNET`` describes: :func:`fishnet_arch` of DEPTH, with the
    ARCH keys that are set (0 and [] are unset) and the VARIANT_OPTIONS keys (BODY_DILATIONS,
    GROUP_WIDTH, DOWNSAMPLE, DILATED_PARTS)."""
    fish = cfg.MODEL.FISHNET
    # A YAML file gives lists, Python code may give tuples: both are unset when empty.
    fields: Dict[str, Any] = {
        f.name: fish.ARCH[f.name.upper()] for f in _ARCH_FIELDS if _plain(fish.ARCH[f.name.upper()]) != _unset(f)
    }
    fields.update({name: fish[name.upper()] for name in VARIANT_OPTIONS})
    try:
        return fishnet_arch(fish.DEPTH, **fields)
    except InvalidValue as e:
        raise ValueError(e.message(config_key)) from None


def fishnet_arch_to_config(arch: FishNetArch) -> Dict[str, Any]:
    """The ``MODEL.FISHNET`` values that describe ``arch`` (DEPTH 0, ARCH, and VARIANT_OPTIONS), as
    nested dicts of lists and ints: what :func:`fishnet_arch_from_config` reads back."""
    return {
        "DEPTH": 0,
        "ARCH": {name.upper(): _plain(getattr(arch, name)) for name in ARCH_KEYS},
        **{name.upper(): _plain(getattr(arch, name)) for name in VARIANT_OPTIONS},
    }


def eager_fishnet_config(cfg: CfgNode) -> Tuple[CfgNode, str]:
    """``cfg`` for the eager FishNet, and the ``torch.compile`` backend that ``MODEL.FISHNET.COMPILE``
    asked for ("" when none; ``cfg`` itself is then returned). The eager model computes what the
    compiled one does; scripting and tracing (exporting) read it."""
    backend = cfg.MODEL.FISHNET.COMPILE
    if not backend:
        return cfg, ""
    eager = cfg.clone()
    eager.defrost()
    eager.MODEL.FISHNET.COMPILE = ""
    if cfg.is_frozen():
        eager.freeze()
    return eager, backend


@BACKBONE_REGISTRY.register()
def build_fishnet_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FishNet:
    """A :class:`FishNet` from ``cfg.MODEL.FISHNET``."""
    fish = cfg.MODEL.FISHNET
    arch = fishnet_arch_from_config(cfg)
    try:
        return FishNet(
            arch,
            in_channels    = input_shape.channels,
            norm           = fish.NORM,
            out_features   = fish.OUT_FEATURES,
            num_classes    = fish.NUM_CLASSES,
            freeze_at      = fish.FREEZE_AT,
            freeze_stem_conv1 = fish.FREEZE_STEM_CONV1,
            activation_checkpointing = fish.CHECKPOINT,
            memory_efficient = fish.MEMORY_EFFICIENT,
            channels_last  = fish.CHANNELS_LAST,
            compile_backend = fish.COMPILE,
        )  # fmt: skip
    except InvalidValue as e:
        raise ValueError(e.message(config_key)) from None


def _fpn_in_features(cfg: CfgNode, bottom_up: Backbone) -> List[str]:
    """``MODEL.FPN.IN_FEATURES``, checked against what the FishNet returns."""
    in_features = list(cfg.MODEL.FPN.IN_FEATURES)
    shapes = bottom_up.output_shape()
    unknown = [f for f in in_features if f not in shapes]
    if not in_features or unknown:
        raise ValueError(
            f"MODEL.FPN.IN_FEATURES={in_features}: {'unknown ' + str(unknown) if unknown else 'empty'}; "
            f"allowed: features of MODEL.FISHNET.OUT_FEATURES={list(shapes)}; the paper uses "
            "the head: ['head2', 'head3', 'head4', 'head5']"
        )
    strides = [shapes[f].stride for f in in_features]
    if any(b != 2 * a for a, b in zip(strides, strides[1:])):
        raise ValueError(
            f"MODEL.FPN.IN_FEATURES={in_features} have strides {strides}; FPN needs strides that "
            "double from one feature to the next, e.g. ['head2', 'head3', 'head4', 'head5'] (4 .. 32)"
        )
    return in_features


@BACKBONE_REGISTRY.register()
def build_fishnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """FPN on a FishNet (P2-P6 with ``MODEL.FPN.IN_FEATURES`` = head2..head5), as the paper."""
    bottom_up = build_fishnet_backbone(cfg, input_shape)
    return FPN(
        bottom_up   = bottom_up,
        in_features = _fpn_in_features(cfg, bottom_up),
        out_channels= cfg.MODEL.FPN.OUT_CHANNELS,
        norm        = cfg.MODEL.FPN.NORM,
        top_block   = LastLevelMaxPool(),
        fuse_type   = cfg.MODEL.FPN.FUSE_TYPE,
    )  # fmt: skip


@BACKBONE_REGISTRY.register()
def build_retinanet_fishnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """FPN P3-P7 on a FishNet, as Detectron2's RetinaNet: P6 and P7 come from the last input
    feature (``head5`` with ``MODEL.FPN.IN_FEATURES`` = head3..head5)."""
    bottom_up = build_fishnet_backbone(cfg, input_shape)
    in_features = _fpn_in_features(cfg, bottom_up)
    last = in_features[-1]
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(
        bottom_up   = bottom_up,
        in_features = in_features,
        out_channels= out_channels,
        norm        = cfg.MODEL.FPN.NORM,
        top_block   = LastLevelP6P7(bottom_up.output_shape()[last].channels, out_channels, in_feature=last),
        fuse_type   = cfg.MODEL.FPN.FUSE_TYPE,
    )  # fmt: skip

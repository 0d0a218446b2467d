"""The registered builders: the only code that reads ``cfg.MODEL.FISHNET``."""

import re
from typing import List

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7

from .arch import FISHNET_VARIANTS, FishNetArch
from .fishnet import FishNet

__all__ = [
    "fishnet_arch_from_config",
    "build_fishnet_backbone",
    "build_fishnet_fpn_backbone",
    "build_retinanet_fishnet_fpn_backbone",
]

# MODEL.FISHNET.ARCH keys, as FishNetArch field names.
_ARCH_KEYS = {
    "STEM_CHANNELS": "stem_channels",
    "TAIL_CHANNELS": "tail_channels",
    "BODY_CHANNELS": "body_channels",
    "HEAD_CHANNELS": "head_channels",
    "TAIL_BLOCKS": "tail_blocks",
    "BRIDGE_BLOCKS": "bridge_blocks",
    "BODY_BLOCKS": "body_blocks",
    "HEAD_BLOCKS": "head_blocks",
    "BODY_TRANSFER_BLOCKS": "body_transfer_blocks",
    "HEAD_TRANSFER_BLOCKS": "head_transfer_blocks",
}
_NORMS = "FrozenBN, BN, SyncBN, nnSyncBN, naiveSyncBN, GN, '' (none), or what your detectron2's get_norm accepts"


def _as_tuple(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


def fishnet_arch_from_config(cfg: CfgNode) -> FishNetArch:
    """The architecture ``MODEL.FISHNET`` describes (DEPTH, or ARCH with DEPTH 0, and dilations)."""
    fish = cfg.MODEL.FISHNET
    depth = fish.DEPTH
    custom = {key: _as_tuple(fish.ARCH[key]) for key in _ARCH_KEYS}
    given = [key for key, value in custom.items() if value not in (0, ())]
    dilations = _as_tuple(fish.BODY_DILATIONS)
    if depth == 0:
        missing = [f"MODEL.FISHNET.ARCH.{key}" for key in _ARCH_KEYS if key not in given]
        if missing:
            raise ValueError(
                f"MODEL.FISHNET.DEPTH=0 asks for the custom architecture in MODEL.FISHNET.ARCH, "
                f"but these keys are not set: {missing}"
            )
        fields = {_ARCH_KEYS[key]: value for key, value in custom.items()}
    elif depth in FISHNET_VARIANTS:
        if given:
            raise ValueError(
                f"MODEL.FISHNET.DEPTH={depth} selects an official variant, but "
                f"MODEL.FISHNET.ARCH sets {given}; set MODEL.FISHNET.DEPTH to 0 to use a custom "
                "architecture, or leave MODEL.FISHNET.ARCH empty"
            )
        fields = {name: getattr(FISHNET_VARIANTS[depth], name) for name in _ARCH_KEYS.values()}
    else:
        raise ValueError(
            f"MODEL.FISHNET.DEPTH={depth!r}: allowed {sorted(FISHNET_VARIANTS)} (official variants) "
            "or 0 (custom architecture in MODEL.FISHNET.ARCH)"
        )
    try:
        return FishNetArch(**fields, body_dilations=dilations)
    except ValueError as e:
        # FishNetArch names its fields; say which config keys they are.
        message = str(e)
        for key, name in {**_ARCH_KEYS, "BODY_DILATIONS": "body_dilations"}.items():
            prefix = "MODEL.FISHNET." if key == "BODY_DILATIONS" else "MODEL.FISHNET.ARCH."
            message = re.sub(rf"\b{name}\b", prefix + key, message)
        raise ValueError(message) from None


def _check_norm(norm) -> None:
    try:
        get_norm(norm, 64)
    except (KeyError, ValueError, TypeError):
        raise ValueError(f"MODEL.FISHNET.NORM={norm!r}: allowed {_NORMS}") from None


@BACKBONE_REGISTRY.register()
def build_fishnet_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FishNet:
    """A :class:`FishNet` from ``cfg.MODEL.FISHNET``."""
    fish = cfg.MODEL.FISHNET
    arch = fishnet_arch_from_config(cfg)
    _check_norm(fish.NORM)
    num_classes = fish.NUM_CLASSES
    if not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"MODEL.FISHNET.NUM_CLASSES={num_classes!r}: allowed 0 (no classifier) or > 0")
    num_stages = 2 + 3 * arch.num_stages  # stem, tail, bridge, body, head
    if not isinstance(fish.FREEZE_AT, int) or not 0 <= fish.FREEZE_AT <= num_stages:
        raise ValueError(
            f"MODEL.FISHNET.FREEZE_AT={fish.FREEZE_AT!r}: allowed 0 to {num_stages} "
            "(0 freezes nothing, k the first k stages: stem, tail, bridge, body, head)"
        )
    if input_shape.channels is None or input_shape.channels < 1:
        raise ValueError(f"input_shape.channels={input_shape.channels!r}: must be >= 1")
    try:
        return FishNet(
            arch,
            in_channels    = input_shape.channels,
            norm           = fish.NORM,
            out_features   = fish.OUT_FEATURES,
            num_classes    = num_classes,
            freeze_at      = fish.FREEZE_AT,
            freeze_stem_conv1 = fish.FREEZE_STEM_CONV1,
            activation_checkpointing = fish.CHECKPOINT,
            channels_last  = fish.CHANNELS_LAST,
        )  # fmt: skip
    except ValueError as e:
        raise ValueError(f"MODEL.FISHNET.OUT_FEATURES: {e}") from None


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

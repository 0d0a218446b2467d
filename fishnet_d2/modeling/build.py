"""The registered builders: the only code that reads ``cfg.MODEL.FISHNET`` (what other code
needs of it comes from here: :func:`inference_fishnet_config`), and :func:`build_fishnet`, the
same choices as keyword arguments (LazyConfig files)."""

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7

from .arch import VARIANT_OPTIONS, FishNetArch, fishnet_arch
from .blocks import Norm
from .errors import InvalidValue
from .fishnet import FishNet
from .optimize import optimize_fishnet
from .optimize.checkpointing import Checkpointing
from .optimize.device_defaults import PATHS_BY_DEVICE, device_defaults

__all__ = [
    "fishnet_arch_config_defaults",
    "fishnet_arch_from_config",
    "fishnet_arch_to_config",
    "inference_fishnet_config",
    "build_fishnet",
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
    if name == "device":
        return "MODEL.DEVICE"
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


# The MODEL.FISHNET keys that change only how training runs, or that run the model through
# torch.compile, with the values that leave the eager network: what exporting reads.
TRAINING_AND_COMPILE_KEYS = {"CHECKPOINT": None, "MEMORY_EFFICIENT": False, "COMPILE": ""}


def inference_fishnet_config(cfg: CfgNode) -> Tuple[CfgNode, List[str]]:
    """``cfg`` for the eager FishNet without training paths (activation checkpointing,
    memory-efficient training) or ``torch.compile``, and the keys that were changed (``cfg``
    itself and ``[]`` when none). Its model computes in inference what ``cfg``'s does; scripting
    and tracing (exporting) read it."""
    fish = cfg.MODEL.FISHNET
    changed = [key for key, off in TRAINING_AND_COMPILE_KEYS.items() if fish[key] not in (off, False, [], "none")]
    if not changed:
        return cfg, []
    plain = cfg.clone()
    plain.defrost()
    for key in changed:
        plain.MODEL.FISHNET[key] = TRAINING_AND_COMPILE_KEYS[key]
    if cfg.is_frozen():
        plain.freeze()
    return plain, [f"MODEL.FISHNET.{key}" for key in changed]


def build_fishnet(
    arch: FishNetArch,
    *,
    in_channels: int = 3,
    norm: Norm = "FrozenBN",
    out_features: Optional[Sequence[str]] = None,
    num_classes: int = 0,
    freeze_at: int = 0,
    freeze_stem_conv1: bool = False,
    fold_frozen_bn: Optional[bool] = True,
    channels_last: Optional[bool] = True,
    activation_checkpointing: Checkpointing = None,
    memory_efficient: bool = False,
    compile_backend: str = "",
    device: str = "cpu",
) -> FishNet:
    """A :class:`FishNet` (the network: ``arch`` to ``freeze_stem_conv1``) with the chosen speed
    and memory paths (``fold_frozen_bn`` to ``compile_backend``:
    :func:`~fishnet_d2.modeling.optimize.optimize_fishnet`): what the config's builder builds.
    LazyConfig files: ``L(build_fishnet)(arch=L(fishnet_arch)(depth=150), ...)``.

    ``fold_frozen_bn`` or ``channels_last`` None: the default for ``device``, the device the
    model will run on (:data:`~fishnet_d2.modeling.optimize.device_defaults.DEVICE_DEFAULTS`; the
    config's builder passes ``MODEL.DEVICE``, whose keys default to None). The model is built on
    the CPU either way."""
    chosen = {"fold_frozen_bn": fold_frozen_bn, "channels_last": channels_last}
    if any(chosen[name] is None for name in PATHS_BY_DEVICE):
        defaults = device_defaults(device)
        chosen = {name: getattr(defaults, name) if value is None else value for name, value in chosen.items()}
    fishnet = FishNet(
        arch,
        in_channels=in_channels,
        norm=norm,
        out_features=out_features,
        num_classes=num_classes,
        freeze_at=freeze_at,
        freeze_stem_conv1=freeze_stem_conv1,
    )
    return optimize_fishnet(
        fishnet,
        fold_frozen_bn=chosen["fold_frozen_bn"],
        channels_last=chosen["channels_last"],
        activation_checkpointing=activation_checkpointing,
        memory_efficient=memory_efficient,
        compile_backend=compile_backend,
    )


@BACKBONE_REGISTRY.register()
def build_fishnet_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FishNet:
    """A :class:`FishNet` from ``cfg.MODEL.FISHNET``, with the speed and memory paths it chooses."""
    fish = cfg.MODEL.FISHNET
    arch = fishnet_arch_from_config(cfg)
    try:
        return build_fishnet(
            arch,
            in_channels    = input_shape.channels,
            norm           = fish.NORM,
            out_features   = fish.OUT_FEATURES,
            num_classes    = fish.NUM_CLASSES,
            freeze_at      = fish.FREEZE_AT,
            freeze_stem_conv1 = fish.FREEZE_STEM_CONV1,
            fold_frozen_bn = fish.FOLD_FROZEN_BN,
            channels_last  = fish.CHANNELS_LAST,
            activation_checkpointing = fish.CHECKPOINT,
            memory_efficient = fish.MEMORY_EFFICIENT,
            compile_backend = fish.COMPILE,
            device         = cfg.MODEL.DEVICE,
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

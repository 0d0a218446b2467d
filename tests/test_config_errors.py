"""Every invalid MODEL.FISHNET value raises ValueError at build time, naming the key, the value
and what is allowed."""

import pytest
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone

from .support import fishnet_cfg, use_tiny_arch


def official(**changes):
    """A function that sets ``changes`` (dotted config keys) on a FishNet-150 config."""

    def apply(cfg):
        for key, value in changes.items():
            node = cfg
            *parents, leaf = key.split(".")
            for parent in parents:
                node = node[parent]
            node[leaf] = value

    return apply


def tiny(**changes):
    """The same on the tiny FishNet of tests/support.py."""
    return lambda cfg: official(**changes)(use_tiny_arch(cfg))


FPN = {"MODEL.BACKBONE.NAME": "build_fishnet_fpn_backbone"}
RETINA = {"MODEL.BACKBONE.NAME": "build_retinanet_fishnet_fpn_backbone"}

# (id, config change, texts the message must contain)
CASES = [
    ("unknown depth", official(**{"MODEL.FISHNET.DEPTH": 50}), ["MODEL.FISHNET.DEPTH=50", "[99, 150, 201]", "0 (custom"]),
    ("depth 0 without arch", official(**{"MODEL.FISHNET.DEPTH": 0}), ["MODEL.FISHNET.ARCH.STEM_CHANNELS", "not set"]),
    ("depth and arch both", official(**{"MODEL.FISHNET.ARCH.TAIL_CHANNELS": [16, 32, 64]}), ["MODEL.FISHNET.DEPTH=150", "TAIL_CHANNELS", "set MODEL.FISHNET.DEPTH to 0"]),
    ("arch stage counts differ", tiny(**{"MODEL.FISHNET.ARCH.TAIL_CHANNELS": [16, 32]}), ["MODEL.FISHNET.ARCH.BODY_CHANNELS=(64, 48, 32)", "2 positive integers", "MODEL.FISHNET.ARCH.TAIL_CHANNELS has 2 stages"]),
    ("arch zero blocks", tiny(**{"MODEL.FISHNET.ARCH.HEAD_BLOCKS": [1, 0, 1]}), ["MODEL.FISHNET.ARCH.HEAD_BLOCKS=(1, 0, 1)", "positive integers"]),
    ("arch zero bridge blocks", tiny(**{"MODEL.FISHNET.ARCH.BRIDGE_BLOCKS": -1}), ["MODEL.FISHNET.ARCH.BRIDGE_BLOCKS=-1", "positive integer"]),
    ("arch width too small", tiny(**{"MODEL.FISHNET.ARCH.STEM_CHANNELS": 2}), ["MODEL.FISHNET.ARCH.STEM_CHANNELS=2", ">= 4"]),
    ("arch body reduction", tiny(**{"MODEL.FISHNET.ARCH.BODY_CHANNELS": [64, 40, 32]}), ["MODEL.FISHNET.ARCH.BODY_CHANNELS[1]=40", "divisors of 96"]),
    ("arch bridge too narrow", tiny(**{"MODEL.FISHNET.ARCH.TAIL_CHANNELS": [16, 32, 8]}), ["MODEL.FISHNET.ARCH.TAIL_CHANNELS[-1]=8", ">= 16"]),
    ("dilations count", official(**{"MODEL.FISHNET.BODY_DILATIONS": [1, 2]}), ["MODEL.FISHNET.BODY_DILATIONS=(1, 2)", "3 positive integers"]),
    ("dilation zero", official(**{"MODEL.FISHNET.BODY_DILATIONS": [1, 0, 4]}), ["MODEL.FISHNET.BODY_DILATIONS=(1, 0, 4)", "positive integers"]),
    ("group width negative", official(**{"MODEL.FISHNET.GROUP_WIDTH": -4}), ["MODEL.FISHNET.GROUP_WIDTH=-4", "allowed 0 (FishNet: no grouping)", "4d: 4"]),
    ("group width not dividing", official(**{"MODEL.FISHNET.GROUP_WIDTH": 3}), ["MODEL.FISHNET.GROUP_WIDTH=3", "groups of 3 channels", "must divide the block's 64 bottleneck channels (128 out_channels / 2)", "allowed: 0 (no grouping)"]),
    ("group width too wide for tiny", tiny(**{"MODEL.FISHNET.GROUP_WIDTH": 4}), ["MODEL.FISHNET.GROUP_WIDTH=4", "groups of 16 channels", "double with each halving of the resolution", "24 bottleneck channels (48 out_channels / 2)"]),
    ("unknown downsample", official(**{"MODEL.FISHNET.DOWNSAMPLE": "stride2"}), ["MODEL.FISHNET.DOWNSAMPLE='stride2'", "allowed ['max2', 'max3', 'avg2', 'conv']"]),
    ("unknown dilated parts", official(**{"MODEL.FISHNET.DILATED_PARTS": "head"}), ["MODEL.FISHNET.DILATED_PARTS='head'", "allowed ['body', 'body+head', 'none']"]),
    ("unknown norm", tiny(**{"MODEL.FISHNET.NORM": "LayerNormX"}), ["MODEL.FISHNET.NORM='LayerNormX'", "FrozenBN", "GN"]),
    ("unknown feature", tiny(**{"MODEL.FISHNET.OUT_FEATURES": ["res5"]}), ["MODEL.FISHNET.OUT_FEATURES", "unknown ['res5']", "head5"]),
    ("no features", tiny(**{"MODEL.FISHNET.OUT_FEATURES": []}), ["MODEL.FISHNET.OUT_FEATURES", "empty", "head2"]),
    ("linear without classes", tiny(**{"MODEL.FISHNET.OUT_FEATURES": ["head5", "linear"]}), ["MODEL.FISHNET.OUT_FEATURES", "'linear' needs MODEL.FISHNET.NUM_CLASSES > 0"]),
    ("classes without linear", tiny(**{"MODEL.FISHNET.NUM_CLASSES": 10}), ["MODEL.FISHNET.OUT_FEATURES", "MODEL.FISHNET.NUM_CLASSES=10", "'linear' must be"]),
    ("negative classes", tiny(**{"MODEL.FISHNET.NUM_CLASSES": -1}), ["MODEL.FISHNET.NUM_CLASSES=-1", "allowed 0"]),
    ("freeze too far", tiny(**{"MODEL.FISHNET.FREEZE_AT": 12}), ["MODEL.FISHNET.FREEZE_AT=12", "allowed 0 to 11"]),
    ("negative freeze", tiny(**{"MODEL.FISHNET.FREEZE_AT": -1}), ["MODEL.FISHNET.FREEZE_AT=-1", "allowed 0 to 11"]),
    ("fpn feature not returned", tiny(**FPN, **{"MODEL.FPN.IN_FEATURES": ["head2", "body3"]}), ["MODEL.FPN.IN_FEATURES", "unknown ['body3']", "MODEL.FISHNET.OUT_FEATURES"]),
    ("fpn strides skip", tiny(**FPN, **{"MODEL.FPN.IN_FEATURES": ["head2", "head4"]}), ["MODEL.FPN.IN_FEATURES=['head2', 'head4']", "strides [4, 16]", "double"]),
    ("fpn features empty", tiny(**FPN, **{"MODEL.FPN.IN_FEATURES": []}), ["MODEL.FPN.IN_FEATURES=[]", "empty"]),
    ("fpn resnet names", tiny(**RETINA, **{"MODEL.FPN.IN_FEATURES": ["res3", "res4", "res5"]}), ["MODEL.FPN.IN_FEATURES", "unknown ['res3', 'res4', 'res5']", "head3"]),
]


@pytest.mark.parametrize("change, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_invalid_config_raises_value_error(change, expected):
    cfg = fishnet_cfg()
    change(cfg)
    with pytest.raises(ValueError) as error:
        build_backbone(cfg, ShapeSpec(channels=3))
    for text in expected:
        assert text in str(error.value), f"{text!r} not in: {error.value}"


def test_input_channels_must_be_positive():
    cfg = use_tiny_arch(fishnet_cfg())
    with pytest.raises(ValueError, match="input_shape.channels=0"):
        build_backbone(cfg, ShapeSpec(channels=0))


def test_valid_tiny_config_builds():
    """The baseline every case above changes is itself valid."""
    cfg = use_tiny_arch(fishnet_cfg())
    cfg.MODEL.BACKBONE.NAME = "build_fishnet_fpn_backbone"
    cfg.MODEL.FPN.IN_FEATURES = ["head2", "head3", "head4", "head5"]
    assert "p2" in build_backbone(cfg, ShapeSpec(channels=3)).output_shape()

"""Detectron2's backbone contract for FishNet: shapes, gradients, freezing, norms, scripting."""

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone
from torch import nn

import fishnet_d2  # noqa: F401  (registers the backbones)
from fishnet_d2 import FishNet

from .support import ALL_FEATURES, TINY_ARCH, assert_scripted_equals_eager, fishnet_cfg, use_tiny_arch

def tiny_fishnet(**kwargs) -> FishNet:
    kwargs.setdefault("out_features", ALL_FEATURES)
    return FishNet(TINY_ARCH, **kwargs)


def test_registered():
    for name in ("build_fishnet_backbone", "build_fishnet_fpn_backbone", "build_retinanet_fishnet_fpn_backbone"):
        assert name in BACKBONE_REGISTRY


@pytest.mark.parametrize("height, width", [(32, 32), (64, 96), (96, 64), (128, 224)])
def test_output_shape_matches_outputs(height, width):
    model = tiny_fishnet(num_classes=7, out_features=ALL_FEATURES + ["linear"]).eval()
    with torch.no_grad():
        outputs = model(torch.rand(2, 3, height, width))
    shapes = model.output_shape()
    assert list(outputs) == list(shapes) == ALL_FEATURES + ["linear"]
    for name in ALL_FEATURES:
        stride, channels = shapes[name].stride, shapes[name].channels
        assert outputs[name].shape == (2, channels, height // stride, width // stride), name
    assert outputs["linear"].shape == (2, 7)
    assert model.size_divisibility == 32


def test_official_output_shapes_table():
    """The README's table: strides and channels of FishNet-99/150/201 (same widths)."""
    with torch.device("meta"):
        model = FishNet(fishnet_d2.FISHNET_VARIANTS[150], out_features=ALL_FEATURES)
    expected = {
        "stem": (64, 4), "tail3": (128, 8), "tail4": (256, 16), "tail5": (512, 32),
        "bridge": (512, 32), "body4": (768, 16), "body3": (512, 8), "body2": (320, 4),
        "head2": (320, 4), "head3": (832, 8), "head4": (1600, 16), "head5": (2112, 32),
    }  # fmt: skip
    assert {k: (s.channels, s.stride) for k, s in model.output_shape().items()} == expected


@pytest.mark.parametrize("num_stages", [2, 4])
def test_stage_count_sets_names_strides_and_divisibility(num_stages):
    """With n stages per part the tail goes down to stride 2**(2+n), the body back up to 4 and the
    head down again; the features are named by part and log2 of their stride."""
    n = num_stages
    arch = fishnet_d2.fishnet_arch(
        0,
        stem_channels=16,
        tail_channels=(32,) * n,
        body_channels=(32,) * n,
        head_channels=(16,) * n,
        tail_blocks=(1,) * n,
        bridge_blocks=1,
        body_blocks=(1,) * n,
        head_blocks=(1,) * n,
        body_transfer_blocks=(1,) * n,
        head_transfer_blocks=(1,) * n,
        body_dilations=(1,) * n,
    )
    down = [f"tail{level}" for level in range(3, 3 + n)]
    up = [f"body{level}" for level in range(1 + n, 1, -1)]
    head = [f"head{level}" for level in range(2, 3 + n)]
    model = FishNet(arch, out_features=["stem", *down, "bridge", *up, *head]).eval()
    size = 2 ** (2 + n)
    assert model.size_divisibility == size
    assert [s.name for s in model.stages()] == ["stem", *down, "bridge", *up, *head[1:]]
    with torch.no_grad():
        outputs = model(torch.rand(1, 3, 2 * size, size))
    for name, shape in model.output_shape().items():
        assert outputs[name].shape == (1, shape.channels, 2 * size // shape.stride, size // shape.stride), name
        assert shape.stride == (size if name == "bridge" else 4 if name == "stem" else 2 ** int(name[4:])), name


def test_fpn_backbones_use_head_features():
    cfg = use_tiny_arch(fishnet_cfg())
    cfg.MODEL.FPN.IN_FEATURES = ["head2", "head3", "head4", "head5"]
    cfg.MODEL.BACKBONE.NAME = "build_fishnet_fpn_backbone"
    fpn = build_backbone(cfg)
    assert {k: v.stride for k, v in fpn.output_shape().items()} == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    assert fpn.size_divisibility == 32
    features = fpn(torch.rand(1, 3, 64, 64))
    assert features["p2"].shape == (1, 256, 16, 16)

    cfg.MODEL.BACKBONE.NAME = "build_retinanet_fishnet_fpn_backbone"
    cfg.MODEL.FPN.IN_FEATURES = ["head3", "head4", "head5"]
    retina = build_backbone(cfg)
    assert {k: v.stride for k, v in retina.output_shape().items()} == {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}
    assert retina(torch.rand(1, 3, 128, 128))["p7"].shape == (1, 256, 1, 1)


def test_every_trainable_parameter_gets_a_gradient():
    # Seeded: from an unseeded random start, the bridge's SE unit (4 squeezed channels on a 2x2
    # map) can begin with every squeeze ReLU dead, and then nothing before it gets a gradient.
    torch.manual_seed(0)
    model = tiny_fishnet(norm="BN", num_classes=5, out_features=ALL_FEATURES + ["linear"]).train()
    outputs = model(torch.rand(2, 3, 128, 128))
    sum(o.pow(2).mean() for o in outputs.values()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


# The stages in the order they run: freeze_at=k freezes the first k.
STAGES_IN_ORDER = ["stem", "tail.0", "tail.1", "tail.2", "bridge", "body.0", "body.1", "body.2", "head.0", "head.1", "head.2"]


def with_random_statistics(model: FishNet) -> FishNet:
    """``model`` with BatchNorm statistics and affine terms that are not the identity's."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return model


@pytest.mark.parametrize("freeze_at", range(12))
def test_freeze_at(freeze_at):
    torch.manual_seed(0)
    model = tiny_fishnet(norm="BN", num_classes=3, out_features=ALL_FEATURES + ["linear"], freeze_at=freeze_at)
    frozen_prefixes = tuple(f"{s}." for s in STAGES_IN_ORDER[:freeze_at])
    for name, p in model.named_parameters():
        assert p.requires_grad == (not name.startswith(frozen_prefixes)), name
    # Frozen stages normalize by their statistics in training too: they compute what the same
    # weights compute in eval (a prefix of the stages, so their inputs are frozen ones' too).
    unfrozen = with_random_statistics(tiny_fishnet(norm="BN", num_classes=3, out_features=ALL_FEATURES + ["linear"]))
    keys = model.state_dict()  # FrozenBN keeps no num_batches_tracked
    model.load_state_dict({k: v for k, v in unfrozen.state_dict().items() if k in keys})
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected, outputs = unfrozen.eval()(x), model.train()(x)
    for stage in model.stages()[:freeze_at]:
        torch.testing.assert_close(outputs[stage.name], expected[stage.name], rtol=1e-4, atol=1e-5, msg=stage.name)
    # Frozen parts get no gradient and keep their statistics in training.
    before = {k: v.clone() for k, v in model.state_dict().items() if "running_mean" in k}
    sum(o.sum() for o in model(torch.rand(2, 3, 32, 32)).values()).backward()
    for name, p in model.named_parameters():
        assert (p.grad is None) == name.startswith(frozen_prefixes), name
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(value, after[key]) == key.startswith(frozen_prefixes), key


def test_freeze_stem_conv1_freezes_exactly_the_full_resolution_conv():
    model = tiny_fishnet(norm="BN", freeze_stem_conv1=True)
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    # Its BatchNorm is frozen too: its affine terms are no parameters, its statistics stay.
    assert frozen == {"stem.conv1.conv.weight"}
    assert model.stem.conv1.conv.stride == (2, 2) and model.stem.conv1.conv.in_channels == 3
    before = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("running_mean")}
    with torch.no_grad():
        model.train()(torch.rand(2, 3, 32, 32))
    after = model.state_dict()
    assert torch.equal(before["stem.conv1.norm.running_mean"], after["stem.conv1.norm.running_mean"])
    assert not torch.equal(before["stem.conv2.norm.running_mean"], after["stem.conv2.norm.running_mean"])


def test_freeze_at_out_of_range():
    with pytest.raises(ValueError, match="freeze_at=12: allowed 0 to 11"):
        tiny_fishnet(freeze_at=12)


@pytest.mark.parametrize("norm", ["FrozenBN", "BN", "SyncBN", "nnSyncBN", "naiveSyncBN", "GN", ""])
def test_each_norm_builds_and_runs(norm):
    cfg = fishnet_cfg()
    cfg.MODEL.FISHNET.NORM = norm
    cfg.MODEL.FISHNET.OUT_FEATURES = ["head2", "head5"]
    use_tiny_arch(cfg)
    model = build_backbone(cfg, ShapeSpec(channels=3))
    model.train()
    outputs = model(torch.rand(2, 3, 64, 64))
    sum(o.mean() for o in outputs.values()).backward()
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.rand(1, 3, 32, 64))["head5"]).all()
    if norm == "GN":  # 32 groups where the width allows it, gcd(32, C) elsewhere
        groups = {m.num_channels: m.num_groups for m in model.modules() if isinstance(m, nn.GroupNorm)}
        assert groups[64] == 32 and groups[16] == 16 and groups[48] == 16 and groups[4] == 4


@pytest.mark.parametrize("norm", ["FrozenBN", "BN"])
def test_scripted_equals_eager(norm):
    model = tiny_fishnet(norm=norm, num_classes=4, out_features=ALL_FEATURES + ["linear"]).eval()
    assert_scripted_equals_eager(model, torch.rand(2, 3, 64, 96))


@pytest.mark.parametrize("shape", [(1, 3, 65, 64), (1, 3, 64, 100), (1, 3, 16, 32)])
def test_input_not_multiple_of_32_raises(shape):
    model = tiny_fishnet().eval()
    with pytest.raises(ValueError, match=f"multiples of 32 .*got {shape[2]}x{shape[3]}"):
        model(torch.rand(shape))


def test_wrong_channels_raise():
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        tiny_fishnet()(torch.rand(1, 4, 32, 32))

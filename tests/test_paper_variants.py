"""The paper's other networks: FishNeXt-150 (sec. 4.2, Table 1) and the down-sampling and dilation
variants of its ablation on FishNet-150 (sec. 4.3, Table 2). What each network is, that the
defaults are still the official model, and that each variant is a Detectron2 backbone (shapes,
strides, gradients, TorchScript) and trains from its config."""

import dataclasses
import functools
from typing import Dict

import pytest
import torch
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone, build_model
from detectron2.utils.events import EventStorage
from torch import nn

from fishnet_d2 import FISHNET_VARIANTS, FISHNEXT_VARIANTS, FishNet, FishNetArch, fishnet_arch
from fishnet_d2.modeling import InvalidValue, fishnet_arch_from_config, fishnet_arch_to_config
from fishnet_d2.modeling.arch import VARIANT_OPTIONS
from fishnet_d2.modeling.blocks import GroupedPreActBottleneck, PreActBottleneck, PreActProjection
from fishnet_d2.solver import build_optimizer

from .support import (
    ALL_FEATURES,
    REPO,
    TINY_ARCH,
    assert_scripted_equals_eager,
    fishnet_cfg,
    shrink_config,
    synthetic_batch,
    use_tiny_arch,
)

FISHNET150 = FISHNET_VARIANTS[150]
FISHNEXT150 = FISHNEXT_VARIANTS[150]


def meta_model(arch: FishNetArch, **kwargs) -> FishNet:
    """The ImageNet model (1000 classes, BatchNorm) of ``arch``, without memory: for counting and
    for looking at its modules."""
    with torch.device("meta"):
        return FishNet(arch, norm="BN", num_classes=1000, **kwargs)


@functools.lru_cache(maxsize=None)
def num_parameters(arch: FishNetArch) -> int:
    return sum(p.numel() for p in meta_model(arch).parameters())


@functools.lru_cache(maxsize=None)
def state_dict_shapes(arch: FishNetArch) -> Dict[str, torch.Size]:
    return {k: v.shape for k, v in meta_model(arch).state_dict().items()}


# --- the defaults are the official model ----------------------------------------------------------


def test_defaults_are_the_official_model():
    """FishNetArch's defaults for the options the paper varies are the official model's, and so
    are MODEL.FISHNET's keys made from them."""
    defaults = {f.name: f.default for f in dataclasses.fields(FishNetArch) if f.name in VARIANT_OPTIONS}
    assert defaults == {"body_dilations": (1, 2, 4), "group_width": 0, "downsample": "max2", "dilated_parts": "body"}
    assert fishnet_arch_from_config(fishnet_cfg()) == FISHNET150
    counts = {depth: num_parameters(arch) for depth, arch in FISHNET_VARIANTS.items()}
    assert counts == {99: 16_628_904, 150: 24_959_400, 201: 44_584_552}


# --- FishNeXt-150 (paper, sec. 4.2 and Table 1) ---------------------------------------------------


def test_fishnext150_is_fishnet150_with_groups_of_4():
    """FishNeXt-150 (4d): FishNet-150's depths and widths, "4d": the smallest group has 4 channels.
    It is DEPTH 150 with GROUP_WIDTH 4, in the config as in the LazyConfig rule."""
    assert FISHNEXT150 == dataclasses.replace(FISHNET150, group_width=4)
    assert fishnet_arch(150, group_width=4) == FISHNEXT150
    cfg = fishnet_cfg()
    cfg.MODEL.FISHNET.GROUP_WIDTH = 4
    assert fishnet_arch_from_config(cfg) == FISHNEXT150


def grouped_convs_by_stride(arch: FishNetArch, size: int = 224) -> Dict[nn.Conv2d, int]:
    """Each residual block's 3x3 conv and the stride of the map it reads (a meta forward)."""
    model = meta_model(arch).eval()
    strides: Dict[nn.Conv2d, int] = {}
    hooks = [
        block.conv2.register_forward_pre_hook(
            lambda conv, inputs: strides.__setitem__(conv, size // inputs[0].shape[-1])
        )
        for block in model.modules()
        if isinstance(block, PreActBottleneck)
    ]
    with torch.no_grad():
        model(torch.empty(1, 3, size, size, device="meta"))
    for hook in hooks:
        hook.remove()
    return strides


def test_fishnext_group_width_doubles_with_each_stage():
    """ "The number of channels in a group for each block (UR/DR block and transfer block) of the
    same stage should be the same. The width of a single group will be doubled once the stage
    index increase by 1": groups of 4 channels at stride 4, 8 at 8, 16 at 16, 32 at 32, in the
    tail, the bridge, the body and the head alike."""
    strides = grouped_convs_by_stride(FISHNEXT150)
    assert len(strides) == sum(isinstance(m, PreActBottleneck) for m in meta_model(FISHNET150).modules())
    for conv, stride in strides.items():
        assert conv.in_channels // conv.groups == stride, (conv, stride)
    assert sorted(set(strides.values())) == [4, 8, 16, 32]


def test_fishnext_blocks_are_resnext_bottlenecks():
    """ResNeXt's template: a bottleneck of half the block's width, grouped; the shortcuts
    (projections, channel-wise summation) are FishNet's."""
    fishnet, fishnext = meta_model(FISHNET150), meta_model(FISHNEXT150)
    blocks = dict(fishnext.named_modules())
    for name, plain in fishnet.named_modules():
        if isinstance(plain, PreActBottleneck):
            grouped = blocks[name]
            assert isinstance(grouped, GroupedPreActBottleneck), name
            assert grouped.conv2.in_channels == grouped.out_channels // 2 == 2 * plain.conv2.in_channels
            assert type(grouped.shortcut) is type(plain.shortcut), name
    assert not any(isinstance(m, GroupedPreActBottleneck) for m in fishnet.modules())
    # The stem's, score's, SE's and classifier's convs are not residual blocks: the same.
    for part in ("stem", "bridge.score", "bridge.attention", "classifier"):
        shapes = {k: v.shape for k, v in fishnet.get_submodule(part).state_dict().items()}
        assert shapes == {k: v.shape for k, v in fishnext.get_submodule(part).state_dict().items()}


# --- down-sampling (paper, sec. 4.3 and Table 2) --------------------------------------------------


def down_modules(model: FishNet):
    return [stage.down for stage in (*model.tail, *model.head)]


@pytest.mark.parametrize(
    "downsample, pool, kernel, padding",
    [("max2", nn.MaxPool2d, 2, 0), ("max3", nn.MaxPool2d, 3, 1), ("avg2", nn.AvgPool2d, 2, 0)],
)
def test_pooling_in_tail_and_head(downsample, pool, kernel, padding):
    """Every tail and head stage halves the resolution by the same pool, stride 2; the head's
    blocks keep identity shortcuts ("we do not use such convolution at the head")."""
    model = meta_model(dataclasses.replace(FISHNET150, downsample=downsample))
    for down in down_modules(model):
        assert type(down) is pool
        assert (down.kernel_size, down.stride, down.padding) == (kernel, 2, padding)
    for stage in model.head:
        assert not any(isinstance(m, PreActProjection) for m in stage.modules())


def test_stride2_convolution_in_tail_and_head():
    """Stride-2 convolution, "used for both the tail and the head": the last residual block of
    each tail and head stage has a strided 3x3 conv and a strided 1x1 conv on its skip connection.
    The blocks are those of FishNet-150; nothing else has a stride."""
    model = meta_model(dataclasses.replace(FISHNET150, downsample="conv"))
    for down in down_modules(model):
        assert isinstance(down, PreActBottleneck)
        assert down.conv2.stride == (2, 2) and down.conv1.stride == down.conv3.stride == (1, 1)
        assert isinstance(down.shortcut, PreActProjection) and down.shortcut.conv.stride == (2, 2)
    blocks = [m for m in model.modules() if isinstance(m, PreActBottleneck)]
    assert len(blocks) == sum(isinstance(m, PreActBottleneck) for m in meta_model(FISHNET150).modules())
    strided = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    assert len(strided) == 1 + 2 * 6  # the stem's first conv; a 3x3 and a 1x1 per tail and head stage


def test_stride2_convolution_with_one_block_per_stage():
    """A stage of one block: that block changes the width and strides. The head then has no
    stride-4 refinement: head2 is body2."""
    arch = dataclasses.replace(TINY_ARCH, downsample="conv")
    model = FishNet(arch, out_features=ALL_FEATURES).eval()
    assert all(len(stage.blocks) == 0 for stage in model.tail)
    with torch.no_grad():
        features = model(torch.rand(1, 3, 64, 64))
    assert torch.equal(features["head2"], features["body2"])


# --- dilation (paper, sec. 4.3, "Dilated convolution") --------------------------------------------


@pytest.mark.parametrize(
    "dilated_parts, body, head",
    [("body", (1, 2, 4), (1, 1, 1)), ("body+head", (1, 2, 4), (4, 2, 1)), ("none", (1, 1, 1), (1, 1, 1))],
)
def test_dilation(dilated_parts, body, head):
    """The refining blocks M of the body (and head) are dilated; the head mirrors the body's rates
    (head stage i goes between the resolutions of body stage n-1-i). Tail, bridge and transfer
    blocks never are."""
    model = meta_model(dataclasses.replace(FISHNET150, dilated_parts=dilated_parts))

    def dilations(stage_blocks):
        return {block.conv2.dilation[0] for block in stage_blocks}

    assert [dilations(stage.refine) for stage in model.body] == [{d} for d in body]
    assert [dilations(stage.refine) for stage in model.head] == [{d} for d in head]
    undilated = [*(s.blocks for s in model.tail), model.bridge.blocks, *(s.transfer for s in (*model.body, *model.head))]
    assert all(dilations(blocks) == {1} for blocks in undilated)


# --- parameters against the paper ---------------------------------------------------------------

# Paper: FishNet-150 26.4M; FishNeXt-150 26.2M (Table 1); stride-2 convolution 30.2M (Table 2);
# the pools and dilation have no weights. The official FishNet-150 (24,959,400) differs from the
# paper's count, so the relative changes are compared: within 5 percentage points.
PAPER_RELATIVE_CHANGE = {"FishNeXt-150": 26.2 / 26.4 - 1, "conv": 30.2 / 26.4 - 1}
PARAMETERS = {  # measured, 1000 classes, BatchNorm
    "FishNeXt-150": (FISHNEXT150, 25_738_024),
    "conv": (dataclasses.replace(FISHNET150, downsample="conv"), 28_665_384),
    "max3": (dataclasses.replace(FISHNET150, downsample="max3"), 24_959_400),
    "avg2": (dataclasses.replace(FISHNET150, downsample="avg2"), 24_959_400),
    "body+head": (dataclasses.replace(FISHNET150, dilated_parts="body+head"), 24_959_400),
    "none": (dataclasses.replace(FISHNET150, dilated_parts="none"), 24_959_400),
}


@pytest.mark.parametrize("name", PARAMETERS)
def test_parameters_against_the_paper(name):
    arch, expected = PARAMETERS[name]
    count = num_parameters(arch)
    assert count == expected
    change = count / num_parameters(FISHNET150) - 1
    assert abs(change - PAPER_RELATIVE_CHANGE.get(name, 0.0)) < 0.05


@pytest.mark.parametrize("name", ["max3", "avg2", "body+head", "none"])
def test_weightless_variants_take_fishnet150_weights(name):
    """The pools and the dilation leave no trace in the weights: the official FishNet-150
    weights load into these variants as they are."""
    arch, _ = PARAMETERS[name]
    assert state_dict_shapes(arch) == state_dict_shapes(FISHNET150)


# --- the backbone contract, on each variant of the tiny FishNet ----------------------------------

# FishNeXt on the tiny widths: groups of 2 channels at stride 4 (4 does not divide them: see
# test_group_width_must_divide_every_bottleneck).
TINY_VARIANTS = {
    "fishnext": dataclasses.replace(TINY_ARCH, group_width=2),
    "max3": dataclasses.replace(TINY_ARCH, downsample="max3"),
    "avg2": dataclasses.replace(TINY_ARCH, downsample="avg2"),
    "conv": dataclasses.replace(TINY_ARCH, downsample="conv"),
    "conv, 2 blocks": dataclasses.replace(
        TINY_ARCH, downsample="conv", tail_blocks=(2, 2, 2), head_blocks=(2, 2, 2)
    ),
    "dilation body+head": dataclasses.replace(TINY_ARCH, dilated_parts="body+head"),
    "dilation none": dataclasses.replace(TINY_ARCH, dilated_parts="none"),
    "fishnext, conv": dataclasses.replace(TINY_ARCH, group_width=2, downsample="conv"),
}
OUT_FEATURES = ALL_FEATURES + ["linear"]


@pytest.fixture(params=list(TINY_VARIANTS))
def tiny_variant(request) -> FishNetArch:
    return TINY_VARIANTS[request.param]


def test_output_shapes_match_output_shape(tiny_variant):
    model = FishNet(tiny_variant, num_classes=7, out_features=OUT_FEATURES).eval()
    height, width = 64, 96
    with torch.no_grad():
        outputs = model(torch.rand(2, 3, height, width))
    shapes = model.output_shape()
    assert list(outputs) == list(shapes) == OUT_FEATURES
    expected_strides = {"stem": 4, "tail3": 8, "tail4": 16, "tail5": 32, "bridge": 32, "body4": 16,
                        "body3": 8, "body2": 4, "head2": 4, "head3": 8, "head4": 16, "head5": 32}  # fmt: skip
    for name in ALL_FEATURES:
        stride, channels = shapes[name].stride, shapes[name].channels
        assert stride == expected_strides[name]
        assert outputs[name].shape == (2, channels, height // stride, width // stride), name
    assert outputs["linear"].shape == (2, 7)


def test_trains_a_step_and_every_parameter_gets_a_gradient(tiny_variant):
    torch.manual_seed(0)
    model = FishNet(tiny_variant, norm="BN", num_classes=5, out_features=OUT_FEATURES).train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    outputs = model(torch.rand(2, 3, 64, 64))
    sum(o.pow(2).mean() for o in outputs.values()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    optimizer.step()
    assert all(not torch.equal(p, before[name]) for name, p in model.named_parameters())


def test_scripted_equals_eager(tiny_variant):
    # FrozenBN's path is the plain FishNet's (test_backbone_contract.py): BN here.
    model = FishNet(tiny_variant, norm="BN", num_classes=4, out_features=OUT_FEATURES).eval()
    assert_scripted_equals_eager(model, torch.rand(2, 3, 64, 96))


def test_config_describes_the_variant(tiny_variant):
    """MODEL.FISHNET's keys hold the variant: written by fishnet_arch_to_config, read back, and
    built by the registered builder."""
    cfg = fishnet_cfg()
    cfg.MODEL.FISHNET.merge_from_other_cfg(type(cfg)(fishnet_arch_to_config(tiny_variant)))
    assert fishnet_arch_from_config(cfg) == tiny_variant
    cfg.MODEL.FISHNET.OUT_FEATURES = ["head2", "head5"]
    model = build_backbone(cfg, ShapeSpec(channels=3))
    assert model.arch == tiny_variant


def test_lazyconfig_rule_takes_the_options():
    """The LazyConfig path: fishnet_arch's keyword arguments, strings included."""
    arch = instantiate(L(fishnet_arch)(depth=150, group_width=4, downsample="conv", dilated_parts="none"))
    assert arch == dataclasses.replace(FISHNEXT150, downsample="conv", dilated_parts="none")
    custom = instantiate(L(fishnet_arch)(depth=0, **dataclasses.asdict(TINY_VARIANTS["fishnext, conv"])))
    assert custom == TINY_VARIANTS["fishnext, conv"]


# --- invalid values -------------------------------------------------------------------------------


def test_group_width_must_divide_every_bottleneck():
    """Each block checks its group width; a FishNet says it in terms of its arch's group width.
    TINY_ARCH with 4: body3's blocks (48 wide, at stride 16) get groups of 16 for 24 channels."""
    with pytest.raises(InvalidValue) as error, torch.device("meta"):
        FishNet(dataclasses.replace(TINY_ARCH, group_width=4))
    assert (error.value.name, error.value.value) == ("group_width", 4)
    assert "groups of 16 channels" in str(error.value)
    assert "must divide the block's 24 bottleneck channels (48 out_channels / 2)" in str(error.value)
    with torch.device("meta"):
        FishNet(dataclasses.replace(TINY_ARCH, group_width=2))  # fits every block
    # 6 would make 2 groups of 8 in a 16-channel bottleneck: refused, not rounded.
    for group_width in (3, 6):
        with pytest.raises(InvalidValue, match=f"group_width={group_width}: must divide the block's 16 bottleneck"):
            GroupedPreActBottleneck(32, 32, group_width=group_width, shortcut=nn.Identity())


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("group_width", -1, "allowed 0 (FishNet: no grouping)"),
        ("group_width", True, "allowed 0 (FishNet: no grouping)"),
        ("downsample", "stride2", "allowed ['max2', 'max3', 'avg2', 'conv']"),
        ("dilated_parts", "head", "allowed ['body', 'body+head', 'none']"),
    ],
)
def test_invalid_options(field, value, message):
    with pytest.raises(InvalidValue) as error, torch.device("meta"):
        FishNet(fishnet_arch(150, **{field: value}))
    assert error.value.name == field and message in str(error.value)


def test_config_keys_are_the_arch_fields():
    """MODEL.FISHNET holds one key per FishNetArch field (the options the paper varies, and ARCH),
    each field described once, in the field."""
    fish = fishnet_cfg().MODEL.FISHNET
    arch_fields = dataclasses.fields(FishNetArch)
    keys = {key for key in fish if key.lower() in VARIANT_OPTIONS} | set(fish.ARCH)
    assert keys == {f.name.upper() for f in arch_fields}
    assert all(len(f.metadata["doc"]) > 20 for f in arch_fields)


# --- the configs ----------------------------------------------------------------------------------

PAPER_BASE = "configs/COCO-InstanceSegmentation/mask_rcnn_fishnet150_FPN_paper.yaml"
# path: (architecture, MASK_ON, weights)
VARIANT_CONFIGS = {
    "configs/COCO-InstanceSegmentation/mask_rcnn_fishnext150_FPN_paper.yaml": (FISHNEXT150, True, "fishnet://ImageNet/fishnext150"),
    "configs/COCO-Detection/faster_rcnn_fishnext150_FPN_paper.yaml": (FISHNEXT150, False, "fishnet://ImageNet/fishnext150"),
    "configs/Ablation/mask_rcnn_fishnet150_FPN_paper_downsample_max2.yaml": (FISHNET150, True, "fishnet://ImageNet/fishnet150_official"),
    "configs/Ablation/mask_rcnn_fishnet150_FPN_paper_downsample_max3.yaml": (PARAMETERS["max3"][0], True, "fishnet://ImageNet/fishnet150_official"),
    "configs/Ablation/mask_rcnn_fishnet150_FPN_paper_downsample_avg2.yaml": (PARAMETERS["avg2"][0], True, "fishnet://ImageNet/fishnet150_official"),
    "configs/Ablation/mask_rcnn_fishnet150_FPN_paper_downsample_conv.yaml": (PARAMETERS["conv"][0], True, "fishnet://ImageNet/fishnet150_downsample_conv"),
    "configs/Ablation/mask_rcnn_fishnet150_FPN_paper_dilation_body_head.yaml": (PARAMETERS["body+head"][0], True, "fishnet://ImageNet/fishnet150_official"),
    "configs/Ablation/mask_rcnn_fishnet150_FPN_paper_dilation_none.yaml": (PARAMETERS["none"][0], True, "fishnet://ImageNet/fishnet150_official"),
}  # fmt: skip


def load(path: str):
    cfg = fishnet_cfg()
    cfg.merge_from_file(str(REPO / path))
    return cfg


def test_every_ablation_config_is_listed():
    """A new row under configs/Ablation must be added to VARIANT_CONFIGS to be tested here."""
    ablation = {p.relative_to(REPO).as_posix() for p in (REPO / "configs" / "Ablation").glob("*.yaml")}
    assert ablation == {path for path in VARIANT_CONFIGS if path.startswith("configs/Ablation/")}


@pytest.mark.parametrize("path", VARIANT_CONFIGS)
def test_variant_config(path):
    """Each config is the paper's COCO setup (sec. 4.4) with the variant's backbone."""
    arch, mask_on, weights = VARIANT_CONFIGS[path]
    cfg, paper = load(path), load(PAPER_BASE)
    assert fishnet_arch_from_config(cfg) == arch
    assert cfg.MODEL.MASK_ON is mask_on
    assert cfg.MODEL.WEIGHTS == weights
    assert cfg.SOLVER == paper.SOLVER and cfg.INPUT == paper.INPUT and cfg.DATASETS == paper.DATASETS
    assert cfg.MODEL.FPN == paper.MODEL.FPN and cfg.MODEL.BACKBONE == paper.MODEL.BACKBONE
    for key in ("NORM", "FREEZE_AT", "FREEZE_STEM_CONV1", "OUT_FEATURES"):
        assert cfg.MODEL.FISHNET[key] == paper.MODEL.FISHNET[key], key


@pytest.mark.parametrize("path", VARIANT_CONFIGS)
def test_variant_config_trains_one_step(path):
    """The config's model, shrunk to the tiny FishNet with the variant's options (FishNeXt with
    groups of 2: see TINY_VARIANTS), trains one step."""
    cfg = load(path)
    options = {key: cfg.MODEL.FISHNET[key] for key in ("DOWNSAMPLE", "DILATED_PARTS")}
    grouped = cfg.MODEL.FISHNET.GROUP_WIDTH > 0
    cfg = shrink_config(cfg)
    cfg.MODEL.FISHNET.update(options, GROUP_WIDTH=2 if grouped else 0)
    expected = dataclasses.replace(
        TINY_ARCH,
        group_width=2 if grouped else 0,
        downsample=options["DOWNSAMPLE"],
        dilated_parts=options["DILATED_PARTS"],
    )
    assert fishnet_arch_from_config(cfg) == expected
    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert model.backbone.bottom_up.arch == expected
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = build_optimizer(cfg, model)
    with EventStorage(0):
        losses = model(synthetic_batch())
        sum(losses.values()).backward()
        optimizer.step()
    assert ("loss_mask" in losses) is cfg.MODEL.MASK_ON
    assert all(torch.isfinite(v) for v in losses.values())
    after = dict(model.named_parameters())
    changed = [n for n, p in before.items() if not torch.equal(p, after[n])]
    assert any(n.startswith("backbone.bottom_up.") for n in changed)


def test_tiny_arch_is_what_the_shrunk_configs_start_from():
    """use_tiny_arch resets every MODEL.FISHNET option of TINY_ARCH (fishnet_arch_to_config is a
    whole description), so the variant options are set again above."""
    cfg = load("configs/Ablation/mask_rcnn_fishnet150_FPN_paper_downsample_conv.yaml")
    assert fishnet_arch_from_config(use_tiny_arch(cfg)) == TINY_ARCH

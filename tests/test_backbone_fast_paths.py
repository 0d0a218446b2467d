"""FishNet's fast paths compute what the plain model computes: in-place pre-activations, fused
FrozenBN, FrozenBN folded into the conv before it, channels-last memory format (weights too),
activation checkpointing (MODEL.FISHNET.CHECKPOINT, each choice) and torch.compile. "The plain
model" is tools/benchmarking/reference.py's PlainFishNet (NCHW, Detectron2's FrozenBatchNorm2d,
nothing in place or folded), or a FishNet without the fast path in question."""

import sys

from typing import Dict, List, Tuple

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import build_backbone
from torch import nn

from fishnet_d2 import FishNet
from fishnet_d2.modeling.blocks import (
    ChannelSumReduction,
    ConvNormReLU,
    FusedFrozenBatchNorm2d,
    GroupedPreActBottleneck,
    PreActBottleneck,
    PreActProjection,
    ScoreUnit,
)

from .common import ALL_FEATURES, REPO, TINY_ARCH, fishnet_cfg, use_tiny_arch

sys.path.insert(0, str(REPO / "tools"))
from benchmarking.reference import PlainFishNet  # noqa: E402



def randomize_norms(model: nn.Module, seed: int = 1) -> nn.Module:
    """Statistics and affine parameters away from the identity, so that norms matter."""
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm2d, FrozenBatchNorm2d, nn.GroupNorm)):
            c = module.weight.shape[0]
            with torch.no_grad():
                module.weight.copy_(torch.rand(c, generator=g) + 0.5)
                module.bias.copy_(torch.randn(c, generator=g))
                if hasattr(module, "running_mean"):
                    module.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                    module.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return model


def train_step(model: nn.Module, x: torch.Tensor) -> Tuple[Dict[str, torch.Tensor], List[torch.Tensor]]:
    """Outputs and parameter gradients of one forward + backward (a loss that weighs every
    output element differently)."""
    model.zero_grad(set_to_none=True)
    outputs = model(x)
    loss = sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outputs.values())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    return {k: v.detach() for k, v in outputs.items()}, grads


def assert_same(a, b, **tolerance) -> None:
    if isinstance(a, dict):
        assert list(a) == list(b)
        a, b = list(a.values()), list(b.values())
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, **tolerance)


# Tolerances. A fast path claims to compute the same math as the plain model; the claim is
# checked in float64, where rounding (2**-53 = 1.1e-16 per operation, over reductions of at most
# 10**4 terms and a few hundred layers) stays far below 1e-10 of the largest magnitude on any
# CPU, whatever convolution algorithm it picks: measured 2.5e-14 for training-mode BatchNorm's
# gradients, the worst case. A real bug (a layout-dependent view, a wrong dilation) is off by
# O(1) (see test_channels_last_comparison_catches_a_layout_bug). In float32 the same gradients
# differ by 6.6e-6 (Intel Xeon) to 1.4e-3 (AMD EPYC) of the largest: not a usable bound.
SAME_MATH_FLOAT64 = 1e-10


def assert_close_to_scale(a, b, rel: float = SAME_MATH_FLOAT64) -> None:
    """Equal up to ``rel`` of the largest magnitude of each tensor."""
    if isinstance(a, dict):
        assert list(a) == list(b)
        a, b = list(a.values()), list(b.values())
    for x, y in zip(a, b):
        assert x.shape == y.shape
        assert (x - y).abs().max() <= rel * y.abs().max(), ((x - y).abs().max(), y.abs().max())


def flat(tensors: List[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.flatten() for t in tensors])


def twin_models(norm: str, **kwargs) -> Tuple[FishNet, FishNet]:
    """A plain FishNet and one with ``kwargs``, with the same weights and statistics, in float64."""
    torch.manual_seed(0)
    plain = randomize_norms(FishNet(TINY_ARCH, norm=norm, out_features=ALL_FEATURES))
    other = FishNet(TINY_ARCH, norm=norm, out_features=ALL_FEATURES, **kwargs)
    other.load_state_dict(plain.state_dict())
    return plain.double(), other.double()


def images(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64)


# --- pre-activation blocks: in-place ReLU, fused FrozenBN ----------------------------------------


def reference_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(norm, FusedFrozenBatchNorm2d):
        return FrozenBatchNorm2d.forward(norm, x)  # Detectron2's
    return norm(x)


def reference_bottleneck(block: PreActBottleneck, x: torch.Tensor) -> torch.Tensor:
    """The bottleneck as the paper writes it, out of place, with Detectron2's FrozenBN."""
    out = block.conv1(F.relu(reference_norm(block.norm1, x)))
    out = block.conv2(F.relu(reference_norm(block.norm2, out)))
    out = block.conv3(F.relu(reference_norm(block.norm3, out)))
    if isinstance(block.shortcut, PreActProjection):
        return out + block.shortcut.conv(F.relu(reference_norm(block.shortcut.norm, x)))
    return out + block.shortcut(x)


@pytest.mark.parametrize("norm", ["FrozenBN", "BN", "GN", ""])
@pytest.mark.parametrize("shortcut", ["identity", "projection", "channel sum"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("grouped", [False, True])
def test_bottleneck_equals_reference(norm, shortcut, training, grouped):
    c_in, c_out = {"identity": (32, 32), "projection": (16, 32), "channel sum": (64, 32)}[shortcut]
    module = {
        "identity": nn.Identity(),
        "projection": PreActProjection(c_in, c_out, norm=norm),
        "channel sum": ChannelSumReduction(2),
    }[shortcut]
    torch.manual_seed(0)
    if grouped:
        block = GroupedPreActBottleneck(c_in, c_out, group_width=4, shortcut=module, norm=norm)
    else:
        block = PreActBottleneck(c_in, c_out, shortcut=module, norm=norm)
    block = randomize_norms(block).double()
    # FrozenBN after conv1 and conv2 is folded into them; no other norm is.
    assert block.fold_norm2 == block.fold_norm3 == (norm == "FrozenBN")
    block.train(training)
    # x has negative entries: a ReLU that overwrote x would change what the shortcut reads.
    x = images(2, c_in, 8, 12).requires_grad_()
    expected = reference_bottleneck(block, x)
    (expected_grad,) = torch.autograd.grad(expected.pow(2).sum(), x)
    got = block(x)
    (got_grad,) = torch.autograd.grad(got.pow(2).sum(), x)
    # Fused FrozenBN rounds once where Detectron2's rounds twice: the same math.
    assert_close_to_scale([got, got_grad], [expected, expected_grad])
    assert x.min() < 0 and not torch.equal(x, F.relu(x))  # the input was left alone


@pytest.mark.parametrize("requires_grad", [True, False])
def test_fused_frozen_batchnorm_equals_detectron2s(requires_grad):
    fused = randomize_norms(FusedFrozenBatchNorm2d(16))
    reference = FrozenBatchNorm2d(16)
    reference.load_state_dict(fused.state_dict())
    x = torch.randn(2, 16, 5, 7, requires_grad=requires_grad)
    torch.testing.assert_close(fused(x), reference(x))
    if requires_grad:
        (got,) = torch.autograd.grad(fused(x).pow(2).sum(), x)
        (expected,) = torch.autograd.grad(reference(x).pow(2).sum(), x)
        torch.testing.assert_close(got, expected)
    assert FishNet(TINY_ARCH, norm="FrozenBN").stem.conv2.norm.__class__ is FusedFrozenBatchNorm2d


def test_stem_and_score_units_fold_frozen_norm():
    torch.manual_seed(0)
    for unit, reference in (
        (ConvNormReLU(8, 16, stride=2, norm="FrozenBN"), lambda u, x: F.relu(FrozenBatchNorm2d.forward(u.norm, u.conv(x)))),
        (
            ScoreUnit(16, 24, global_pool=False, norm="FrozenBN"),
            lambda u, x: u.fc(F.relu(FrozenBatchNorm2d.forward(u.norm2, u.conv1(F.relu(u.norm1(x)))))),
        ),
    ):
        unit = randomize_norms(unit).double()
        x = images(2, unit.conv.in_channels if hasattr(unit, "conv") else 16, 8, 12).requires_grad_()
        got = unit(x)
        expected = reference(unit, x)
        params = [p for p in unit.parameters()]
        assert_close_to_scale(
            [got, *torch.autograd.grad(got.pow(2).sum(), [x, *params])],
            [expected, *torch.autograd.grad(expected.pow(2).sum(), [x, *params])],
        )


def test_freezing_folds_the_norms_it_freezes():
    model = FishNet(TINY_ARCH, norm="BN", freeze_at=2, freeze_stem_conv1=True)
    assert model.stem.conv1.fold_norm and model.stem.conv2.fold_norm  # frozen with the stem
    assert model.tail[0].blocks[0].fold_norm2 and model.tail[0].blocks[0].fold_norm3
    assert not model.tail[1].blocks[0].fold_norm2  # trainable BatchNorm: not an affine


# --- the whole network against the plain eager reference ---------------------------------------


@pytest.mark.parametrize("norm", ["FrozenBN", "BN", "GN", ""])
@pytest.mark.parametrize("training", [True, False])
def test_fishnet_equals_plain_reference(norm, training):
    """Every fast path on (folding, channels-last, in place) against tools/benchmarking's
    PlainFishNet loaded with the same state_dict."""
    torch.manual_seed(0)
    fish = randomize_norms(FishNet(TINY_ARCH, norm=norm, out_features=ALL_FEATURES))
    plain = PlainFishNet(TINY_ARCH, norm=norm, out_features=ALL_FEATURES)
    plain.load_state_dict(fish.state_dict())
    fish, plain = fish.double().train(training), plain.double().train(training)
    x = images(2, 3, 64, 96)
    outputs, grads = train_step(plain, x)
    fast_outputs, fast_grads = train_step(fish, x)
    assert_close_to_scale(fast_outputs, outputs)
    assert_close_to_scale([flat(fast_grads)], [flat(grads)])
    assert_close_to_scale(list(fish.buffers()), list(plain.buffers()))


def test_channels_last_weights_keep_the_state_dict():
    fish, nchw = FishNet(TINY_ARCH, norm="FrozenBN"), FishNet(TINY_ARCH, norm="FrozenBN", channels_last=False)
    assert fish.tail[0].blocks[0].conv2.weight.is_contiguous(memory_format=torch.channels_last)
    assert list(fish.state_dict()) == list(nchw.state_dict())
    nchw.load_state_dict(fish.state_dict())
    fish.load_state_dict(nchw.state_dict())
    assert fish.tail[0].blocks[0].conv2.weight.is_contiguous(memory_format=torch.channels_last)


# --- channels-last memory format ------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["FrozenBN", "BN"])
def test_channels_last_equals_nchw(norm):
    channels_last, nchw = twin_models(norm, channels_last=False)
    assert channels_last.channels_last and not nchw.channels_last  # channels-last is the default
    x = images(2, 3, 64, 96)
    outputs, grads = train_step(nchw.train(), x)
    cl_outputs, cl_grads = train_step(channels_last.train(), x)
    assert_close_to_scale(cl_outputs, outputs)
    # All gradients at one scale: with training-mode BatchNorm some are rounding noise only.
    assert_close_to_scale([flat(cl_grads)], [flat(grads)])
    assert all(o.is_contiguous(memory_format=torch.channels_last) for o in cl_outputs.values())
    assert all(o.is_contiguous() for o in outputs.values())


def test_channels_last_comparison_catches_a_layout_bug(monkeypatch):
    """The comparison above fails for a bug that only shows in one memory format: a channel-sum
    reduction that reads memory as if it were NCHW (as a hand-written kernel might)."""

    def nchw_only(self: ChannelSumReduction, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        grouped = torch.as_strided(x, (n, c // self.k, self.k, h, w), (c * h * w, self.k * h * w, h * w, w, 1))
        return grouped.sum(2)

    monkeypatch.setattr(ChannelSumReduction, "forward", nchw_only)
    channels_last, nchw = twin_models("FrozenBN", channels_last=False)
    x = images(2, 3, 64, 96)
    outputs, _ = train_step(nchw.train(), x)
    cl_outputs, _ = train_step(channels_last.train(), x)
    with pytest.raises(AssertionError):
        assert_close_to_scale(cl_outputs, outputs)


def test_channels_last_from_config():
    cfg = use_tiny_arch(fishnet_cfg())
    assert build_backbone(cfg, ShapeSpec(channels=3)).channels_last
    cfg.MODEL.FISHNET.CHANNELS_LAST = False
    assert not build_backbone(cfg, ShapeSpec(channels=3)).channels_last


# --- activation checkpointing -------------------------------------------------------------------


@pytest.mark.parametrize(
    "norm, choice",
    [("FrozenBN", True), ("BN", True), ("", True), ("GN", True)]
    + [("BN", c) for c in ("stride4", "tail", "body", "head", ["stem", "body2"], "head4")],
)
def test_checkpointing_equals_plain_model(norm, choice):
    plain, checkpointed = twin_models(norm, activation_checkpointing=choice)
    x = images(2, 3, 64, 96)
    for _ in range(2):  # BatchNorm's running statistics after two steps
        outputs, grads = train_step(plain.train(), x)
        ckpt_outputs, ckpt_grads = train_step(checkpointed.train(), x)
        assert_same(ckpt_outputs, outputs, rtol=0, atol=0)
        assert_same(ckpt_grads, grads)
    assert_same(dict(checkpointed.named_buffers()), dict(plain.named_buffers()), rtol=0, atol=0)


def count_stage_calls(model: FishNet) -> Dict[str, int]:
    """Calls of each stage's forward, counted as they start (a recomputation stops as soon as it
    has what backward needs)."""
    calls = {}
    for stage in model.stages():
        calls[stage.name] = 0
        stage.register_forward_pre_hook(lambda m, i: calls.__setitem__(m.name, calls[m.name] + 1))
    return calls


def test_checkpointing_from_config_recomputes_each_stage_in_training_only():
    cfg = use_tiny_arch(fishnet_cfg())
    cfg.MODEL.FISHNET.OUT_FEATURES = ["head2", "head3", "head4", "head5"]
    cfg.MODEL.FISHNET.CHECKPOINT = True
    model = build_backbone(cfg, ShapeSpec(channels=3))
    assert model.activation_checkpointing
    calls = count_stage_calls(model)
    x = torch.randn(1, 3, 64, 64)
    train_step(model.train(), x)
    assert set(calls.values()) == {2}, calls  # forward, and again in backward
    for reset in calls:
        calls[reset] = 0
    with torch.no_grad():
        model(x)
    model.eval()
    model(x)
    assert set(calls.values()) == {2}, calls  # once each: no recomputation outside training
    assert not build_backbone(fishnet_cfg(), ShapeSpec(channels=3)).activation_checkpointing


CHOSEN_STAGES = {
    "stride4": {"stem", "body2", "head3"},
    "tail": {"tail3", "tail4", "tail5"},
    "body": {"body4", "body3", "body2"},
    "head": {"head3", "head4", "head5"},
    "none": set(),
    False: set(),
    None: set(),
    (): set(),
    ("bridge", "tail"): {"bridge", "tail3", "tail4", "tail5"},
    "head4": {"head4"},
}


@pytest.mark.parametrize("choice", list(CHOSEN_STAGES))
def test_each_checkpointing_choice_recomputes_the_stages_it_names(choice):
    cfg = use_tiny_arch(fishnet_cfg())
    cfg.MODEL.FISHNET.CHECKPOINT = list(choice) if isinstance(choice, tuple) else choice
    model = build_backbone(cfg, ShapeSpec(channels=3))
    chosen = CHOSEN_STAGES[choice]
    assert set(model.activation_checkpointing) == chosen
    calls = count_stage_calls(model)
    train_step(model.train(), torch.randn(1, 3, 64, 64))
    assert calls == {name: 2 if name in chosen else 1 for name in calls}, calls


@pytest.mark.parametrize("bad", ["some", "head2", ["stem", "tail9"], 3, "", ["stem", 1]])
def test_bad_checkpointing_choice_names_the_key_and_what_is_allowed(bad):
    cfg = use_tiny_arch(fishnet_cfg())
    cfg.MODEL.FISHNET.CHECKPOINT = bad
    with pytest.raises(ValueError, match=r"MODEL\.FISHNET\.CHECKPOINT=.*allowed False/True .*stride4.*'head5'"):
        build_backbone(cfg, ShapeSpec(channels=3))


def test_checkpointing_choice_from_yaml_and_merge_from_list(tmp_path):
    for value in (True, False, "stride4", ["stem", "head3"]):
        cfg = use_tiny_arch(fishnet_cfg())
        cfg.merge_from_list(["MODEL.FISHNET.CHECKPOINT", value])
        assert cfg.MODEL.FISHNET.CHECKPOINT == value
    path = tmp_path / "c.yaml"
    path.write_text("MODEL:\n  FISHNET:\n    CHECKPOINT: stride4\n")
    cfg = fishnet_cfg()
    cfg.merge_from_file(str(path))
    assert build_backbone(use_tiny_arch(cfg), ShapeSpec(channels=3)).activation_checkpointing == ("stem", "body2", "head3")


def test_checkpointed_model_scripts_and_traces():
    plain, checkpointed = twin_models("FrozenBN", activation_checkpointing=True)
    checkpointed.eval()
    x = images(2, 3, 64, 96)
    with torch.no_grad():
        expected = plain.eval()(x)
        scripted = torch.jit.script(checkpointed)(x)
        traced = torch.jit.trace(checkpointed, x, strict=False)(x)
    assert_same(scripted, expected, rtol=0, atol=0)
    assert_same(traced, expected, rtol=0, atol=0)


# --- torch.compile --------------------------------------------------------------------------------

# "aot_eager": Dynamo captures the model as one graph (fullgraph=True fails on any graph break)
# and AOTAutograd traces its backward, as with the default "inductor" backend, which would then
# spend about a minute compiling C++ kernels on a 2-core CPU for the same graph.
requires_compile = pytest.mark.skipif(not hasattr(torch, "compile"), reason="torch.compile missing")


@pytest.mark.slow
@requires_compile
@pytest.mark.parametrize("norm, activation_checkpointing", [("FrozenBN", False), ("BN", True)])
def test_compile_fullgraph_equals_eager(norm, activation_checkpointing):
    torch._dynamo.reset()
    plain, model = twin_models(norm, activation_checkpointing=activation_checkpointing)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = images(2, 3, 64, 96)
    outputs, grads = train_step(plain.train(), x)
    compiled_outputs, compiled_grads = train_step(compiled.train(), x)
    # The compiled graph may pick other convolution algorithms or memory formats: the same math.
    assert_close_to_scale(compiled_outputs, outputs)
    assert_close_to_scale([flat(compiled_grads)], [flat(grads)])
    # BatchNorm's running statistics: updated once, also when the compiled backward recomputes.
    assert_close_to_scale(list(model.buffers()), list(plain.buffers()))
    with torch.no_grad():
        assert_close_to_scale(compiled.eval()(x), plain.eval()(x))


@pytest.mark.slow
@requires_compile
def test_compile_backend_compiles_the_backbone_in_place():
    """MODEL.FISHNET.COMPILE (FishNet's compile_backend): still a FishNet with the same
    state_dict, whose calls run the compiled graph ("aot_eager" here, for the reason above),
    computing what the eager twin does, in training and in eval."""
    torch._dynamo.reset()
    plain, model = twin_models("FrozenBN", compile_backend="aot_eager")
    assert isinstance(model, FishNet) and model.state_dict().keys() == plain.state_dict().keys()
    x = images(2, 3, 64, 96)
    outputs, grads = train_step(plain.train(), x)
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    compiled_outputs, compiled_grads = train_step(model.train(), x)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > before  # Dynamo ran
    assert_close_to_scale(compiled_outputs, outputs)
    assert_close_to_scale([flat(compiled_grads)], [flat(grads)])
    with torch.no_grad():
        assert_close_to_scale(model.eval()(x), plain.eval()(x))


def test_compile_backend_must_be_a_torch_compile_backend():
    cfg = use_tiny_arch(fishnet_cfg())
    cfg.MODEL.FISHNET.COMPILE = "no_such_backend"
    with pytest.raises(ValueError, match=r"MODEL\.FISHNET\.COMPILE='no_such_backend'.*'inductor'"):
        build_backbone(cfg, ShapeSpec(channels=3))


# --- the official model, every fast path on --------------------------------------------------------


@pytest.mark.parametrize("training", [False, True])
def test_golden_outputs_with_every_fast_path(training):
    """tests/test_backbone_golden.py's check (the official code's outputs on tiny_golden.pt,
    relative error < 1e-4), with FrozenBN, so that its norms after a conv are folded, in
    channels-last, and in training with grad (the training-mode FrozenBN and checkpointing of
    every stage) as well as in eval."""
    from fishnet_d2.weights.official_layout import infer_arch, official_layout

    from .common import REFERENCE
    from .test_backbone_golden import STAGE_NAMES, TOLERANCE, relative_error

    golden = torch.load(REFERENCE / "tiny_golden.pt", map_location="cpu", weights_only=True)
    arch, num_classes = infer_arch(golden["state_dict"])
    layout = official_layout(arch, num_classes)
    model = FishNet(
        arch,
        norm="FrozenBN",
        num_classes=num_classes,
        out_features=STAGE_NAMES + ["linear"],
        activation_checkpointing=True,
    )
    state = {layout[k][0]: v for k, v in golden["state_dict"].items()}
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    model.load_state_dict(state)
    assert model.tail[0].blocks[0].fold_norm2 and model.stem.conv1.fold_norm and model.channels_last
    model.double().train(training)
    with torch.set_grad_enabled(training):
        outputs = model(golden["input"].double())
    if training:
        sum(o.sum() for o in outputs.values()).backward()  # checkpointing recomputes every stage
    for name, expected in zip(STAGE_NAMES, golden["stage_outputs"]):
        assert relative_error(outputs[name].detach(), expected) < TOLERANCE, name
    assert relative_error(outputs["linear"].detach(), golden["logits"]) < TOLERANCE

"""FishNet's fast paths compute what the plain network computes: in-place pre-activations, fused
FrozenBN, FrozenBN folded into the conv before it, channels-last memory format (weights too),
activation checkpointing (MODEL.FISHNET.CHECKPOINT, each choice) and torch.compile, each a
substitution of the network's modules (fishnet_d2.modeling.optimize). "The plain model" is a
FishNet with the fast paths in question off (NCHW, nothing checkpointed, eager; for FrozenBN,
torch's BatchNorm2d in eval mode with the same statistics: the same affine map, neither fused nor
folded), or, for one block, the block written out here as the paper writes it. That the fast
model is the official one is checked against the official code's outputs (tiny_golden.pt)."""

from typing import Dict, Optional, Tuple

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import build_backbone
from torch import nn

from fishnet_d2 import FishNet, build_fishnet, optimize_fishnet
from fishnet_d2.modeling.blocks import (
    ChannelSumReduction,
    ConvNormReLU,
    GroupedPreActBottleneck,
    PreActBottleneck,
    PreActProjection,
    ScoreUnit,
)
from fishnet_d2.modeling.optimize.folding import (
    FoldedConvNormReLU,
    FoldedPreActBottleneck,
    FoldedScoreUnit,
    FusedFrozenBatchNorm2d,
    fold_frozen_batchnorm,
)
from fishnet_d2.modeling.optimize.equivalence import twin_fishnets
from fishnet_d2.weights.official_layout import infer_arch, official_layout

from .support import (
    ALL_FEATURES,
    GOLDEN_STAGES,
    GOLDEN_TOLERANCE,
    TINY_ARCH,
    fishnet_cfg,
    assert_close_to_scale,
    randomize_norms,
    relative_error,
    train_step,
    use_tiny_arch,
)


def assert_same(a, b, **tolerance) -> None:
    if isinstance(a, dict):
        assert list(a) == list(b)
        a, b = list(a.values()), list(b.values())
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, **tolerance)


def flat(grads: Dict[str, torch.Tensor], names=None) -> torch.Tensor:
    """The gradients ``names`` (default: all) as one vector, to compare them at one scale."""
    return torch.cat([grads[name].flatten() for name in (grads if names is None else names)])


# build_fishnet's options that switch fast paths off (activation checkpointing and compilation
# are off by default); FrozenBN's fusing and folding also by `plain_norm="BN"`, in eval mode.
NO_FAST_PATH = {"channels_last": False, "fold_frozen_bn": False}


def twin_models(
    norm: str, *, plain: Optional[Dict] = None, fast: Optional[Dict] = None, plain_norm: Optional[str] = None
) -> Tuple[FishNet, FishNet]:
    """Two FishNets with the same weights and statistics, in float64, built (build_fishnet) with
    the options ``plain`` and ``fast`` (default: none); the first with ``plain_norm`` (default:
    ``norm``): the package's twin_fishnets, which the GPU check runs too."""
    first, second = twin_fishnets(TINY_ARCH, norm, plain=plain, fast=fast, plain_norm=plain_norm, out_features=ALL_FEATURES)
    return first.double(), second.double()


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
@pytest.mark.parametrize("folded", [False, True])
def test_bottleneck_equals_reference(norm, shortcut, training, grouped, folded):
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
    if folded:  # FrozenBN fused, and folded into conv1 and conv2
        fold_frozen_batchnorm(block)
        assert isinstance(block, FoldedPreActBottleneck) == (norm == "FrozenBN")
    block = randomize_norms(block).double()
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


def test_stem_and_score_units_with_frozen_norm_folded_equal_conv_then_norm():
    torch.manual_seed(0)
    for unit, reference in (
        (ConvNormReLU(8, 16, stride=2, norm="FrozenBN"), lambda u, x: F.relu(FrozenBatchNorm2d.forward(u.norm, u.conv(x)))),
        (
            ScoreUnit(16, 24, global_pool=False, norm="FrozenBN"),
            lambda u, x: u.fc(F.relu(FrozenBatchNorm2d.forward(u.norm2, u.conv1(F.relu(u.norm1(x)))))),
        ),
    ):
        fold_frozen_batchnorm(unit)
        assert isinstance(unit, (FoldedConvNormReLU, FoldedScoreUnit))
        unit = randomize_norms(unit).double()
        x = images(2, unit.conv.in_channels if hasattr(unit, "conv") else 16, 8, 12).requires_grad_()
        got = unit(x)
        expected = reference(unit, x)
        params = [p for p in unit.parameters()]
        assert_close_to_scale(
            [got, *torch.autograd.grad(got.pow(2).sum(), [x, *params])],
            [expected, *torch.autograd.grad(expected.pow(2).sum(), [x, *params])],
        )


def test_frozen_stages_compute_what_batchnorm_in_eval_mode_does():
    """Freezing turns the frozen stages' BatchNorm into FrozenBN (fused, folded into the conv
    before it): in training, those stages compute what BatchNorm in eval mode does, and only
    the stages after them train and update their statistics."""
    plain, frozen = twin_models("BN", fast={"freeze_at": 2, "freeze_stem_conv1": True})
    plain.train()
    for stage in plain.stages()[:2]:  # stem, tail3: BatchNorm in eval mode, no gradients
        stage.requires_grad_(False).eval()
    x = images(2, 3, 64, 96)
    outputs, grads = train_step(plain, x)
    frozen_outputs, frozen_grads = train_step(frozen.train(), x)
    assert_close_to_scale(frozen_outputs, outputs)
    assert frozen_grads.keys() == grads.keys()
    assert not any(name.startswith(("stem.", "tail.0.")) for name in grads)
    assert_close_to_scale([flat(frozen_grads)], [flat(grads)])
    # The trained stages' BatchNorm statistics (those of the frozen stages were not updated).
    state, frozen_state = plain.state_dict(), frozen.state_dict()
    assert frozen_state.keys() <= state.keys()
    assert_close_to_scale(list(frozen_state.values()), [state[k] for k in frozen_state])


# --- the whole network, every fast path on and off ----------------------------------------------


@pytest.mark.parametrize("norm", ["FrozenBN", "BN", "GN", ""])
@pytest.mark.parametrize("training", [True, False])
def test_every_fast_path_computes_what_the_plain_fishnet_does(norm, training):
    """Channels-last, every stage checkpointed, FrozenBN fused and folded, against a FishNet
    in NCHW, nothing checkpointed and, for FrozenBN, BatchNorm in eval mode: the same outputs,
    gradients (of the input and of every parameter both have) and statistics."""
    plain_norm = "BN" if norm == "FrozenBN" else norm
    plain, fast = twin_models(
        norm, plain=NO_FAST_PATH, fast={"activation_checkpointing": True}, plain_norm=plain_norm
    )
    plain.train(training and norm != "FrozenBN")
    fast.train(training)
    x = images(2, 3, 64, 96)
    outputs, grads = train_step(plain, x)
    fast_outputs, fast_grads = train_step(fast, x)
    assert_close_to_scale(fast_outputs, outputs)
    assert fast_grads.keys() <= grads.keys() and len(fast_grads) > 1  # the input's and the convs'
    assert_close_to_scale([flat(fast_grads)], [flat(grads, fast_grads)])
    # BatchNorm's statistics after the step (a FrozenBN's are BatchNorm's, not updated in eval).
    state, fast_state = plain.state_dict(), fast.state_dict()
    assert fast_state.keys() <= state.keys()
    assert_close_to_scale(list(fast_state.values()), [state[k] for k in fast_state])


def test_substitutions_keep_the_state_dict_and_the_parameters():
    """Every substitution keeps the state_dict's keys and values, and the parameters themselves
    (an optimizer made before still holds them); the plain network loads the optimized one's
    state_dict and the reverse."""
    torch.manual_seed(0)
    plain = randomize_norms(FishNet(TINY_ARCH, norm="FrozenBN", out_features=ALL_FEATURES, freeze_stem_conv1=True))
    params = list(plain.parameters())
    state = {k: v.clone() for k, v in plain.state_dict().items()}
    optimized = optimize_fishnet(plain, memory_efficient=True, activation_checkpointing="stride4")
    assert optimized is plain and list(optimized.parameters()) == params
    assert list(optimized.state_dict()) == list(state)
    for key, value in optimized.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    FishNet(TINY_ARCH, norm="FrozenBN", out_features=ALL_FEATURES).load_state_dict(optimized.state_dict())
    kinds = {type(m).__name__ for m in optimized.modules()}
    assert {"FusedFrozenBatchNorm2d", "FoldedPreActBottleneck", "CheckpointedFishStem", "CompactMaxPool2d"} <= kinds


def test_channels_last_weights_keep_the_state_dict():
    fish = build_fishnet(TINY_ARCH, norm="FrozenBN")
    nchw = build_fishnet(TINY_ARCH, norm="FrozenBN", channels_last=False)
    assert fish.tail[0].blocks[0].conv2.weight.is_contiguous(memory_format=torch.channels_last)
    assert list(fish.state_dict()) == list(nchw.state_dict())
    nchw.load_state_dict(fish.state_dict())
    fish.load_state_dict(nchw.state_dict())
    assert fish.tail[0].blocks[0].conv2.weight.is_contiguous(memory_format=torch.channels_last)


# --- channels-last memory format ------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["FrozenBN", "BN"])
def test_channels_last_equals_nchw(norm):
    nchw, channels_last = twin_models(norm, plain=NO_FAST_PATH)  # channels-last is the default
    x = images(2, 3, 64, 96)
    outputs, grads = train_step(nchw.train(), x)
    cl_outputs, cl_grads = train_step(channels_last.train(), x)
    assert_close_to_scale(cl_outputs, outputs)
    # All gradients at one scale: with training-mode BatchNorm some are rounding noise only.
    assert_close_to_scale([flat(cl_grads)], [flat(grads)])
    assert all(o.is_contiguous(memory_format=torch.channels_last) for o in cl_outputs.values())
    assert not any(o.is_contiguous(memory_format=torch.channels_last) for o in outputs.values())
    assert all(o.is_contiguous() for o in outputs.values())


def test_channels_last_comparison_catches_a_layout_bug(monkeypatch):
    """The comparison above fails for a bug that only shows in one memory format: a channel-sum
    reduction that reads memory as if it were NCHW (as a hand-written kernel might)."""

    def nchw_only(self: ChannelSumReduction, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        grouped = torch.as_strided(x, (n, c // self.k, self.k, h, w), (c * h * w, self.k * h * w, h * w, w, 1))
        return grouped.sum(2)

    monkeypatch.setattr(ChannelSumReduction, "forward", nchw_only)
    nchw, channels_last = twin_models("FrozenBN", plain=NO_FAST_PATH)
    x = images(2, 3, 64, 96)
    outputs, _ = train_step(nchw.train(), x)
    cl_outputs, _ = train_step(channels_last.train(), x)
    with pytest.raises(AssertionError):
        assert_close_to_scale(cl_outputs, outputs)


def test_channels_last_from_config():
    cfg = use_tiny_arch(fishnet_cfg())
    cfg.MODEL.FISHNET.OUT_FEATURES = ALL_FEATURES
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        outputs = build_backbone(cfg, ShapeSpec(channels=3)).eval()(x)
        cfg.MODEL.FISHNET.CHANNELS_LAST = False
        nchw_outputs = build_backbone(cfg, ShapeSpec(channels=3)).eval()(x)
    assert all(o.is_contiguous(memory_format=torch.channels_last) for o in outputs.values())
    assert not any(o.is_contiguous(memory_format=torch.channels_last) for o in nchw_outputs.values())


# --- activation checkpointing -------------------------------------------------------------------


@pytest.mark.parametrize(
    "norm, choice",
    [("FrozenBN", True), ("BN", True), ("", True), ("GN", True)]
    + [("BN", c) for c in ("stride4", "tail", "body", "head", ["stem", "body2"], "head4")],
)
def test_checkpointing_equals_plain_model(norm, choice):
    plain, checkpointed = twin_models(norm, fast={"activation_checkpointing": choice})
    x = images(2, 3, 64, 96)
    for _ in range(2):  # BatchNorm's running statistics after two steps
        outputs, grads = train_step(plain.train(), x)
        ckpt_outputs, ckpt_grads = train_step(checkpointed.train(), x)
        assert_same(ckpt_outputs, outputs, rtol=0, atol=0)
        assert_same(ckpt_grads, grads)
    assert_same(dict(checkpointed.named_buffers()), dict(plain.named_buffers()), rtol=0, atol=0)


def count_stage_calls(model: FishNet) -> Dict[str, int]:
    """Runs of each stage, counted as they start: calls of its first module (the stage's own
    hooks run once per call of the stage, recomputed or not; a recomputation stops as soon as it
    has what backward needs)."""
    calls = {}
    for stage in model.stages():
        calls[stage.name] = 0
        first = next(stage.children())
        first.register_forward_pre_hook(lambda m, i, name=stage.name: calls.__setitem__(name, calls[name] + 1))
    return calls


def recomputed_stages(model: FishNet) -> set:
    """The stages whose forward runs twice in one training step (a recomputation in backward)."""
    calls = count_stage_calls(model)
    train_step(model.train(), torch.randn(1, 3, 64, 64))
    assert set(calls.values()) <= {1, 2}, calls
    return {name for name, count in calls.items() if count == 2}


def test_checkpointing_from_config_recomputes_each_stage_in_training_only():
    cfg = use_tiny_arch(fishnet_cfg())
    cfg.MODEL.FISHNET.OUT_FEATURES = ["head2", "head3", "head4", "head5"]
    cfg.MODEL.FISHNET.CHECKPOINT = True
    model = build_backbone(cfg, ShapeSpec(channels=3))
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
    assert recomputed_stages(build_backbone(use_tiny_arch(fishnet_cfg()), ShapeSpec(channels=3))) == set()


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
    assert recomputed_stages(model) == CHOSEN_STAGES[choice]


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
    assert recomputed_stages(build_backbone(use_tiny_arch(cfg), ShapeSpec(channels=3))) == {"stem", "body2", "head3"}


def test_checkpointed_model_traces_and_scripting_says_how_to_script():
    plain, checkpointed = twin_models("FrozenBN", fast={"activation_checkpointing": True})
    checkpointed.eval()
    x = images(2, 3, 64, 96)
    with torch.no_grad():
        expected = plain.eval()(x)
        traced = torch.jit.trace(checkpointed, x, strict=False)(x)
    assert_same(traced, expected, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match=r"CheckpointedFishStem: .* cannot be scripted; .*MODEL\.FISHNET\.CHECKPOINT"):
        torch.jit.script(checkpointed)
    # Without the training paths the same weights script, computing what eager mode does.
    scripted = torch.jit.script(build_fishnet(TINY_ARCH, out_features=ALL_FEATURES).double().eval())
    scripted.load_state_dict(plain.state_dict())
    with torch.no_grad():
        assert_same(scripted(x), expected, rtol=0, atol=0)


# --- torch.compile --------------------------------------------------------------------------------

# "aot_eager": Dynamo captures the model as one graph (fullgraph=True fails on any graph break)
# and AOTAutograd traces its backward, as with the default "inductor" backend, which would then
# spend about a minute compiling C++ kernels on a 2-core CPU for the same graph.
requires_compile = pytest.mark.skipif(not hasattr(torch, "compile"), reason="torch.compile missing")


@pytest.mark.slow
@requires_compile
@pytest.mark.parametrize("norm, activation_checkpointing", [("FrozenBN", False), ("BN", True)])
def test_compile_fullgraph_equals_eager(norm, activation_checkpointing):
    torch.compiler.reset()
    plain, model = twin_models(norm, fast={"activation_checkpointing": activation_checkpointing})
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
    state_dict, whose calls run under torch.compile ("aot_eager" here, for the reason above),
    computing what the eager twin does, in training and in eval."""
    torch.compiler.reset()
    plain, model = twin_models("FrozenBN", fast={"compile_backend": "aot_eager"})
    assert isinstance(model, FishNet) and model.state_dict().keys() == plain.state_dict().keys()
    compiling = []  # torch.compiler.is_compiling() in each call of the stem, eager and compiled
    for fish in (plain, model):
        fish.stem.register_forward_pre_hook(lambda m, i: compiling.append(torch.compiler.is_compiling()))
    x = images(2, 3, 64, 96)
    outputs, grads = train_step(plain.train(), x)
    assert compiling == [False]
    compiled_outputs, compiled_grads = train_step(model.train(), x)
    assert compiling == [False, True]  # the compiled FishNet traced its stem; the eager one did not
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
def test_golden_outputs_with_every_fast_path(golden, training):
    """tests/test_backbone_golden.py's check (the official code's outputs on tiny_golden.pt),
    with FrozenBN, so that its norms after a conv are folded, in channels-last, and in training
    with grad (the training-mode FrozenBN and checkpointing of every stage) as well as in eval."""
    arch, num_classes = infer_arch(golden["state_dict"])
    layout = official_layout(arch, num_classes)
    model = build_fishnet(
        arch,
        norm="FrozenBN",
        num_classes=num_classes,
        out_features=GOLDEN_STAGES + ["linear"],
        activation_checkpointing=True,
    )
    state = {layout[k][0]: v for k, v in golden["state_dict"].items()}
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    model.load_state_dict(state)
    model.double().train(training)
    with torch.set_grad_enabled(training):
        outputs = model(golden["input"].double())
    if training:
        sum(o.sum() for o in outputs.values()).backward()  # checkpointing recomputes every stage
    for name, expected in zip(GOLDEN_STAGES, golden["stage_outputs"]):
        assert outputs[name].is_contiguous(memory_format=torch.channels_last), name
        assert relative_error(outputs[name].detach(), expected) < GOLDEN_TOLERANCE, name
    assert relative_error(outputs["linear"].detach(), golden["logits"]) < GOLDEN_TOLERANCE

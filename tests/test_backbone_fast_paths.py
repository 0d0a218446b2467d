"""FishNet's fast paths compute what the plain model computes: in-place pre-activations, fused
FrozenBN, channels-last memory format, activation checkpointing (MODEL.FISHNET.CHECKPOINT) and
torch.compile."""

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
    FusedFrozenBatchNorm2d,
    PreActBottleneck,
    PreActProjection,
)

from .common import ALL_FEATURES, TINY_ARCH, fishnet_cfg, use_tiny_arch



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
def test_bottleneck_equals_reference(norm, shortcut, training):
    c_in, c_out = {"identity": (32, 32), "projection": (16, 32), "channel sum": (64, 32)}[shortcut]
    module = {
        "identity": nn.Identity(),
        "projection": PreActProjection(c_in, c_out, norm=norm),
        "channel sum": ChannelSumReduction(2),
    }[shortcut]
    torch.manual_seed(0)
    block = randomize_norms(PreActBottleneck(c_in, c_out, shortcut=module, norm=norm)).double()
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


@pytest.mark.parametrize("norm", ["FrozenBN", "BN", ""])
def test_checkpointing_equals_plain_model(norm):
    plain, checkpointed = twin_models(norm, activation_checkpointing=True)
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

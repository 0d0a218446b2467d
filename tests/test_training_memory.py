"""MODEL.FISHNET.MEMORY_EFFICIENT (FishNet's memory_efficient) computes what the default path
computes, in float64 (outputs, every gradient, BatchNorm's statistics), with every norm and
with activation checkpointing; keeps less for the backward pass, running again only the 1x1
conv3 of the blocks that recover their inputs; and leaves inference, TorchScript, tracing and
torch.compile on the plain path."""

from dataclasses import replace
from typing import Dict, List, Tuple

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from fishnet_d2 import FishNet
from fishnet_d2.apps.benchmark.models import MODEL_SPECS
from fishnet_d2.apps.benchmark.report import RATIOS
from fishnet_d2.modeling.memory import CompactMaxPool2d, rectified_max_pool
from fishnet_d2.modeling.stages import ResidualBlocks

from .support import (
    ALL_FEATURES,
    TINY_ARCH,
    assert_close_to_scale,
    fishnet_cfg,
    randomize_norms,
    train_step,
    use_tiny_arch,
)


# Runs of several blocks, so that some recover their inputs: tail4 (3 blocks after the first),
# the bridge and head5's transfer (2 after the first: not worth it), head2's refinement (its
# output is a feature the caller holds).
LONG_RUNS_ARCH = replace(
    TINY_ARCH, tail_blocks=(1, 4, 2), bridge_blocks=3, head_blocks=(2, 1, 2), head_transfer_blocks=(1, 1, 3)
)


def twins(norm: str, arch=TINY_ARCH, out_features=ALL_FEATURES, **options) -> Tuple[FishNet, FishNet]:
    """The default FishNet and the memory-efficient one, same weights and statistics, float64."""
    torch.manual_seed(0)
    default = FishNet(arch, norm=norm, out_features=out_features, freeze_stem_conv1=True, **options)
    randomize_norms(default)
    efficient = FishNet(
        arch, norm=norm, out_features=out_features, freeze_stem_conv1=True, memory_efficient=True, **options
    )
    efficient.load_state_dict(default.state_dict())
    return default.double().train(), efficient.double().train()


def images(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def recovering(model: FishNet) -> Dict[str, int]:
    """The runs of blocks that recover their inputs: {name: how many blocks}."""
    return {
        name: len(m) - m.recover_from
        for name, m in model.named_modules()
        if isinstance(m, ResidualBlocks) and m.recover_from < len(m)
    }


def test_which_blocks_recover_their_inputs():
    """After a run's first block, identity-shortcut blocks, where at least 3 do, or where the
    run's output is a feature the caller holds (head2, the first head stage's refinement)."""
    _, efficient = twins("FrozenBN", LONG_RUNS_ARCH)
    assert recovering(efficient) == {"tail.1.blocks": 3, "head.0.refine": 2}
    _, without_head2 = twins("FrozenBN", LONG_RUNS_ARCH, out_features=["head3", "head4", "head5"])
    assert recovering(without_head2) == {"tail.1.blocks": 3}


@pytest.mark.parametrize(
    "norm, options",
    [
        ("FrozenBN", {}),
        ("FrozenBN", {"arch": LONG_RUNS_ARCH}),
        ("FrozenBN", {"arch": LONG_RUNS_ARCH, "channels_last": False}),
        ("FrozenBN", {"arch": LONG_RUNS_ARCH, "out_features": ["head3", "head4", "head5"]}),
        ("FrozenBN", {"arch": LONG_RUNS_ARCH, "activation_checkpointing": ["tail4", "head3"]}),
        ("BN", {"arch": LONG_RUNS_ARCH}),
        ("FrozenBN", {"channels_last": False}),
        ("FrozenBN", {"activation_checkpointing": "stride4"}),
        ("FrozenBN", {"activation_checkpointing": True}),
        ("BN", {}),
        ("BN", {"activation_checkpointing": ["tail", "head4"]}),
        ("BN", {"freeze_at": 4}),  # frozen stages' BatchNorms become FrozenBN after building
        ("SyncBN", {}),
        ("GN", {}),
        ("", {}),
    ],
)
def test_memory_efficient_equals_default_path(norm, options):
    default, efficient = twins(norm, **options)
    for step in range(2):  # BatchNorm's running statistics: updated once per step
        outputs, grads = train_step(default, images(step))
        efficient_outputs, efficient_grads = train_step(efficient, images(step))
        assert_close_to_scale(efficient_outputs, outputs)
        assert_close_to_scale(efficient_grads, grads)
    buffers = dict(default.named_buffers())
    for name, value in efficient.named_buffers():
        torch.testing.assert_close(value, buffers[name], rtol=0, atol=0)


class CountConvolutions(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.forward = self.backward = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default:
            self.forward += 1
        elif func is torch.ops.aten.convolution_backward.default:
            self.backward += 1
        return func(*args, **(kwargs or {}))


def kept_for_backward(model: nn.Module, x: torch.Tensor) -> Tuple[int, List[str]]:
    """Bytes of the tensors a training forward keeps for the backward pass (each storage once),
    and the kinds of tensor (dtype) kept."""
    kept = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept[t.untyped_storage().data_ptr()] = (t.untyped_storage().nbytes(), str(t.dtype))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.train()(x.requires_grad_())
    return sum(n for n, _ in kept.values()), sorted({d for _, d in kept.values()})


@pytest.mark.parametrize("norm, arch", [("FrozenBN", TINY_ARCH), ("FrozenBN", LONG_RUNS_ARCH), ("BN", TINY_ARCH)])
def test_keeps_less_for_backward_running_only_conv3_of_recovering_blocks_again(norm, arch):
    default, efficient = twins(norm, arch)
    x = images().float()
    default_bytes, default_kinds = kept_for_backward(default.float(), x)
    efficient_bytes, efficient_kinds = kept_for_backward(efficient.float(), x)
    # Max-pools keep positions as one byte in the window (the stem's overlapping pool as int32 in
    # the plane) instead of their input and int64 indices; FrozenBN pre-activations keep shared
    # inputs once; recovering blocks keep a third.
    for kind in ("torch.uint8", "torch.int32"):
        assert kind in efficient_kinds and kind not in default_kinds
    assert efficient_bytes < (0.8 if norm == "FrozenBN" else 0.95) * default_bytes
    counts = []
    for model in (default, efficient):
        with CountConvolutions() as count:
            train_step(model, x)
        counts.append((count.forward, count.backward))
    (forward, backward), (efficient_forward, efficient_backward) = counts
    assert forward == backward
    # A recovering block runs its conv3 again.
    recovered = sum(recovering(efficient).values()) if norm == "FrozenBN" else 0
    assert efficient_forward == forward + recovered and efficient_backward == backward


def test_inference_scripting_and_tracing_run_the_plain_path():
    default, efficient = twins("FrozenBN")
    x = images()
    with torch.no_grad():
        expected = default.eval()(x)
        efficient.eval()
        results = [efficient(x), torch.jit.script(efficient)(x), torch.jit.trace(efficient, x, strict=False)(x)]
    for result in results:
        assert list(result) == list(expected)
        for name in expected:
            torch.testing.assert_close(result[name], expected[name], rtol=0, atol=0)
    # A scripted training step (the plain path: TorchScript compiles no autograd Function).
    scripted = torch.jit.script(efficient)
    assert_close_to_scale(train_step(scripted.train(), x)[0], train_step(default.train(), x)[0])


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(torch, "compile"), reason="torch.compile missing")
def test_compiled_memory_efficient_model_equals_default_path():
    """Under torch.compile the model is captured as one graph (the plain path: fullgraph fails
    on any break) and trains as the eager default does."""
    torch.compiler.reset()
    default, efficient = twins("BN")
    compiled = torch.compile(efficient, fullgraph=True, backend="aot_eager")
    outputs, grads = train_step(default, images())
    compiled_outputs, compiled_grads = train_step(compiled, images())
    assert_close_to_scale(compiled_outputs, outputs)
    assert_close_to_scale({k.replace("_orig_mod.", ""): v for k, v in compiled_grads.items()}, grads)
    buffers = dict(default.named_buffers())
    for name, value in efficient.named_buffers():
        torch.testing.assert_close(value, buffers[name], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape, kernel", [((2, 3, 8, 12), 2), ((1, 2, 9, 6), 3), ((1, 2, 7, 8), 2)])
def test_compact_max_pool_equals_max_pool_with_ties(shape, kernel, channels_last):
    """Small integers make ties in most windows: the gradient goes where nn.MaxPool2d sends it
    (the first maximum). A size the windows do not tile (7) runs the plain max-pool."""
    x = torch.randint(0, 3, shape, generator=torch.Generator().manual_seed(0)).double()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    results = []
    for pool in (nn.MaxPool2d(kernel, kernel), CompactMaxPool2d(kernel, kernel)):
        xi = x.clone().requires_grad_()
        out = pool(xi)
        (out * torch.arange(out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        results.append((out, xi.grad))
    (out, grad), (compact_out, compact_grad) = results
    torch.testing.assert_close(compact_out, out, rtol=0, atol=0)
    torch.testing.assert_close(compact_grad, grad, rtol=0, atol=0)
    assert compact_grad.is_contiguous(memory_format=torch.channels_last) == grad.is_contiguous(
        memory_format=torch.channels_last
    )


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 8, 12), (1, 2, 9, 7)])
def test_rectified_max_pool_equals_relu_then_max_pool_with_ties(shape, channels_last):
    """Small integers around 0 make ties and all-negative windows: the same values and gradients
    as the stem's ReLU then 3x3 max-pool, bit for bit."""
    x = torch.randint(-2, 3, shape, generator=torch.Generator().manual_seed(0)).double()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    results = []
    for pool in (
        lambda t: nn.functional.max_pool2d(torch.relu(t), 3, 2, 1),
        lambda t: rectified_max_pool(t, 3, 2, 1),
    ):
        xi = x.clone().requires_grad_()
        out = pool(xi)
        (out * torch.arange(out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        results.append((out, xi.grad))
    (out, grad), (rectified_out, rectified_grad) = results
    torch.testing.assert_close(rectified_out, out, rtol=0, atol=0)
    torch.testing.assert_close(rectified_grad, grad, rtol=0, atol=0)
    assert rectified_grad.is_contiguous(memory_format=torch.channels_last) == channels_last or x.shape[1] == 1


def test_from_config_and_bad_value_names_the_key():
    cfg = use_tiny_arch(fishnet_cfg())
    assert cfg.MODEL.FISHNET.MEMORY_EFFICIENT is False
    cfg.merge_from_list(["MODEL.FISHNET.MEMORY_EFFICIENT", True])
    model = build_backbone(cfg, ShapeSpec(channels=3))
    assert model.memory_efficient and any(isinstance(m, CompactMaxPool2d) for m in model.modules())
    cfg.MODEL.FISHNET.MEMORY_EFFICIENT = "yes"
    with pytest.raises(ValueError, match=r"MODEL\.FISHNET\.MEMORY_EFFICIENT='yes'.*allowed True or False"):
        build_backbone(cfg, ShapeSpec(channels=3))


def test_benchmark_measures_each_checkpointing_row_with_and_without_it():
    lean = ("MODEL.FISHNET.MEMORY_EFFICIENT", True)
    assert MODEL_SPECS["fishnet150-lean"].opts == lean
    checkpointed = [key for key in MODEL_SPECS if key.startswith("fishnet150-ckpt")]
    assert checkpointed
    for key in checkpointed:
        twin = MODEL_SPECS[key.replace("fishnet150-", "fishnet150-lean-")]
        assert twin.opts == MODEL_SPECS[key].opts + lean and twin.training_only
        assert (twin.name, MODEL_SPECS[key].name, "memory:backbone_train") in RATIOS

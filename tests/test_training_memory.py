"""MODEL.FISHNET.MEMORY_EFFICIENT (build_fishnet's memory_efficient) computes what the default
path computes, in float64 (outputs, every gradient, BatchNorm's statistics), with every norm and
with activation checkpointing; keeps less for the backward pass, running again only the 1x1
conv3 of the blocks that recover their inputs; leaves inference, tracing and torch.compile on
the default path, and is refused by TorchScript with a message that says what to do."""

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
from fishnet_d2.modeling.optimize.equivalence import twin_fishnets
from fishnet_d2.modeling.optimize.memory.functions import CompactMaxPool2d, rectified_max_pool
from fishnet_d2.modeling.optimize.memory.modules import LeanPreActBottleneck, RecoveringBlocks

from .support import (
    ALL_FEATURES,
    TINY_ARCH,
    assert_close_to_scale,
    fishnet_cfg,
    train_step,
    use_tiny_arch,
)


# Runs of several blocks, so that some recover their inputs: tail4 (3 blocks after the first),
# the bridge (2 after the first: not worth it alone), head2's refinement (its output is a feature
# the caller holds), transfer runs whose stage's concatenation is held (by the next stage, or the
# caller).
LONG_RUNS_ARCH = replace(
    TINY_ARCH,
    tail_blocks=(1, 4, 2),
    bridge_blocks=3,
    head_blocks=(2, 1, 2),
    body_transfer_blocks=(1, 2, 2),
    head_transfer_blocks=(1, 1, 3),
)


def twins(norm: str, arch=TINY_ARCH, out_features=ALL_FEATURES, **options) -> Tuple[FishNet, FishNet]:
    """The default FishNet and the memory-efficient one, same weights and statistics, float64
    (the package's twin_fishnets, which the GPU check runs too)."""
    default, efficient = twin_fishnets(
        arch, norm, fast={"memory_efficient": True}, out_features=out_features, freeze_stem_conv1=True, **options
    )
    return default.double().train(), efficient.double().train()


def images(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def recovering(model: FishNet) -> Dict[str, int]:
    """The runs of blocks that recover their inputs: {name: how many blocks}."""
    return {
        name: len(m) - m.recover_from
        for name, m in model.named_modules()
        if isinstance(m, RecoveringBlocks)
    }


def test_which_blocks_recover_their_inputs():
    """After a run's first block, identity-shortcut blocks, where at least 3 do, or where the
    run's output is held anyway: head2 (the first head stage's refinement) when it is a feature
    the caller holds, a transfer run's output in its stage's concatenation when that is a
    feature or the next stage keeps its input. Checkpointed stages keep nothing of their own."""
    _, efficient = twins("FrozenBN", LONG_RUNS_ARCH)
    expected = {"tail.1.blocks": 3, "body.1.transfer": 1, "body.2.transfer": 1, "head.0.refine": 2, "head.2.transfer": 2}
    assert recovering(efficient) == expected
    # body2's concatenation is read by head2's refinement, which recovers its input: not held
    # (unless head3, whose refinement head2 is, recomputes in the backward pass: it keeps its inputs).
    _, head_only = twins("FrozenBN", LONG_RUNS_ARCH, out_features=["head3", "head4", "head5"])
    assert recovering(head_only) == {"tail.1.blocks": 3, "body.1.transfer": 1, "head.2.transfer": 2}
    _, without_head5 = twins("FrozenBN", LONG_RUNS_ARCH, out_features=["head2", "head3", "head4"])
    assert recovering(without_head5) == {"tail.1.blocks": 3, "body.1.transfer": 1, "head.0.refine": 2}
    _, checkpointed = twins("FrozenBN", LONG_RUNS_ARCH, activation_checkpointing=["tail4", "head3", "head5"])
    assert recovering(checkpointed) == {"body.1.transfer": 1, "body.2.transfer": 1}


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


def test_float32_outputs_are_the_default_paths_bit_for_bit():
    """The forward runs the default path's operations in its order: in float32 too, the outputs
    are equal, bit for bit (the gradients differ by the rounding of the recovered inputs)."""
    default, efficient = twins("FrozenBN", LONG_RUNS_ARCH)
    outputs, _ = train_step(default.float(), images().float())
    efficient_outputs, _ = train_step(efficient.float(), images().float())
    for name, value in outputs.items():
        torch.testing.assert_close(efficient_outputs[name], value, rtol=0, atol=0)


class CountConvolutions(TorchDispatchMode):
    """Convolutions run forward, and gradients computed for convolutions (of an input, a weight
    or a bias: the backward's output mask), whether one call computes them together (autograd's)
    or one each (an input's as a transposed convolution, a weight's by torch.nn.grad)."""

    def __init__(self):
        super().__init__()
        self.forward = self.backward = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default:
            transposed = args[6]  # convolution(input, weight, bias, stride, padding, dilation, transposed, ...)
            if transposed:
                self.backward += 1
            else:
                self.forward += 1
        elif func is torch.ops.aten.convolution_backward.default:
            self.backward += sum(args[-1])
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
    assert backward >= forward  # every convolution has a gradient to compute
    # A recovering block runs its conv3 again.
    recovered = sum(recovering(efficient).values()) if norm == "FrozenBN" else 0
    assert efficient_forward == forward + recovered and efficient_backward == backward


def test_inference_and_tracing_run_the_default_path_and_scripting_is_refused():
    default, efficient = twins("FrozenBN")
    x = images()
    with torch.no_grad():
        expected = default.eval()(x)
        efficient.eval()
        results = [efficient(x), torch.jit.trace(efficient, x, strict=False)(x)]
    for result in results:
        assert list(result) == list(expected)
        for name in expected:
            torch.testing.assert_close(result[name], expected[name], rtol=0, atol=0)
    with pytest.raises(RuntimeError, match=r"cannot be scripted; build the model .* without .*MEMORY_EFFICIENT"):
        torch.jit.script(efficient)
    # The refused attempt changed nothing: the model still trains memory-efficiently.
    assert recovering(efficient) == recovering(twins("FrozenBN")[1])
    assert_close_to_scale(train_step(efficient.train(), x)[0], train_step(default.train(), x)[0])


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


def assert_pools_alike(reference, pool, x: torch.Tensor) -> None:
    """``pool(x)`` equals ``reference(x)`` bit for bit, and so does the input's gradient (of a
    loss that weighs every output differently), in the same memory format."""
    results = []
    for f in (reference, pool):
        xi = x.clone().requires_grad_()
        out = f(xi)
        (out * torch.arange(out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        results.append((out, xi.grad))
    (expected_out, expected_grad), (out, grad) = results
    torch.testing.assert_close(out, expected_out, rtol=0, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=0)
    channels_last = torch.channels_last
    assert grad.is_contiguous(memory_format=channels_last) == expected_grad.is_contiguous(memory_format=channels_last)


def small_integers(shape, low: int, channels_last: bool) -> torch.Tensor:
    """Values in [low, 3): ties in most windows."""
    x = torch.randint(low, 3, shape, generator=torch.Generator().manual_seed(0)).double()
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape, kernel", [((2, 3, 8, 12), 2), ((1, 2, 9, 6), 3), ((1, 2, 7, 8), 2)])
def test_compact_max_pool_equals_max_pool_with_ties(shape, kernel, channels_last):
    """The gradient goes where nn.MaxPool2d sends it (the first maximum). A size the windows do
    not tile (7) runs the plain max-pool."""
    x = small_integers(shape, 0, channels_last)
    assert_pools_alike(nn.MaxPool2d(kernel, kernel), CompactMaxPool2d(kernel, kernel), x)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 8, 12), (1, 2, 9, 7)])
def test_rectified_max_pool_equals_relu_then_max_pool_with_ties(shape, channels_last):
    """With negative values too, so that whole windows are cut by the ReLU: the stem's ReLU then
    3x3 max-pool, whose windows overlap."""
    x = small_integers(shape, -2, channels_last)
    assert_pools_alike(
        lambda t: nn.functional.max_pool2d(torch.relu(t), 3, 2, 1), lambda t: rectified_max_pool(t, 3, 2, 1), x
    )


def test_from_config_and_bad_value_names_the_key():
    cfg = use_tiny_arch(fishnet_cfg())
    assert cfg.MODEL.FISHNET.MEMORY_EFFICIENT is False
    cfg.merge_from_list(["MODEL.FISHNET.MEMORY_EFFICIENT", True])
    model = build_backbone(cfg, ShapeSpec(channels=3))
    kinds = {type(m) for m in model.modules()}
    assert CompactMaxPool2d in kinds and LeanPreActBottleneck in kinds
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

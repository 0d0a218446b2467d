"""How the claim "computes the same" is checked, on any device: each fast path (and memory-efficient
training) against the plain network, and FishNet against the official code's outputs. Two models
with the same weights and statistics (:func:`twin_fishnets`), one training step's outputs and
gradients (:func:`training_step`), their largest difference relative to each tensor's scale
(:func:`largest_difference`), and the tolerances with their reasons. The tests
(tests/test_backbone_fast_paths.py, tests/test_training_memory.py, tests/test_backbone_golden.py)
and the GPU check (``tools/gpu_check.py``) use them.
"""

from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..arch import FishNetArch
from ..build import build_fishnet
from ..fishnet import FishNet

__all__ = [
    "SAME_MATH_FLOAT64",
    "GOLDEN_STAGES",
    "GOLDEN_TOLERANCE",
    "randomize_norms",
    "twin_fishnets",
    "training_step",
    "largest_difference",
    "relative_error",
]

# A fast path (or the memory-efficient one) claims to compute the same math as the plain model;
# the claim is checked in float64, where rounding (2**-53 = 1.1e-16 per operation, over
# reductions of at most 10**4 terms and a few hundred layers) stays far below 1e-10 of the largest
# magnitude whatever convolution algorithm the device picks: measured 2.5e-14 on CPUs for
# training-mode BatchNorm's gradients, the worst case. A real bug (a layout-dependent view, a
# wrong dilation) is off by O(1). In float32 the same gradients differ by 6.6e-6 (Intel Xeon) to
# 1.4e-3 (AMD EPYC) of the largest: not a usable bound.
SAME_MATH_FLOAT64 = 1e-10

# The official code's stage outputs in tests/data/tiny_golden.pt, in order, by our feature names.
GOLDEN_STAGES = [
    "stem", "tail3", "tail4", "tail5", "bridge",
    "body4", "body3", "body2", "head3", "head4", "head5",
]  # fmt: skip

# The relative error (Frobenius, :func:`relative_error`) allowed against the golden outputs. In
# float64 the only error left is the golden file's own float32 rounding (the official code
# computed it in float32): 8.4e-7 as measured on CPUs, whatever convolution algorithm runs. In
# float32 (TF32 off) our own rounding adds about as much. 1e-4 leaves two orders of margin; a real
# bug (a wrong dilation, a perturbed weight) misses it by more than three (tests/test_backbone_golden.py).
GOLDEN_TOLERANCE = 1e-4

Tensors = Union[Mapping[str, torch.Tensor], Sequence[torch.Tensor]]


def randomize_norms(model: nn.Module, seed: int = 1) -> nn.Module:
    """Statistics and affine parameters of every norm (BN, SyncBN, FrozenBN, GN) away from the
    identity, so that norms matter; in place, ``model`` returned."""
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        affine = getattr(module, "weight", None) is not None
        if affine and (hasattr(module, "running_var") or isinstance(module, nn.GroupNorm)):
            c = module.weight.shape[0]
            with torch.no_grad():
                module.weight.copy_(torch.rand(c, generator=g) + 0.5)
                module.bias.copy_(torch.randn(c, generator=g))
                if hasattr(module, "running_mean"):
                    module.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                    module.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return model


def twin_fishnets(
    arch: FishNetArch,
    norm: str,
    *,
    plain: Optional[Dict] = None,
    fast: Optional[Dict] = None,
    plain_norm: Optional[str] = None,
    seed: int = 0,
    **common,
) -> Tuple[FishNet, FishNet]:
    """Two FishNets of ``arch`` with the same weights and (randomized) statistics, built by
    :func:`~fishnet_d2.modeling.build_fishnet` with the options ``common`` and ``plain`` (the
    first, with ``plain_norm``, default ``norm``) or ``fast`` (the second), on the CPU in float32:
    move them with ``.to(device, dtype)``. The second loads the first's state_dict (a FrozenBN has
    no ``num_batches_tracked``: left out)."""
    torch.manual_seed(seed)
    first = randomize_norms(build_fishnet(arch, norm=plain_norm or norm, **common, **(plain or {})))
    second = build_fishnet(arch, norm=norm, **common, **(fast or {}))
    keys = second.state_dict().keys()
    second.load_state_dict({k: v for k, v in first.state_dict().items() if k in keys})
    return first, second


def training_step(model: nn.Module, x: torch.Tensor) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """Outputs, and the gradients of the input ("input") and of each trainable parameter (by
    name), of one forward + backward in the model's current mode, with a loss that weighs every
    output element differently."""
    model.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    outputs = model(x)
    loss = sum(
        (o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype, device=o.device).view_as(o)).sum() for o in outputs.values()
    )
    loss.backward()
    grads = {"input": x.grad, **{name: p.grad for name, p in model.named_parameters() if p.requires_grad}}
    return {k: v.detach() for k, v in outputs.items()}, grads


def largest_difference(a: Tensors, b: Tensors) -> float:
    """The largest ``max|x - y| / max|y|`` over the pairs of tensors of ``a`` and ``b`` (dicts:
    the same names, in order; sequences: in order), in float64; ``inf`` where shapes or names
    differ or a tensor is missing."""
    if isinstance(a, Mapping):
        if not isinstance(b, Mapping) or list(a) != list(b):
            return float("inf")
        a, b = list(a.values()), list(b.values())
    if len(a) != len(b):
        return float("inf")
    worst = 0.0
    for x, y in zip(a, b):
        if x is None or y is None or x.shape != y.shape:
            return float("inf")
        x, y = x.detach().double(), y.detach().double()
        scale = y.abs().max().item()
        difference = (x - y).abs().max().item()
        worst = max(worst, difference / scale if scale > 0 else (0.0 if difference == 0 else float("inf")))
    return worst


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``|actual - expected| / |expected|`` (Frobenius norms), in float64 on ``expected``'s device."""
    actual, expected = actual.detach().double().to(expected.device), expected.double()
    return ((actual - expected).norm() / expected.norm()).item()

"""Memory-efficient training (``MODEL.FISHNET.MEMORY_EFFICIENT``): the same outputs and gradients
as the plain path, with less kept for the backward pass and no convolution run twice.

- A pre-activation ``conv(relu(affine(x)))`` of a FrozenBN (an affine) keeps its input ``x``
  instead of ``relu(affine(x))`` and recomputes the affine and ReLU in the backward pass
  (:func:`preactivated_conv`). Where ``x`` is kept anyway, the activation is kept once instead of
  once per reader: a stage's input read by its first block, the block's projection shortcut and a
  transfer block of a later part; a head feature the caller holds read by the next head stage.
- A max-pool whose windows tile its input keeps the position of each window's maximum as one
  byte (:class:`OffsetMaxPool2d`) instead of its input and 8-byte indices.

Neither runs when it cannot matter or would get in the way: without gradients, while tracing,
scripting (TorchScript compiles the plain path) or compiling (:func:`saves_memory`).
"""

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["saves_memory", "preactivated_conv", "OffsetMaxPool2d", "train_memory_efficiently"]


def saves_memory() -> bool:
    """Whether a memory-efficient computation runs now: gradients are recorded, and neither
    ``torch.jit`` tracing nor ``torch.compile`` is capturing the graph (they see the plain path)."""
    return torch.is_grad_enabled() and not torch.jit.is_tracing() and not torch.compiler.is_compiling()


def _conv_args(stride, padding, dilation) -> Tuple[List[int], List[int], List[int]]:
    pair = lambda v: [v, v] if isinstance(v, int) else list(v)  # noqa: E731
    return pair(stride), pair(padding), pair(dilation)


class _PreActivatedConv(torch.autograd.Function):
    """``conv2d(relu(x * scale + shift), weight, bias)``, keeping ``x`` (not the activation)."""

    @staticmethod
    def forward(ctx, x, scale, shift, weight, bias, stride, padding, dilation, groups):
        # The plain path's FrozenBN (FusedFrozenBatchNorm2d in training) and ReLU, op for op.
        activation = torch.addcmul(shift, x, scale).relu_()
        out = F.conv2d(activation, weight, bias, stride, padding, dilation, groups)
        ctx.save_for_backward(x, scale, shift, weight)
        ctx.conv = (*_conv_args(stride, padding, dilation), groups)
        ctx.bias_shape = None if bias is None else list(bias.shape)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, scale, shift, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        activation = torch.addcmul(shift, x, scale).relu_()
        need_x, _, _, need_weight, need_bias = ctx.needs_input_grad[:5]
        # Under autocast the convolution ran in grad_out's dtype (as its backward does).
        grad_act, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad_out,
            activation.to(grad_out.dtype),
            weight.to(grad_out.dtype),
            ctx.bias_shape,
            stride,
            padding,
            dilation,
            False,
            [0, 0],
            groups,
            [need_x, need_weight, need_bias and ctx.bias_shape is not None],
        )
        grad_x = None
        if need_x:  # ReLU's backward (threshold at 0 of its output), then the affine's
            grad_x = torch.where(activation > 0, grad_act.to(x.dtype), 0.0) * scale
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_x, None, None, grad_weight, grad_bias, None, None, None, None


def preactivated_conv(
    x: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    conv: nn.Conv2d,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
) -> torch.Tensor:
    """``F.conv2d(relu(x * scale + shift), weight, bias)`` with ``conv``'s stride, padding,
    dilation and groups: a FrozenBN's affine (``scale``, ``shift`` per channel, not trained), a
    ReLU and a convolution, whose backward pass gets ``x`` and recomputes the activation from it
    (one elementwise pass) instead of keeping it. ``weight`` and ``bias`` are ``conv``'s or those
    of a norm folded into it, and get their gradients. The values are the plain path's, exactly."""
    shape = (1, -1, 1, 1)
    return _PreActivatedConv.apply(
        x,
        scale.reshape(shape).to(x.dtype),
        shift.reshape(shape).to(x.dtype),
        weight,
        bias,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
    )


class _OffsetMaxPool(torch.autograd.Function):
    """Max-pool of windows that tile the input (kernel == stride, no padding, sizes divisible),
    keeping for the backward pass the maximum's offset in its window (``dy * k + dx``, uint8)."""

    @staticmethod
    def forward(ctx, x, k):
        out, indices = F.max_pool2d(x, k, k, return_indices=True)
        width = x.shape[-1]
        # indices: the maximum's position in its (H * W) plane; each window starts at a multiple
        # of k in both directions, so its row and column in the window are the remainders.
        offsets = (indices // width % k * k + indices % k).to(torch.uint8)
        ctx.save_for_backward(offsets)
        ctx.k = k
        ctx.input_shape = x.shape
        ctx.channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (offsets,) = ctx.saved_tensors
        k = ctx.k
        n, c, h, w = ctx.input_shape
        fmt = torch.channels_last if ctx.channels_last else torch.contiguous_format
        # Every input position is in exactly one window: each gets its window's gradient where it
        # was the maximum, 0 elsewhere, as max-pool's backward gives.
        grad_in = torch.empty((n, c, h, w), dtype=grad_out.dtype, device=grad_out.device, memory_format=fmt)
        windows = grad_in.view(n, c, h // k, k, w // k, k)
        zero = grad_out.new_zeros(())
        for dy in range(k):
            for dx in range(k):
                windows[:, :, :, dy, :, dx] = torch.where(offsets == dy * k + dx, grad_out, zero)
        return grad_in, None


class OffsetMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` (same arguments, same results and gradients) that, in training, keeps one
    byte per output for the backward pass instead of the input and 8-byte indices, where its
    windows tile the input (kernel == stride, no padding or dilation; else the plain max-pool)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            k = self.kernel_size
            if (
                saves_memory()
                and isinstance(k, int)
                and k <= 16
                and self.stride in (k, (k, k))
                and self.padding in (0, (0, 0))
                and self.dilation in (1, (1, 1))
                and not self.return_indices
                and x.dim() == 4
                and x.shape[-2] % k == 0
                and x.shape[-1] % k == 0
            ):
                return _OffsetMaxPool.apply(x, k)
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)


def train_memory_efficiently(module: nn.Module) -> None:
    """Make ``module``'s pre-activations (the blocks with a ``recompute_activation`` switch) and
    max-pools memory-efficient in training: each ``nn.MaxPool2d`` becomes an
    :class:`OffsetMaxPool2d` with its arguments (pools hold no state: the state_dict is unchanged)."""
    for m in module.modules():
        if hasattr(m, "recompute_activation"):
            m.recompute_activation = True
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.MaxPool2d:
                pool = OffsetMaxPool2d(
                    child.kernel_size,
                    child.stride,
                    child.padding,
                    child.dilation,
                    return_indices=child.return_indices,
                    ceil_mode=child.ceil_mode,
                )
                setattr(parent, name, pool)

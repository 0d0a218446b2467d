"""The autograd functions of memory-efficient training (:mod:`.`): the same values and gradients
as the operations they replace, with less kept for the backward pass.

- :func:`lean_conv`: a convolution of a FrozenBN pre-activation keeps its input, not the
  activation; with a FrozenBN folded into it, its weight, not the folded copy.
- :class:`CompactMaxPool2d`: a max-pool whose windows tile its input keeps one byte per output.
- :func:`rectified_max_pool`: the stem's ReLU and overlapping max-pool keep their output and
  int32 positions.

Each backward is written with documented functions (``conv_transpose2d``, ``torch.nn.grad``,
``max_unpool2d``, ``scatter_add_``), but for ReLU's backward in place, which no public function
computes (:func:`relu_backward_`).
"""

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "saves_memory",
    "affine_relu",
    "conv2d_input_grad",
    "relu_backward_",
    "lean_conv",
    "CompactMaxPool2d",
    "rectified_max_pool",
]


def saves_memory() -> bool:
    """Whether a memory-efficient computation runs now: gradients are recorded, and neither
    ``torch.jit`` tracing nor ``torch.compile`` is capturing the graph (they see the plain path)."""
    return torch.is_grad_enabled() and not torch.jit.is_tracing() and not torch.compiler.is_compiling()


def _conv_args(stride, padding, dilation) -> Tuple[List[int], List[int], List[int]]:
    pair = lambda v: [v, v] if isinstance(v, int) else list(v)  # noqa: E731
    return pair(stride), pair(padding), pair(dilation)


class _LeanConv(torch.autograd.Function):
    """``conv2d(a, weight * weight_scale, bias)`` with ``a = relu(x * scale + shift)`` (or ``x``
    where ``scale`` is None, and ``weight`` itself where ``weight_scale`` is None), keeping ``x``
    and ``weight`` for the backward pass, which recomputes ``a`` and the folded weight."""

    @staticmethod
    def forward(ctx, x, scale, shift, weight, weight_scale, bias, stride, padding, dilation, groups):
        activation = x if scale is None else affine_relu(x, scale, shift)
        folded = weight if weight_scale is None else weight * weight_scale
        out = F.conv2d(activation, folded, bias, stride, padding, dilation, groups)
        ctx.save_for_backward(x, scale, shift, weight, weight_scale)
        ctx.conv = (*_conv_args(stride, padding, dilation), groups)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, scale, shift, weight, weight_scale = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        activation = x if scale is None else affine_relu(x, scale, shift)
        folded = weight if weight_scale is None else weight * weight_scale
        need_x, _, _, need_weight, _, need_bias = ctx.needs_input_grad[:6]
        # Under autocast the convolution ran in grad_out's dtype (as its backward does).
        activation_in, folded_in = activation.to(grad_out.dtype), folded.to(grad_out.dtype)
        grad_x = grad_weight = grad_bias = None
        if need_x:
            grad_act = conv2d_input_grad(activation_in.shape, folded_in, grad_out, stride, padding, dilation, groups)
            grad_x = grad_act.to(x.dtype)
            if scale is not None:  # ReLU's backward, then the affine's
                grad_x = relu_backward_(grad_x, activation) * scale
        if need_weight:
            grad_weight = torch.nn.grad.conv2d_weight(
                activation_in, folded_in.shape, grad_out, stride, padding, dilation, groups
            ).to(weight.dtype)
            if weight_scale is not None:  # the product's backward
                grad_weight = grad_weight * weight_scale
        if need_bias and ctx.has_bias:
            grad_bias = grad_out.sum((0, 2, 3))
        return grad_x, None, None, grad_weight, None, grad_bias, None, None, None, None


def conv2d_input_grad(
    input_shape: torch.Size,
    weight: torch.Tensor,
    grad_out: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> torch.Tensor:
    """The gradient of ``F.conv2d``'s input: the transposed convolution of ``grad_out`` (what
    convolution's own backward computes, the same values), its ``output_padding`` the rows and
    columns a strided convolution skipped. ``torch.nn.grad.conv2d_input`` computes it too, but
    returns NCHW for channels-last maps, whose conversions then cost copies and memory."""
    output_padding = [
        size - ((out - 1) * s - 2 * p + d * (k - 1) + 1)
        for size, out, s, p, d, k in zip(input_shape[-2:], grad_out.shape[-2:], stride, padding, dilation, weight.shape[-2:])
    ]
    return F.conv_transpose2d(grad_out, weight, None, stride, padding, output_padding, groups, dilation)


def relu_backward_(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """ReLU's backward, in place in ``grad``: 0 where the ReLU's output ``out`` is not positive,
    as autograd's (which thresholds the output)."""
    # grad.masked_fill_(out <= 0, 0) computes the same, but its mask cost 3% of the memory-efficient step.
    return torch.ops.aten.threshold_backward.grad_input(grad, out, 0, grad_input=grad)  # no public API does this in place


def affine_relu(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``relu(x * scale + shift)`` (``scale`` and ``shift`` shaped to broadcast per channel): the
    plain path's FrozenBN in training (FusedFrozenBatchNorm2d: one multiply-add), then its ReLU."""
    return torch.addcmul(shift, x, scale).relu_()


Affine = Tuple[torch.Tensor, torch.Tensor]


def lean_conv(
    x: torch.Tensor, conv: nn.Conv2d, *, activation: Optional[Affine] = None, folded: Optional[Affine] = None
) -> torch.Tensor:
    """``conv(x)``, keeping only ``x`` and ``conv.weight`` for the backward pass.

    ``activation``: the ``(scale, shift)`` of a FrozenBN before the convolution
    (``FusedFrozenBatchNorm2d.scale_shift``), then a ReLU: ``conv(relu(norm(x)))``, its
    activation recomputed from ``x`` in the backward pass (one elementwise pass) instead of kept.
    ``folded``: that of a FrozenBN after it, folded into it (``norm(conv(.))`` computed as
    ``conv(., weight * scale, bias=shift)``, as the plain path does), the folded weight
    recomputed in the backward pass instead of kept. Values and gradients are the plain path's,
    op for op. ``conv`` has no bias of its own (FishNet's pre-activated convolutions)."""
    per_channel = (1, -1, 1, 1)
    scale = shift = weight_scale = bias = None
    if activation is not None:
        scale, shift = (t.reshape(per_channel).to(x.dtype) for t in activation)
    if folded is not None:
        weight_scale = folded[0].reshape(-1, 1, 1, 1).to(conv.weight.dtype)
        bias = folded[1].to(x.dtype)
    return _LeanConv.apply(
        x, scale, shift, conv.weight, weight_scale, bias, conv.stride, conv.padding, conv.dilation, conv.groups
    )


class _CompactMaxPool(torch.autograd.Function):
    """Max-pool of windows that tile the input (kernel == stride, no padding, sizes divisible),
    keeping for the backward pass only each maximum's position in its window, one byte each."""

    @staticmethod
    def forward(ctx, x, k):
        out, indices = F.max_pool2d(x, k, k, return_indices=True)
        # indices: row * width + column in the input plane. Less its window's first position,
        # the offset is r * width + c (r, c < k); the position in the window, r * k + c, is the
        # offset less r * (width - k), r counted by comparisons (integer division is slow).
        # In int32 (planes below 2**31 positions): the fewest bytes of temporaries.
        width = x.shape[-1]
        offset = indices.to(torch.int32)
        del indices
        offset.sub_(_window_starts(out, k, width))
        rows = _rows(offset, k, width)
        ctx.save_for_backward(offset.sub_(rows.mul_(width - k)).to(torch.uint8))
        ctx.k = k
        _remember_input(ctx, x)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (in_window,) = ctx.saved_tensors
        k, width = ctx.k, ctx.input_shape[-1]
        in_window = in_window.long()
        indices = in_window.add_(_rows(in_window, k, k).mul_(width - k)).add_(_window_starts(grad_out, k, width))
        # Every input position is in exactly one window: it gets its window's gradient where it
        # was the maximum, 0 elsewhere, as max-pool's backward gives (without the input-sized
        # stand-in that max-pool's own backward would take).
        grad_out = grad_out.contiguous(memory_format=ctx.memory_format)
        grad_in = F.max_unpool2d(grad_out, indices, k, k, output_size=ctx.input_shape[-2:])
        return grad_in.contiguous(memory_format=ctx.memory_format), None


def _remember_input(ctx, x: torch.Tensor) -> None:
    """What a max-pool's backward needs of its input: its shape and memory format."""
    ctx.input_shape = x.shape
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    ctx.memory_format = torch.channels_last if channels_last else torch.contiguous_format


def _max_pool_backward(ctx, grad_out: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """A max-pool's backward from int64 ``indices`` in the input plane, windows that may overlap
    (an input position that is the maximum of several windows gets the sum of their gradients),
    in the input's memory format."""
    n, c, height, width = ctx.input_shape
    grad_in = grad_out.new_zeros(ctx.input_shape).contiguous(memory_format=ctx.memory_format)
    # A view of the planes as rows of height * width positions, in either memory format.
    grad_in.view(n, c, height * width).scatter_add_(2, indices.flatten(2), grad_out.flatten(2))
    return grad_in


def _window_starts(out: torch.Tensor, k: int, width: int) -> torch.Tensor:
    """Each output position's window's first position in the input plane (out's last two dims)."""
    out_height, out_width = out.shape[-2:]
    rows = torch.arange(out_height, device=out.device).view(-1, 1) * (k * width)
    return rows + torch.arange(out_width, device=out.device) * k


def _rows(offsets: torch.Tensor, k: int, row_length: int) -> torch.Tensor:
    """``offsets // row_length`` for offsets below ``k * row_length``, by k - 1 comparisons."""
    rows = torch.zeros_like(offsets)
    for r in range(1, k):
        rows += offsets >= r * row_length
    return rows


class CompactMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` (same arguments, same results and gradients) that, in training, keeps 1
    byte per output for the backward pass (the maximum's position in its window) instead of the
    input and int64 indices, where its windows tile the input (kernel == stride, no padding or
    dilation; else the plain max-pool)."""

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
                and x.shape[-2] * x.shape[-1] < 2**31
            ):
                return _CompactMaxPool.apply(x, k)
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)


class _RectifiedMaxPool(torch.autograd.Function):
    """``relu(max_pool2d(x))``, keeping its output and the maxima's positions as int32."""

    @staticmethod
    def forward(ctx, x, kernel_size: int, stride: int, padding: int):
        out, indices = F.max_pool2d(x, kernel_size, stride, padding, return_indices=True)
        out.relu_()
        # Positions in the input plane; int32 holds them below 2**31 (any image that fits memory).
        ctx.save_for_backward(out, indices.to(torch.int32) if x.shape[-2] * x.shape[-1] < 2**31 else indices)
        _remember_input(ctx, x)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        out, indices = ctx.saved_tensors
        # ReLU's backward first: its output is the pool's, and where it is 0 no gradient passes
        # (the default path's max-pool sends it to a position whose ReLU then stops it).
        grad_out = relu_backward_(grad_out.clone(memory_format=torch.preserve_format), out)
        return _max_pool_backward(ctx, grad_out, indices.long()), None, None, None


def rectified_max_pool(x: torch.Tensor, kernel_size: int, stride: int, padding: int) -> torch.Tensor:
    """``F.max_pool2d(F.relu(x), ...)``, the same values and gradients (ReLU and max commute:
    ``max(relu(a), relu(b)) = relu(max(a, b))``), keeping for the backward pass the output and the
    maxima's positions as int32 (two maps of the output's size) instead of the ReLU's output and
    the int64 indices (an input-sized map, two output-sized ones). The stem's last unit."""
    return _RectifiedMaxPool.apply(x, kernel_size, stride, padding)

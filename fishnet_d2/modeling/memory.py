"""Memory-efficient training (``MODEL.FISHNET.MEMORY_EFFICIENT``): the same outputs as the plain
path, and the same gradients up to rounding, with less kept for the backward pass.

- A pre-activation ``conv(relu(affine(x)))`` of a FrozenBN (an affine) keeps its input ``x``
  instead of ``relu(affine(x))`` and recomputes the affine and ReLU in the backward pass
  (:func:`lean_conv`). Where ``x`` is kept anyway, the activation is kept once instead of once
  per reader: a stage's input read by its first block, the block's projection shortcut and a
  transfer block of a later part; a head feature the caller holds read by the next head stage.
- A convolution with a FrozenBN folded into it keeps its weight, not the folded copy, and folds
  again in the backward pass (one pass over the weight).
- A max-pool whose windows tile its input keeps the position of each maximum in its window, one
  byte (:class:`CompactMaxPool2d`), instead of its input and int64 indices; the stem's ReLU and
  overlapping max-pool keep their output and int32 positions (:func:`rectified_max_pool`).
- Runs of identity-shortcut blocks recover their inputs from their outputs
  (:mod:`~fishnet_d2.modeling.reversible`), running each block's 1x1 conv3 again.

:func:`train_memory_efficiently` decides where each applies. None runs when it cannot matter or
would get in the way: without gradients, while tracing, scripting (TorchScript compiles the plain
path) or compiling (:func:`saves_memory`).
"""

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["saves_memory", "affine_relu", "lean_conv", "CompactMaxPool2d", "rectified_max_pool", "train_memory_efficiently"]


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
        ctx.bias_shape = None if bias is None else list(bias.shape)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, scale, shift, weight, weight_scale = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        activation = x if scale is None else affine_relu(x, scale, shift)
        folded = weight if weight_scale is None else weight * weight_scale
        need_x, _, _, need_weight, _, need_bias = ctx.needs_input_grad[:6]
        # Under autocast the convolution ran in grad_out's dtype (as its backward does).
        grad_act, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad_out,
            activation.to(grad_out.dtype),
            folded.to(grad_out.dtype),
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
        if need_x:
            grad_x = grad_act.to(x.dtype)
            if scale is not None:  # ReLU's backward (as autograd's: its output's threshold), the affine's
                grad_x = torch.ops.aten.threshold_backward(grad_x, activation, 0) * scale
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
            if weight_scale is not None:  # the product's backward
                grad_weight = grad_weight * weight_scale
        return grad_x, None, None, grad_weight, None, grad_bias, None, None, None, None


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


def _max_pool_backward(ctx, grad_out, indices, kernel_size, stride, padding) -> torch.Tensor:
    """The default max-pool's backward (the same kernel: the same gradient, in the input's
    memory format), from int64 ``indices`` in the input plane. The kernel reads only the input's
    shape and memory format, which an empty tensor gives; it is allocated though, an input-sized
    map (the stem's pool runs last in the backward pass, when little else is alive)."""
    like = torch.empty(ctx.input_shape, dtype=grad_out.dtype, device=grad_out.device, memory_format=ctx.memory_format)
    return torch.ops.aten.max_pool2d_with_indices_backward(
        grad_out, like, kernel_size, stride, padding, [1, 1], False, indices
    )


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


# The widest residual blocks that recover their inputs (train_memory_efficiently).
MAX_RECOVERED_WIDTH = 512


class _RectifiedMaxPool(torch.autograd.Function):
    """``relu(max_pool2d(x))``, keeping its output and the maxima's positions as int32."""

    @staticmethod
    def forward(ctx, x, kernel_size: int, stride: int, padding: int):
        out, indices = F.max_pool2d(x, kernel_size, stride, padding, return_indices=True)
        out.relu_()
        # Positions in the input plane; int32 holds them below 2**31 (any image that fits memory).
        ctx.save_for_backward(out, indices.to(torch.int32) if x.shape[-2] * x.shape[-1] < 2**31 else indices)
        ctx.pool = ([kernel_size] * 2, [stride] * 2, [padding] * 2)
        _remember_input(ctx, x)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        out, indices = ctx.saved_tensors
        kernel_size, stride, padding = ctx.pool
        # ReLU's backward first: its output is the pool's, and where it is 0 no gradient passes
        # (the default path's max-pool sends it to a position whose ReLU then stops it).
        grad_out = torch.ops.aten.threshold_backward(grad_out, out, 0)
        return _max_pool_backward(ctx, grad_out, indices.long(), kernel_size, stride, padding), None, None, None


def rectified_max_pool(x: torch.Tensor, kernel_size: int, stride: int, padding: int) -> torch.Tensor:
    """``F.max_pool2d(F.relu(x), ...)``, the same values and gradients (ReLU and max commute:
    ``max(relu(a), relu(b)) = relu(max(a, b))``), keeping for the backward pass the output and the
    maxima's positions as int32 (two maps of the output's size) instead of the ReLU's output and
    the int64 indices (an input-sized map, two output-sized ones). The stem's last unit."""
    return _RectifiedMaxPool.apply(x, kernel_size, stride, padding)


def train_memory_efficiently(fishnet: nn.Module, *, held_features: Sequence[str], refined_head: str) -> None:
    """Make a FishNet's training memory-efficient, in place; ``held_features``: the features its
    caller holds (its out_features), ``refined_head``: the name of the first head stage's
    refinement. Stages that recompute in the backward pass (activation checkpointing) keep
    nothing of their own, and are left as they are: their memory-efficient paths would cost time
    and save nothing.

    Blocks with FrozenBN norms keep their convolutions' weights, not the copies with a norm
    folded in (:func:`lean_conv`; at the lowest resolutions the copies are as large as the
    activations). Pre-activations keep their input where it is kept anyway: the first block of
    each run of residual blocks (and its projection shortcut) reads a map that another stage
    reads too, or that the caller holds (a feature). The first head stage's refinement is the
    exception: its input, the last body stage's output, has no other reader.

    After that first block, identity-shortcut blocks recover their inputs from their outputs in
    the backward pass (:mod:`~fishnet_d2.modeling.reversible`): each keeps a third of what it
    kept, for its 1x1 conv3 run again, and the run keeps its output. That pays where the run's
    output is held anyway (the first head stage's refinement, when requested; a transfer run's,
    in its stage's concatenation, when that is held), or where at least 3 blocks recover (the
    output kept for them costs one block's activation); with 1 or 2 blocks and an output nobody
    holds it would save nothing. Only up to ``MAX_RECOVERED_WIDTH`` channels: conv3 costs
    ``C / 4`` multiply-adds per value not kept, which at FishNet-150's 1600-wide head5 refinement
    is more time per MB than checkpointing a stage costs (docs/performance.md).

    The stem pools before its last ReLU (:func:`rectified_max_pool`). Each ``nn.MaxPool2d``
    becomes a :class:`CompactMaxPool2d` with its arguments (pools hold no state: the state_dict
    is unchanged)."""
    alone = fishnet.head[0].refine if len(fishnet.head) else None  # reads the last body stage's output

    def keeps_input(stage: nn.Module) -> bool:
        return stage.recompute_in_backward or (len(stage.refine) > 0 and stage.refine is not alone)

    # Who reads each refinement stage's output (its concatenation) besides the caller.
    parts = [list(fishnet.body), list(fishnet.head)]
    next_reader = {s: n for part in parts for s, n in zip(part, part[1:])}
    if len(fishnet.body) and len(fishnet.head):
        next_reader[fishnet.body[-1]] = fishnet.head[0]

    for stage in fishnet.stages():
        if stage.recompute_in_backward:
            continue
        for m in stage.modules():
            if hasattr(m, "keep_less"):
                m.keep_less = True
        concat_held = stage.name in held_features or (
            stage in next_reader and keeps_input(next_reader[stage])
        )
        for part in ("blocks", "refine", "transfer"):
            blocks = getattr(stage, part, None)
            if not hasattr(blocks, "recover_from") or not len(blocks):  # a ResidualBlocks with blocks
                continue
            input_held = blocks is not alone
            if input_held:
                for m in blocks[0].modules():
                    if hasattr(m, "recompute_activation"):
                        m.recompute_activation = True
            start = len(blocks)
            while start > int(input_held) and blocks[start - 1].is_reversible():
                start -= 1
            if blocks[-1].out_channels > MAX_RECOVERED_WIDTH:
                start = len(blocks)
            blocks.output_in_concat = part == "transfer" and concat_held
            output_held = blocks.output_in_concat or (blocks is alone and refined_head in held_features)
            if len(blocks) - start >= (1 if output_held else 3):
                blocks.recover_from = start
        if stage is fishnet.stem:
            stage.pool_before_relu = True
        for parent in list(stage.modules()):
            for name, child in parent.named_children():
                if type(child) is nn.MaxPool2d:
                    pool = CompactMaxPool2d(
                        child.kernel_size,
                        child.stride,
                        child.padding,
                        child.dilation,
                        return_indices=child.return_indices,
                        ceil_mode=child.ceil_mode,
                    )
                    setattr(parent, name, pool)

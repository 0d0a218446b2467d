"""Residual blocks that recover their inputs from their outputs in the backward pass
(``MODEL.FISHNET.MEMORY_EFFICIENT``), as reversible networks do (Gomez et al., "The Reversible
Residual Network", 2017), for FishNet's own blocks, which are not reversible by design.

A pre-activation block with an identity shortcut computes ``x_{l+1} = x_l + conv3(a3_l)``
(paper, eq. 1). Its backward pass needs ``a1 = relu(norm1(x_l))`` (conv1's input), ``a2`` and
``a3`` (conv2's and conv3's inputs, a quarter of the width each). The default path keeps ``a1``,
``a2`` and ``a3``: 1.5 maps of the block's width. Given ``x_{l+1}``, the input is
``x_l = x_{l+1} - conv3(a3_l)``: one 1x1 convolution, the cheapest of the block's three, instead
of keeping a full-width map. A run of such blocks keeps its output and each block's ``a2`` and
``a3``, and walks back through the blocks in the backward pass. The run's output is kept anyway
where the caller holds it (the head's stride-4 feature) or where it is part of a concatenation
that is held (a transfer run's, in its stage's output); else it costs one map for the run.

The recovered ``x_l`` equals the forward's up to the rounding of one subtraction. The outputs
are the default path's, bit for bit; in float64 the gradients are the default path's to ~1e-15
of their scale (the tests ask 1e-10); in float32 to ~1e-6 (the tests' small model), less than
two float32 convolution algorithms differ by. Under autocast (float16 activations) the rounding
would be larger: the blocks then run the default path.
"""

from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .functions import affine_relu, conv2d_input_grad, relu_backward_

__all__ = ["FoldedBlock", "recovering_blocks"]


class FoldedBlock(NamedTuple):
    """The tensors of one pre-activation bottleneck with FrozenBN norms (a
    FoldedPreActBottleneck): ``norm1`` an affine ``(scale1, shift1)`` before conv1, ``norm2`` and ``norm3``
    folded into conv1 and conv2."""

    conv1_weight: torch.Tensor
    conv2_weight: torch.Tensor
    conv3_weight: torch.Tensor
    scale1: torch.Tensor
    shift1: torch.Tensor
    scale2: torch.Tensor
    shift2: torch.Tensor
    scale3: torch.Tensor
    shift3: torch.Tensor


class Conv2Args(NamedTuple):
    """conv2's padding, dilation and groups (its stride is 1: the block keeps the resolution)."""

    padding: Tuple[int, int]
    dilation: Tuple[int, int]
    groups: int


def _per_channel(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(1, -1, 1, 1).to(like.dtype)


def _folded(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A conv weight with the FrozenBN after it folded in (FusedFrozenBatchNorm2d.fold_into)."""
    return weight * scale.reshape(-1, 1, 1, 1).to(weight.dtype)


def _pre_activation(x: torch.Tensor, b: FoldedBlock) -> torch.Tensor:
    return affine_relu(x, _per_channel(b.scale1, x), _per_channel(b.shift1, x))


def _conv1(a1: torch.Tensor, b: FoldedBlock) -> torch.Tensor:
    return F.conv2d(a1, _folded(b.conv1_weight, b.scale2), b.shift2.to(a1.dtype))


def _conv2(a2: torch.Tensor, b: FoldedBlock, args: Conv2Args) -> torch.Tensor:
    weight = _folded(b.conv2_weight, b.scale3)
    return F.conv2d(a2, weight, b.shift3.to(a2.dtype), 1, args.padding, args.dilation, args.groups)


def _conv_backward(
    grad: torch.Tensor,
    inputs: torch.Tensor,
    weight: torch.Tensor,
    args: Optional[Conv2Args],
    *,
    need_weight: bool,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The gradients of a bias-free, stride-1 convolution's input and (if needed) weight."""
    padding, dilation, groups = ((0, 0), (1, 1), 1) if args is None else (args.padding, args.dilation, args.groups)
    grad_input = conv2d_input_grad(inputs.shape, weight, grad, (1, 1), padding, dilation, groups)
    grad_weight = None
    if need_weight:
        grad_weight = torch.nn.grad.conv2d_weight(inputs, weight.shape, grad, 1, padding, dilation, groups)
    return grad_input, grad_weight


class _RecoveredBlocks(torch.autograd.Function):
    """``blocks(x)`` for a run of identity-shortcut blocks; keeps the output and each block's
    ``a2`` and ``a3``; the backward pass recovers each block's input from its output."""

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, prefix: Optional[torch.Tensor], conv2_args: Sequence[Conv2Args], *tensors: torch.Tensor
    ) -> torch.Tensor:
        kept: List[torch.Tensor] = []
        for b, args in zip(_chunks(tensors, FoldedBlock), conv2_args):
            # The default path's operations, in its order (PreActBottleneck.forward): same values.
            a2 = _conv1(_pre_activation(x, b), b).relu_()
            a3 = _conv2(a2, b, args).relu_()
            out = F.conv2d(a3, b.conv3_weight)
            out += x
            kept += [a2, a3]
            x = out
        if prefix is not None:  # the output as the stage's concatenation (held by its readers)
            x = torch.cat([prefix, x], dim=1)
        ctx.prefix_channels = 0 if prefix is None else prefix.shape[1]
        ctx.conv2_args = conv2_args
        ctx.num_tensors = len(tensors)
        ctx.save_for_backward(x, *tensors, *kept)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out, *saved = ctx.saved_tensors
        grad_prefix = None
        if ctx.prefix_channels:  # the concatenation's backward: its parts' gradients
            grad_prefix, grad = grad[:, : ctx.prefix_channels], grad[:, ctx.prefix_channels :]
            out = out[:, ctx.prefix_channels :]
        blocks = _chunks(saved[: ctx.num_tensors], FoldedBlock)
        kept = _chunks(saved[ctx.num_tensors :], _Kept)
        needs_grad = _chunks(ctx.needs_input_grad[3:], FoldedBlock)
        block_grads = []
        steps = list(zip(blocks, ctx.conv2_args, kept, needs_grad))
        for b, args, (a2, a3), needs in reversed(steps):
            # The block's input, from its output: x_l = x_{l+1} - conv3(a3), in conv3's buffer.
            x = F.conv2d(a3, b.conv3_weight)
            torch.sub(out, x, out=x)
            out = None  # the last block's output stays in ctx; the others' go now
            grad_a3, grad_w3 = _conv_backward(grad, a3, b.conv3_weight, None, need_weight=needs.conv3_weight)
            grad_z2 = relu_backward_(grad_a3, a3)
            del grad_a3
            w2 = _folded(b.conv2_weight, b.scale3)
            grad_a2, grad_w2 = _conv_backward(grad_z2, a2, w2, args, need_weight=needs.conv2_weight)
            del grad_z2
            grad_z1 = relu_backward_(grad_a2, a2)
            del grad_a2
            a1 = _pre_activation(x, b)
            if b is not blocks[0]:
                out = x  # the previous block's output
            del x
            w1 = _folded(b.conv1_weight, b.scale2)
            grad_a1, grad_w1 = _conv_backward(grad_z1, a1, w1, None, need_weight=needs.conv1_weight)
            del grad_z1
            # The ReLU's backward (its output's threshold, as autograd's) and the affine's, plus
            # the identity shortcut's gradient; in place, the same values.
            relu_backward_(grad_a1, a1)
            del a1
            grad = torch.addcmul(grad, grad_a1, _per_channel(b.scale1, grad_a1), out=grad_a1)
            del grad_a1
            # The folded weights' products, backward as autograd's: times the other factor.
            if grad_w1 is not None:
                grad_w1 = _folded(grad_w1, b.scale2)
            if grad_w2 is not None:
                grad_w2 = _folded(grad_w2, b.scale3)
            block_grads.append(FoldedBlock(grad_w1, grad_w2, grad_w3, *[None] * 6))
        return (grad, grad_prefix, None, *[g for grads in reversed(block_grads) for g in grads])


class _Kept(NamedTuple):
    """What a recovering block keeps: conv2's and conv3's inputs."""

    a2: torch.Tensor
    a3: torch.Tensor


def _chunks(values: Sequence, record: type) -> list:
    """``values`` as consecutive records of type ``record`` (a NamedTuple)."""
    size = len(record._fields)
    return [record(*values[k : k + size]) for k in range(0, len(values), size)]


def recovering_blocks(
    x: torch.Tensor,
    blocks: Sequence[FoldedBlock],
    conv2_args: Sequence[Conv2Args],
    *,
    prefix: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``x`` through a run of identity-shortcut blocks (their tensors ``blocks``), recovering each
    block's input from its output in the backward pass instead of keeping its activation.

    ``prefix``: return ``torch.cat([prefix, output], dim=1)`` instead (a refinement stage's output,
    held by the stages that read it), and find the output in it in the backward pass instead of
    keeping it apart."""
    flat = [t for b in blocks for t in b]
    return _RecoveredBlocks.apply(x, prefix, tuple(conv2_args), *flat)

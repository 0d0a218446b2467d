"""FrozenBN computed with fewer passes over the activations (``MODEL.FISHNET.FOLD_FROZEN_BN``).

A FrozenBN is a fixed per-channel affine ``y * scale + shift``. Directly after a convolution it
is folded into it: ``norm(conv(x, w)) = conv(x, w * scale, bias=shift)``, exactly, in training too
(the folded weight is recomputed from the trainable ``w`` at every call, and autograd takes the
gradient through the product). The convolution then writes the normalized map itself: one
elementwise pass over the activations less forward, and one less backward. A FrozenBN before a
convolution (a pre-activation, FishNet's ``norm1``) is one fused multiply-add
(:class:`FusedFrozenBatchNorm2d`) instead of Detectron2's multiply, then add.

BatchNorm in training normalizes by batch statistics, GroupNorm by each sample's: neither is an
affine of the convolution's output that the convolution could compute; they are left alone.
"""

from typing import Tuple

import torch
import torch.nn.functional as F
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

from ..blocks import ConvNormReLU, GroupedPreActBottleneck, PreActBottleneck, ScoreUnit
from .substitute import substitute

__all__ = [
    "FusedFrozenBatchNorm2d",
    "FoldedPreActBottleneck",
    "FoldedConvNormReLU",
    "FoldedScoreUnit",
    "fold_frozen_batchnorm",
]


class FusedFrozenBatchNorm2d(FrozenBatchNorm2d):
    """Detectron2's FrozenBatchNorm2d (same buffers, same state_dict), whose training-time
    affine ``x * scale + bias`` is one fused multiply-add: one pass over ``x`` instead of two.

    FishNet's pre-activation blocks normalize every block input at full width, so this affine
    is a good part of their elementwise work (Detectron2's ResNets normalize conv outputs).
    """

    def scale_shift(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(scale, shift)``, the affine this norm is: ``norm(y) = y * scale + shift`` per channel."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def fold_into(self, conv_weight: torch.Tensor, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(weight, bias)`` of the one convolution that computes this norm of a bias-free
        convolution with ``conv_weight``: ``conv_weight * scale`` per output channel (keeping its
        memory format), and ``shift`` in ``dtype``. The caller runs them through ``F.conv2d``
        with that convolution's stride, padding, dilation and groups."""
        scale, shift = self.scale_shift()
        return conv_weight * scale.reshape(-1, 1, 1, 1).to(conv_weight.dtype), shift.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:  # as Detectron2 does, an affine, not F.batch_norm (which keeps x)
            scale, bias = self.scale_shift()
            scale = scale.reshape(1, -1, 1, 1).to(x.dtype)
            return torch.addcmul(bias.reshape(1, -1, 1, 1).to(x.dtype), x, scale)
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, training=False, eps=self.eps
        )


class FoldedPreActBottleneck(PreActBottleneck):
    """:class:`PreActBottleneck` with its FrozenBN ``norm2`` folded into ``conv1`` and ``norm3``
    into ``conv2`` (grouped blocks too: the groups are conv2's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(x), inplace=self.relu1_inplace)
        c1 = self.conv1
        weight, bias = self.norm2.fold_into(c1.weight, out.dtype)
        out = F.relu_(F.conv2d(out, weight, bias, c1.stride, c1.padding, c1.dilation, c1.groups))
        c2 = self.conv2  # (TorchScript: one module per assignment, not a tuple of modules)
        weight, bias = self.norm3.fold_into(c2.weight, out.dtype)
        out = F.relu_(F.conv2d(out, weight, bias, c2.stride, c2.padding, c2.dilation, c2.groups))
        out = self.conv3(out)
        out += self.shortcut(x)
        return out


class FoldedConvNormReLU(ConvNormReLU):
    """:class:`ConvNormReLU` with its FrozenBN folded into the convolution."""

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        """``norm(conv(x))``, before the ReLU: one convolution."""
        c = self.conv
        weight, bias = self.norm.fold_into(c.weight, x.dtype)
        return F.conv2d(x, weight, bias, c.stride, c.padding, c.dilation, c.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu_(self.normalized(x))


class FoldedScoreUnit(ScoreUnit):
    """:class:`ScoreUnit` with its FrozenBN ``norm2`` folded into ``conv1``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(x))
        c1 = self.conv1
        weight, bias = self.norm2.fold_into(c1.weight, x.dtype)
        x = F.relu(F.conv2d(x, weight, bias, c1.stride, c1.padding, c1.dilation, c1.groups))
        if self.global_pool:
            x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(x)


def fold_frozen_batchnorm(model: nn.Module) -> nn.Module:
    """Every Detectron2 ``FrozenBatchNorm2d`` in ``model`` computed as a
    :class:`FusedFrozenBatchNorm2d`, and every FrozenBN after a convolution folded into it, in
    place; ``model`` is returned. Norms that are not FrozenBN (BatchNorm, GroupNorm) are left
    alone: run it after freezing. The state_dict is unchanged."""
    for module in model.modules():
        if type(module) is FrozenBatchNorm2d:
            substitute(module, FusedFrozenBatchNorm2d)
    for module in model.modules():
        if type(module) in (PreActBottleneck, GroupedPreActBottleneck):
            if _fused(module.norm2) and _fused(module.norm3):
                substitute(module, FoldedPreActBottleneck)
        elif type(module) is ConvNormReLU and _fused(module.norm):
            substitute(module, FoldedConvNormReLU)
        elif type(module) is ScoreUnit and _fused(module.norm2):
            substitute(module, FoldedScoreUnit)
    return model


def _fused(norm: nn.Module) -> bool:
    return isinstance(norm, FusedFrozenBatchNorm2d)

"""FishNet's building blocks: the pre-activation bottleneck, its shortcuts, and the small units.

Every module here takes explicit arguments; none reads a config.
"""

import math
from typing import Union

import torch
import torch.nn.functional as F
from detectron2.layers import CNNBlockBase, FrozenBatchNorm2d, get_norm
from torch import nn

from .errors import InvalidValue

__all__ = [
    "FusedFrozenBatchNorm2d",
    "make_norm",
    "FishNetBlockBase",
    "ChannelSumReduction",
    "PreActProjection",
    "PreActBottleneck",
    "ConvNormReLU",
    "ScoreUnit",
    "SqueezeExcitation",
    "conv_init_",
    "relu_may_overwrite",
]

Norm = Union[str, type, None]


class FusedFrozenBatchNorm2d(FrozenBatchNorm2d):
    """Detectron2's FrozenBatchNorm2d (same buffers, same state_dict), whose training-time
    affine ``x * scale + bias`` is one fused multiply-add: one pass over ``x`` instead of two.

    FishNet's pre-activation blocks normalize every block input at full width, so this affine
    is a good part of their elementwise work (Detectron2's ResNets normalize conv outputs).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:  # as Detectron2 does, an affine, not F.batch_norm (which keeps x)
            scale = self.weight * (self.running_var + self.eps).rsqrt()
            bias = self.bias - self.running_mean * scale
            scale = scale.reshape(1, -1, 1, 1).to(x.dtype)
            return torch.addcmul(bias.reshape(1, -1, 1, 1).to(x.dtype), x, scale)
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, training=False, eps=self.eps
        )


NORMS = "FrozenBN, BN, SyncBN, nnSyncBN, naiveSyncBN, GN, '' (none), or what your detectron2's get_norm accepts"


def make_norm(norm: Norm, channels: int) -> nn.Module:
    """``detectron2.layers.get_norm``, with ``nn.Identity`` where it returns no module (norm="").

    "FrozenBN" is :class:`FusedFrozenBatchNorm2d`, a faster Detectron2 FrozenBatchNorm2d.
    "GN" is Detectron2's GroupNorm with 32 groups where the width is a multiple of 32; FishNet
    also normalizes widths that are not (16, 80, 208, 400 in the official variants), which get
    ``gcd(32, C)`` groups instead of an error.
    """
    if norm == "FrozenBN":
        return FusedFrozenBatchNorm2d(channels)
    if norm == "GN" and channels % 32:
        return nn.GroupNorm(math.gcd(32, channels), channels)
    try:
        module = get_norm(norm, channels)
    except (KeyError, ValueError, TypeError):
        raise InvalidValue("norm", norm, f"allowed {NORMS}") from None
    return nn.Identity() if module is None else module


class FishNetBlockBase(CNNBlockBase):
    """Detectron2's ``CNNBlockBase`` whose :meth:`freeze` installs :class:`FusedFrozenBatchNorm2d`,
    so that a frozen stage runs the same (faster) FrozenBN as ``norm="FrozenBN"``."""

    def freeze(self) -> "FishNetBlockBase":
        """No gradients for the parameters; every BatchNorm becomes a FusedFrozenBatchNorm2d."""
        for p in self.parameters():
            p.requires_grad = False
        FusedFrozenBatchNorm2d.convert_frozen_batchnorm(self)
        return self


def relu_may_overwrite(norm: nn.Module) -> bool:
    """Whether a pre-activation's ReLU may overwrite ``norm(x)`` in place (one memory pass and
    one allocation less). Detectron2's norms return a new tensor that nothing else holds: their
    backward keeps their input, not their output. Without a norm (``nn.Identity``) it is ``x``
    itself, which the shortcut still reads.
    """
    return not isinstance(norm, nn.Identity)


def conv_init_(conv: nn.Conv2d) -> None:
    """The official initialisation: weights ~ N(0, sqrt(2 / (k * k * C_out))).

    That is He's "fan_out" normal init. Biases keep PyTorch's default, as in the official model.
    """
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")


class ChannelSumReduction(nn.Module):
    """The channel-wise reduction ``r`` of the UR-block (paper, eq. 8); it has no weights.

    Sums each group of ``k`` adjacent input channels into one output channel:
    ``x.view(n, c // k, k, h, w).sum(2)``.
    """

    def __init__(self, k: int):
        super().__init__()
        if k < 2:
            raise ValueError(f"ChannelSumReduction(k={k}): k must be >= 2 (k=1 is the identity)")
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.view(n, c // self.k, self.k, h, w).sum(2)


class PreActProjection(nn.Module):
    """A pre-activated 1x1 projection shortcut, ``norm-ReLU-conv1x1`` (the paper's "I-conv")."""

    def __init__(self, in_channels: int, out_channels: int, *, norm: Norm = "BN"):
        super().__init__()
        self.norm = make_norm(norm, in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        conv_init_(self.conv)
        self.relu_inplace = relu_may_overwrite(self.norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.relu(self.norm(x), inplace=self.relu_inplace))


class PreActBottleneck(FishNetBlockBase):
    """The pre-activation bottleneck residual unit, ``x_{l+1} = x_l + F(x_l)`` (paper, eq. 1).

    ``F`` is ``norm-ReLU-conv1x1(C_in -> C/4) - norm-ReLU-conv3x3(C/4, dilation) -
    norm-ReLU-conv1x1(C/4 -> C)``. The shortcut is the identity when ``C_in == C``; otherwise it
    is passed in: a :class:`PreActProjection` (tail and bridge) or a :class:`ChannelSumReduction`
    (first block of a UR-block, where it is the ``r`` of eq. 6).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        shortcut: nn.Module,
        dilation: int = 1,
        norm: Norm = "BN",
    ):
        super().__init__(in_channels, out_channels, stride=1)
        bottleneck_channels = out_channels // 4
        self.norm1 = make_norm(norm, in_channels)
        self.conv1 = nn.Conv2d(in_channels, bottleneck_channels, kernel_size=1, bias=False)
        self.norm2 = make_norm(norm, bottleneck_channels)
        self.conv2 = nn.Conv2d(
            bottleneck_channels,
            bottleneck_channels,
            kernel_size=3,
            padding=dilation,
            dilation=dilation,
            bias=False,
        )
        self.norm3 = make_norm(norm, bottleneck_channels)
        self.conv3 = nn.Conv2d(bottleneck_channels, out_channels, kernel_size=1, bias=False)
        self.shortcut = shortcut
        for conv in (self.conv1, self.conv2, self.conv3):
            conv_init_(conv)
        self.relu1_inplace = relu_may_overwrite(self.norm1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x), inplace=self.relu1_inplace))
        # From here on `out` is a convolution's output, which its backward does not keep:
        # overwriting it (or its norm's output) in place is safe.
        out = self.conv2(F.relu_(self.norm2(out)))
        out = self.conv3(F.relu_(self.norm3(out)))
        out += self.shortcut(x)
        return out


class ConvNormReLU(FishNetBlockBase):
    """``conv3x3 - norm - ReLU``: one of the stem's three units."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, norm: Norm = "BN"):
        super().__init__(in_channels, out_channels, stride)
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm = make_norm(norm, out_channels)
        conv_init_(self.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu_(self.norm(self.conv(x)))


class ScoreUnit(nn.Module):
    """The official "score" unit: ``norm-ReLU-conv1x1(C -> C/2)-norm-ReLU``, then ``conv1x1(bias)``.

    The bridge uses it without pooling to produce ``s`` (``C -> 2C``); the classifier with a global
    average pool before the last conv (``C -> classes``).
    """

    def __init__(self, in_channels: int, out_channels: int, *, global_pool: bool, norm: Norm = "BN"):
        super().__init__()
        mid_channels = in_channels // 2
        self.norm1 = make_norm(norm, in_channels)
        self.conv1 = nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False)
        self.norm2 = make_norm(norm, mid_channels)
        self.global_pool = global_pool
        self.fc = nn.Conv2d(mid_channels, out_channels, kernel_size=1, bias=True)
        conv_init_(self.conv1)
        conv_init_(self.fc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm2(self.conv1(F.relu(self.norm1(x)))))
        if self.global_pool:
            x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(x)


class SqueezeExcitation(nn.Module):
    """The bridge's SE unit: ``norm-ReLU-global pool-conv1x1(bias)-ReLU-conv1x1(bias)-sigmoid``.

    It maps ``in_channels`` to ``out_channels`` attention weights through ``out_channels // 16``
    channels (paper, sec. 3.2: "we apply a SE-block [11] here").
    """

    def __init__(self, in_channels: int, out_channels: int, *, norm: Norm = "BN"):
        super().__init__()
        squeezed_channels = out_channels // 16
        self.norm = make_norm(norm, in_channels)
        self.squeeze = nn.Conv2d(in_channels, squeezed_channels, kernel_size=1, bias=True)
        self.excite = nn.Conv2d(squeezed_channels, out_channels, kernel_size=1, bias=True)
        conv_init_(self.squeeze)
        conv_init_(self.excite)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(F.relu(self.norm(x)), 1)
        return torch.sigmoid(self.excite(F.relu(self.squeeze(x))))

"""FishNet's building blocks: the pre-activation bottleneck, its shortcuts, and the small units.

Every module here takes explicit arguments; none reads a config.
"""

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from detectron2.layers import CNNBlockBase, get_norm
from torch import nn

from .errors import InvalidValue

__all__ = [
    "make_norm",
    "ChannelSumReduction",
    "PreActProjection",
    "PreActBottleneck",
    "GroupedPreActBottleneck",
    "ConvNormReLU",
    "ScoreUnit",
    "SqueezeExcitation",
    "conv_init_",
    "relu_may_overwrite",
]

Norm = Union[str, type, None]


NORMS = "FrozenBN, BN, SyncBN, nnSyncBN, naiveSyncBN, GN, '' (none), or what your detectron2's get_norm accepts"


def make_norm(norm: Norm, channels: int) -> nn.Module:
    """``detectron2.layers.get_norm``, with ``nn.Identity`` where it returns no module (norm="").

    "GN" is Detectron2's GroupNorm with 32 groups where the width is a multiple of 32; FishNet
    also normalizes widths that are not (16, 80, 208, 400 in the official variants), which get
    ``gcd(32, C)`` groups instead of an error.
    """
    if norm == "GN" and channels % 32:
        return nn.GroupNorm(math.gcd(32, channels), channels)
    try:
        module = get_norm(norm, channels)
    except (KeyError, ValueError, TypeError):
        raise InvalidValue("norm", norm, f"allowed {NORMS}") from None
    return nn.Identity() if module is None else module


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
    """A pre-activated 1x1 projection shortcut, ``norm-ReLU-conv1x1`` (the paper's "I-conv").

    With ``stride=2`` it is the shortcut of a block that down-samples (``downsample="conv"``, the
    "1x1 convolution on the skip connection" of the paper's Table 2 footnote).
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, norm: Norm = "BN"):
        super().__init__()
        self.norm = make_norm(norm, in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)
        conv_init_(self.conv)
        self.relu_inplace = relu_may_overwrite(self.norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.relu(self.norm(x), inplace=self.relu_inplace))


class PreActBottleneck(CNNBlockBase):
    """The pre-activation bottleneck residual unit, ``x_{l+1} = x_l + F(x_l)`` (paper, eq. 1):
    FishNet's building block, "the Residual block with identity mapping" (sec. 4.1).

    ``F`` is ``norm-ReLU-conv1x1(C_in -> C/4) - norm-ReLU-conv3x3(C/4, stride, dilation) -
    norm-ReLU-conv1x1(C/4 -> C)``. The shortcut is the identity when ``C_in == C`` and
    ``stride == 1``; otherwise it is passed in: a :class:`PreActProjection` (tail and bridge;
    strided in a block that down-samples) or a :class:`ChannelSumReduction` (first block of a
    UR-block, where it is the ``r`` of eq. 6).

    ``stride=2`` (``downsample="conv"``, paper Table 2): the 3x3 conv carries the stride, as in
    ResNeXt's and pre-activation ResNet's (fb.resnet.torch) blocks, rather than the first 1x1
    conv, which would skip three quarters of its input.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        shortcut: nn.Module,
        stride: int = 1,
        dilation: int = 1,
        bottleneck_channels: Optional[int] = None,
        groups: int = 1,
        norm: Norm = "BN",
    ):
        """``bottleneck_channels`` (default ``out_channels // 4``, FishNet's) and ``groups`` (of
        the 3x3 conv) are set by :class:`GroupedPreActBottleneck`, FishNeXt's block."""
        if bottleneck_channels is None:
            bottleneck_channels = out_channels // 4
        super().__init__(in_channels, out_channels, stride=stride)
        self.norm1 = make_norm(norm, in_channels)
        self.conv1 = nn.Conv2d(in_channels, bottleneck_channels, kernel_size=1, bias=False)
        self.norm2 = make_norm(norm, bottleneck_channels)
        self.conv2 = nn.Conv2d(
            bottleneck_channels,
            bottleneck_channels,
            kernel_size=3,
            stride=stride,
            padding=dilation,
            dilation=dilation,
            groups=groups,
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
        # From here on `out` is a convolution's output or its norm's, which their backward does
        # not keep: the ReLUs may overwrite it.
        out = self.conv2(F.relu_(self.norm2(out)))
        out = self.conv3(F.relu_(self.norm3(out)))
        out += self.shortcut(x)
        return out


class GroupedPreActBottleneck(PreActBottleneck):
    """FishNeXt's building block, "the Residual block with identity mapping and grouping [29]"
    (paper, sec. 4.1 and 4.2): :class:`PreActBottleneck` with ResNeXt's grouped bottleneck.

    ``F`` is ``norm-ReLU-conv1x1(C_in -> C/2) - norm-ReLU-conv3x3(C/2, groups of group_width) -
    norm-ReLU-conv1x1(C/2 -> C)``. The paper gives only the group width; the bottleneck width is
    ResNeXt's template (ResNeXt-50 32x4d: 128 bottleneck channels for 256 outputs, twice a ResNet
    bottleneck's C/4), which grouping pays for: FishNeXt-150 (4d) then has about FishNet-150's
    parameters, as the paper's Table 1 (26.2M vs 26.4M). The shortcut is :class:`PreActBottleneck`'s,
    unchanged: a channel-wise summation ``r`` has no weights to group.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        group_width: int,
        shortcut: nn.Module,
        stride: int = 1,
        dilation: int = 1,
        norm: Norm = "BN",
    ):
        bottleneck_channels = out_channels // 2
        if group_width < 1 or bottleneck_channels % group_width:
            raise InvalidValue(
                "group_width",
                group_width,
                f"must divide the block's {bottleneck_channels} bottleneck channels ({out_channels} out_channels / 2)",
            )
        super().__init__(
            in_channels,
            out_channels,
            shortcut=shortcut,
            stride=stride,
            dilation=dilation,
            bottleneck_channels=bottleneck_channels,
            groups=bottleneck_channels // group_width,
            norm=norm,
        )
        self.group_width = group_width


class ConvNormReLU(CNNBlockBase):
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

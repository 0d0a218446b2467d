"""FishNet's stages: stem, tail, bridge, body (UR-blocks) and head (DR-blocks).

Each stage knows its output ``level`` (stride ``2**level``) and the ``name`` of its output feature,
both given by the FishNet that builds it (from its FishNetArch).
"""

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import CNNBlockBase

from .blocks import (
    ChannelSumReduction,
    ConvNormReLU,
    GroupedPreActBottleneck,
    Norm,
    PreActBottleneck,
    PreActProjection,
    ScoreUnit,
    SqueezeExcitation,
)
from .errors import InvalidValue

__all__ = [
    "DOWNSAMPLINGS",
    "ResidualBlocks",
    "FishStage",
    "FishStem",
    "TailStage",
    "Bridge",
    "RefinementStage",
    "UpRefinementStage",
    "DownRefinementStage",
]


def bottleneck(
    in_channels: int,
    out_channels: int,
    *,
    shortcut: nn.Module,
    group_width: int = 0,
    stride: int = 1,
    dilation: int = 1,
    norm: Norm = "BN",
) -> PreActBottleneck:
    """The building block (paper, sec. 4.1): FishNet's pre-activation bottleneck, or with
    ``group_width > 0`` FishNeXt's grouped one."""
    if group_width:
        return GroupedPreActBottleneck(
            in_channels,
            out_channels,
            group_width=group_width,
            shortcut=shortcut,
            stride=stride,
            dilation=dilation,
            norm=norm,
        )
    return PreActBottleneck(
        in_channels, out_channels, shortcut=shortcut, stride=stride, dilation=dilation, norm=norm
    )


class ResidualBlocks(nn.Sequential):
    """A run of residual blocks, applied in order (an ``nn.Sequential``: blocks named 0, 1, ...)."""


def residual_blocks(
    in_channels: int,
    out_channels: int,
    num_blocks: int,
    *,
    first_shortcut: nn.Module,
    group_width: int = 0,
    dilation: int = 1,
    norm: Norm = "BN",
) -> ResidualBlocks:
    """``num_blocks`` residual blocks (:func:`bottleneck`); only the first changes the width."""
    blocks: List[nn.Module] = [
        bottleneck(
            in_channels,
            out_channels,
            shortcut=first_shortcut,
            group_width=group_width,
            dilation=dilation,
            norm=norm,
        )
    ]
    for _ in range(num_blocks - 1):
        blocks.append(
            bottleneck(
                out_channels,
                out_channels,
                shortcut=nn.Identity(),
                group_width=group_width,
                dilation=dilation,
                norm=norm,
            )
        )
    return ResidualBlocks(*blocks)


def projection_or_identity(in_channels: int, out_channels: int, norm: Norm) -> nn.Module:
    if in_channels == out_channels:
        return nn.Identity()
    return PreActProjection(in_channels, out_channels, norm=norm)


def transfer_blocks(channels: int, num_blocks: int, *, group_width: int = 0, norm: Norm = "BN") -> ResidualBlocks:
    """The transfer function ``T``: residual blocks that keep the width (paper, eq. 7 and 9)."""
    return residual_blocks(
        channels, channels, num_blocks, first_shortcut=nn.Identity(), group_width=group_width, norm=norm
    )


# The values of ``downsample`` (FishNetArch.downsample says what each is; paper, Table 2): a pool
# after the residual blocks, or "conv", the last block strided (blocks_then_downsampling). "max3"
# pads by 1 so that it halves an even size exactly, as the 2x2 pools do (and the stem's 3x3 pool).
POOLS = {
    "max2": lambda: nn.MaxPool2d(kernel_size=2, stride=2),
    "max3": lambda: nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    "avg2": lambda: nn.AvgPool2d(kernel_size=2, stride=2),
}
DOWNSAMPLINGS = (*POOLS, "conv")


def blocks_then_downsampling(
    in_channels: int,
    out_channels: int,
    num_blocks: int,
    *,
    downsample: str,
    group_width: int,
    dilation: int,
    norm: Norm,
) -> Tuple[ResidualBlocks, nn.Module]:
    """The residual blocks of a tail stage or of a DR-block's ``M``, and what then halves the
    resolution: ``(blocks, down)``, ``down(blocks(x))`` the stage's down-sampled map.

    A pool (``downsample`` "max2", "max3", "avg2"): ``num_blocks`` blocks, the first with a
    projection where the width changes, then the pool. No conv on a head block's skip connection,
    as the paper's Table 2 footnote: "we do not use such convolution at the head".

    "conv": the last of the ``num_blocks`` blocks carries the stride (in its 3x3 conv) and has a
    strided 1x1 conv on its skip connection, in the tail and in the head alike (Table 2 footnote:
    "When convolution with a stride of 2 is used, it is used for both the tail and the head", with
    the 1x1 convolution "on the skip connection of the last residual blocks for each stage").
    ``blocks`` are the ``num_blocks - 1`` others (none for one block: that block then changes the
    width too). The depth stays the variant's; what the strided convs add is the paper's extra
    parameters of stride-2 convolution (FishNet-150: 30.2M vs 26.4M).
    """
    if downsample in POOLS:
        blocks = residual_blocks(
            in_channels,
            out_channels,
            num_blocks,
            first_shortcut=projection_or_identity(in_channels, out_channels, norm),
            group_width=group_width,
            dilation=dilation,
            norm=norm,
        )
        return blocks, POOLS[downsample]()
    if downsample != "conv":
        raise InvalidValue("downsample", downsample, f"allowed {list(DOWNSAMPLINGS)}")
    blocks = ResidualBlocks()
    strided_in_channels = in_channels
    if num_blocks > 1:
        blocks = residual_blocks(
            in_channels,
            out_channels,
            num_blocks - 1,
            first_shortcut=projection_or_identity(in_channels, out_channels, norm),
            group_width=group_width,
            dilation=dilation,
            norm=norm,
        )
        strided_in_channels = out_channels
    down = bottleneck(
        strided_in_channels,
        out_channels,
        shortcut=PreActProjection(strided_in_channels, out_channels, stride=2, norm=norm),
        group_width=group_width,
        stride=2,
        dilation=dilation,
        norm=norm,
    )
    return blocks, down


class FishStage(CNNBlockBase):
    """What every stage shares: the ``name`` and ``level`` (stride ``2**level``) of its output."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, *, name: str, level: int):
        super().__init__(in_channels, out_channels, stride)
        self.name = name
        self.level = level


class FishStem(FishStage):
    """Three ``conv3x3-norm-ReLU`` units (the first with stride 2), then 3x3 max-pool, stride 2.

    ``conv1`` is the only convolution that sees the full-resolution input; the paper froze it
    for COCO ("the conv weights at 224x224 resolution").
    """

    def __init__(self, in_channels: int, out_channels: int, *, name: str, level: int, norm: Norm = "BN"):
        """``level``: where its two stride-2 steps end (FishNetArch.stem_level)."""
        super().__init__(in_channels, out_channels, stride=2**level, name=name, level=level)
        self.conv1 = ConvNormReLU(in_channels, out_channels // 2, stride=2, norm=norm)
        self.conv2 = ConvNormReLU(out_channels // 2, out_channels // 2, norm=norm)
        self.conv3 = ConvNormReLU(out_channels // 2, out_channels, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(self.conv3(self.conv2(self.conv1(x))), kernel_size=3, stride=2, padding=1)


class TailStage(FishStage):
    """A tail stage: residual blocks, then down-sampling (paper, sec. 3; by default 2x2 max-pool with
    stride 2, the others of Table 2 by ``downsample``: :func:`blocks_then_downsampling`)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: int,
        *,
        name: str,
        level: int,
        group_width: int = 0,
        downsample: str = "max2",
        norm: Norm = "BN",
    ):
        super().__init__(in_channels, out_channels, stride=2, name=name, level=level)
        self.blocks, self.down = blocks_then_downsampling(
            in_channels,
            out_channels,
            num_blocks,
            downsample=downsample,
            group_width=group_width,
            dilation=1,
            norm=norm,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.blocks(x))


class Bridge(FishStage):
    """The bridge between tail and body, at the lowest resolution: ``R(s) * a + a``.

    ``s`` is the score unit's output (``C -> C/2 -> 2C``), ``a = SE(s)`` its channel attention
    (``2C -> C``) and ``R`` residual blocks (``2C -> C``). Paper, sec. 3.2 ("Bridge module").
    In FishNeXt the blocks ``R`` are grouped, as every residual block; the score and SE units are
    1x1 convs, which grouping (of 3x3 convs) leaves as they are.
    """

    def __init__(
        self, channels: int, num_blocks: int, *, name: str, level: int, group_width: int = 0, norm: Norm = "BN"
    ):
        super().__init__(channels, channels, stride=1, name=name, level=level)
        self.score = ScoreUnit(channels, 2 * channels, global_pool=False, norm=norm)
        self.attention = SqueezeExcitation(2 * channels, channels, norm=norm)
        self.blocks = residual_blocks(
            2 * channels,
            channels,
            num_blocks,
            first_shortcut=PreActProjection(2 * channels, channels, norm=norm),
            group_width=group_width,
            norm=norm,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.score(x)
        a = self.attention(s)
        return self.blocks(s) * a + a


class RefinementStage(FishStage):
    """What UR- and DR-blocks share: residual blocks ``refine`` that refine the incoming map ``x``
    (``M`` and its shortcut), and transfer blocks ``T`` that carry ``lateral`` over from the
    previous part; the output concatenates the two. Subclasses build ``refine``, resample and
    concatenate."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        refine: nn.Module,
        transfer: nn.Module,
        name: str,
        level: int,
        stride: int,
    ):
        super().__init__(in_channels, out_channels, stride, name=name, level=level)
        self.refine = refine
        self.transfer = transfer


class UpRefinementStage(RefinementStage):
    """A body stage, the UR-block: ``concat(up(r(x) + M(x)), T(lateral))`` (paper, eq. 5-7).

    ``x`` is the previous body stage's output (or the bridge's); ``lateral`` is the tail feature at
    this stage's output resolution. ``r + M`` are residual blocks whose first one reduces the width
    by channel-wise summation (eq. 8); ``up`` is nearest-neighbour x2. As in the official model,
    the stage's output is taken after the concatenation, so eq. 7's ``concat`` of one stage and
    eq. 6's refinement of the next run in the same order as in the paper.

    ``group_width`` is that of ``M`` (at the input's resolution), ``transfer_group_width`` that of
    ``T`` (at the output's); 0 for FishNet's ungrouped blocks.
    """

    def __init__(
        self,
        in_channels: int,
        refined_channels: int,
        lateral_channels: int,
        *,
        num_blocks: int,
        num_transfer_blocks: int,
        dilation: int,
        name: str,
        level: int,
        group_width: int = 0,
        transfer_group_width: int = 0,
        norm: Norm = "BN",
    ):
        k = in_channels // refined_channels
        super().__init__(
            in_channels,
            refined_channels + lateral_channels,
            refine=residual_blocks(
                in_channels,
                refined_channels,
                num_blocks,
                first_shortcut=ChannelSumReduction(k) if k > 1 else nn.Identity(),
                group_width=group_width,
                dilation=dilation,
                norm=norm,
            ),
            transfer=transfer_blocks(
                lateral_channels, num_transfer_blocks, group_width=transfer_group_width, norm=norm
            ),
            name=name,
            level=level,
            stride=1,  # it up-samples x2
        )

    def forward(self, x: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.refine(x), scale_factor=2.0, mode="nearest")
        return torch.cat([up, self.transfer(lateral)], dim=1)


class DownRefinementStage(RefinementStage):
    """A head stage, the DR-block: ``concat(down(x + M(x)), T(lateral))`` (paper, eq. 9).

    ``x`` is the previous head stage's output (or the last body stage's); ``lateral`` is the body
    feature (or the bridge's) at this stage's output resolution. ``x + M(x)`` are residual blocks
    without channel reduction; ``down`` is by default 2x2 max-pool with stride 2 (the others of
    the paper's Table 2 by ``downsample``: :func:`blocks_then_downsampling`; with "conv" the last
    block of ``M`` is ``down``).

    ``forward`` returns the refined map before down-sampling too (``refined_channels`` wide): the
    first head stage's is the head's stride-4 feature.
    """

    def __init__(
        self,
        in_channels: int,
        refined_channels: int,
        lateral_channels: int,
        *,
        num_blocks: int,
        num_transfer_blocks: int,
        name: str,
        level: int,
        dilation: int = 1,
        group_width: int = 0,
        transfer_group_width: int = 0,
        downsample: str = "max2",
        norm: Norm = "BN",
    ):
        # The official variants never change the width here; a custom one may (as the official
        # code allows), through a projection.
        refine, down = blocks_then_downsampling(
            in_channels,
            refined_channels,
            num_blocks,
            downsample=downsample,
            group_width=group_width,
            dilation=dilation,
            norm=norm,
        )
        super().__init__(
            in_channels,
            refined_channels + lateral_channels,
            refine=refine,
            transfer=transfer_blocks(
                lateral_channels, num_transfer_blocks, group_width=transfer_group_width, norm=norm
            ),
            name=name,
            level=level,
            stride=2,
        )
        self.down = down
        # With "conv" and one block, that block is the down-sampling: the map before it is x.
        self.refined_channels = refined_channels if len(refine) else in_channels

    def forward(self, x: torch.Tensor, lateral: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        refined = self.refine(x)
        return refined, torch.cat([self.down(refined), self.transfer(lateral)], dim=1)

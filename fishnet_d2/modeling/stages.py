"""FishNet's stages: stem, tail, bridge, body (UR-blocks) and head (DR-blocks).

Each stage knows its output ``level`` (stride ``2**level``) and the ``name`` of its output feature.
"""

from typing import Any, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import (
    ChannelSumReduction,
    ConvNormReLU,
    FishNetBlockBase,
    Norm,
    PreActBottleneck,
    PreActProjection,
    ScoreUnit,
    SqueezeExcitation,
)
from .recompute import recompute_in_backward

__all__ = [
    "FishStage",
    "FishStem",
    "TailStage",
    "Bridge",
    "RefinementStage",
    "UpRefinementStage",
    "DownRefinementStage",
]


def residual_blocks(
    in_channels: int,
    out_channels: int,
    num_blocks: int,
    *,
    first_shortcut: nn.Module,
    dilation: int = 1,
    norm: Norm = "BN",
) -> nn.Sequential:
    """``num_blocks`` pre-activation bottlenecks; only the first changes the width."""
    blocks: List[nn.Module] = [
        PreActBottleneck(
            in_channels, out_channels, shortcut=first_shortcut, dilation=dilation, norm=norm
        )
    ]
    for _ in range(num_blocks - 1):
        blocks.append(
            PreActBottleneck(
                out_channels, out_channels, shortcut=nn.Identity(), dilation=dilation, norm=norm
            )
        )
    return nn.Sequential(*blocks)


def projection_or_identity(in_channels: int, out_channels: int, norm: Norm) -> nn.Module:
    if in_channels == out_channels:
        return nn.Identity()
    return PreActProjection(in_channels, out_channels, norm=norm)


def transfer_blocks(channels: int, num_blocks: int, norm: Norm) -> nn.Sequential:
    """The transfer function ``T``: residual blocks that keep the width (paper, eq. 7 and 9)."""
    return residual_blocks(
        channels, channels, num_blocks, first_shortcut=nn.Identity(), norm=norm
    )


class FishStage(FishNetBlockBase):
    """What every stage shares: the ``name`` and ``level`` (stride ``2**level``) of its output, and
    how it runs in training. With ``recompute_in_backward`` (FishNet's ``activation_checkpointing``,
    set when the model is built), a training forward keeps only the stage's inputs, and the
    backward pass runs the stage again for the rest. ``forward`` is the data flow either way.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, *, name: str, level: int):
        super().__init__(in_channels, out_channels, stride)
        self.name = name
        self.level = level
        self.recompute_in_backward = False

    def __call__(self, *inputs: torch.Tensor) -> Any:
        # TorchScript compiles forward only: a scripted FishNet never recomputes, as in eval.
        if self.recompute_in_backward and self.training and torch.is_grad_enabled() and not torch.jit.is_tracing():
            return recompute_in_backward(self, super().__call__, *inputs)
        return super().__call__(*inputs)


class FishStem(FishStage):
    """Three ``conv3x3-norm-ReLU`` units (the first with stride 2), then 3x3 max-pool, stride 2.

    ``conv1`` is the only convolution that sees the full-resolution input; the paper froze it
    for COCO ("the conv weights at 224x224 resolution").
    """

    def __init__(self, in_channels: int, out_channels: int, *, norm: Norm = "BN"):
        super().__init__(in_channels, out_channels, stride=4, name="stem", level=2)
        self.conv1 = ConvNormReLU(in_channels, out_channels // 2, stride=2, norm=norm)
        self.conv2 = ConvNormReLU(out_channels // 2, out_channels // 2, norm=norm)
        self.conv3 = ConvNormReLU(out_channels // 2, out_channels, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3(self.conv2(self.conv1(x)))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class TailStage(FishStage):
    """A tail stage: residual blocks, then 2x2 max-pool with stride 2 (paper, sec. 3)."""

    def __init__(
        self, in_channels: int, out_channels: int, num_blocks: int, *, level: int, norm: Norm = "BN"
    ):
        super().__init__(in_channels, out_channels, stride=2, name=f"tail{level}", level=level)
        self.blocks = residual_blocks(
            in_channels,
            out_channels,
            num_blocks,
            first_shortcut=projection_or_identity(in_channels, out_channels, norm),
            norm=norm,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(self.blocks(x), kernel_size=2, stride=2)


class Bridge(FishStage):
    """The bridge between tail and body, at the lowest resolution: ``R(s) * a + a``.

    ``s`` is the score unit's output (``C -> C/2 -> 2C``), ``a = SE(s)`` its channel attention
    (``2C -> C``) and ``R`` residual blocks (``2C -> C``). Paper, sec. 3.2 ("Bridge module").
    """

    def __init__(self, channels: int, num_blocks: int, *, level: int, norm: Norm = "BN"):
        super().__init__(channels, channels, stride=1, name="bridge", level=level)
        self.score = ScoreUnit(channels, 2 * channels, global_pool=False, norm=norm)
        self.attention = SqueezeExcitation(2 * channels, channels, norm=norm)
        self.blocks = residual_blocks(
            2 * channels,
            channels,
            num_blocks,
            first_shortcut=PreActProjection(2 * channels, channels, norm=norm),
            norm=norm,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.score(x)
        a = self.attention(s)
        return self.blocks(s) * a + a


class RefinementStage(FishStage):
    """What UR- and DR-blocks share: residual blocks ``refine`` that refine the incoming map ``x``
    (``M`` and its shortcut), and transfer blocks ``T`` that carry ``lateral`` over from the
    previous part; the output concatenates the two. Subclasses resample and concatenate."""

    def __init__(
        self,
        in_channels: int,
        refined_channels: int,
        lateral_channels: int,
        *,
        num_blocks: int,
        num_transfer_blocks: int,
        first_shortcut: nn.Module,
        dilation: int,
        name: str,
        level: int,
        stride: int,
        norm: Norm,
    ):
        super().__init__(in_channels, refined_channels + lateral_channels, stride, name=name, level=level)
        self.refine = residual_blocks(
            in_channels,
            refined_channels,
            num_blocks,
            first_shortcut=first_shortcut,
            dilation=dilation,
            norm=norm,
        )
        self.transfer = transfer_blocks(lateral_channels, num_transfer_blocks, norm)


class UpRefinementStage(RefinementStage):
    """A body stage, the UR-block: ``concat(up(r(x) + M(x)), T(lateral))`` (paper, eq. 5-7).

    ``x`` is the previous body stage's output (or the bridge's); ``lateral`` is the tail feature at
    this stage's output resolution. ``r + M`` are residual blocks whose first one reduces the width
    by channel-wise summation (eq. 8); ``up`` is nearest-neighbour x2. As in the official model,
    the stage's output is taken after the concatenation, so eq. 7's ``concat`` of one stage and
    eq. 6's refinement of the next run in the same order as in the paper.
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
        level: int,
        norm: Norm = "BN",
    ):
        k = in_channels // refined_channels
        super().__init__(
            in_channels,
            refined_channels,
            lateral_channels,
            num_blocks=num_blocks,
            num_transfer_blocks=num_transfer_blocks,
            first_shortcut=ChannelSumReduction(k) if k > 1 else nn.Identity(),
            dilation=dilation,
            name=f"body{level}",
            level=level,
            stride=1,  # it up-samples x2
            norm=norm,
        )

    def forward(self, x: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.refine(x), scale_factor=2.0, mode="nearest")
        return torch.cat([up, self.transfer(lateral)], dim=1)


class DownRefinementStage(RefinementStage):
    """A head stage, the DR-block: ``concat(down(x + M(x)), T(lateral))`` (paper, eq. 9).

    ``x`` is the previous head stage's output (or the last body stage's); ``lateral`` is the body
    feature (or the bridge's) at this stage's output resolution. ``x + M(x)`` are residual blocks
    without channel reduction; ``down`` is 2x2 max-pool with stride 2.

    ``forward`` returns the refined map before pooling too: the first head stage's is the head's
    stride-4 feature.
    """

    def __init__(
        self,
        in_channels: int,
        refined_channels: int,
        lateral_channels: int,
        *,
        num_blocks: int,
        num_transfer_blocks: int,
        level: int,
        norm: Norm = "BN",
    ):
        super().__init__(
            in_channels,
            refined_channels,
            lateral_channels,
            num_blocks=num_blocks,
            num_transfer_blocks=num_transfer_blocks,
            # The official variants never change the width here; a custom one may (as the
            # official code allows), through a projection.
            first_shortcut=projection_or_identity(in_channels, refined_channels, norm),
            dilation=1,
            name=f"head{level}",
            level=level,
            stride=2,
            norm=norm,
        )

    def forward(self, x: torch.Tensor, lateral: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        refined = self.refine(x)
        down = F.max_pool2d(refined, kernel_size=2, stride=2)
        return refined, torch.cat([down, self.transfer(lateral)], dim=1)

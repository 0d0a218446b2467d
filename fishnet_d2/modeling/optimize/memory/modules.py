"""The modules that memory-efficient training substitutes for the network's (:mod:`.`).

Each computes, op for op, what the module it substitutes computes with FrozenBN norms folded
(:mod:`..folding`), keeping less for the backward pass; it does so only where that can save
memory (:func:`~.functions.saves_memory`: gradients recorded, not tracing or compiling), else it
runs the module it substitutes.
"""

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...blocks import PreActProjection
from ...stages import DownRefinementStage, FishStem, ResidualBlocks, UpRefinementStage
from ..folding import FoldedConvNormReLU, FoldedPreActBottleneck
from ..substitute import TrainingPath
from .functions import lean_conv, rectified_max_pool, saves_memory
from .reversible import Conv2Args, FoldedBlock, recovering_blocks

__all__ = [
    "LeanPreActBottleneck",
    "InputKeepingPreActBottleneck",
    "InputKeepingProjection",
    "RecoveringBlocks",
    "LeanFishStem",
    "LeanUpRefinementStage",
    "LeanDownRefinementStage",
]


class LeanPreActBottleneck(TrainingPath, FoldedPreActBottleneck):
    """A bottleneck with FrozenBN norms whose conv1 and conv2 keep their weights, not the copies
    with norm2 and norm3 folded in (:func:`~.functions.lean_conv`; at the lowest resolutions the
    copies are as large as the activations)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not saves_memory():
            return super().forward(x)
        out = lean_conv(F.relu_(self.normalized_conv1(x)), self.conv2, folded=self.norm3.scale_shift())
        out = self.conv3(F.relu_(out))
        out += self.shortcut(x)
        return out

    def normalized_conv1(self, x: torch.Tensor) -> torch.Tensor:
        """``norm2(conv1(relu(norm1(x))))``, keeping conv1's input and weight."""
        return lean_conv(F.relu(self.norm1(x), inplace=True), self.conv1, folded=self.norm2.scale_shift())


class InputKeepingPreActBottleneck(LeanPreActBottleneck):
    """:class:`LeanPreActBottleneck` whose conv1 keeps the block's input ``x`` instead of
    ``relu(norm1(x))``, and recomputes that activation in the backward pass: for a block whose
    input is kept anyway (read by another stage too, or held by the caller)."""

    def normalized_conv1(self, x: torch.Tensor) -> torch.Tensor:
        return lean_conv(x, self.conv1, activation=self.norm1.scale_shift(), folded=self.norm2.scale_shift())


class InputKeepingProjection(TrainingPath, PreActProjection):
    """A projection shortcut with a FrozenBN norm that keeps its input instead of its activation
    (the shortcut of an :class:`InputKeepingPreActBottleneck`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not saves_memory():
            return super().forward(x)
        return lean_conv(x, self.conv, activation=self.norm.scale_shift())


def is_recoverable(block: nn.Module) -> bool:
    """Whether a block's input can be recovered from its output ``x + F(x)``: a
    :class:`LeanPreActBottleneck` (FrozenBN norms) with an identity shortcut and stride 1."""
    return isinstance(block, LeanPreActBottleneck) and isinstance(block.shortcut, nn.Identity) and block.stride == 1


def _folded_block(block: LeanPreActBottleneck) -> Tuple[FoldedBlock, Conv2Args]:
    """A block's weights and FrozenBN affines, and conv2's arguments, for :func:`recovering_blocks`."""
    c2 = block.conv2
    tensors = FoldedBlock(
        block.conv1.weight,
        c2.weight,
        block.conv3.weight,
        *block.norm1.scale_shift(),
        *block.norm2.scale_shift(),
        *block.norm3.scale_shift(),
    )
    return tensors, Conv2Args(tuple(c2.padding), tuple(c2.dilation), c2.groups)


class RecoveringBlocks(TrainingPath, ResidualBlocks):
    """A run of residual blocks whose blocks ``recover_from`` and after (each
    :func:`is_recoverable`) recover their inputs from their outputs in the backward pass instead
    of keeping their activations (:mod:`.reversible`). Under autocast they do not: float16 would
    round the recovered inputs too coarsely."""

    def __init__(self, *blocks: nn.Module, recover_from: int):
        super().__init__(*blocks)
        if not 0 <= recover_from < len(blocks) or not all(is_recoverable(b) for b in blocks[recover_from:]):
            raise ValueError(f"recover_from={recover_from}: blocks from there on must recover their inputs")
        self.recover_from = recover_from

    def forward(self, x: torch.Tensor, prefix: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The blocks applied to ``x``; with ``prefix``, ``torch.cat([prefix, blocks(x)], dim=1)``
        (a refinement stage's output), in which the backward pass then finds the run's output
        instead of keeping it apart."""
        if not (saves_memory() and not torch.is_autocast_enabled(x.device.type)):
            out = super().forward(x)
            return out if prefix is None else torch.cat([prefix, out], dim=1)
        blocks: List[nn.Module] = list(self)
        for block in blocks[: self.recover_from]:
            x = block(x)
        tensors, conv2_args = zip(*(_folded_block(block) for block in blocks[self.recover_from :]))
        return recovering_blocks(x, tensors, conv2_args, prefix=prefix)


class LeanFishStem(TrainingPath, FishStem):
    """The stem pooling before its last ReLU (max and ReLU commute), keeping the pool's output
    and int32 positions instead of the ReLU's output and int64 indices
    (:func:`~.functions.rectified_max_pool`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not saves_memory():
            return super().forward(x)
        x = self.conv2(self.conv1(x))
        unit = self.conv3
        # Its norm(conv(x)) before the ReLU, as the unit computes it (folded or not).
        x = unit.normalized(x) if isinstance(unit, FoldedConvNormReLU) else unit.norm(unit.conv(x))
        return rectified_max_pool(x, kernel_size=3, stride=2, padding=1)


class LeanUpRefinementStage(TrainingPath, UpRefinementStage):
    """A UR-block whose transfer run (a :class:`RecoveringBlocks`) returns the stage's
    concatenation, where the backward pass finds the run's output."""

    def forward(self, x: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.refine(x), scale_factor=2.0, mode="nearest")
        return self.transfer(lateral, prefix=up)


class LeanDownRefinementStage(TrainingPath, DownRefinementStage):
    """A DR-block whose transfer run (a :class:`RecoveringBlocks`) returns the stage's
    concatenation, where the backward pass finds the run's output."""

    def forward(self, x: torch.Tensor, lateral: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        refined = self.refine(x)
        return refined, self.transfer(lateral, prefix=self.down(refined))

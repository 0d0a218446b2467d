"""Memory-efficient training (``MODEL.FISHNET.MEMORY_EFFICIENT``): the same outputs as the
network, and the same gradients up to rounding, with less kept for the backward pass. It applies
to blocks with FrozenBN norms folded into their convolutions (:mod:`..folding`), the COCO
configs' default.

- Blocks keep their convolutions' weights, not the copies with a norm folded in
  (:class:`~.modules.LeanPreActBottleneck`).
- Pre-activations keep their input where it is kept anyway, instead of their activation
  (:class:`~.modules.InputKeepingPreActBottleneck`, :class:`~.modules.InputKeepingProjection`).
- Runs of identity-shortcut blocks recover their inputs from their outputs in the backward pass,
  running each block's 1x1 conv3 again (:class:`~.modules.RecoveringBlocks`, :mod:`.reversible`).
- Max-pools whose windows tile their input keep one byte per output
  (:class:`~.functions.CompactMaxPool2d`); the stem pools before its last ReLU
  (:class:`~.modules.LeanFishStem`).

:func:`train_memory_efficiently` decides where each applies. None runs without gradients, while
tracing or compiling (:func:`~.functions.saves_memory`); TorchScript refuses them.
"""

from typing import Sequence

from torch import nn

from ...arch import feature_name
from ...blocks import PreActProjection
from ...fishnet import FishNet
from ...stages import FishStage, ResidualBlocks
from ..folding import FoldedPreActBottleneck, FusedFrozenBatchNorm2d
from ..substitute import substitute
from .functions import CompactMaxPool2d
from .modules import (
    InputKeepingPreActBottleneck,
    InputKeepingProjection,
    LeanDownRefinementStage,
    LeanFishStem,
    LeanPreActBottleneck,
    LeanUpRefinementStage,
    RecoveringBlocks,
    is_recoverable,
)

__all__ = ["train_memory_efficiently", "MAX_RECOVERED_WIDTH"]

# The widest residual blocks that recover their inputs: conv3 costs C / 4 multiply-adds per value
# not kept, which at FishNet-150's 1600-wide head5 refinement is more time per MB than
# checkpointing a stage costs (a measured threshold; docs/performance.md).
MAX_RECOVERED_WIDTH = 512

LEAN_STAGES = {stage.__bases__[-1]: stage for stage in (LeanUpRefinementStage, LeanDownRefinementStage)}


def train_memory_efficiently(fishnet: FishNet, *, skip: Sequence[str] = ()) -> FishNet:
    """Make a FishNet's training memory-efficient, in place, and return it. ``skip``: names of
    stages left as they are: those that recompute in the backward pass (activation
    checkpointing) keep nothing of their own, and their memory-efficient paths would cost time
    and save nothing. Run it after :func:`~..folding.fold_frozen_batchnorm`.

    Pre-activations keep their input where it is kept anyway: the first block of each run of
    residual blocks (and its projection shortcut) reads a map that another stage reads too, or
    that the caller holds (a feature). The first head stage's refinement is the exception: its
    input, the last body stage's output, has no other reader.

    After that first block, identity-shortcut blocks recover their inputs. Each keeps a third of
    what it kept, and the run keeps its output. That pays where the run's output is held anyway
    (the first head stage's refinement, when it is a requested feature; a transfer run's, in its
    stage's concatenation, when that is held), or where at least 3 blocks recover (the output
    kept for them costs one block's activation); only up to :data:`MAX_RECOVERED_WIDTH` channels.
    """
    held_features = set(fishnet.output_shape())
    refined_head = feature_name("head", fishnet.arch.body_levels[-1])
    alone = fishnet.head[0].refine if len(fishnet.head) else None  # reads the last body stage's output
    skipped = set(skip)

    def keeps_input(stage: FishStage) -> bool:
        return stage.name in skipped or (len(stage.refine) > 0 and stage.refine is not alone)

    # Who reads each refinement stage's output (its concatenation) besides the caller.
    parts = [list(fishnet.body), list(fishnet.head)]
    next_reader = {s: n for part in parts for s, n in zip(part, part[1:])}
    if len(fishnet.body) and len(fishnet.head):
        next_reader[fishnet.body[-1]] = fishnet.head[0]

    for stage in fishnet.stages():
        if stage.name in skipped:
            continue
        for module in stage.modules():
            if type(module) is FoldedPreActBottleneck and _fused(module.norm1):
                substitute(module, LeanPreActBottleneck)
        concat_held = stage.name in held_features or (stage in next_reader and keeps_input(next_reader[stage]))
        for part in ("blocks", "refine", "transfer"):
            blocks = getattr(stage, part, None)
            if not isinstance(blocks, ResidualBlocks) or not len(blocks):
                continue
            input_held = blocks is not alone
            if input_held:
                _keep_input(blocks[0])
            start = len(blocks)
            while start > int(input_held) and is_recoverable(blocks[start - 1]):
                start -= 1
            if blocks[-1].out_channels > MAX_RECOVERED_WIDTH:
                start = len(blocks)
            output_in_concat = part == "transfer" and concat_held
            output_held = output_in_concat or (blocks is alone and refined_head in held_features)
            if len(blocks) - start >= (1 if output_held else 3):
                setattr(stage, part, RecoveringBlocks(*blocks, recover_from=start))
                if output_in_concat:
                    substitute(stage, LEAN_STAGES[type(stage)])
        if stage is fishnet.stem:
            substitute(stage, LeanFishStem)
        _compact_max_pools(stage)
    return fishnet


def _keep_input(block: nn.Module) -> None:
    """The first block of a run, whose input is kept anyway, keeps that instead of its activation
    (and so does its projection shortcut)."""
    if isinstance(block, LeanPreActBottleneck):
        substitute(block, InputKeepingPreActBottleneck)
    shortcut = getattr(block, "shortcut", None)
    if type(shortcut) is PreActProjection and _fused(shortcut.norm):
        substitute(shortcut, InputKeepingProjection)


def _compact_max_pools(stage: nn.Module) -> None:
    """Each ``nn.MaxPool2d`` of ``stage`` replaced by a :class:`CompactMaxPool2d` with its
    arguments (pools hold no state: the state_dict is unchanged)."""
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


def _fused(norm: nn.Module) -> bool:
    return isinstance(norm, FusedFrozenBatchNorm2d)

"""Activation checkpointing of FishNet's stages (``MODEL.FISHNET.CHECKPOINT``): in training, a
checkpointed stage keeps only its inputs, and the backward pass runs it again for the rest."""

import contextlib
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import InvalidValue
from ..fishnet import FishNet
from ..stages import Bridge, DownRefinementStage, FishStage, FishStem, TailStage, UpRefinementStage
from .substitute import TrainingPath, substitute

__all__ = ["CHECKPOINT_CHOICES", "checkpointed_stage_names", "checkpoint_stages", "recompute_in_backward"]

# The named choices: which stages recompute their activations in the backward pass
# (docs/performance.md measures each). "stride4": the stages that compute at stride 4 (or 2): the
# stem, the last body stage (its transfer blocks and up-sampled output), the first head stage (its
# refinement is the head's stride-4 feature): the largest activations, though head3's
# recomputation is not cheap.
CHECKPOINT_CHOICES = ("none", "all", "stride4", "tail", "body", "head")
Checkpointing = Union[None, bool, str, Sequence[str]]


def _choices(fishnet: FishNet) -> Dict[str, List[str]]:
    """The stages each named choice recomputes."""
    stem, tail, bridge, body, head = [fishnet.stem], list(fishnet.tail), [fishnet.bridge], list(fishnet.body), list(fishnet.head)
    return {
        "none": [],
        "all": [s.name for s in fishnet.stages()],
        "stride4": [s.name for s in stem + [body[-1], head[0]]],
        "tail": [s.name for s in tail],
        "body": [s.name for s in body],
        "head": [s.name for s in head],
    }


def checkpointed_stage_names(fishnet: FishNet, value: Checkpointing) -> Tuple[str, ...]:
    """The names of the stages that ``value`` checkpoints, in the order they run: ``True`` or
    "all" every stage, ``False``, ``None`` or "none" none, "stride4", "tail", "body" or "head"
    (:data:`CHECKPOINT_CHOICES`), a stage name ("stem", "tail3", ..., "bridge", "body4", ...,
    "head3", ...), or a list of names and choices."""
    choices = _choices(fishnet)
    names = [s.name for s in fishnet.stages()]
    if value is None or value is False:
        value = "none"
    elif value is True:
        value = "all"
    items = [value] if isinstance(value, str) else value
    chosen = set()
    ok = isinstance(items, (list, tuple))  # [] is none
    for item in items if ok else ():
        if isinstance(item, str) and item in choices:
            chosen.update(choices[item])
        elif isinstance(item, str) and item in names:
            chosen.add(item)
        else:
            ok = False
    if not ok:
        raise InvalidValue(
            "activation_checkpointing",
            value,
            f"allowed False/True (none/all), one of {list(choices)}, a stage name of {names}, "
            "or a list of those",
        )
    return tuple(name for name in names if name in chosen)


class CheckpointedStage(TrainingPath, nn.Module):
    """A stage that, in a training forward that records gradients (not while tracing), keeps
    only its inputs and runs again in the backward pass (:func:`recompute_in_backward`); else
    the stage it substitutes. Mixed into each stage class below."""

    def forward(self, *inputs: torch.Tensor) -> Any:
        if self.training and torch.is_grad_enabled() and not torch.jit.is_tracing():
            return recompute_in_backward(self, super().forward, *inputs)
        return super().forward(*inputs)


class CheckpointedFishStem(CheckpointedStage, FishStem):
    pass


class CheckpointedTailStage(CheckpointedStage, TailStage):
    pass


class CheckpointedBridge(CheckpointedStage, Bridge):
    pass


class CheckpointedUpRefinementStage(CheckpointedStage, UpRefinementStage):
    pass


class CheckpointedDownRefinementStage(CheckpointedStage, DownRefinementStage):
    pass


CHECKPOINTED = {
    cls.__bases__[-1]: cls
    for cls in (
        CheckpointedFishStem,
        CheckpointedTailStage,
        CheckpointedBridge,
        CheckpointedUpRefinementStage,
        CheckpointedDownRefinementStage,
    )
}


def checkpoint_stages(fishnet: FishNet, value: Checkpointing) -> Tuple[str, ...]:
    """Checkpoint the stages that ``value`` names (:func:`checkpointed_stage_names`), in place;
    returns their names."""
    names = checkpointed_stage_names(fishnet, value)
    for stage in fishnet.stages():
        if stage.name in names:
            _substitute_stage(stage)
    return names


def _substitute_stage(stage: FishStage) -> None:
    if type(stage) not in CHECKPOINTED:
        raise TypeError(f"a {type(stage).__name__} cannot be checkpointed: allowed {[c.__name__ for c in CHECKPOINTED]}")
    substitute(stage, CHECKPOINTED[type(stage)])

# The BatchNorms that update running statistics in training (Detectron2's NaiveSyncBatchNorm is
# a BatchNorm2d; FrozenBN is neither).
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def recompute_in_backward(stage: nn.Module, run: Callable[..., Any], *inputs: torch.Tensor) -> Any:
    """``run(*inputs)`` (a call of ``stage``), keeping only the inputs for the backward pass, which
    runs the stage a second time to get the activations it needs (``torch.utils.checkpoint``,
    non-reentrant).

    Outputs, gradients and BatchNorm's running statistics are those of ``stage(*inputs)``: the
    second pass must not update the statistics again. Under ``torch.compile`` it does not (the
    compiled backward recomputes values, not buffer updates), nor in stages without BatchNorm
    that tracks statistics (FrozenBN, GN, no norm); those use checkpoint's default context.
    """
    updating = [m for m in stage.modules() if isinstance(m, _BATCH_NORMS) and m.track_running_stats]
    if not updating or torch.compiler.is_compiling():
        return checkpoint(run, *inputs, use_reentrant=False)
    return checkpoint(
        run,
        *inputs,
        use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(), _running_stats_kept(updating)),
    )


@contextlib.contextmanager
def _running_stats_kept(norms: List[nn.Module]) -> Iterator[None]:
    """Run the second pass of training-mode BatchNorm without changing its running statistics.

    The batch statistics still normalize, as in the first pass, and the second pass saves the
    same tensors for backward (checkpoint checks that); with momentum 0 the running mean and
    variance are updated to themselves, exactly. The batch counter is put back afterwards.
    """
    momenta = [norm.momentum for norm in norms]
    counts = [None if n.num_batches_tracked is None else n.num_batches_tracked.clone() for n in norms]
    for norm in norms:
        norm.momentum = 0.0
    try:
        yield
    finally:
        for norm, momentum, count in zip(norms, momenta, counts):
            norm.momentum = momentum
            if count is not None:
                norm.num_batches_tracked.copy_(count)

"""Activation checkpointing for FishNet's stages (``MODEL.FISHNET.CHECKPOINT``)."""

import contextlib
from typing import Any, Callable, Iterator, List

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["recompute_in_backward"]

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

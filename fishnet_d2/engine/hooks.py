"""The hooks that make a training run survive its interruptions: the process's randomness derived
from (seed, rank, iteration), and SIGTERM turned into a checkpoint and a requeue exit status."""

import logging
import os
import signal
import threading
from typing import Any, Callable, Optional

from detectron2.engine import HookBase
from detectron2.utils import comm

from .data import derived_seed, seed_all_rngs

__all__ = ["REQUEUE_EXIT_CODE", "Preempted", "SeedEachIteration", "CheckpointOnSigterm"]

# The exit status of a training process stopped by SIGTERM after it wrote a checkpoint at its last
# iteration: EX_TEMPFAIL of sysexits.h ("temporary failure; the user is invited to retry"). A job
# script or scheduler requeues on it (docs/cluster.md); the requeued run continues with --resume.
REQUEUE_EXIT_CODE = 75


class Preempted(SystemExit):
    """Training stopped on SIGTERM after a checkpoint at ``iteration``; exits the process with
    :data:`REQUEUE_EXIT_CODE` (a ``SystemExit``: not an error of the training)."""

    def __init__(self, iteration: int):
        super().__init__(REQUEUE_EXIT_CODE)
        self.iteration = iteration


class SeedEachIteration(HookBase):
    """Before each iteration, seed the process's Python, NumPy and torch generators from (seed,
    rank, iteration): what the iteration draws (the RPN's and ROI heads' sampling, for instance)
    is then the same whether the run started at iteration 0 or resumed just before it."""

    def __init__(self, seed: Callable[[], int]):
        """``seed()``: the run's seed (read at each iteration: a resumed run restores it)."""
        self._seed = seed

    def before_step(self) -> None:
        seed_all_rngs(derived_seed(self._seed(), comm.get_rank(), self.trainer.iter))


class CheckpointOnSigterm(HookBase):
    """On SIGTERM (what SLURM, Kubernetes and torchrun send before they stop a process), every
    rank finishes its current iteration; then a checkpoint of that iteration is written (unless
    the periodic one just was) and the process exits with :data:`REQUEUE_EXIT_CODE`.

    The ranks agree after each iteration on whether any of them was signalled, so they all stop
    after the same one. Later SIGTERMs are logged and change nothing (torchrun forwards the
    scheduler's); a SIGKILL during the save leaves the previous checkpoint intact (atomic save).
    A SIGTERM during the last iteration lets training end as usual. Must come after Detectron2's
    ``PeriodicCheckpointer`` among the hooks.
    """

    def __init__(self) -> None:
        self._signalled = False
        self._previous: Any = None

    def before_train(self) -> None:
        self._signalled = False
        if threading.current_thread() is not threading.main_thread():
            # Python delivers signals to the main thread only, and only it may set a handler.
            logging.getLogger(__name__).warning("Training outside the main thread: SIGTERM stops it without a checkpoint")
            return
        self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: Optional[Any]) -> None:
        logger = logging.getLogger(__name__)
        if self._signalled:
            logger.warning("SIGTERM again: already stopping after the current iteration")
            return
        self._signalled = True
        logger.warning("SIGTERM: stopping after the current iteration, with a checkpoint of it")

    def after_step(self) -> None:
        stop = self._signalled
        if comm.get_world_size() > 1:
            stop = any(comm.all_gather(stop))
        iteration = self.trainer.iter
        if not stop or iteration + 1 >= self.trainer.max_iter:
            return
        checkpointer = self.trainer.checkpointer
        name = f"model_{iteration:07d}"
        if not (checkpointer.has_checkpoint() and os.path.basename(checkpointer.get_checkpoint_file()) == f"{name}.pth"):
            checkpointer.save(name, iteration=iteration)
        comm.synchronize()  # no rank leaves before the checkpoint is written
        logging.getLogger(__name__).warning(
            f"Stopped by SIGTERM after iteration {iteration}, checkpoint {name}.pth; exit status {REQUEUE_EXIT_CODE}"
        )
        raise Preempted(iteration)

    def after_train(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

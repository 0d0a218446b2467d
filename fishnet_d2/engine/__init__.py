"""Training and evaluation with Detectron2's engine: the ``Trainer`` (runs that resume exactly
where they stopped, SIGTERM turned into a checkpoint), a ``launch`` that also runs without a GPU
and under torchrun, and the ``setup`` / ``main`` of ``tools/train_net.py``."""

from .cli import main, setup
from .hooks import REQUEUE_EXIT_CODE
from .launch import launch, launch_from_args
from .trainer import Trainer

__all__ = ["Trainer", "launch", "launch_from_args", "setup", "main", "REQUEUE_EXIT_CODE"]

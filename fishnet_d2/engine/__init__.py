"""Training and evaluation with Detectron2's engine: the ``Trainer``, a ``launch`` that also runs
without a GPU, and the ``setup`` / ``main`` of ``tools/train_net.py``."""

from .cli import main, setup
from .launch import launch, launch_from_args
from .trainer import Trainer

__all__ = ["Trainer", "launch", "launch_from_args", "setup", "main"]

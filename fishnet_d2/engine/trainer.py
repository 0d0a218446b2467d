"""``Trainer``: Detectron2's ``DefaultTrainer`` with fishnet_d2's optimizer, evaluators and
checkpointer, on CPU process groups too, and runs that resume where they stopped."""

import json
import logging
import os
import weakref
from collections import OrderedDict
from typing import Any, Dict, List, Optional

import torch
from detectron2.config import CfgNode
from detectron2.engine import AMPTrainer, HookBase, SimpleTrainer, TrainerBase, create_ddp_model
from detectron2.evaluation import DatasetEvaluator
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import GeneralizedRCNNWithTTA
from detectron2.utils import comm
from detectron2.utils.logger import log_first_n, setup_logger

from ..backports import DefaultTrainer
from ..evaluation import build_evaluator
from ..modeling import FishNet
from ..solver import build_optimizer
from ..weights.checkpointer import FishNetCheckpointer
from .data import ResumableTrainLoader, build_resumable_train_loader
from .hooks import CheckpointOnSigterm, SeedEachIteration

__all__ = ["Trainer"]


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with, in addition:

    * the optimizer of :func:`fishnet_d2.solver.build_optimizer`: ``SOLVER.CLIP_GRADIENTS`` with
      the clip type "full_model" and ``UNTIL_ITER`` (read from the iteration the trainer runs);
    * ``UNTIL_ITER`` rescaled with the other iteration counts when ``SOLVER.REFERENCE_WORLD_SIZE``
      differs from the number of processes (:meth:`auto_scale_workers`);
    * evaluators from the dataset's ``evaluator_type`` (:func:`fishnet_d2.evaluation.build_evaluator`);
    * checkpoints read and written by :class:`fishnet_d2.weights.checkpointer.FishNetCheckpointer`, with the
      optimizer's state (as Detectron2 main's ``DefaultTrainer``; :mod:`fishnet_d2.backports`);
    * DistributedDataParallel on CPU (GLOO, see :func:`fishnet_d2.engine.launch`);
    * exact resume: the training data of :class:`fishnet_d2.engine.data.ResumableTrainLoader`,
      whose position and seed the checkpoints keep, and the process's random generators seeded
      at each iteration from (seed, rank, iteration) (:class:`~fishnet_d2.engine.hooks.SeedEachIteration`):
      a run resumed from the checkpoint of iteration ``k`` computes the iterations after ``k`` as
      the unbroken run does; ``metrics.json`` loses the lines of the iterations to be run again;
    * SIGTERM: a checkpoint after the current iteration and exit status 75
      (:class:`~fishnet_d2.engine.hooks.CheckpointOnSigterm`);
    * a warning when a FishNet with FrozenBN would train from scratch (:meth:`resume_or_load`).
    """

    def __init__(self, cfg: CfgNode):
        """The steps of ``DefaultTrainer.__init__`` (the same in Detectron2 v0.6 and main), in its
        order, through the same overridable methods, with three differences: this class's
        :meth:`auto_scale_workers`, the model wrapped with :func:`ddp_arguments` (no device ids
        on CPU) and a :class:`FishNetCheckpointer`.

        Detectron2 is the reason this does not call ``DefaultTrainer.__init__``: that wraps the
        model with ``create_ddp_model(model, broadcast_buffers=False)``, which passes
        ``device_ids=[local rank]``, and torch's DistributedDataParallel refuses device ids for
        a CPU model (a ValueError). Between ``build_model`` and that call the model is a local
        variable, so no overridable method can change how it is wrapped (a model already wrapped
        by ``build_model`` is wrapped again, with the same error). tests/test_engine.py checks
        that this builds what ``DefaultTrainer.__init__`` builds."""
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):  # as DefaultTrainer
            setup_logger()
        # This class's scaling, which also scales UNTIL_ITER.
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        # DefaultTrainer's order: "Assume these objects must be constructed in this order."
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, **ddp_arguments(cfg.MODEL.DEVICE))
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = FishNetCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self) -> List[Optional[HookBase]]:
        """DefaultTrainer's hooks (their checkpoints by ``self.checkpointer``, a FishNetCheckpointer),
        and the exact-resume and SIGTERM hooks (after the periodic checkpointer)."""
        hooks = super().build_hooks()
        loader = self.data_loader
        if isinstance(loader, ResumableTrainLoader):
            hooks.insert(0, SeedEachIteration(lambda: loader.seed))
        hooks.append(CheckpointOnSigterm())
        return hooks

    def train(self) -> Optional[Dict]:
        """``DefaultTrainer.train``; then the training data's loader workers end, however
        training ended (finished, SIGTERM, an error)."""
        try:
            return super().train()
        finally:
            if isinstance(self.data_loader, ResumableTrainLoader):
                self.data_loader.close()

    @classmethod
    def build_train_loader(cls, cfg: CfgNode) -> ResumableTrainLoader:
        return build_resumable_train_loader(cfg)

    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        if isinstance(self.data_loader, ResumableTrainLoader):
            state["data_loader"] = self.data_loader.state_dict()
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if not isinstance(self.data_loader, ResumableTrainLoader):
            return
        if "data_loader" in state_dict:
            self.data_loader.load_state_dict(state_dict["data_loader"])
        else:  # a checkpoint without it: one batch per iteration, this run's seed
            logging.getLogger(__name__).warning(
                "The checkpoint holds no data loader state: the data order continues with this run's seed "
                "(images seen differ from an unbroken run)"
            )
            self.data_loader.load_state_dict(
                {"seed": self.data_loader.seed, "world_size": comm.get_world_size(), "batches": state_dict["iteration"] + 1}
            )

    def resume_or_load(self, resume: bool = True) -> None:
        """As ``DefaultTrainer.resume_or_load``; first warns, once, when the run starts from
        scratch (no ``MODEL.WEIGHTS``, nothing to resume) with a FishNet whose BatchNorm is frozen;
        after a resume, removes from ``metrics.json`` the lines of the iterations to be run again."""
        resuming = resume and self.checkpointer.has_checkpoint()
        if not resuming and not self.cfg.MODEL.WEIGHTS:
            warn_if_frozen_batchnorm_from_scratch(self.model)
        super().resume_or_load(resume=resume)
        if resuming and comm.is_main_process():
            drop_metrics_from(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"), self.start_iter)

    @staticmethod
    def auto_scale_workers(cfg: CfgNode, num_workers: int) -> CfgNode:
        """``DefaultTrainer.auto_scale_workers``, which also scales ``SOLVER.CLIP_GRADIENTS.UNTIL_ITER``
        like ``MAX_ITER``: clipping keeps covering the same number of images."""
        reference = cfg.SOLVER.REFERENCE_WORLD_SIZE
        scaled = DefaultTrainer.auto_scale_workers(cfg, num_workers)
        until_iter = cfg.SOLVER.CLIP_GRADIENTS.get("UNTIL_ITER", 0)
        if scaled is cfg or until_iter == 0:
            return scaled
        frozen = scaled.is_frozen()
        scaled.defrost()
        # the same rounding as DefaultTrainer.auto_scale_workers applies to MAX_ITER and STEPS
        scale = num_workers / reference
        scaled.SOLVER.CLIP_GRADIENTS.UNTIL_ITER = int(round(until_iter / scale))
        if frozen:
            scaled.freeze()
        return scaled

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg, model)

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None
    ) -> DatasetEvaluator:
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test_with_TTA(cls, cfg: CfgNode, model: torch.nn.Module) -> Dict[str, Dict[str, float]]:
        """Evaluate R-CNN models with test-time augmentation (``TEST.AUG``)."""
        logging.getLogger("detectron2.trainer").info("Running inference with test-time augmentation ...")
        model = GeneralizedRCNNWithTTA(cfg, model)
        evaluators = [
            cls.build_evaluator(cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, "inference_TTA"))
            for name in cfg.DATASETS.TEST
        ]
        results = cls.test(cfg, model, evaluators)
        return OrderedDict((name + "_TTA", value) for name, value in results.items())


def ddp_arguments(device: str) -> Dict[str, Any]:
    """The keyword arguments of ``create_ddp_model`` for a model on ``device``: DefaultTrainer's
    (``broadcast_buffers=False``) and, on CPU, ``device_ids=None``: ``create_ddp_model`` passes
    ``device_ids=[local rank]`` otherwise, and torch's DistributedDataParallel accepts device ids
    for GPU models only."""
    arguments: Dict[str, Any] = {"broadcast_buffers": False}
    if torch.device(device).type == "cpu":
        arguments["device_ids"] = None
    return arguments


def drop_metrics_from(path: str, iteration: int) -> int:
    """Cut the ``metrics.json`` at ``path`` (Detectron2's JSONWriter: one JSON object a line, in
    the order of iterations) before its first line of ``iteration`` or later, or its first
    unreadable line (the end of a process killed while writing). In place: the trainer's writer
    appends to the same file. Returns the number of lines removed."""
    if not os.path.isfile(path):
        return 0
    with open(path, "r+b") as f:
        lines = f.read().splitlines(keepends=True)
        kept, size = 0, 0
        for line in lines:
            try:
                if json.loads(line)["iteration"] >= iteration or not line.endswith(b"\n"):
                    break
            except (ValueError, KeyError, TypeError):
                break
            kept, size = kept + 1, size + len(line)
        f.truncate(size)
    if kept < len(lines):
        logging.getLogger(__name__).info(f"{path}: removed {len(lines) - kept} lines of iterations >= {iteration}, to be run again")
    return len(lines) - kept


def warn_if_frozen_batchnorm_from_scratch(model: torch.nn.Module) -> bool:
    """Warn (once per process) when ``model`` holds a FishNet whose norms are all FrozenBN
    (``MODEL.FISHNET.NORM FrozenBN``), which is meant for converted ImageNet weights: from random
    initialisation every FrozenBN is the identity, and training diverges without a word (FishNet-99
    Mask R-CNN: total loss 78 at iteration 2, then NaN features). Returns whether ``model`` is such
    a model (the warning itself is logged once)."""
    trainable_norms = (torch.nn.BatchNorm2d, torch.nn.SyncBatchNorm, torch.nn.GroupNorm)
    frozen = [
        fishnet
        for fishnet in model.modules()
        if isinstance(fishnet, FishNet)
        and any(isinstance(m, FrozenBatchNorm2d) for m in fishnet.modules())
        and not any(isinstance(m, trainable_norms) for m in fishnet.modules())
    ]
    if not frozen:
        return False
    log_first_n(
        logging.WARNING,
        "Training a FishNet from scratch with MODEL.FISHNET.NORM FrozenBN and no MODEL.WEIGHTS: "
        "every BatchNorm stays at its initial statistics (the identity), and training is likely to "
        "diverge. Set MODEL.WEIGHTS to converted ImageNet weights (tools/convert_fishnet_to_d2.py), "
        "or train from scratch with MODEL.FISHNET.NORM BN, SyncBN or GN.",
        n=1,
        name="fishnet_d2",
    )
    return True

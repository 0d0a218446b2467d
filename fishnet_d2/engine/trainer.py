"""``Trainer``: Detectron2's ``DefaultTrainer`` with fishnet_d2's optimizer and evaluators."""

import logging
import os
import weakref
from collections import OrderedDict
from typing import Dict, Optional

import torch
from detectron2.config import CfgNode
from detectron2.engine import AMPTrainer, SimpleTrainer, TrainerBase, create_ddp_model
from detectron2.evaluation import DatasetEvaluator
from detectron2.modeling import GeneralizedRCNNWithTTA
from detectron2.utils import comm
from detectron2.utils.logger import log_first_n, setup_logger

from ..backports import DefaultTrainer
from ..weights.checkpointer import FishNetCheckpointer
from ..evaluation import build_evaluator
from ..modeling import FishNet
from ..solver import build_optimizer

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
    * a warning when a FishNet with FrozenBN would train from scratch (:meth:`resume_or_load`).
    """

    def __init__(self, cfg: CfgNode):
        # DefaultTrainer.__init__'s steps (v0.6 and main alike), in its order, but scaling with
        # this class's auto_scale_workers (DefaultTrainer's calls its own) and wrapping CPU models
        # in DDP without device_ids (torch only accepts them for GPU models; DefaultTrainer always
        # passes them). DefaultTrainer keeps the SimpleTrainer it runs as `_trainer`.
        TrainerBase.__init__(self)  # not DefaultTrainer.__init__: its steps follow
        logger = logging.getLogger("detectron2")
        if not logger.isEnabledFor(logging.INFO):
            setup_logger()
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)

        ddp_kwargs = {"device_ids": None} if torch.device(cfg.MODEL.DEVICE).type == "cpu" else {}
        model = create_ddp_model(model, broadcast_buffers=False, **ddp_kwargs)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
            model, data_loader, optimizer
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = FishNetCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def resume_or_load(self, resume: bool = True) -> None:
        """As ``DefaultTrainer.resume_or_load``; first warns, once, when the run starts from
        scratch (no ``MODEL.WEIGHTS``, nothing to resume) with a FishNet whose BatchNorm is frozen."""
        resuming = resume and self.checkpointer.has_checkpoint()
        if not resuming and not self.cfg.MODEL.WEIGHTS:
            warn_if_frozen_batchnorm_from_scratch(self.cfg, self.model)
        super().resume_or_load(resume=resume)

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


def warn_if_frozen_batchnorm_from_scratch(cfg: CfgNode, model: torch.nn.Module) -> bool:
    """Warn (once per process) when ``model`` holds a FishNet built with FrozenBN, which is meant
    for converted ImageNet weights: from random initialisation every FrozenBN is the identity, and
    training diverges without a word (FishNet-99 Mask R-CNN: total loss 78 at iteration 2, then NaN
    features). Returns whether ``model`` is such a model (the warning itself is logged once)."""
    if cfg.MODEL.FISHNET.NORM != "FrozenBN" or not any(isinstance(m, FishNet) for m in model.modules()):
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

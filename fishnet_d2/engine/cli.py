"""What ``tools/train_net.py`` runs in each process: ``setup(args)`` and ``main(args)``."""

import argparse
import logging
from typing import Dict

from detectron2.config import CfgNode
from detectron2.engine import default_setup, hooks
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..weights.checkpointer import FishNetCheckpointer
from ..model_zoo import load_config, resolve_config_file
from .launch import restarted_by_torchrun
from .trainer import Trainer

__all__ = ["setup", "main"]


def setup(args: argparse.Namespace) -> CfgNode:
    """The config of ``args`` (``--config-file``, a path or a fishnet_d2 config name, and the
    trailing ``KEY VALUE`` overrides, with fishnet_d2's keys added), frozen, after Detectron2's
    ``default_setup`` (logging, output dir)."""
    # A path, or the name of a fishnet_d2 config (fishnet_d2.model_zoo); default_setup reads it.
    args.config_file = resolve_config_file(args.config_file)
    cfg = load_config(args.config_file, args.opts)
    default_setup(cfg, args)
    # fishnet_d2's loggers as Detectron2's: timestamped, on rank 0's console, in OUTPUT_DIR/log.txt.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="fishnet_d2")
    return cfg


def main(args: argparse.Namespace) -> Dict:
    """Train (``--resume``, or a restart by torchrun, to continue from the last checkpoint in
    OUTPUT_DIR; SIGTERM: a checkpoint and exit status 75, see :mod:`fishnet_d2.engine.hooks`), or with
    ``--eval-only`` evaluate ``MODEL.WEIGHTS`` on ``DATASETS.TEST``; returns the results."""
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        FishNetCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            results.update(Trainer.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, results)
        return results

    trainer = Trainer(cfg)
    # A worker that torchrun restarted (--max-restarts) continues from the last checkpoint.
    resume = args.resume or restarted_by_torchrun()
    if resume and not args.resume:
        logging.getLogger(__name__).info("Restarted by torchrun: resuming from the last checkpoint in OUTPUT_DIR")
    trainer.resume_or_load(resume=resume)
    if cfg.TEST.AUG.ENABLED:
        trainer.register_hooks([hooks.EvalHook(0, lambda: trainer.test_with_TTA(cfg, trainer.model))])
    return trainer.train()

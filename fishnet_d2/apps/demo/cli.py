"""What ``tools/demo.py`` runs: its command line and ``main``."""

import argparse
import copy
import os
import time
from typing import Optional

import torch
from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ...engine import setup
from .pipeline import DemoResult, ap_table, run_demo

__all__ = ["argument_parser", "default_torch_threads", "setup_demo", "main"]

DEFAULT_OUTPUT = "output/demo"


def default_torch_threads() -> int:
    """One intra-op thread per CPU this process may run on (its affinity mask, which container
    limits set; torch's own default counts the machine's cores). Measured on 2 quiet cores, one
    training step of the demo (8 images) takes 0.48 s with one thread and 0.38 s with two."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def argument_parser(default_config: str = "") -> argparse.ArgumentParser:
    """Detectron2's ``default_argument_parser`` (``--config-file``, ``--num-gpus``, trailing
    ``KEY VALUE`` overrides, ...) with the demo's options."""
    parser = default_argument_parser(
        epilog="Example: python tools/demo.py --output output/demo SOLVER.MAX_ITER 500"
    )
    parser.set_defaults(config_file=default_config)
    parser.add_argument(
        "--output",
        default=DEFAULT_OUTPUT,
        help=f"directory for the checkpoint, logs and pictures (default {DEFAULT_OUTPUT})",
    )
    parser.add_argument(
        "--num-images", type=int, default=6, help="validation images to draw in predictions.png"
    )
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=0.5,
        help="draw predictions with at least this score",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=default_torch_threads(),
        help="intra-op threads (default: one per CPU this process may use). On a machine busy "
        "with other jobs, 1 is faster: threads that wait for busy cores slow training down "
        "severalfold",
    )
    return parser


def setup_demo(args: argparse.Namespace) -> CfgNode:
    """The demo's config from its command line: ``fishnet_d2.engine.setup`` (as
    ``tools/train_net.py``) with ``OUTPUT_DIR`` from ``--output``; sets the torch threads."""
    if not args.config_file:
        raise ValueError(
            "--config-file is empty: give the demo config, "
            "configs/Demo/mask_rcnn_fishnet_tiny_FPN_demo.yaml"
        )
    if args.eval_only or args.resume:
        raise ValueError(
            "the demo always trains from scratch (no --eval-only, no --resume); to evaluate its "
            "checkpoint run tools/train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS "
            "output/demo/model_final.pth"
        )
    if args.torch_threads < 1:
        raise ValueError(f"--torch-threads={args.torch_threads}: must be >= 1")
    torch.set_num_threads(args.torch_threads)
    args = copy.copy(args)
    args.opts = ["OUTPUT_DIR", args.output] + list(args.opts)
    cfg = setup(args)
    # fishnet_d2's own messages (dataset generation, ...) next to Detectron2's, and in log.txt
    setup_logger(
        cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="fishnet_d2", abbrev_name="fd2"
    )
    return cfg


def main(args: argparse.Namespace) -> Optional[DemoResult]:
    """Train and evaluate the demo config, draw its pictures, and print the AP summary."""
    start = time.perf_counter()
    cfg = setup_demo(args)
    result = run_demo(cfg, num_images=args.num_images, score_threshold=args.score_threshold)
    if not comm.is_main_process():
        return None
    datasets = ", ".join(cfg.DATASETS.TEST)
    print(f"\nCOCO metrics (percent) on {datasets}:\n{ap_table(result.results)}")
    minutes, seconds = divmod(time.perf_counter() - start, 60)
    print(f"\nCheckpoint:  {result.checkpoint}")
    print(f"Predictions: {result.predictions_png}")
    print(f"Losses:      {result.losses_png}")
    iterations = f"{cfg.SOLVER.MAX_ITER} iterations of {cfg.SOLVER.IMS_PER_BATCH} images"
    print(f"Time: {int(minutes)} min {seconds:.0f} s ({iterations})")
    print(f"\nDEMO RESULT  {result.summary}")
    return result

"""The demo, end to end on a ready config: load the datasets, train, evaluate, draw."""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm
from tabulate import tabulate
from torch.nn.parallel import DistributedDataParallel

from ...engine import Trainer
from .figures import prediction_panels, save_loss_plot, save_prediction_figure

__all__ = [
    "DemoResult",
    "prepare_datasets",
    "train_and_evaluate",
    "draw_figures",
    "ap_table",
    "summary_line",
    "run_demo",
]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "model_final"
PREDICTIONS_PNG = "predictions.png"
LOSSES_PNG = "losses.png"


@dataclass
class DemoResult:
    """What the demo produced."""

    results: Dict  # task ("bbox", "segm") -> COCO metric -> value in percent
    checkpoint: Path
    predictions_png: Optional[Path]
    losses_png: Optional[Path]
    summary: str


def prepare_datasets(cfg: CfgNode) -> Dict[str, int]:
    """Load every dataset of ``DATASETS.TRAIN`` and ``DATASETS.TEST`` once, which generates the
    synthetic ones that are not on disk yet; returns name -> number of images."""
    names = list(cfg.DATASETS.TRAIN) + [n for n in cfg.DATASETS.TEST if n not in cfg.DATASETS.TRAIN]
    unknown = [n for n in names if n not in DatasetCatalog.list()]
    if unknown:
        raise ValueError(
            f"DATASETS.TRAIN / DATASETS.TEST name unregistered datasets {unknown}; the demo's are "
            "'fishnet_demo_train' and 'fishnet_demo_val' (registered by importing fishnet_d2.apps.data)"
        )
    sizes = {}
    for name in names:
        sizes[name] = len(DatasetCatalog.get(name))
        logger.info(f"Dataset {name}: {sizes[name]} images")
    return sizes


def _single_test_dataset(cfg: CfgNode) -> str:
    if len(cfg.DATASETS.TEST) != 1:
        raise ValueError(
            f"DATASETS.TEST={tuple(cfg.DATASETS.TEST)!r}: the demo evaluates and draws exactly one "
            "dataset, e.g. ('fishnet_demo_val',)"
        )
    return cfg.DATASETS.TEST[0]


def train_and_evaluate(cfg: CfgNode) -> Tuple[torch.nn.Module, Dict]:
    """Train ``cfg`` from ``MODEL.WEIGHTS`` (no resuming) with :class:`fishnet_d2.engine.Trainer`,
    which saves ``OUTPUT_DIR/model_final.pth``, then evaluate ``DATASETS.TEST`` once.

    Returns:
        the trained model (unwrapped from DistributedDataParallel) and the evaluation results
        (task -> metric -> value; empty in all processes but the main one).
    """
    dataset_name = _single_test_dataset(cfg)
    # The trainer's own end-of-training evaluation keeps its results to itself: train without a
    # test set, and evaluate here.
    train_cfg = cfg.clone()
    train_cfg.defrost()
    train_cfg.DATASETS.TEST = ()
    train_cfg.freeze()
    trainer = Trainer(train_cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = Trainer.test(cfg, trainer.model)
    if comm.is_main_process() and not results:
        raise RuntimeError(f"training finished, but {dataset_name} was not evaluated")
    model = trainer.model
    if isinstance(model, DistributedDataParallel):
        model = model.module
    return model, results


def ap_table(results: Mapping) -> str:
    """The COCO metrics of every task in ``results`` as one table, a row per task."""
    columns = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    rows = [
        [task] + [metrics.get(c, float("nan")) for c in columns]
        for task, metrics in results.items()
    ]
    return tabulate(
        rows, headers=["task"] + columns, tablefmt="pipe", floatfmt=".2f", numalign="right"
    )


def summary_line(results: Mapping, dataset_name: str) -> str:
    """One line with the COCO AP of each task in ``results``."""
    names = {"bbox": "box AP", "segm": "mask AP", "keypoints": "keypoint AP"}
    parts = [
        f"{names.get(task, task + ' AP')} {metrics['AP']:.1f}"
        for task, metrics in results.items()
        if "AP" in metrics
    ]
    return f"{dataset_name}: " + ", ".join(parts) + " (COCO AP@[.50:.95], percent)"


def draw_figures(
    model: torch.nn.Module,
    cfg: CfgNode,
    *,
    num_images: int = 6,
    score_threshold: float = 0.5,
) -> Tuple[Path, Path]:
    """Write ``OUTPUT_DIR/predictions.png`` (predictions and ground truth on the first
    ``num_images`` images of ``DATASETS.TEST``) and ``OUTPUT_DIR/losses.png`` (from
    ``OUTPUT_DIR/metrics.json``); returns their paths."""
    if not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"num_images={num_images!r}: must be an integer >= 1")
    dataset_name = _single_test_dataset(cfg)
    output_dir = Path(cfg.OUTPUT_DIR)
    dataset_dicts = DatasetCatalog.get(dataset_name)[:num_images]
    panels = prediction_panels(
        model,
        cfg,
        dataset_dicts,
        MetadataCatalog.get(dataset_name),
        score_threshold=score_threshold,
    )
    predictions_png = save_prediction_figure(
        panels, output_dir / PREDICTIONS_PNG, score_threshold=score_threshold
    )
    losses_png = save_loss_plot(output_dir / "metrics.json", output_dir / LOSSES_PNG)
    return predictions_png, losses_png


def run_demo(cfg: CfgNode, *, num_images: int = 6, score_threshold: float = 0.5) -> DemoResult:
    """The whole demo on ``cfg``: load (generate) the datasets, train, evaluate ``DATASETS.TEST``,
    and, in the main process, draw ``predictions.png`` (``num_images`` images, predictions
    with score >= ``score_threshold``) and ``losses.png`` in ``OUTPUT_DIR``."""
    dataset_name = _single_test_dataset(cfg)
    if comm.is_main_process():  # generate the datasets once, before the other processes load them
        prepare_datasets(cfg)
    comm.synchronize()
    model, results = train_and_evaluate(cfg)
    checkpoint = Path(cfg.OUTPUT_DIR) / f"{CHECKPOINT_NAME}.pth"
    summary = ""
    predictions_png = losses_png = None
    if comm.is_main_process():
        summary = summary_line(results, dataset_name)
        if not checkpoint.is_file():
            raise RuntimeError(f"training finished but did not write {checkpoint}")
        predictions_png, losses_png = draw_figures(
            model, cfg, num_images=num_images, score_threshold=score_threshold
        )
    comm.synchronize()
    return DemoResult(results, checkpoint, predictions_png, losses_png, summary)

"""The demo's pictures: predictions next to the ground truth, and the training losses."""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Union

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetMapper, Metadata
from detectron2.data.detection_utils import read_image
from detectron2.utils.visualizer import ColorMode, Visualizer
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ...weights.atomic_file import atomic_write
from ..visualization import draw_predictions

__all__ = [
    "PredictionPanel",
    "prediction_panels",
    "save_prediction_figure",
    "read_loss_history",
    "save_loss_plot",
]

PathLike = Union[str, os.PathLike]


@dataclass
class PredictionPanel:
    """One image drawn three ways, each (H, W, 3) uint8 RGB at the same scale."""

    file_name: str
    image: np.ndarray  # the image itself
    ground_truth: np.ndarray  # with its annotations drawn
    prediction: np.ndarray  # with the predictions drawn
    num_predictions: int  # predictions drawn (score >= the threshold)


def _save_figure(figure: Figure, path: PathLike) -> Path:
    """Write ``figure`` as a PNG to ``path``, atomically (a temporary file, then a rename)."""
    FigureCanvasAgg(figure)
    atomic_write(str(path), lambda f: figure.savefig(f, format="png"))
    return Path(path)


@torch.no_grad()
def prediction_panels(
    model: torch.nn.Module,
    cfg: CfgNode,
    dataset_dicts: Sequence[Dict],
    metadata: Metadata,
    *,
    score_threshold: float = 0.5,
    scale: float = 2.0,
) -> List[PredictionPanel]:
    """Run ``model`` on the images of ``dataset_dicts`` (as the test loader feeds it, through
    ``DatasetMapper(cfg, is_train=False)``) and draw its predictions and the annotations with
    Detectron2's ``Visualizer``, each category in its ``metadata.thing_colors`` colour; the
    predictions by :func:`fishnet_d2.apps.visualization.draw_predictions`, as ``tools/predict.py`` draws
    them."""
    if not 0.0 <= score_threshold <= 1.0:
        raise ValueError(f"score_threshold={score_threshold!r}: must be in [0, 1]")
    mapper = DatasetMapper(cfg, is_train=False)
    training = model.training
    model.eval()
    try:
        outputs = [model([mapper(dict(d))])[0] for d in dataset_dicts]
    finally:
        model.train(training)

    panels = []
    for record, output in zip(dataset_dicts, outputs):
        image = read_image(record["file_name"], format="RGB")
        ground_truth = Visualizer(
            image, metadata, scale=scale, instance_mode=ColorMode.SEGMENTATION
        )
        plain = Visualizer(image, metadata, scale=scale).output.get_image()
        panels.append(
            PredictionPanel(
                file_name=record["file_name"],
                image=plain,
                ground_truth=ground_truth.draw_dataset_dict(record).get_image(),
                prediction=draw_predictions(
                    image,
                    output,
                    metadata,
                    score_threshold=score_threshold,
                    scale=scale,
                    instance_mode=ColorMode.SEGMENTATION,
                ),
                num_predictions=int((output["instances"].scores >= score_threshold).sum()),
            )
        )
    return panels


def save_prediction_figure(
    panels: Sequence[PredictionPanel], path: PathLike, *, score_threshold: float
) -> Path:
    """Save the panels as one PNG: per image, the ground truth and the predictions side by side,
    two images per row."""
    if not panels:
        raise ValueError("panels is empty: give at least one PredictionPanel to draw")
    per_row = min(2, len(panels))
    rows = (len(panels) + per_row - 1) // per_row
    height, width = panels[0].prediction.shape[:2]
    inches = 2.6
    figure = Figure(figsize=(2 * per_row * inches * width / height, rows * inches + 0.5), dpi=100)
    figure.suptitle(
        "Validation images: ground truth (left) and predictions with score >= "
        f"{score_threshold:g} (right)"
    )
    axes = figure.subplots(rows, 2 * per_row, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, panel in enumerate(panels):
        row, col = divmod(i, per_row)
        name = Path(panel.file_name).name
        axes[row, 2 * col].imshow(panel.ground_truth)
        axes[row, 2 * col].set_title(f"{name}: ground truth", fontsize=8)
        axes[row, 2 * col + 1].imshow(panel.prediction)
        axes[row, 2 * col + 1].set_title(f"{name}: {panel.num_predictions} predicted", fontsize=8)
    figure.tight_layout()
    return _save_figure(figure, path)


def _is_loss(key: str) -> bool:
    return key == "total_loss" or key.startswith("loss_")


def read_loss_history(metrics_json: PathLike) -> Dict[str, List[tuple]]:
    """The losses Detectron2's ``JSONWriter`` logged in ``metrics.json``: name -> [(iteration,
    value)]. The file is appended to by every run in the same directory; only the last run (the
    records after the last time the iteration went back) is read."""
    records = []
    with open(metrics_json, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                records.append(json.loads(line))
    records = [r for r in records if "iteration" in r and any(_is_loss(k) for k in r)]
    start = 0
    for i in range(1, len(records)):
        if records[i]["iteration"] <= records[i - 1]["iteration"]:
            start = i
    history: Dict[str, List[tuple]] = {}
    for record in records[start:]:
        for key, value in record.items():
            if _is_loss(key):
                history.setdefault(key, []).append((record["iteration"], float(value)))
    if not history:
        raise ValueError(
            f"{metrics_json} has no losses (keys 'total_loss' or 'loss_*'): was it written by a "
            "training run?"
        )
    return history


def save_loss_plot(metrics_json: PathLike, path: PathLike) -> Path:
    """Plot the training losses of ``metrics.json`` (log scale) to a PNG."""
    history = read_loss_history(metrics_json)
    figure = Figure(figsize=(8, 5), dpi=100)
    ax = figure.subplots()
    for name in sorted(history, key=lambda k: (k != "total_loss", k)):
        iterations, values = zip(*history[name])
        marker = "o" if len(iterations) < 10 else None
        ax.plot(
            iterations,
            values,
            label=name,
            linewidth=2.5 if name == "total_loss" else 1.2,
            marker=marker,
        )
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (median of the last 20 iterations)")
    ax.set_title("Training losses")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    return _save_figure(figure, path)

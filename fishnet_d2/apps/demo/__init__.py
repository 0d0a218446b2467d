"""The embedded demo (``make demo``): train a small FishNet Mask R-CNN on the synthetic shapes
dataset (:mod:`fishnet_d2.apps.data`) on CPU, evaluate it, and draw its predictions and losses."""

from .cli import argument_parser, main, setup_demo
from .figures import (
    PredictionPanel,
    prediction_panels,
    read_loss_history,
    save_loss_plot,
    save_prediction_figure,
)
from .pipeline import (
    DemoResult,
    ap_table,
    draw_figures,
    prepare_datasets,
    run_demo,
    summary_line,
    train_and_evaluate,
)

__all__ = [
    "argument_parser",
    "main",
    "setup_demo",
    "PredictionPanel",
    "prediction_panels",
    "read_loss_history",
    "save_loss_plot",
    "save_prediction_figure",
    "DemoResult",
    "ap_table",
    "draw_figures",
    "prepare_datasets",
    "run_demo",
    "summary_line",
    "train_and_evaluate",
]

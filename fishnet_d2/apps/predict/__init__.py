"""Predict images and videos with a config's model (``tools/predict.py``): read them, predict,
draw the predictions (:func:`fishnet_d2.apps.visualization.draw_predictions`), save the drawings and the
COCO-format results."""

from .cli import argument_parser, main
from ...model_zoo import load_config
from .dataset_ids import DatasetIds, annotations_ids, dataset_ids
from .images import InputError, expand_inputs, read_image_file
from .exported import ExportedModel, ExportedModelError
from .predictor import MAX_OUTPUT_PIXELS, Prediction, Predictor, load_model, output_size
from .results import assign_image_ids, coco_results, write_json
from .video import AtomicVideoWriter, open_camera, open_video, read_frames

__all__ = [
    "argument_parser",
    "main",
    "load_config",
    "DatasetIds",
    "annotations_ids",
    "dataset_ids",
    "InputError",
    "expand_inputs",
    "read_image_file",
    "ExportedModel",
    "ExportedModelError",
    "MAX_OUTPUT_PIXELS",
    "Prediction",
    "Predictor",
    "load_model",
    "output_size",
    "assign_image_ids",
    "coco_results",
    "write_json",
    "AtomicVideoWriter",
    "open_camera",
    "open_video",
    "read_frames",
]

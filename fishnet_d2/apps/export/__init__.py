"""Export a FishNet detector (Mask R-CNN, Faster R-CNN, RetinaNet) to TorchScript or ONNX with
Detectron2's export tools, and check the exported model (``tools/export_model.py``)."""

from .cli import argument_parser, main
from .d2export import INSTALL_HINT, Detectron2Export, ExportUnavailableError, detectron2_export
from .exporters import (
    FORMATS,
    METHODS,
    ONNX_OPSET,
    Exported,
    OnnxRunner,
    check_exportable,
    eager_instances,
    export_model,
    onnx_runner,
)
from .matching import MAX_UNMATCHED_SHARE, DetectionComparison, Difference, compare_instances
from .timing import seconds_per_image, time_export
from .verify import FRESH_PROCESS_SCRIPT, model_input, run_in_fresh_process, sample_images

__all__ = [
    "argument_parser",
    "main",
    "INSTALL_HINT",
    "Detectron2Export",
    "ExportUnavailableError",
    "detectron2_export",
    "FORMATS",
    "METHODS",
    "ONNX_OPSET",
    "Exported",
    "check_exportable",
    "eager_instances",
    "export_model",
    "OnnxRunner",
    "onnx_runner",
    "MAX_UNMATCHED_SHARE",
    "DetectionComparison",
    "Difference",
    "compare_instances",
    "seconds_per_image",
    "time_export",
    "FRESH_PROCESS_SCRIPT",
    "model_input",
    "run_in_fresh_process",
    "sample_images",
]

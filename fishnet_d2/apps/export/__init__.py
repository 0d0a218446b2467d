"""Export a FishNet detector (Mask R-CNN, Faster R-CNN, RetinaNet) to TorchScript or ONNX with
Detectron2's export tools, and check the exported model (``tools/export_model.py``)."""

from .cli import argument_parser, main
from .d2export import INSTALL_HINT, Detectron2Export, ExportUnavailableError, detectron2_export
from .exporters import (
    FORMATS,
    METHODS,
    ONNX_OPSET,
    Exported,
    check_exportable,
    eager_instances,
    export_model,
    onnx_runner,
)
from .verify import (
    FRESH_PROCESS_SCRIPT,
    Difference,
    compare_instances,
    model_input,
    run_in_fresh_process,
    sample_images,
)

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
    "onnx_runner",
    "FRESH_PROCESS_SCRIPT",
    "Difference",
    "compare_instances",
    "model_input",
    "run_in_fresh_process",
    "sample_images",
]

"""Export a FishNet detector (Mask R-CNN, Faster R-CNN, RetinaNet) by torch.export (to an
ExportedProgram, an AOTInductor package, ONNX) or by TorchScript with Detectron2's export tools (to
TorchScript, ONNX), and check the exported model (``tools/export_model.py``)."""

from .cli import argument_parser, main
from .d2export import INSTALL_HINT, Detectron2Export, ExportUnavailableError, detectron2_export
from .exported import FILE_NAMES, FORMATS, FORMATS_BY_METHOD, METHODS, Exported, OnnxRunner, check_exportable, onnx_runner
from .exporters import ONNX_OPSET, eager_instances, export_model
from .programs import DYNAMO_ONNX_OPSET, PROGRAM_FORMATS, export_program, exported_program, size_range
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
    "FILE_NAMES",
    "FORMATS",
    "FORMATS_BY_METHOD",
    "METHODS",
    "DYNAMO_ONNX_OPSET",
    "PROGRAM_FORMATS",
    "export_program",
    "exported_program",
    "size_range",
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

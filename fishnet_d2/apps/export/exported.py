"""What an export is: the methods and formats (:data:`FORMATS_BY_METHOD`), an exported model with
how to run it in this process (:class:`Exported`), and an ONNX model in onnxruntime
(:func:`onnx_runner`)."""

import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.modeling import GeneralizedRCNN, RetinaNet
from detectron2.structures import Instances
from torch import Tensor, nn

from ...weights.atomic_file import atomic_write
from .exportable import check_exportable_detector

__all__ = [
    "FORMATS_BY_METHOD",
    "METHODS",
    "FORMATS",
    "FILE_NAMES",
    "Exported",
    "check_exportable",
    "OnnxRunner",
    "onnx_runner",
]

# Each method's formats, the first its default. scripting and tracing are TorchScript's (PyTorch
# deprecated TorchScript in 2.11); export is torch.export's.
FORMATS_BY_METHOD: Dict[str, Tuple[str, ...]] = {
    "scripting": ("torchscript",),
    "tracing": ("torchscript", "onnx"),
    "export": ("program", "aoti", "onnx"),
}
METHODS = tuple(FORMATS_BY_METHOD)
FORMATS = ("torchscript", "onnx", "program", "aoti")
FILE_NAMES = {"torchscript": "model.ts", "onnx": "model.onnx", "program": "model.pt2", "aoti": "model_aoti.pt2"}
SUPPORTED_ARCHITECTURES = (GeneralizedRCNN, RetinaNet)


def check_exportable(model: nn.Module, method: str, format: str) -> None:
    """ValueError, saying what is allowed, unless ``model`` can be exported by ``method`` to ``format``."""
    if method not in METHODS:
        raise ValueError(f"export method {method!r}: allowed {METHODS}")
    if format not in FORMATS_BY_METHOD[method]:
        allowed = ", ".join(f"--export-method {m} --format {{{','.join(f)}}}" for m, f in FORMATS_BY_METHOD.items())
        raise ValueError(f"--export-method {method} does not export to --format {format}; allowed: {allowed}")
    if not isinstance(model, SUPPORTED_ARCHITECTURES):
        raise ValueError(
            f"MODEL.META_ARCHITECTURE builds a {type(model).__name__}; export supports "
            "GeneralizedRCNN (Mask R-CNN, Faster R-CNN) and RetinaNet"
        )
    if method == "export":
        check_exportable_detector(model)


@dataclass
class Exported:
    """An exported model, and how to run it in this process."""

    method: str
    format: str
    data: bytes  # the file's content
    output_names: List[str]  # tracing and export: the flat outputs' names, in order
    run: Callable[[Tensor], Instances] = field(repr=False)  # the exported model on one image
    run_raw: Callable[[Tensor], Dict[str, Tensor]] = field(repr=False)  # its outputs by name
    runtime: str  # what runs it in this process
    # export: the image heights and widths the program takes, {"height": (min, max or None), "width": ...}
    input_sizes: Optional[Dict[str, Tuple[int, Optional[int]]]] = None

    @property
    def file_name(self) -> str:
        return FILE_NAMES[self.format]

    def save(self, directory: str) -> str:
        """Write the model to ``directory/`` :attr:`file_name` atomically; returns the path."""
        path = os.path.join(directory, self.file_name)
        atomic_write(path, lambda f: f.write(self.data))
        return path


@dataclass
class OnnxRunner:
    """An ONNX model ready to run on an image: ``runner(image)`` -> its outputs, in order."""

    run: Callable[[np.ndarray], Sequence[np.ndarray]] = field(repr=False)
    runtime: str  # what runs it, as the tool reports it

    def __call__(self, image: np.ndarray) -> Sequence[np.ndarray]:
        return self.run(image)


def onnx_runner(data: bytes) -> OnnxRunner:
    """The ONNX model ``data`` in onnxruntime (CPU; as many threads as torch uses in this process
    at each call)
    where it is installed, as deployments run it; else in onnx's reference evaluator (pure NumPy:
    exact, but slow for full-size models)."""
    try:
        import onnxruntime
    except ImportError:
        import onnx
        from onnx.reference import ReferenceEvaluator

        evaluator = ReferenceEvaluator(onnx.load_model_from_string(data))

        def evaluate(image: np.ndarray) -> Sequence[np.ndarray]:
            with np.errstate(over="ignore", invalid="ignore"):  # its Sigmoid's exp of large logits
                return evaluator.run(None, {"image": image})

        return OnnxRunner(
            evaluate, f"onnx {onnx.__version__} reference evaluator (onnxruntime is not installed)"
        )
    sessions: Dict[int, "onnxruntime.InferenceSession"] = {}

    def run(image: np.ndarray) -> Sequence[np.ndarray]:
        # One session per thread count: as many intra-op threads as torch uses here when it runs
        # (torch.set_num_threads), so that times compare with torch's and AOTInductor's.
        threads = torch.get_num_threads()
        if threads not in sessions:
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            sessions[threads] = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        return sessions[threads].run(None, {"image": image})

    return OnnxRunner(run, f"onnxruntime {onnxruntime.__version__} (CPU)")

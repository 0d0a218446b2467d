"""A detector exported to TorchScript (by scripting or tracing) or ONNX (by tracing), the way
Detectron2's ``tools/deploy/export_model.py`` exports it, and run again to compare with eager mode.

What each export takes and returns (image: a float32 (3, H, W) tensor in ``cfg.INPUT.FORMAT``,
0-255, resized as in testing: ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``; outputs in that
image's coordinates, before Detectron2's ``detector_postprocess`` rescales them to the original
image):

* scripting (TorchScript): ``model(({"image": image},))`` -> a list of one dict of tensors:
  ``pred_boxes`` (N, 4) XYXY, ``scores``, ``pred_classes`` and for Mask R-CNN ``pred_masks``
  (N, 1, M, M) mask probabilities in the box. RetinaNet's boxes are not clipped to the image
  and may be empty (``detector_postprocess`` clips them and drops empty ones).
* tracing (TorchScript, ONNX): ``model(image)`` -> a tuple of tensors, in the order of
  :attr:`Exported.output_names` (ONNX: the graph's output names): the same fields, sorted by
  name, then ``image_size``. Height and width may differ from the sample image's.
"""

import io
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
from detectron2.modeling import GeneralizedRCNN, RetinaNet
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances
from torch import Tensor, nn

from ...weights.atomic_file import atomic_write
from .d2export import Detectron2Export

__all__ = [
    "METHODS",
    "FORMATS",
    "ONNX_OPSET",
    "Exported",
    "check_exportable",
    "eager_instances",
    "export_model",
    "OnnxRunner",
    "onnx_runner",
]

METHODS = ("scripting", "tracing")
FORMATS = ("torchscript", "onnx")
ONNX_OPSET = 17
SUPPORTED_ARCHITECTURES = (GeneralizedRCNN, RetinaNet)

# The Instances fields scripting can produce (Detectron2's export_model.py's list).
_SCRIPTED_FIELDS = {
    "proposal_boxes": Boxes,
    "objectness_logits": Tensor,
    "pred_boxes": Boxes,
    "scores": Tensor,
    "pred_classes": Tensor,
    "pred_masks": Tensor,
    "pred_keypoints": Tensor,
    "pred_keypoint_heatmaps": Tensor,
}


class _ScriptableRCNN(nn.Module):
    """A GeneralizedRCNN that returns dicts of tensors, not Instances: a scripted model that returns
    Instances cannot be loaded in another process (pytorch/pytorch#46944)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.eval()

    def forward(self, inputs: Tuple[Dict[str, Tensor]]) -> List[Dict[str, Tensor]]:
        instances = self.model.inference(inputs, do_postprocess=False)
        return [i.get_fields() for i in instances]


class _ScriptableDense(nn.Module):
    """RetinaNet, whose scripted forward returns its Instances before postprocessing, as dicts."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.eval()

    def forward(self, inputs: Tuple[Dict[str, Tensor]]) -> List[Dict[str, Tensor]]:
        instances = self.model(inputs)
        return [i.get_fields() for i in instances]


def check_exportable(model: nn.Module, method: str, format: str) -> None:
    """ValueError, saying what is allowed, unless ``model`` can be exported by ``method`` to ``format``."""
    if method not in METHODS:
        raise ValueError(f"export method {method!r}: allowed {METHODS}")
    if format not in FORMATS:
        raise ValueError(f"format {format!r}: allowed {FORMATS}")
    if method == "scripting" and format != "torchscript":
        raise ValueError(
            "--export-method scripting exports to --format torchscript only (as Detectron2's "
            "export_model.py); ONNX comes from --export-method tracing"
        )
    if not isinstance(model, SUPPORTED_ARCHITECTURES):
        raise ValueError(
            f"MODEL.META_ARCHITECTURE builds a {type(model).__name__}; export supports "
            "GeneralizedRCNN (Mask R-CNN, Faster R-CNN) and RetinaNet"
        )


def eager_instances(model: nn.Module, image: Tensor) -> Instances:
    """What the exported model computes, in eager mode: the detections of one resized image in its
    coordinates (GeneralizedRCNN's ``inference(do_postprocess=False)``: masks in their boxes;
    RetinaNet's forward, its boxes clipped to the image)."""
    with torch.no_grad():
        if isinstance(model, GeneralizedRCNN):
            return model.inference([{"image": image}], do_postprocess=False)[0]
        return model([{"image": image}])[0]["instances"]


def _tracing_inference(model: nn.Module, inputs: List[Dict[str, Tensor]]) -> List[Dict[str, Instances]]:
    return [{"instances": eager_instances(model, inputs[0]["image"])}]


@dataclass
class Exported:
    """An exported model, and how to run it in this process."""

    method: str
    format: str
    data: bytes  # the file's content (TorchScript archive or ONNX model)
    output_names: List[str]  # tracing: the flat outputs' names, in order
    run: Callable[[Tensor], Instances] = field(repr=False)  # the exported model on one image
    run_raw: Callable[[Tensor], Dict[str, Tensor]] = field(repr=False)  # its outputs by name
    runtime: str  # what runs it in this process

    @property
    def file_name(self) -> str:
        return "model.ts" if self.format == "torchscript" else "model.onnx"

    def save(self, directory: str) -> str:
        """Write the model to ``directory/model.ts`` or ``model.onnx`` atomically; returns the path."""
        path = os.path.join(directory, self.file_name)
        atomic_write(path, lambda f: f.write(self.data))
        return path


def _fields(instances: Instances) -> Dict[str, Tensor]:
    return {k: (v.tensor if isinstance(v, Boxes) else v) for k, v in instances.get_fields().items()}


def _instances(image_size: Tuple[int, int], fields: Dict[str, Tensor]) -> Instances:
    boxes = ("pred_boxes", "proposal_boxes")
    return Instances(image_size, **{k: (Boxes(v) if k in boxes else v) for k, v in fields.items()})


def _serialize(module: torch.jit.ScriptModule) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    return buffer.getvalue()


def _load_torchscript(data: bytes, device: torch.device) -> torch.jit.ScriptModule:
    return torch.jit.load(io.BytesIO(data), map_location=device)


def _export_scripting(model: nn.Module, d2: Detectron2Export, sample: Tensor) -> Exported:
    adapter = _ScriptableRCNN(model) if isinstance(model, GeneralizedRCNN) else _ScriptableDense(model)
    data = _serialize(d2.scripting_with_instances(adapter, _SCRIPTED_FIELDS))
    scripted = _load_torchscript(data, sample.device)  # what a user of the file gets

    def run_raw(image: Tensor) -> Dict[str, Tensor]:
        with torch.no_grad():
            return dict(scripted(({"image": image.to(sample.device)},))[0])

    def run(image: Tensor) -> Instances:
        instances = _instances(tuple(image.shape[1:]), run_raw(image))
        if not isinstance(model, GeneralizedRCNN):  # as RetinaNet's eager forward
            instances = detector_postprocess(instances, image.shape[1], image.shape[2])
        return instances

    # The scripted Instances' get_fields() gives its fields in the order they were declared.
    fields = _fields(eager_instances(model, sample))
    names = [name for name in _SCRIPTED_FIELDS if name in fields]
    runtime = f"torch {torch.__version__} (TorchScript)"
    return Exported("scripting", "torchscript", data, names, run, run_raw, runtime)


def _output_names(model: nn.Module, d2: Detectron2Export, image: Tensor) -> List[str]:
    """The names of the traced model's flat outputs: each tensor of the eager output found by
    identity in Detectron2's flattening of it; what is left is the Instances' image size."""
    outputs = [{"instances": eager_instances(model, image)}]
    flat, _ = d2.flatten_to_tuple(outputs)
    names = {id(t): k for k, t in _fields(outputs[0]["instances"]).items()}
    return [names.get(id(t), "image_size") for t in flat]


def _export_tracing(model: nn.Module, d2: Detectron2Export, sample: Tensor, format: str) -> Exported:
    inference = _tracing_inference if isinstance(model, GeneralizedRCNN) else None
    adapter = d2.TracingAdapter(model, [{"image": sample}], inference).eval()
    names = _output_names(model, d2, sample)
    device = sample.device
    if format == "torchscript":
        with torch.no_grad():
            # check_trace=False: the tracer's own check retraces and compares graph names, which
            # differ between traces; outputs are compared after the export instead.
            traced = torch.jit.trace(adapter, (sample,), check_trace=False)
        data = _serialize(traced)
        loaded = _load_torchscript(data, device)

        def run_flat(image: Tensor) -> List[Tensor]:
            with torch.no_grad():
                return list(loaded(image.to(device)))

        runtime = f"torch {torch.__version__} (TorchScript)"

    else:
        buffer = io.BytesIO()
        dynamic = {"image": {1: "height", 2: "width"}}
        dynamic.update({n: {0: "detections"} for n in names if n != "image_size"})
        # The TorchScript-based exporter: torch's default (dynamo) one needs onnxscript. Its
        # UserWarnings are about how it translates operators, not about the model.
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(
            adapter,
            (sample,),
            buffer,
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=["image"],
            output_names=names,
            dynamic_axes=dynamic,
        )
        adapter.eval()  # the exporter restores the training flag it found
        data = buffer.getvalue()
        import onnx

        onnx.checker.check_model(onnx.load_model_from_string(data), full_check=True)
        session = onnx_runner(data)

        def run_flat(image: Tensor) -> List[Tensor]:
            return [torch.as_tensor(np.asarray(o)) for o in session(image.cpu().numpy())]

        runtime = session.runtime

    def run_raw(image: Tensor) -> Dict[str, Tensor]:
        return dict(zip(names, run_flat(image)))

    def run(image: Tensor) -> Instances:
        flat = tuple(t.to(device) for t in run_flat(image))
        return adapter.outputs_schema(flat)[0]["instances"]

    return Exported("tracing", format, data, names, run, run_raw, runtime)


@dataclass
class OnnxRunner:
    """An ONNX model ready to run on an image: ``runner(image)`` -> its outputs, in order."""

    run: Callable[[np.ndarray], Sequence[np.ndarray]] = field(repr=False)
    runtime: str  # what runs it, as the tool reports it

    def __call__(self, image: np.ndarray) -> Sequence[np.ndarray]:
        return self.run(image)


def onnx_runner(data: bytes) -> OnnxRunner:
    """The ONNX model ``data`` in onnxruntime (CPU; as many threads as torch uses in this process)
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
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # as many as torch here: comparable times
    session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return OnnxRunner(
        lambda image: session.run(None, {"image": image}), f"onnxruntime {onnxruntime.__version__} (CPU)"
    )


def export_model(
    model: nn.Module, method: str, format: str, sample: Tensor, d2: Detectron2Export
) -> Exported:
    """Export ``model`` (eval mode) by ``method`` to ``format``; tracing runs it on ``sample``
    (a resized image, on the model's device)."""
    check_exportable(model, method, format)
    model.eval()
    with warnings.catch_warnings():
        # Tracing records the model's Python-side shape checks as constants, and torch 2.14
        # deprecates TorchScript and this ONNX exporter: warnings about torch, not the model.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        if method == "scripting":
            return _export_scripting(model, d2, sample)
        return _export_tracing(model, d2, sample, format)

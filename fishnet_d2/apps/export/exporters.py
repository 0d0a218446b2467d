"""A detector exported to TorchScript (by scripting or tracing) or ONNX (by tracing, the
TorchScript-based exporter), the way Detectron2's ``tools/deploy/export_model.py`` exports it, and
run again to compare with eager mode; :func:`export_model` also dispatches to torch.export
(:mod:`.programs`). PyTorch deprecated TorchScript in 2.11: these paths stay while torch has them.

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
import warnings
from typing import Dict, List, Tuple

import numpy as np
import torch
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances
from torch import Tensor, nn

from .d2export import Detectron2Export
from .exported import Exported, check_exportable, onnx_runner
from .programs import export_program

__all__ = ["ONNX_OPSET", "eager_instances", "export_model"]

ONNX_OPSET = 17  # the TorchScript-based ONNX exporter's

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


def export_model(
    model: nn.Module, method: str, format: str, sample: Tensor, d2: Detectron2Export
) -> Exported:
    """Export ``model`` (eval mode) by ``method`` to ``format``; tracing and export run it on
    ``sample`` (a resized image, on the model's device)."""
    check_exportable(model, method, format)
    model.eval()
    if method == "export":
        return export_program(model, format, sample)
    with warnings.catch_warnings():
        # Tracing records the model's Python-side shape checks as constants, and torch 2.14
        # deprecates TorchScript and this ONNX exporter: warnings about torch, not the model.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        if method == "scripting":
            return _export_scripting(model, d2, sample)
        return _export_tracing(model, d2, sample, format)

"""A model exported by ``tools/export_model.py``, run where ``tools/predict.py`` runs the eager
model (``--exported DIR``).

:class:`ExportedModel` loads the export's directory (``export_info.json`` and the model file it
names) and is called as the eager detector is: on a list of one ``{"image", "height", "width"}``
dict, the image resized as in testing, it returns ``[{"instances": Instances}]`` at ``height`` x
``width``. The exported model's outputs, in the resized image's coordinates, become Detectron2
``Instances`` and go through what the eager model's inference ends with, Detectron2's
``detector_postprocess`` (boxes scaled and clipped, empty ones dropped -- RetinaNet's exported boxes
are raw, as its own inference has them before it -- and masks pasted into the image).

How each format is run, as ``export_info.json``'s ``load`` and ``call`` say:

* TorchScript by tracing: ``torch.jit.load(file)(image)`` -> a tuple of tensors named by
  ``outputs`` (the last one ``image_size``); by scripting: ``model(({"image": image},))[0]`` -> a
  dict of tensors.
* ExportedProgram: ``torch.export.load(file).module()(image)``; AOTInductor package:
  ``torch._inductor.aoti_load_package(file)(image)``: a tuple named by ``outputs``.
* ONNX: an onnxruntime CPU session, input ``image``, outputs in ``outputs``' order.

An exported model has its score thresholds and ``TEST.DETECTIONS_PER_IMAGE`` from the config it was
exported with; the detections scoring at most the config's threshold here (the heads'
``SCORE_THRESH_TEST``, which ``--confidence-threshold`` sets) are dropped, as the eager model drops
them: the same detections as eager when the export's threshold is at most this one.
"""

import json
import os
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances
from torch import Tensor

__all__ = ["ExportedModelError", "ExportedModel", "read_export_info", "INFO_FILE", "ARCHITECTURES"]

INFO_FILE = "export_info.json"  # what tools/export_model.py writes next to the model (its INFO_JSON)
ARCHITECTURES = ("GeneralizedRCNN", "RetinaNet")  # the meta-architectures the export tool exports
_REQUIRED_KEYS = ("meta_architecture", "export_method", "format", "file", "outputs")
_DETECTION_FIELDS = ("pred_boxes", "scores", "pred_classes")


class ExportedModelError(ValueError):
    """An export directory that cannot be predicted with; the message names the directory or the
    file, what is wrong and what is allowed."""


def _formats() -> Tuple[Dict[str, Tuple[str, ...]], Dict[str, str]]:
    # Imported here: fishnet_d2.apps.export imports fishnet_d2.apps.predict.
    from ..export.exported import FILE_NAMES, FORMATS_BY_METHOD

    return FORMATS_BY_METHOD, FILE_NAMES


def read_export_info(directory: str) -> Dict[str, Any]:
    """``directory/export_info.json``, checked: the keys :class:`ExportedModel` needs, a method and
    format that ``tools/export_model.py`` writes, a plain file name.

    Raises:
        ExportedModelError: naming what is missing or wrong, and what is allowed.
    """
    if not os.path.isdir(directory):
        what = "not a directory" if os.path.exists(directory) else "no such directory"
        raise ExportedModelError(
            f"{directory}: {what}; give the directory that tools/export_model.py --output wrote"
        )
    path = os.path.join(directory, INFO_FILE)
    if not os.path.isfile(path):
        raise ExportedModelError(
            f"{directory}: no {INFO_FILE} in it; give the directory that tools/export_model.py --output "
            f"wrote (it holds {INFO_FILE} and the model file)"
        )
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError) as e:
        raise ExportedModelError(f"{path}: cannot be read as JSON: {e}") from None
    if not isinstance(info, dict):
        raise ExportedModelError(f"{path}: not a JSON object")
    missing = [key for key in _REQUIRED_KEYS if key not in info]
    if missing:
        raise ExportedModelError(
            f"{path}: no {', '.join(missing)}; tools/export_model.py writes {', '.join(_REQUIRED_KEYS)}"
        )
    formats_by_method, file_names = _formats()
    method, format = info["export_method"], info["format"]
    allowed = "; ".join(f"export_method {m}: format {' or '.join(f)}" for m, f in formats_by_method.items())
    if method not in formats_by_method or format not in formats_by_method[method]:
        raise ExportedModelError(
            f"{path}: unknown export (export_method {method!r}, format {format!r}); allowed: {allowed}"
        )
    file = info["file"]
    if not isinstance(file, str) or not file or os.path.basename(file) != file:
        raise ExportedModelError(
            f"{path}: file {file!r} is not a file name in the directory (tools/export_model.py writes "
            f"{file_names[format]!r} for format {format})"
        )
    outputs = info["outputs"]
    if not (isinstance(outputs, list) and all(isinstance(name, str) for name in outputs)):
        raise ExportedModelError(f"{path}: outputs {outputs!r} is not a list of names")
    lacking = [name for name in _DETECTION_FIELDS if name not in outputs]
    if lacking:
        raise ExportedModelError(
            f"{path}: the outputs {outputs} lack {', '.join(lacking)}; a detector's export has "
            f"{', '.join(_DETECTION_FIELDS)} (and pred_masks for Mask R-CNN)"
        )
    return info


def _check_against_config(info: Dict[str, Any], cfg: CfgNode, path: str) -> None:
    exported, configured = info["meta_architecture"], cfg.MODEL.META_ARCHITECTURE
    if exported != configured:
        raise ExportedModelError(
            f"{path}: the exported model is a {exported}, the config's MODEL.META_ARCHITECTURE is "
            f"{configured}; give the config the model was exported with"
        )
    if exported not in ARCHITECTURES:
        raise ExportedModelError(
            f"{path}: meta_architecture {exported}: tools/export_model.py exports {' and '.join(ARCHITECTURES)}"
        )
    masks = "pred_masks" in info["outputs"]
    wanted = exported == "GeneralizedRCNN" and bool(cfg.MODEL.MASK_ON)
    if masks != wanted:
        raise ExportedModelError(
            f"{path}: the exported model gives {'masks' if masks else 'no masks'}, the config's "
            f"MODEL.MASK_ON is {cfg.MODEL.MASK_ON}; give the config the model was exported with"
        )


def _score_threshold(cfg: CfgNode) -> float:
    if cfg.MODEL.META_ARCHITECTURE == "RetinaNet":
        return float(cfg.MODEL.RETINANET.SCORE_THRESH_TEST)
    return float(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST)


Runner = Callable[[Tensor], Dict[str, Tensor]]


def _flat_runner(model: Callable[[Tensor], Sequence[Tensor]], names: List[str], device: torch.device) -> Runner:
    def run(image: Tensor) -> Dict[str, Tensor]:
        flat = list(model(image.to(device)))
        if len(flat) != len(names):
            raise RuntimeError(f"the exported model gave {len(flat)} outputs, export_info.json names {len(names)}")
        return dict(zip(names, flat))

    return run


def _load_runner(info: Dict[str, Any], file: str, device: torch.device) -> Tuple[Runner, str]:
    """How to run ``file`` on one image: image -> its outputs by name; and what runs it."""
    method, format, names = info["export_method"], info["format"], list(info["outputs"])
    if format == "onnx":
        try:
            import onnxruntime
        except ImportError:
            raise ExportedModelError(
                f"{file}: an ONNX model runs in onnxruntime, which is not installed (pip install onnxruntime)"
            ) from None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = onnxruntime.InferenceSession(file, options, providers=["CPUExecutionProvider"])
        graph_inputs = [i.name for i in session.get_inputs()]
        if graph_inputs != ["image"]:
            raise ExportedModelError(f"{file}: the ONNX model takes {graph_inputs}, not one input 'image'")

        def run_onnx(image: Tensor) -> Dict[str, Tensor]:
            flat = session.run(names, {"image": image.detach().cpu().numpy()})
            return {name: torch.as_tensor(np.asarray(value)) for name, value in zip(names, flat)}

        return run_onnx, f"onnxruntime {onnxruntime.__version__} (CPU)"
    if format == "torchscript":
        module = torch.jit.load(file, map_location=device)
        if method == "scripting":

            def run_scripted(image: Tensor) -> Dict[str, Tensor]:
                return dict(module(({"image": image.to(device)},))[0])

            return run_scripted, f"torch {torch.__version__} (TorchScript)"
        return _flat_runner(module, names, device), f"torch {torch.__version__} (TorchScript)"
    if format == "program":
        from ..export.programs import size_range  # imported here, as _formats

        program = torch.export.load(file)
        run_program = _flat_runner(program.module(), names, device)
        sizes = size_range(program)

        def run_sized(image: Tensor) -> Dict[str, Tensor]:
            for name, size in zip(sizes, image.shape[-2:]):
                smallest, largest = sizes[name]
                if size < smallest or (largest is not None and size > largest):
                    raise ValueError(
                        f"the resized image's {name} is {size}; the exported program takes {name}s from "
                        f"{smallest}" + (f" to {largest}" if largest else "") + " (INPUT.MIN_SIZE_TEST "
                        "and MAX_SIZE_TEST resize the images: export with sizes this model takes)"
                    )
            return run_program(image)

        return run_sized, f"torch {torch.__version__} (torch.export.load)"
    # AOTInductor's documented entry point (pytorch.org/docs/stable/torch.compiler_aot_inductor.html),
    # as export_info.json's "load" says; torch has no other.
    runner = torch._inductor.aoti_load_package(file)
    return _flat_runner(runner, names, device), f"torch {torch.__version__} (AOTInductor)"


class ExportedModel:
    """The model that ``tools/export_model.py`` wrote to ``directory``, for ``cfg`` (the config it
    was exported with: its meta-architecture and ``MODEL.MASK_ON`` must be the export's; its score
    threshold and ``MODEL.DEVICE`` are used here).

    Called as the eager detector in eval mode on one image: ``model([{"image": (3, H, W) float32,
    "height": h, "width": w}])`` -> ``[{"instances": Instances}]`` at ``h`` x ``w`` (default: the
    image's size), with ``pred_boxes``, ``scores``, ``pred_classes`` and, for Mask R-CNN,
    ``pred_masks`` pasted into the image.

    Raises:
        ExportedModelError: no ``export_info.json`` in ``directory``, an export that
            ``tools/export_model.py`` does not write, the model file missing or unreadable, an
            export of another model than ``cfg``'s, or an ONNX model without onnxruntime.
    """

    def __init__(self, directory: str, cfg: CfgNode):
        self.directory = directory
        self.info = read_export_info(directory)
        info_path = os.path.join(directory, INFO_FILE)
        _check_against_config(self.info, cfg, info_path)
        self.file = os.path.join(directory, self.info["file"])
        if not os.path.isfile(self.file):
            raise ExportedModelError(
                f"{self.file}: no such file; {info_path} names it as the exported model "
                f"({self.info['export_method']}, {self.info['format']}): export again to this directory"
            )
        self.device = torch.device(cfg.MODEL.DEVICE)
        self.score_threshold = _score_threshold(cfg)
        try:
            self._run, self.runtime = _load_runner(self.info, self.file, self.device)
        except ExportedModelError:
            raise
        except Exception as e:
            raise ExportedModelError(
                f"{self.file}: cannot load it as {self.info['format']} ({self.info['export_method']}): "
                f"{type(e).__name__}: {e}"
            ) from None

    @property
    def export_method(self) -> str:
        """``tracing``, ``scripting`` or ``export`` (export_info.json's ``export_method``)."""
        return self.info["export_method"]

    @property
    def format(self) -> str:
        """``torchscript``, ``program``, ``aoti`` or ``onnx`` (export_info.json's ``format``)."""
        return self.info["format"]

    def instances(self, image: Tensor) -> Instances:
        """The exported model's detections of ``image`` (float32 (3, H, W), resized as in
        testing) in its coordinates, before ``detector_postprocess``: those scoring above the
        config's threshold."""
        outputs = self._run(image)
        fields: Dict[str, Any] = {
            "pred_boxes": Boxes(outputs["pred_boxes"].float().reshape(-1, 4)),
            "scores": outputs["scores"].float(),
            "pred_classes": outputs["pred_classes"].long(),
        }
        if "pred_masks" in outputs:
            fields["pred_masks"] = outputs["pred_masks"].float()
        instances = Instances(tuple(image.shape[-2:]), **fields)
        return instances[instances.scores > self.score_threshold]

    def __call__(self, batched_inputs: List[Dict[str, Any]]) -> List[Dict[str, Instances]]:
        """Each input's ``{"instances": ...}`` at its ``height`` x ``width``, as the eager model's
        inference gives them."""
        results = []
        for inputs in batched_inputs:
            image = inputs["image"]
            height = inputs.get("height", image.shape[-2])
            width = inputs.get("width", image.shape[-1])
            with torch.no_grad():
                instances = self.instances(image)
            results.append({"instances": detector_postprocess(instances, height, width)})
        return results

    def __repr__(self) -> str:
        return f"ExportedModel({self.file!r}, {self.export_method}, {self.format}, {self.runtime})"

"""A detector exported by ``torch.export`` with dynamic image height and width, to an
``ExportedProgram`` file, an AOTInductor package or ONNX (the dynamo exporter), and run again to
compare with eager mode.

What each takes and returns: ``model(image)``, image a float32 (3, H, W) tensor in
``cfg.INPUT.FORMAT``, 0-255, resized as in testing; the detections in that image's coordinates,
a tuple of tensors in the order of :attr:`Exported.output_names`: ``pred_boxes`` (N, 4) XYXY,
``scores`` (N,), ``pred_classes`` (N,) int64 and, for Mask R-CNN, ``pred_masks`` (N, 1, M, M)
mask probabilities in the box. RetinaNet's boxes are not clipped to the image, as its own
inference (Detectron2's ``detector_postprocess`` clips them and drops empty ones).

The program is the detector's modules with export-friendly equivalents of the Detectron2
functions ``torch.export`` cannot trace (:mod:`.exportable`), on a copy of the model in the NCHW
memory format: torch's rules for the strides of channels-last tensors add conditions on the image
size that export cannot prove for every size (``Mod(1, C * W) != 0``), and the formats choose their
own layouts.
"""

import copy
import io
import os
import sys
import tempfile
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.modeling import RetinaNet
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances
from torch import Tensor, nn

from .exported import Exported, onnx_runner
from .exportable import exportable_detector

__all__ = [
    "PROGRAM_FORMATS",
    "DYNAMO_ONNX_OPSET",
    "AOTI_INDUCTOR_CONFIGS",
    "export_program",
    "exported_program",
    "size_range",
    "smallest_size",
]

PROGRAM_FORMATS = ("program", "aoti", "onnx")
DYNAMO_ONNX_OPSET = 18  # the dynamo exporter's default opset in torch 2.14
# Inductor's layout optimization gives wrong results for the mask head's transposed convolution
# when the number of detections is decided by the data (measured: masks off by up to 1.0 in
# probability on torch 2.14.1, CPU; exact without it).
AOTI_INDUCTOR_CONFIGS = {"layout_optimization": False}


def smallest_size(model: nn.Module) -> int:
    """The smallest image height and width an exported ``model`` takes: its coarsest feature map
    (the backbone's largest stride) at least 2 pixels on each side. export specializes a size of
    1 (broadcasting treats it apart), so a program traced there would take no other size."""
    return max(shape.stride for shape in model.backbone.output_shape().values()) + 1


def exported_program(model: nn.Module, sample: Tensor) -> Tuple[torch.export.ExportedProgram, List[str]]:
    """``model`` (eval mode; a copy of it, in NCHW) exported by ``torch.export`` on ``sample``,
    with dynamic height and width from :func:`smallest_size` up, and its outputs' names. A sample
    smaller than that is traced padded to it (bottom and right, zeros)."""
    exportable = exportable_detector(copy.deepcopy(model).to(memory_format=torch.contiguous_format)).eval()
    smallest = smallest_size(model)
    height, width = sample.shape[-2:]
    sample = F.pad(sample, (0, max(0, smallest - width), 0, max(0, smallest - height)))
    dynamic = {"image": {1: torch.export.Dim("height", min=smallest), 2: torch.export.Dim("width", min=smallest)}}
    with torch.no_grad():
        program = torch.export.export(exportable, (sample,), dynamic_shapes=dynamic, strict=False)
    return program, exportable.output_names


def size_range(program: torch.export.ExportedProgram) -> Dict[str, Tuple[int, Optional[int]]]:
    """The image heights and widths ``program`` accepts, (smallest, largest or None: no bound)
    each, as export recorded them."""
    placeholder = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == "image")
    constraints = {str(symbol): value_range for symbol, value_range in program.range_constraints.items()}
    ranges = {}
    for name, size in zip(("height", "width"), placeholder.meta["val"].shape[1:]):
        constraint = constraints[str(size)]  # the symbol's name, as the size prints
        # export's "no bound" is its own infinite integer, larger than any machine integer
        upper = None if bool(constraint.upper >= sys.maxsize) else int(constraint.upper)
        ranges[name] = (int(constraint.lower), upper)
    return ranges


def _instances(model: nn.Module, image: Tensor, fields: Dict[str, Tensor]) -> Instances:
    instances = Instances(tuple(image.shape[1:]), **{k: (Boxes(v) if k == "pred_boxes" else v) for k, v in fields.items()})
    if isinstance(model, RetinaNet):  # as RetinaNet's eager forward
        instances = detector_postprocess(instances, image.shape[1], image.shape[2])
    return instances


def _program_runner(data: bytes, device: torch.device) -> Callable[[Tensor], List[Tensor]]:
    module = torch.export.load(io.BytesIO(data)).module()

    def run(image: Tensor) -> List[Tensor]:
        with torch.no_grad():
            return list(module(image.to(device)))

    return run


def _aoti_package(program: torch.export.ExportedProgram) -> Tuple[bytes, Callable[[Tensor], List[Tensor]]]:
    # torch._inductor.aoti_compile_and_package / aoti_load_package: AOTInductor's documented entry
    # points (pytorch.org/docs/stable/torch.compiler_aot_inductor.html); torch 2.14 has no other.
    with tempfile.TemporaryDirectory(prefix="fishnet_d2_aoti_") as tmp:
        path = torch._inductor.aoti_compile_and_package(
            program, package_path=os.path.join(tmp, "model.pt2"), inductor_configs=AOTI_INDUCTOR_CONFIGS
        )
        with open(path, "rb") as f:
            data = f.read()
        runner = torch._inductor.aoti_load_package(path)

    def run(image: Tensor) -> List[Tensor]:
        with torch.no_grad():
            return list(runner(image))

    return data, run


def _dynamo_onnx(program: torch.export.ExportedProgram, sample: Tensor, names: List[str]) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its notes on how it translates operators
        onnx_program = torch.onnx.export(
            program,
            (sample,),
            dynamo=True,
            input_names=["image"],
            output_names=names,
            opset_version=DYNAMO_ONNX_OPSET,
            verbose=False,
        )
    import onnx

    model = onnx_program.model_proto
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def export_program(model: nn.Module, format: str, sample: Tensor) -> Exported:
    """Export ``model`` (eval mode) by ``torch.export`` to ``format`` (:data:`PROGRAM_FORMATS`),
    tracing it on ``sample`` (a resized image on the model's device)."""
    if format not in PROGRAM_FORMATS:
        raise ValueError(f"format {format!r}: torch.export exports to {PROGRAM_FORMATS}")
    model.eval()
    program, names = exported_program(model, sample)
    device = sample.device
    if format == "program":
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        data = buffer.getvalue()
        run_flat = _program_runner(data, device)
        runtime = f"torch {torch.__version__} (torch.export.load)"
    elif format == "aoti":
        data, run_flat = _aoti_package(program)
        runtime = f"torch {torch.__version__} (AOTInductor)"
    else:
        data = _dynamo_onnx(program, sample, names)
        session = onnx_runner(data)

        def run_flat(image: Tensor) -> List[Tensor]:
            return [torch.as_tensor(np.asarray(o)) for o in session(image.cpu().numpy())]

        runtime = session.runtime

    sizes = size_range(program)

    def run_raw(image: Tensor) -> Dict[str, Tensor]:
        for name, size, (smallest, largest) in zip(sizes, image.shape[1:], sizes.values()):
            if size < smallest or (largest is not None and size > largest):
                raise ValueError(
                    f"an image of {name} {size}: the exported program takes {name}s from {smallest}"
                    + (f" to {largest}" if largest else "")
                    + " (see fishnet_d2.apps.export.programs.smallest_size); resize the image larger "
                    "(INPUT.MIN_SIZE_TEST)"
                )
        return dict(zip(names, run_flat(image)))

    def run(image: Tensor) -> Instances:
        return _instances(model, image, {k: v.to(device) for k, v in run_raw(image).items()})

    return Exported("export", format, data, names, run, run_raw, runtime, sizes)

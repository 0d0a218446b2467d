"""Check an exported model: the sample images its detections are compared on (with eager mode's,
by :mod:`.matching`), and the exported file run in a new Python process that imports neither
fishnet_d2 nor Detectron2."""

import io
import os
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

import detectron2.data.transforms as T
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data.detection_utils import convert_PIL_to_numpy
from PIL import Image
from torch import Tensor

from ..data import DEMO_SPEC, render_split
from ..predict.images import read_image_file
from .exporters import Exported

__all__ = [
    "sample_images",
    "model_input",
    "run_in_fresh_process",
    "fresh_process_difference",
    "FRESH_PROCESS_SCRIPT",
]


def sample_images(cfg: CfgNode, sample_image: Optional[str] = None) -> List[Tuple[str, np.ndarray]]:
    """Two images, (name, (H, W, C) uint8 in ``cfg.INPUT.FORMAT``), of different aspect ratios (the
    second is the first's or another's left three quarters): ``sample_image`` (read as
    ``tools/predict.py`` reads images), else the first two validation images of the demo's
    synthetic shapes dataset, made in memory."""
    if sample_image:
        first = (sample_image, read_image_file(sample_image, cfg.INPUT.FORMAT))
        second_name, second_image = first
    else:
        made = []
        for file_name, png, _, _ in render_split(DEMO_SPEC, "val"):
            image = convert_PIL_to_numpy(Image.open(io.BytesIO(png)), cfg.INPUT.FORMAT)
            made.append((f"shapes {file_name}", image))
            if len(made) == 2:
                break
        first, (second_name, second_image) = made
    width = max(1, second_image.shape[1] * 3 // 4)
    return [first, (f"{second_name}, left 3/4", np.ascontiguousarray(second_image[:, :width]))]


def model_input(cfg: CfgNode, image: np.ndarray) -> Tensor:
    """``image`` as the model's input: resized as Detectron2's ``DefaultPredictor`` resizes it
    (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``), a float32 (C, H, W) tensor on ``MODEL.DEVICE``."""
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)
    resized = resize.get_transform(image).apply_image(image)
    tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)).astype("float32"))
    return tensor.to(cfg.MODEL.DEVICE)


# Run in a new interpreter: ``python -c FRESH_PROCESS_SCRIPT MODEL INPUTS OUTPUTS METHOD FORMAT DEVICE``.
# torchvision registers the roi_align and nms operators that Detectron2's models call; ONNX
# models run in onnxruntime (else onnx's reference evaluator), on the CPU, as the tool runs them.
FRESH_PROCESS_SCRIPT = """\
import sys
import torch, torchvision
model_file, inputs_file, outputs_file, method, format, device = sys.argv[1:7]
if format == "torchscript":
    model = torch.jit.load(model_file, map_location=device)
elif format == "program":
    model = torch.export.load(model_file).module()
elif format == "aoti":
    model = torch._inductor.aoti_load_package(model_file)
else:
    try:
        import onnxruntime
        session = onnxruntime.InferenceSession(model_file, providers=["CPUExecutionProvider"])
        run = lambda image: session.run(None, {"image": image})
    except ImportError:
        from onnx.reference import ReferenceEvaluator
        evaluator = ReferenceEvaluator(model_file)
        run = lambda image: evaluator.run(None, {"image": image})
    model = lambda image: [torch.as_tensor(o) for o in run(image.cpu().numpy())]
outputs = []
with torch.no_grad():
    for image in torch.load(inputs_file):
        image = image.to(device)
        if method == "scripting":
            outputs.append({k: v.cpu() for k, v in model(({"image": image},))[0].items()})
        else:
            outputs.append([t.cpu() for t in model(image)])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("fishnet_d2", "detectron2"))
if loaded:
    sys.exit(f"imported {loaded}")
torch.save(outputs, outputs_file)
"""


def run_in_fresh_process(
    exported: Exported, images: Sequence[Tensor], device: str
) -> List[Dict[str, Tensor]]:
    """``exported`` run on ``images`` in a new Python process that imports only torch and
    torchvision (and onnxruntime for ONNX), not fishnet_d2, not Detectron2: its outputs by name,
    per image.

    Raises:
        RuntimeError: with the process's error output, when it fails.
    """
    with tempfile.TemporaryDirectory(prefix="fishnet_d2_export_check_") as tmp:
        model_file = exported.save(tmp)
        inputs_file, outputs_file = os.path.join(tmp, "inputs.pt"), os.path.join(tmp, "outputs.pt")
        torch.save([image.cpu() for image in images], inputs_file)
        arguments = [model_file, inputs_file, outputs_file, exported.method, exported.format, device]
        process = subprocess.run(
            [sys.executable, "-c", FRESH_PROCESS_SCRIPT, *arguments], capture_output=True, text=True
        )
        if process.returncode != 0:
            raise RuntimeError(
                f"the exported {exported.file_name} failed in a new Python process (exit status "
                f"{process.returncode}):\n{process.stderr[-3000:]}"
            )
        outputs = torch.load(outputs_file)
    if exported.method == "scripting":
        return outputs
    return [dict(zip(exported.output_names, flat)) for flat in outputs]


def fresh_process_difference(exported: Exported, images: Sequence[Tensor], device: str) -> float:
    """The largest difference, relative to each output's scale, between ``exported`` run here and in a new process (:func:`run_in_fresh_process`) on ``images``.

    Raises:
        RuntimeError: the new process failed, or gave outputs of other names or shapes.
    """
    largest = 0.0
    for image, there in zip(images, run_in_fresh_process(exported, images, device)):
        here = exported.run_raw(image)
        if sorted(here) != sorted(there):
            raise RuntimeError(f"in a new process the outputs are {sorted(there)}, here {sorted(here)}")
        for name, value in here.items():
            value, other = value.detach().float().cpu(), there[name].float()
            if value.shape != other.shape:
                raise RuntimeError(
                    f"in a new process {name} has shape {tuple(other.shape)}, here {tuple(value.shape)}"
                )
            if value.numel():
                scale = max(float(value.abs().max()), 1e-12)
                largest = max(largest, float((other - value).abs().max()) / scale)
    return largest

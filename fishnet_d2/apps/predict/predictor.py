"""A model of a config with its weights, run on one image as Detectron2's ``DefaultPredictor`` runs
it, with the size of its outputs bounded for huge images."""

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import detectron2.data.transforms as T
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model

from ...weights.checkpointer import FishNetCheckpointer
from .exported import ExportedModel

__all__ = ["MAX_OUTPUT_PIXELS", "Prediction", "Predictor", "load_model", "output_size"]

# The model gives its outputs -- pasted masks, per-class semantic scores, panoptic ids -- at the
# size asked for. At an image's own size a 10000x10000 image would need 100 MB per mask and
# 400 MB per semantic class; larger images get their outputs at this many pixels.
MAX_OUTPUT_PIXELS = 4096 * 4096


def output_size(height: int, width: int, max_pixels: int = MAX_OUTPUT_PIXELS) -> Tuple[int, int]:
    """The size the outputs for an image of ``height`` x ``width`` are made at: the image's own
    size, or, for an image of more than ``max_pixels`` pixels, that size scaled down (aspect ratio
    kept) to at most ``max_pixels`` pixels."""
    if height * width <= max_pixels:
        return height, width
    scale = math.sqrt(max_pixels / (height * width))
    return max(1, int(height * scale)), max(1, int(width * scale))


def load_model(cfg: CfgNode) -> torch.nn.Module:
    """``cfg``'s model on ``MODEL.DEVICE`` in eval mode, with ``MODEL.WEIGHTS`` (when set) loaded by
    :class:`FishNetCheckpointer`, which runs no code from the file and refuses files of other
    models (``CheckpointLoadError``, ``FileNotFoundError``)."""
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        FishNetCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model


@dataclass
class Prediction:
    """The model's output for one image."""

    outputs: Dict[str, Any]  # Detectron2's output dict, on the CPU
    image_size: Tuple[int, int]  # (height, width) of the image
    output_size: Tuple[int, int]  # (height, width) the outputs are at (see output_size)


class Predictor:
    """``cfg``'s model (:func:`load_model`), or, given ``exported`` (the directory that
    ``tools/export_model.py --output`` wrote), the exported model of it
    (:class:`~fishnet_d2.apps.predict.exported.ExportedModel`, which raises ``ExportedModelError``
    for a directory it cannot use). Each image is resized as in testing (``INPUT.MIN_SIZE_TEST`` /
    ``MAX_SIZE_TEST``, Detectron2's ``ResizeShortestEdge``), so images of any size are predicted at
    the model's test size; the outputs are at :func:`output_size`."""

    def __init__(
        self, cfg: CfgNode, *, max_output_pixels: int = MAX_OUTPUT_PIXELS, exported: Optional[str] = None
    ):
        if max_output_pixels < 1:
            raise ValueError(f"max_output_pixels={max_output_pixels}: must be >= 1")
        self.cfg = cfg.clone()
        self.model = load_model(self.cfg) if exported is None else ExportedModel(exported, self.cfg)
        self.resize = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        self.input_format = cfg.INPUT.FORMAT
        self.max_output_pixels = max_output_pixels

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> Prediction:
        """Predict ``image``, (H, W, C) uint8 in ``cfg.INPUT.FORMAT``."""
        height, width = image.shape[:2]
        out_height, out_width = output_size(height, width, self.max_output_pixels)
        transform = self.resize.get_transform(image)
        new_h, new_w = getattr(transform, "new_h", height), getattr(transform, "new_w", width)
        if min(new_h, new_w) < 1:
            raise ValueError(
                f"a {width}x{height} image resizes to {new_w}x{new_h} for the "
                f"model (INPUT.MIN_SIZE_TEST={self.cfg.INPUT.MIN_SIZE_TEST}, "
                f"MAX_SIZE_TEST={self.cfg.INPUT.MAX_SIZE_TEST}): its aspect ratio is too extreme"
            )
        resized = transform.apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)).astype("float32"))
        inputs = {"image": tensor, "height": out_height, "width": out_width}
        outputs = self.model([inputs])[0]
        return Prediction(_to_cpu(outputs), (height, width), (out_height, out_width))


def _to_cpu(outputs: Dict[str, Any]) -> Dict[str, Any]:
    cpu = torch.device("cpu")
    moved: Dict[str, Any] = {}
    for key, value in outputs.items():
        if key == "panoptic_seg":
            moved[key] = (value[0].to(cpu), value[1])
        else:
            moved[key] = value.to(cpu)
    return moved

"""Detectron2's ``Boxes.clip`` and ``Boxes.nonempty`` on an (R, 4) tensor.

``Boxes(tensor)`` asks whether the tensor is empty (``boxes.py``: ``if tensor.numel() == 0``), which
``torch.export`` cannot decide for a number of boxes that depends on the data; the functions here
compute the same on the tensor alone.
"""

from typing import Tuple

import torch
from torch import Tensor

__all__ = ["clip_boxes", "nonempty_boxes", "box_areas"]


def clip_boxes(boxes: Tensor, image_size: Tuple[int, int]) -> Tensor:
    """XYXY ``boxes`` (..., 4) clipped to ``image_size`` (height, width): ``Boxes.clip``'s values."""
    height, width = image_size
    x1 = boxes[..., 0].clamp(min=0, max=width)
    y1 = boxes[..., 1].clamp(min=0, max=height)
    x2 = boxes[..., 2].clamp(min=0, max=width)
    y2 = boxes[..., 3].clamp(min=0, max=height)
    return torch.stack((x1, y1, x2, y2), dim=-1)


def nonempty_boxes(boxes: Tensor, threshold: float = 0.0) -> Tensor:
    """Which boxes have both sides longer than ``threshold``: ``Boxes.nonempty``."""
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    return (widths > threshold) & (heights > threshold)


def box_areas(boxes: Tensor) -> Tensor:
    """The area of each box: ``Boxes.area``."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])

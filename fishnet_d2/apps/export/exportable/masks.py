"""Detectron2's ``mask_rcnn_inference`` (``modeling/roi_heads/mask_head.py``) for one image.

Detectron2's function reads the classes from ``Instances``, which ``torch.export`` cannot build
for a number of detections that depends on the data (it asks whether its boxes are empty); here
they are a tensor. The values are the same: the mask logits of each detection's class (the only
channel of a class-agnostic head), as probabilities.
"""

import torch
from torch import Tensor

__all__ = ["mask_probabilities"]


def mask_probabilities(mask_logits: Tensor, classes: Tensor) -> Tensor:
    """The mask probabilities (N, 1, M, M) of N detections from the head's logits (N, K or 1,
    M, M) and the detections' classes (N,)."""
    if mask_logits.shape[1] == 1:  # class-agnostic
        return mask_logits.sigmoid()
    indices = torch.arange(mask_logits.shape[0], device=classes.device)
    return mask_logits[indices, classes][:, None].sigmoid()

"""Detectron2's ``ImageList.from_tensors`` for the one image an exported detector takes.

``from_tensors`` computes the padded size from tensors (``torch.stack`` of the image sizes), so
under ``torch.export`` the padding is a number the data decides and every check of the padded
size downstream (FishNet's divisibility, FPN's matching sizes) becomes a question export cannot
answer. Here the padded size is computed from the image's shape, which export keeps symbolic.
"""

import torch.nn.functional as F
from torch import Tensor

__all__ = ["pad_to_divisible"]


def pad_to_divisible(image: Tensor, size_divisibility: int, pad_value: float = 0.0) -> Tensor:
    """``image`` (C, H, W) padded at the bottom and right to the next multiple of
    ``size_divisibility`` (0 or 1: no padding), as a batch of one (1, C, H', W'): the tensor of
    ``ImageList.from_tensors([image], size_divisibility, pad_value)``."""
    height, width = image.shape[-2], image.shape[-1]
    if size_divisibility > 1:
        padded_height = (height + size_divisibility - 1) // size_divisibility * size_divisibility
        padded_width = (width + size_divisibility - 1) // size_divisibility * size_divisibility
        image = F.pad(image, (0, padded_width - width, 0, padded_height - height), value=pad_value)
    return image.unsqueeze(0)

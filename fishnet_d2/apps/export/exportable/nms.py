"""Detectron2's ``batched_nms`` (``layers/nms.py``: torchvision's ``batched_nms`` on float boxes).

torchvision's ``batched_nms`` asks whether there are any boxes (``if boxes.numel() == 0``) and
how many (above 4,000 coordinates on a CPU it runs one NMS per class instead), questions about a
count the data decides, which ``torch.export`` cannot answer. Here it is always torchvision's
coordinate trick, as in a traced model: the boxes of each class moved apart by a multiple of the
largest coordinate, and one NMS. The kept boxes are those of an NMS per class, up to the
rounding of the moved coordinates in the overlaps that decide ties at the threshold.

torchvision's ``nms`` also tells export that it keeps at least 2 boxes (its fake kernel makes the
count with ``create_unbacked_symint``, whose least value is 2), and an exported program asserts
that at run time: an image whose NMS keeps 0 or 1 box would fail. Two boxes of no area and the
lowest score go in with the others: NMS keeps them (an overlap with a box of no area is 0 or
undefined, never above the threshold), after every other box, and they are cut off.
"""

import torch
from torch import Tensor
from torchvision.ops import nms

__all__ = ["batched_nms"]


def batched_nms(boxes: Tensor, scores: Tensor, classes: Tensor, iou_threshold: float) -> Tensor:
    """The indices of the boxes (N, 4) kept by NMS within each class at ``iou_threshold``, by
    decreasing score."""
    boxes = boxes.float()  # as Detectron2's: float16 has too little range for the offsets
    # The largest coordinate, -inf when there is no box: max() of an empty tensor fails.
    largest = torch.cat([boxes.reshape(-1), boxes.new_full((1,), float("-inf"))]).max()
    offsets = classes.to(boxes) * (largest + 1)
    moved = torch.cat([boxes + offsets[:, None], boxes.new_zeros(2, 4)])
    kept = nms(moved, torch.cat([scores, scores.new_full((2,), float("-inf"))]), iou_threshold)
    return kept[: kept.shape[0] - 2]  # the two added boxes, last

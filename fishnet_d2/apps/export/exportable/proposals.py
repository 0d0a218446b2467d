"""Detectron2's ``find_top_rpn_proposals`` (``modeling/proposal_generator/proposal_utils.py``) for
one image, in inference.

Detectron2's function branches on the data twice (``if not valid_mask.all()``, ``if
keep.sum().item() != len(boxes)``), takes ``min`` of a size that export keeps symbolic and the
top-k limit, and builds ``Boxes`` (which asks whether the boxes are empty). Here the invalid and
empty boxes are always filtered (filtering by an all-true mask changes nothing), the limit is
``torch.sym_min``, and boxes stay tensors. Training is not supported: its only difference is an
error on non-finite boxes.
"""

from typing import List, Tuple

import torch
from .nms import batched_nms
from torch import Tensor

from .boxes import clip_boxes, nonempty_boxes

__all__ = ["top_rpn_proposals"]


def top_rpn_proposals(
    proposals: List[Tensor],
    objectness_logits: List[Tensor],
    image_size: Tuple[int, int],
    nms_thresh: float,
    pre_nms_topk: int,
    post_nms_topk: int,
    min_box_size: float,
) -> Tuple[Tensor, Tensor]:
    """The proposals of one image: per level the ``pre_nms_topk`` highest scoring, then the
    finite ones clipped to ``image_size``, those with both sides above ``min_box_size``, NMS per
    level at ``nms_thresh``, and the ``post_nms_topk`` highest scoring over all levels.

    Args:
        proposals: per level, the decoded anchors of the image (1, Hi*Wi*A, 4).
        objectness_logits: per level, their logits (1, Hi*Wi*A).

    Returns:
        The boxes (R, 4) and their logits (R,), by decreasing logit: the ``proposal_boxes`` and
        ``objectness_logits`` of ``find_top_rpn_proposals``'s Instances.
    """
    boxes, scores, levels = [], [], []
    for level, (proposals_i, logits_i) in enumerate(zip(proposals, objectness_logits)):
        top_scores, top_indices = logits_i[0].topk(torch.sym_min(logits_i.shape[1], pre_nms_topk))
        boxes.append(proposals_i[0, top_indices])
        scores.append(top_scores)
        levels.append(torch.full_like(top_indices, level))
    boxes, scores, levels = torch.cat(boxes), torch.cat(scores), torch.cat(levels)

    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
    boxes, scores, levels = clip_boxes(boxes[valid], image_size), scores[valid], levels[valid]
    keep = nonempty_boxes(boxes, threshold=min_box_size)
    boxes, scores, levels = boxes[keep], scores[keep], levels[keep]

    keep = batched_nms(boxes, scores, levels, nms_thresh)[:post_nms_topk]  # sorted by score
    return boxes[keep], scores[keep]

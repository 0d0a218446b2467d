"""The detections of one image from box predictions: Detectron2's
``fast_rcnn_inference_single_image`` (``modeling/roi_heads/fast_rcnn.py``, the R-CNN box head's)
and ``RetinaNet.inference_single_image`` with ``DenseDetector._decode_per_level_predictions``
(RetinaNet's).

Detectron2's functions branch on the data (``if not valid_mask.all()``), take ``min`` of a count
the data decides and the top-k limit, and build ``Boxes`` and ``Instances`` (which ask whether a
tensor is empty): ``torch.export`` can do none of these for counts that depend on the data. Here
the invalid predictions are always filtered (by an all-true mask in the common case: no change),
the limit is ``torch.sym_min``, and the results are tensors.
"""

from typing import List, Tuple

import torch
from .nms import batched_nms
from detectron2.modeling.box_regression import Box2BoxTransform
from torch import Tensor

from .boxes import clip_boxes

__all__ = ["Detections", "fast_rcnn_detections", "retinanet_detections"]

# boxes (N, 4) XYXY, scores (N,), classes (N,) int64, by decreasing score
Detections = Tuple[Tensor, Tensor, Tensor]


def fast_rcnn_detections(
    boxes: Tensor,
    scores: Tensor,
    image_size: Tuple[int, int],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
) -> Tuple[Detections, Tensor]:
    """``fast_rcnn_inference_single_image``: the boxes (R, K*4 or 4) and class probabilities
    (R, K + 1, background last) of R proposals, the finite ones, clipped to ``image_size``; each
    class score above ``score_thresh`` a candidate; NMS per class at ``nms_thresh``; the best
    ``topk_per_image`` (all if negative).

    Returns:
        The detections, and the index of each one's proposal.
    """
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    boxes, scores = boxes[valid], scores[valid][:, :-1]
    num_box_classes = boxes.shape[1] // 4
    boxes = clip_boxes(boxes.reshape(-1, num_box_classes, 4), image_size)

    candidates = scores > score_thresh  # R x K
    indices = torch.nonzero(candidates)  # (proposal, class) of each candidate
    boxes = boxes[indices[:, 0], 0] if num_box_classes == 1 else boxes[candidates]
    scores = scores[candidates]

    keep = batched_nms(boxes, scores, indices[:, 1], nms_thresh)
    if topk_per_image >= 0:
        keep = keep[:topk_per_image]
    indices = indices[keep]
    return (boxes[keep], scores[keep], indices[:, 1]), indices[:, 0]


def retinanet_detections(
    anchors: List[Tensor],
    scores: List[Tensor],
    deltas: List[Tensor],
    box2box_transform: Box2BoxTransform,
    score_thresh: float,
    topk_candidates: int,
    nms_thresh: float,
    max_detections: int,
) -> Detections:
    """``RetinaNet.inference_single_image``: per level, the (anchor, class) pairs scoring above
    ``score_thresh``, the ``topk_candidates`` best of them, their anchors moved by their deltas;
    then NMS per class over all levels at ``nms_thresh``, and the best ``max_detections``.

    Args:
        anchors: per level, the anchors (Hi*Wi*A, 4).
        scores: per level, the class probabilities of each anchor (Hi*Wi*A, K).
        deltas: per level, the box deltas of each anchor (Hi*Wi*A, 4).
    """
    all_boxes, all_scores, all_classes = [], [], []
    for anchors_i, scores_i, deltas_i in zip(anchors, scores, deltas):
        candidates = scores_i > score_thresh
        candidate_scores = scores_i[candidates]
        indices = torch.nonzero(candidates)  # (anchor, class) of each candidate
        top_scores, top = candidate_scores.topk(torch.sym_min(indices.shape[0], topk_candidates))
        anchor_indices, classes = indices[top].unbind(dim=1)
        all_boxes.append(box2box_transform.apply_deltas(deltas_i[anchor_indices], anchors_i[anchor_indices]))
        all_scores.append(top_scores)
        all_classes.append(classes)
    boxes, scores, classes = torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_classes)
    keep = batched_nms(boxes, scores, classes, nms_thresh)[:max_detections]
    return boxes[keep], scores[keep], classes[keep]

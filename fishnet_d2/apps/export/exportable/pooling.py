"""Detectron2's ``ROIPooler.forward`` (``modeling/poolers.py``) for the boxes of one image.

``ROIPooler`` takes ``Boxes``, whose constructor asks whether the boxes are empty: a question
``torch.export`` cannot answer for a number of boxes that depends on the data. Here the boxes are
a tensor; the level of each box (FPN's equation 1), the pooler of each level and the output are
``ROIPooler``'s, with its own modules (``level_poolers``).
"""

from typing import List

import torch
from detectron2.modeling.poolers import ROIPooler
from torch import Tensor

from .boxes import box_areas

__all__ = ["pool_boxes"]


def pool_boxes(pooler: ROIPooler, features: List[Tensor], boxes: Tensor) -> Tensor:
    """``pooler(features, [Boxes(boxes)])``: the features (batch of one) pooled in each box
    (R, 4), (R, C, output_size, output_size)."""
    rois = torch.cat([boxes.new_zeros(boxes.shape[0], 1), boxes], dim=1)  # the image index first
    if len(pooler.level_poolers) == 1:
        return pooler.level_poolers[0](features[0], rois)
    # FPN's equation 1 (assign_boxes_to_levels), with its 1e-8
    levels = torch.floor(
        pooler.canonical_level + torch.log2(torch.sqrt(box_areas(boxes)) / pooler.canonical_box_size + 1e-8)
    )
    levels = torch.clamp(levels, min=pooler.min_level, max=pooler.max_level).to(torch.int64) - pooler.min_level
    size = pooler.output_size
    output = features[0].new_zeros(boxes.shape[0], features[0].shape[1], size[0], size[1])
    for level, (level_pooler, x) in enumerate(zip(pooler.level_poolers, features)):
        indices = torch.nonzero(levels == level).squeeze(1)
        output = output.index_put((indices,), level_pooler(x, rois[indices]))
    return output

"""Predictions as COCO-format results, the JSON that Detectron2's ``COCOEvaluator`` writes
(``coco_instances_results.json``) and pycocotools' ``COCO.loadRes`` reads: per detection
``image_id``, ``category_id``, ``bbox`` (XYWH, in image pixels), ``score``, and ``segmentation``
(RLE) for masks, ``keypoints`` for keypoints."""

import json
import os
from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple

import cv2
import numpy as np
from detectron2.data import Metadata
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.structures import Boxes, Instances

from ...weights.atomic_file import atomic_write

__all__ = ["assign_image_ids", "coco_results", "write_json"]


def assign_image_ids(paths: Sequence[str]) -> Dict[str, int]:
    """The ``image_id`` of each path: the number in its name when every name is a distinct number
    (COCO's ``000000397133.jpg`` is image 397133, so that results match COCO's annotations), else
    1, 2, ... in the order given."""
    stems = [Path(p).stem for p in paths]
    if stems and all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
        return {p: int(s) for p, s in zip(paths, stems)}
    return {p: i + 1 for i, p in enumerate(paths)}


def _rescaled(instances: Instances, image_size: Tuple[int, int]) -> Instances:
    """``instances`` (at their own ``image_size``) at ``image_size``: boxes and keypoints scaled,
    masks resized (nearest neighbour)."""
    height, width = image_size
    scale_y, scale_x = height / instances.image_size[0], width / instances.image_size[1]
    fields = {}
    for name, value in instances.get_fields().items():
        if name == "pred_boxes":
            value = Boxes(value.tensor * value.tensor.new_tensor([scale_x, scale_y, scale_x, scale_y]))
        elif name == "pred_keypoints":
            value = value * value.new_tensor([scale_x, scale_y, 1.0])
        elif name == "pred_masks":
            value = np.stack(
                [
                    cv2.resize(mask.numpy().astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
                    > 0
                    for mask in value
                ]
            )
        fields[name] = value
    return Instances(image_size, **fields)


def coco_results(
    instances: Instances, image_id: int, image_size: Tuple[int, int], metadata: Metadata
) -> List[Dict]:
    """The COCO results of ``instances`` (CPU), one dict per detection, as ``COCOEvaluator``
    writes them.

    Args:
        instances: one image's ``"instances"`` output; at ``image_size`` or, for huge images
            (:func:`fishnet_d2.apps.predict.predictor.output_size`), smaller: their boxes, masks and
            keypoints are then scaled to ``image_size``, a mask at a time.
        image_id: the image's id (:func:`assign_image_ids`).
        image_size: (height, width) of the image.
        metadata: where ``thing_dataset_id_to_contiguous_id`` maps the model's classes back to the
            dataset's category ids, as ``COCOEvaluator`` does; without it ``category_id`` is
            the model's class index.
    """
    if instances.has("pred_keypoints"):  # instances_to_coco_json shifts keypoints in place
        instances = Instances(instances.image_size, **instances.get_fields())
        instances.pred_keypoints = instances.pred_keypoints.clone()
    if tuple(instances.image_size) == tuple(image_size):
        results = instances_to_coco_json(instances, image_id)
    else:  # one mask at the image's size at a time: a 10000x10000 mask is 100 MB
        results = []
        for i in range(len(instances)):
            results.extend(instances_to_coco_json(_rescaled(instances[i : i + 1], image_size), image_id))
    mapping: Mapping[int, int] = metadata.get("thing_dataset_id_to_contiguous_id", None) or {}
    if mapping:
        reverse = {contiguous: dataset_id for dataset_id, contiguous in mapping.items()}
        for result in results:
            result["category_id"] = reverse[result["category_id"]]
    return results


def write_json(obj: object, path: str) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (never a partial file)."""
    text = json.dumps(obj)
    atomic_write(os.fspath(path), lambda f: f.write(text), binary=False)

"""Draw a model's predictions on its image with Detectron2's ``Visualizer``: the one drawing code of
``tools/predict.py`` (:mod:`fishnet_d2.apps.predict`) and of the demo's pictures (:mod:`fishnet_d2.apps.demo`)."""

from typing import Any, Mapping, Optional

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import Metadata, MetadataCatalog
from detectron2.utils.visualizer import ColorMode, Visualizer

__all__ = ["draw_predictions", "prediction_metadata"]


def prediction_metadata(cfg: CfgNode) -> Metadata:
    """The metadata to draw and report the predictions of ``cfg``'s model with: that of the first
    dataset of ``DATASETS.TEST`` (class names, colours, dataset category ids), completed where it
    lacks class names -- an unregistered or absent test dataset -- with the class indices as names
    (``thing_classes`` from ``ROI_HEADS`` / ``RETINANET.NUM_CLASSES``, ``stuff_classes`` from
    ``SEM_SEG_HEAD.NUM_CLASSES``), which the semantic and panoptic drawings need."""
    base = MetadataCatalog.get(cfg.DATASETS.TEST[0]).as_dict() if len(cfg.DATASETS.TEST) else {}
    base.pop("name", None)
    num_things = (
        cfg.MODEL.RETINANET.NUM_CLASSES
        if cfg.MODEL.META_ARCHITECTURE == "RetinaNet"
        else cfg.MODEL.ROI_HEADS.NUM_CLASSES
    )
    base.setdefault("thing_classes", [str(i) for i in range(num_things)])
    base.setdefault("stuff_classes", [str(i) for i in range(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)])
    return Metadata(name=cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "predictions", **base)


def draw_predictions(
    image: np.ndarray,
    predictions: Mapping[str, Any],
    metadata: Metadata,
    *,
    score_threshold: float = 0.0,
    scale: float = 1.0,
    instance_mode: Optional[ColorMode] = None,
) -> np.ndarray:
    """``image`` with ``predictions`` drawn on it, as Detectron2's ``demo/predictor.py`` draws them.

    Args:
        image: (H, W, 3) uint8 RGB, the size the predictions are at (the model's input dict's
            ``height`` and ``width``).
        predictions: one output of a Detectron2 model: ``"panoptic_seg"`` (drawn alone), else
            ``"sem_seg"`` (its argmax) and/or ``"instances"``, on any device.
        metadata: class names and colours (:func:`prediction_metadata`).
        score_threshold: instances and panoptic "thing" segments with a lower score are not drawn.
        scale: the drawing's size relative to ``image``.
        instance_mode: Detectron2's ``ColorMode``; by default ``SEGMENTATION`` (each class in its
            ``metadata.thing_colors`` colour) where the metadata has colours, else ``IMAGE``.

    Returns:
        the drawing, (round(H * scale), round(W * scale), 3) uint8 RGB.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image: expected (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    if not 0.0 <= score_threshold <= 1.0:
        raise ValueError(f"score_threshold={score_threshold!r}: must be in [0, 1]")
    if instance_mode is None:
        instance_mode = ColorMode.SEGMENTATION if metadata.get("thing_colors") else ColorMode.IMAGE
    visualizer = Visualizer(image, metadata, scale=scale, instance_mode=instance_mode)
    cpu = torch.device("cpu")
    if "panoptic_seg" in predictions:
        panoptic_seg, segments_info = predictions["panoptic_seg"]
        if segments_info is not None:
            segments_info = [
                s for s in segments_info if not s.get("isthing") or s.get("score", 1.0) >= score_threshold
            ]
        return visualizer.draw_panoptic_seg(panoptic_seg.to(cpu), segments_info).get_image()
    drawing = visualizer.output
    if "sem_seg" in predictions:
        drawing = visualizer.draw_sem_seg(predictions["sem_seg"].argmax(dim=0).to(cpu))
    if "instances" in predictions:
        instances = predictions["instances"].to(cpu)
        if instances.has("scores"):
            instances = instances[instances.scores >= score_threshold]
        drawing = visualizer.draw_instance_predictions(instances)
    return drawing.get_image()

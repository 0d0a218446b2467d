"""A Detectron2 detector as one module that ``torch.export`` can export with dynamic image sizes:
the detector's own modules and weights, its inference as ``GeneralizedRCNN.inference(...,
do_postprocess=False)`` and ``RetinaNet``'s forward compute it, with export-friendly equivalents
of the Detectron2 functions that export cannot trace (each in its own module here, with the reason).

Each takes one image, a float32 tensor (3, H, W) in the model's ``INPUT.FORMAT``, 0-255, resized
as in testing, and returns the detections in its coordinates as a tuple of tensors (names:
``output_names``).
"""

from typing import Dict, List, Tuple

import torch.nn.functional as F
from detectron2.modeling import GeneralizedRCNN, RetinaNet
from detectron2.modeling.proposal_generator import RPN
from detectron2.modeling.roi_heads import StandardROIHeads
from torch import Tensor, nn

from ....backports import padding_constraints, uses_sigmoid_class_scores
from .detections import fast_rcnn_detections, retinanet_detections
from .layers import mask_head_layers
from .masks import mask_probabilities
from .pooling import pool_boxes
from .preprocess import pad_to_divisible
from .proposals import top_rpn_proposals

__all__ = ["ExportableRCNN", "ExportableRetinaNet", "exportable_detector", "check_exportable_detector"]


def _anchors_and_predictions(
    anchor_generator: nn.Module, head_outputs: Tuple[List[Tensor], List[Tensor]], features: List[Tensor], classes: int
) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
    """Per level, the anchors (Hi*Wi*A, 4), and the head's class outputs (Hi*Wi*A, classes) and box
    deltas (Hi*Wi*A, 4) for the batch's one image, in the anchors' order (Detectron2's
    ``permute_to_N_HWA_K``)."""
    anchors = [boxes.tensor for boxes in anchor_generator(features)]
    logits, deltas = head_outputs

    def per_anchor(x: Tensor, k: int) -> Tensor:  # (1, A*k, H, W) -> (H*W*A, k)
        return x.view(x.shape[0], -1, k, x.shape[-2], x.shape[-1]).permute(0, 3, 4, 1, 2).reshape(-1, k)

    return anchors, [per_anchor(x, classes) for x in logits], [per_anchor(x, 4) for x in deltas]


class ExportableRCNN(nn.Module):
    """A ``GeneralizedRCNN`` with an ``RPN`` and ``StandardROIHeads`` (Faster and Mask R-CNN):
    ``forward(image)`` -> ``(pred_boxes, scores, pred_classes[, pred_masks])``."""

    def __init__(self, model: GeneralizedRCNN):
        super().__init__()
        self.model = model
        self.output_names = ["pred_boxes", "scores", "pred_classes"] + (
            ["pred_masks"] if model.roi_heads.mask_on else []
        )

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
        model, heads = self.model, self.model.roi_heads
        image_size = (image.shape[-2], image.shape[-1])
        x = (image - model.pixel_mean) / model.pixel_std
        features = model.backbone(pad_to_divisible(x, model.backbone.size_divisibility))
        proposals = self.proposals(features, image_size)

        box_features = pool_boxes(heads.box_pooler, [features[f] for f in heads.box_in_features], proposals)
        class_logits, box_deltas = heads.box_predictor(heads.box_head(box_features))
        boxes = heads.box_predictor.box2box_transform.apply_deltas(box_deltas, proposals)
        # FastRCNNOutputLayers.predict_probs, which needs the proposals' Instances for their number
        if uses_sigmoid_class_scores(heads.box_predictor):
            probabilities = class_logits.sigmoid()
        else:
            probabilities = F.softmax(class_logits, dim=-1)
        (boxes, scores, classes), _ = fast_rcnn_detections(
            boxes,
            probabilities,
            image_size,
            heads.box_predictor.test_score_thresh,
            heads.box_predictor.test_nms_thresh,
            heads.box_predictor.test_topk_per_image,
        )
        if not heads.mask_on:
            return boxes, scores, classes
        mask_features = pool_boxes(heads.mask_pooler, [features[f] for f in heads.mask_in_features], boxes)
        masks = mask_probabilities(mask_head_layers(heads.mask_head, mask_features), classes)
        return boxes, scores, classes, masks

    def proposals(self, features: Dict[str, Tensor], image_size: Tuple[int, int]) -> Tensor:
        """The RPN's proposal boxes (R, 4) for the image: ``RPN.forward`` in inference."""
        rpn = self.model.proposal_generator
        features = [features[f] for f in rpn.in_features]
        anchors, logits, deltas = _anchors_and_predictions(rpn.anchor_generator, rpn.rpn_head(features), features, 1)
        boxes = [rpn.box2box_transform.apply_deltas(d, a).unsqueeze(0) for d, a in zip(deltas, anchors)]
        proposals, _ = top_rpn_proposals(
            boxes,
            [x.reshape(1, -1) for x in logits],
            image_size,
            rpn.nms_thresh,
            rpn.pre_nms_topk[False],
            rpn.post_nms_topk[False],
            rpn.min_box_size,
        )
        return proposals


class ExportableRetinaNet(nn.Module):
    """A ``RetinaNet``: ``forward(image)`` -> ``(pred_boxes, scores, pred_classes)``, the boxes not
    clipped (as RetinaNet's own inference: ``detector_postprocess`` clips them)."""

    def __init__(self, model: RetinaNet):
        super().__init__()
        self.model = model
        self.output_names = ["pred_boxes", "scores", "pred_classes"]

    def forward(self, image: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        model = self.model
        x = (image - model.pixel_mean) / model.pixel_std
        features = model.backbone(pad_to_divisible(x, model.backbone.size_divisibility))
        features = [features[f] for f in model.head_in_features]
        anchors, logits, deltas = _anchors_and_predictions(
            model.anchor_generator, model.head(features), features, model.num_classes
        )
        return retinanet_detections(
            anchors,
            [x.sigmoid() for x in logits],
            deltas,
            model.box2box_transform,
            model.test_score_thresh,
            model.test_topk_candidates,
            model.test_nms_thresh,
            model.max_detections_per_image,
        )


def check_exportable_detector(model: nn.Module) -> None:
    """ValueError, naming what is supported, unless ``model`` is a detector these modules export."""
    if isinstance(model, RetinaNet):
        return
    if not isinstance(model, GeneralizedRCNN):
        raise ValueError(
            f"{type(model).__name__}: torch.export supports GeneralizedRCNN (Mask R-CNN, Faster R-CNN) and RetinaNet"
        )
    parts = {
        "MODEL.PROPOSAL_GENERATOR.NAME": (model.proposal_generator, RPN, "RPN"),
        "MODEL.ROI_HEADS.NAME": (model.roi_heads, StandardROIHeads, "StandardROIHeads"),
    }
    for key, (module, supported, name) in parts.items():
        if type(module) is not supported:
            raise ValueError(f"{key} builds a {type(module).__name__}; torch.export supports {name}")
    if model.roi_heads.keypoint_on:
        raise ValueError("MODEL.KEYPOINT_ON: torch.export supports boxes and masks, not keypoints")
    if padding_constraints(model.backbone).get("square_size", 0):
        raise ValueError("the backbone pads images to squares (square_size); torch.export supports size_divisibility")


def exportable_detector(model: nn.Module) -> nn.Module:
    """``model`` (eval mode) as :class:`ExportableRCNN` or :class:`ExportableRetinaNet`."""
    check_exportable_detector(model)
    return ExportableRetinaNet(model) if isinstance(model, RetinaNet) else ExportableRCNN(model)

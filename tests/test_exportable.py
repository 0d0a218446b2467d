"""The export-friendly equivalents of Detectron2's functions (fishnet_d2.apps.export.exportable)
compute what Detectron2's own functions compute, on the same inputs: images of several sizes,
proposals with more and fewer candidates than the top-k limits, non-finite and empty boxes, no
detection at all. They run in eager mode here (fast); tests/test_export_program.py exports them.

Equal means equal: the same operations on the same values, so the tensors match bit for bit,
except where torchvision's batched NMS takes its per-class loop for many boxes and the
equivalent always moves the classes apart (torchvision's coordinate trick): the kept boxes are
the same, as the boxes here are random (no overlap sits within rounding of the threshold).
"""

import pytest
import torch
from detectron2.layers import batched_nms as detectron2_batched_nms
from detectron2.modeling import build_model
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.modeling.proposal_generator.proposal_utils import find_top_rpn_proposals
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference_single_image
from detectron2.modeling.roi_heads.mask_head import mask_rcnn_inference
from detectron2.structures import Boxes, ImageList, Instances

from fishnet_d2.apps.export.exportable import exportable_detector
from fishnet_d2.apps.export.exportable.boxes import box_areas, clip_boxes, nonempty_boxes
from fishnet_d2.apps.export.exportable.detections import fast_rcnn_detections, retinanet_detections
from fishnet_d2.apps.export.exportable.masks import mask_probabilities
from fishnet_d2.apps.export.exportable.nms import batched_nms
from fishnet_d2.apps.export.exportable.pooling import pool_boxes
from fishnet_d2.apps.export.exportable.preprocess import pad_to_divisible
from fishnet_d2.apps.export.exportable.proposals import top_rpn_proposals

from .support import DETECTOR_ARCHITECTURES, tiny_detector_cfg

IMAGE_SIZE = (90, 130)  # height, width


def random_boxes(n: int, generator: torch.Generator, size=IMAGE_SIZE, spill: float = 20.0) -> torch.Tensor:
    """``n`` XYXY boxes, some reaching out of the image by up to ``spill`` pixels, some tiny."""
    height, width = size
    x1 = torch.rand(n, generator=generator) * (width + spill) - spill
    y1 = torch.rand(n, generator=generator) * (height + spill) - spill
    w = torch.rand(n, generator=generator) ** 2 * width
    h = torch.rand(n, generator=generator) ** 2 * height
    return torch.stack([x1, y1, x1 + w, y1 + h], dim=1)


@pytest.mark.parametrize("size", [(90, 130), (96, 128), (33, 65), (1, 1)])
@pytest.mark.parametrize("divisibility", [0, 1, 32])
def test_padding_is_image_lists(size, divisibility):
    image = torch.rand(3, *size)
    expected = ImageList.from_tensors([image], divisibility, pad_value=0.5).tensor
    assert torch.equal(pad_to_divisible(image, divisibility, pad_value=0.5), expected)


def test_box_functions_are_boxes_methods():
    boxes = random_boxes(50, torch.Generator().manual_seed(0))
    expected = Boxes(boxes.clone())
    expected.clip(IMAGE_SIZE)
    assert torch.equal(clip_boxes(boxes, IMAGE_SIZE), expected.tensor)
    assert torch.equal(nonempty_boxes(boxes, 3.0), Boxes(boxes).nonempty(3.0))
    assert torch.equal(box_areas(boxes), Boxes(boxes).area())


@pytest.mark.parametrize(
    "count, classes",
    [(0, 1), (5, 1), (300, 3), (1500, 5)],  # 1500 boxes: 6000 coordinates, torchvision's per-class loop
)
def test_batched_nms_keeps_detectron2s_boxes(count, classes):
    generator = torch.Generator().manual_seed(count)
    boxes = random_boxes(count, generator)
    scores = torch.rand(count, generator=generator)
    idxs = torch.randint(0, classes, (count,), generator=generator)
    expected = detectron2_batched_nms(boxes, scores, idxs, 0.5)
    kept = batched_nms(boxes, scores, idxs, 0.5)
    # The same boxes, by decreasing score; boxes of equal score (1500 random float32 scores hold
    # some) in either order.
    assert sorted(kept.tolist()) == sorted(expected.tolist())
    assert torch.equal(scores[kept], scores[expected])
    if count >= 300:
        assert 0 < len(kept) < count  # NMS removed some and kept some: the case is not trivial


class BatchedNms(torch.nn.Module):
    def forward(self, boxes, scores, classes):
        return batched_nms(boxes, scores, classes, 0.5)


def test_exported_nms_keeps_any_number_of_boxes_even_none_or_one():
    """torchvision's nms tells torch.export it keeps at least 2 boxes, and the program asserts it:
    the equivalent must run when NMS keeps 0 or 1."""
    generator = torch.Generator().manual_seed(1)
    sample = (random_boxes(20, generator), torch.rand(20, generator=generator), torch.zeros(20, dtype=torch.int64))
    count = torch.export.Dim.DYNAMIC
    program = torch.export.export(
        BatchedNms(), sample, dynamic_shapes=({0: count}, {0: count}, {0: count}), strict=False
    ).module()
    one_box = torch.tensor([[10.0, 10.0, 50.0, 40.0]])
    for boxes in (random_boxes(0, generator), one_box, one_box.repeat(5, 1), random_boxes(300, generator)):
        scores = torch.rand(len(boxes), generator=generator)
        classes = torch.randint(0, 3 if len(boxes) > 5 else 1, (len(boxes),), generator=generator)
        expected = detectron2_batched_nms(boxes, scores, classes, 0.5)
        assert torch.equal(program(boxes, scores, classes), expected)
        assert len(expected) == {0: 0, 1: 1, 5: 1}.get(len(boxes), len(expected))  # 5 copies of a box: 1 kept


def rpn_outputs(level_sizes, generator):
    proposals = [random_boxes(n, generator).unsqueeze(0) for n in level_sizes]
    logits = [torch.randn(1, n, generator=generator) * 3 for n in level_sizes]
    return proposals, logits


@pytest.mark.parametrize(
    "level_sizes, pre_nms_topk, post_nms_topk, min_box_size",
    [
        ([400, 100, 25], 200, 50, 0.0),  # more candidates than pre_nms_topk on a level; post-NMS cut
        ([40, 10], 200, 1000, 0.0),  # fewer candidates than either limit
        ([300, 80], 100, 60, 8.0),  # small boxes removed
        ([1200, 300, 80, 20, 6], 1000, 1000, 0.0),  # COCO's test limits, torchvision's per-class NMS
    ],
)
def test_top_rpn_proposals_are_find_top_rpn_proposals(level_sizes, pre_nms_topk, post_nms_topk, min_box_size):
    proposals, logits = rpn_outputs(level_sizes, torch.Generator().manual_seed(sum(level_sizes)))
    boxes, scores = top_rpn_proposals(proposals, logits, IMAGE_SIZE, 0.7, pre_nms_topk, post_nms_topk, min_box_size)
    (expected,) = find_top_rpn_proposals(
        proposals, logits, [IMAGE_SIZE], 0.7, pre_nms_topk, post_nms_topk, min_box_size, False
    )
    assert torch.equal(boxes, expected.proposal_boxes.tensor)
    assert torch.equal(scores, expected.objectness_logits)
    assert len(boxes) > 0


def test_top_rpn_proposals_drop_non_finite_ones_as_detectron2():
    proposals, logits = rpn_outputs([200, 50], torch.Generator().manual_seed(7))
    proposals[0][0, 3, 1] = float("nan")
    logits[1][0, 5] = float("inf")
    boxes, scores = top_rpn_proposals(proposals, logits, IMAGE_SIZE, 0.7, 100, 80, 0.0)
    (expected,) = find_top_rpn_proposals(proposals, logits, [IMAGE_SIZE], 0.7, 100, 80, 0.0, False)
    assert torch.equal(boxes, expected.proposal_boxes.tensor) and torch.equal(scores, expected.objectness_logits)
    assert torch.isfinite(boxes).all() and torch.isfinite(scores).all()


@pytest.mark.parametrize("pooler_type", ["ROIAlignV2", "ROIAlign"])
@pytest.mark.parametrize("count", [0, 1, 40])
@pytest.mark.parametrize("levels", [1, 4])
def test_pooled_boxes_are_roi_poolers(pooler_type, count, levels):
    generator = torch.Generator().manual_seed(count + levels)
    scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32][:levels]
    pooler = ROIPooler((7, 7), scales, sampling_ratio=0, pooler_type=pooler_type)
    features = [torch.randn(1, 8, 96 // int(1 / s), 128 // int(1 / s), generator=generator) for s in scales]
    boxes = random_boxes(count, generator, spill=0.0)
    expected = pooler(features, [Boxes(boxes)])
    assert torch.equal(pool_boxes(pooler, features, boxes), expected)


def box_head_outputs(count, classes, generator, class_specific=True):
    boxes = random_boxes(count, generator).repeat(1, classes if class_specific else 1)
    boxes += torch.randn(boxes.shape, generator=generator)
    probabilities = torch.softmax(torch.randn(count, classes + 1, generator=generator) * 3, dim=1)
    return boxes, probabilities


@pytest.mark.parametrize(
    "count, classes, score_thresh, topk, class_specific",
    [
        (0, 3, 0.05, 100, True),  # no proposal
        (50, 3, 0.99, 100, True),  # no score above the threshold: no detection
        (300, 5, 0.05, 20, True),  # more candidates than the top-k per image
        (300, 5, 0.05, -1, True),  # no limit
        (120, 4, 0.1, 50, False),  # class-agnostic boxes
    ],
)
def test_fast_rcnn_detections_are_fast_rcnn_inference(count, classes, score_thresh, topk, class_specific):
    boxes, probabilities = box_head_outputs(count, classes, torch.Generator().manual_seed(count), class_specific)
    if count:
        boxes[1, 2] = float("inf")  # a non-finite prediction, dropped by both
    (det_boxes, det_scores, det_classes), proposal = fast_rcnn_detections(
        boxes, probabilities, IMAGE_SIZE, score_thresh, 0.5, topk
    )
    expected, expected_proposal = fast_rcnn_inference_single_image(
        boxes, probabilities, IMAGE_SIZE, score_thresh, 0.5, topk
    )
    assert torch.equal(det_boxes, expected.pred_boxes.tensor)
    assert torch.equal(det_scores, expected.scores)
    assert torch.equal(det_classes, expected.pred_classes)
    assert torch.equal(proposal, expected_proposal)
    if score_thresh < 0.5 and count:
        assert len(det_boxes) > 0


@pytest.mark.parametrize("classes, count", [(4, 0), (4, 7), (1, 5)])  # (1: a class-agnostic head)
def test_mask_probabilities_are_mask_rcnn_inference(classes, count):
    generator = torch.Generator().manual_seed(count)
    logits = torch.randn(count, classes, 14, 14, generator=generator)
    predicted = torch.randint(0, 4, (count,), generator=generator)
    instances = Instances(IMAGE_SIZE, pred_classes=predicted)
    mask_rcnn_inference(logits, [instances])
    assert torch.equal(mask_probabilities(logits, predicted), instances.pred_masks)


@pytest.fixture(scope="module")
def tiny_models():
    models = {}
    for architecture in DETECTOR_ARCHITECTURES:
        torch.manual_seed(0)
        models[architecture] = build_model(tiny_detector_cfg(architecture)).eval()
    # The random RetinaNet's class scores saturate at 1.0, and which of two tied overlapping boxes
    # NMS keeps is the sort's choice: smaller logits, no ties.
    with torch.no_grad():
        models["retinanet"].head.cls_score.weight.mul_(0.01)
    return models


@pytest.mark.parametrize(
    "score_thresh, topk_candidates, max_detections",
    [
        (0.05, 1000, 100),  # Detectron2's defaults
        (0.0, 30, 100),  # more candidates than topk_candidates on each level
        (0.0, 1000, 15),  # more detections than max_detections
        (0.9999, 1000, 100),  # no candidate
    ],
)
def test_retinanet_detections_are_retinanets(tiny_models, score_thresh, topk_candidates, max_detections):
    model = tiny_models["retinanet"]
    generator = torch.Generator().manual_seed(topk_candidates)
    features = [torch.randn(1, 32, 96 // s, 128 // s, generator=generator) for s in (8, 16, 32)]
    anchors = model.anchor_generator(features)
    scores = [torch.rand(len(a), model.num_classes, generator=generator) for a in anchors]
    deltas = [torch.randn(len(a), 4, generator=generator) * 0.2 for a in anchors]
    model.test_score_thresh, model.test_topk_candidates = score_thresh, topk_candidates
    model.max_detections_per_image = max_detections
    expected = model.inference_single_image(anchors, scores, deltas, IMAGE_SIZE)
    boxes, det_scores, classes = retinanet_detections(
        [a.tensor for a in anchors], scores, deltas, model.box2box_transform,
        score_thresh, topk_candidates, model.test_nms_thresh, max_detections,
    )  # fmt: skip
    assert_same_detections({"pred_boxes": boxes, "scores": det_scores, "pred_classes": classes}, expected)
    assert (len(boxes) == 0) == (score_thresh > 0.999)


def assert_same_detections(fields, expected: Instances):
    """The same detections, by decreasing score; those of equal score (random weights give some)
    in any order, as top-k and NMS order them as they like."""
    def rows(f):
        boxes = f["pred_boxes"].tensor if isinstance(f["pred_boxes"], Boxes) else f["pred_boxes"]
        return sorted(zip(boxes.tolist(), f["scores"].tolist(), f["pred_classes"].tolist()))

    assert rows(fields) == rows(expected.get_fields())
    assert torch.equal(fields["scores"], expected.scores)


def eager_detections(model, image):
    with torch.no_grad():
        if type(model).__name__ == "RetinaNet":
            return model([{"image": image}])[0]["instances"]
        return model.inference([{"image": image}], do_postprocess=False)[0]


@pytest.mark.parametrize("architecture", DETECTOR_ARCHITECTURES)
@pytest.mark.parametrize("size", [(64, 96), (90, 130), (131, 67)])
def test_exportable_detectors_compute_detectron2s_inference(tiny_models, architecture, size):
    model = tiny_models[architecture]
    image = torch.rand(3, *size, generator=torch.Generator().manual_seed(size[0])) * 255
    exportable = exportable_detector(model)
    expected = eager_detections(model, image)
    with torch.no_grad():
        outputs = dict(zip(exportable.output_names, exportable(image)))
    if architecture == "retinanet":  # its eager forward clips the boxes and drops empty ones
        raw = Instances(size, **{k: (Boxes(v) if k == "pred_boxes" else v) for k, v in outputs.items()})
        outputs = {k: (v.tensor if isinstance(v, Boxes) else v) for k, v in detector_postprocess(raw, *size).get_fields().items()}
    assert sorted(outputs) == sorted(expected.get_fields())
    assert_same_detections(outputs, expected)
    if "pred_masks" in outputs:  # R-CNN: no ties (checked: the same order)
        assert torch.equal(outputs["pred_boxes"], expected.pred_boxes.tensor)
        assert torch.equal(outputs["pred_masks"], expected.pred_masks)
    if architecture != "retinanet":
        assert len(expected) > 0


def test_other_detectors_are_refused_with_what_is_supported(tiny_models):
    model = tiny_models["mask_rcnn"]
    with pytest.raises(ValueError, match="supports GeneralizedRCNN .* and RetinaNet"):
        exportable_detector(model.backbone)


@pytest.mark.parametrize(
    "overrides, refusal",
    [
        ({"MODEL.ROI_HEADS.NAME": "CascadeROIHeads", "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG": True},
         "MODEL.ROI_HEADS.NAME builds a CascadeROIHeads; torch.export supports StandardROIHeads"),
        ({"MODEL.KEYPOINT_ON": True, "MODEL.MASK_ON": False}, "supports boxes and masks, not keypoints"),
    ],
)  # fmt: skip
def test_parts_without_an_equivalent_are_refused_naming_what_is_supported(overrides, refusal):
    cfg = tiny_detector_cfg("mask_rcnn")
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    with pytest.raises(ValueError, match=refusal):
        exportable_detector(build_model(cfg))

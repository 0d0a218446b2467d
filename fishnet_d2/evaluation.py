"""Evaluators for a dataset, chosen from its ``evaluator_type`` metadata as Detectron2's
``tools/train_net.py`` does, for the tasks fishnet_d2's configs train."""

import os
from typing import List, Optional, Tuple

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.evaluation import (
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)

__all__ = ["EVALUATOR_TYPES", "coco_tasks", "build_evaluators", "build_evaluator"]

# evaluator_type -> what is evaluated
EVALUATOR_TYPES = {
    "coco": "COCO boxes (and masks / keypoints when the model predicts them)",
    "sem_seg": "semantic segmentation (mIoU)",
    "coco_panoptic_seg": "semantic segmentation, COCO boxes and masks, and panoptic quality",
}


def coco_tasks(cfg: CfgNode) -> Tuple[str, ...]:
    """The COCO tasks the model of ``cfg`` predicts: "bbox", and "segm" / "keypoints"."""
    tasks = ["bbox"]
    if cfg.MODEL.MASK_ON:
        tasks.append("segm")
    if cfg.MODEL.KEYPOINT_ON:
        tasks.append("keypoints")
    return tuple(tasks)


def build_evaluators(
    cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None
) -> List[DatasetEvaluator]:
    """The evaluators for ``dataset_name`` by its metadata ``evaluator_type`` (see EVALUATOR_TYPES).

    COCO metrics are computed by pycocotools' reference COCOeval (``use_fast_impl=False``): it gives
    the same numbers as Detectron2's optimized evaluator, on every Detectron2 build.
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type")
    if evaluator_type not in EVALUATOR_TYPES:
        raise ValueError(
            f"dataset {dataset_name!r} has evaluator_type={evaluator_type!r} in its metadata; "
            f"allowed: {sorted(EVALUATOR_TYPES)}. For another dataset, pass your evaluator to "
            "Trainer.test(cfg, model, evaluators) or override Trainer.build_evaluator"
        )
    evaluators: List[DatasetEvaluator] = []
    if evaluator_type in ("sem_seg", "coco_panoptic_seg"):
        evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
    if evaluator_type in ("coco", "coco_panoptic_seg"):
        evaluators.append(
            COCOEvaluator(
                dataset_name,
                tasks=coco_tasks(cfg),
                distributed=True,
                output_dir=output_folder,
                # pycocotools' reference COCOeval: identical numbers on every detectron2 build.
                use_fast_impl=False,
                kpt_oks_sigmas=cfg.TEST.KEYPOINT_OKS_SIGMAS,
            )
        )
    if evaluator_type == "coco_panoptic_seg":
        evaluators.append(COCOPanopticEvaluator(dataset_name, output_folder))
    return evaluators


def build_evaluator(cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None) -> DatasetEvaluator:
    """:func:`build_evaluators` as one evaluator (``DatasetEvaluators`` when there are several)."""
    evaluators = build_evaluators(cfg, dataset_name, output_folder)
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)

"""A tiny FishNet Mask R-CNN FPN and a tiny synthetic shapes dataset, for training, export and
checkpoint tests on CPU."""

from pathlib import Path
from typing import Dict, Optional, Tuple

from detectron2.config import CfgNode

from fishnet_d2.apps.data import ShapeImageParams, SyntheticShapesSpec, ensure_synthetic_shapes, register_synthetic_shapes

from .common import fishnet_cfg, use_tiny_arch

# The demo's 4 shape categories, small images, few of them.
TINY_SHAPES = SyntheticShapesSpec(
    seed=7, num_train=8, num_val=4, image=ShapeImageParams(height=64, width=64, shape_size=(16, 40))
)
TINY_SHAPES_PREFIX = "fishnet_tests_tiny_shapes"


def tiny_mask_rcnn_cfg() -> CfgNode:
    """Mask R-CNN with FPN on TINY_ARCH with BatchNorm (FPN on head2..head5, as the paper), narrow heads, few
    proposals, 64-pixel images, CPU, no pretrained weights, 4 classes (the shapes)."""
    cfg = use_tiny_arch(fishnet_cfg())
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.BACKBONE.NAME = "build_fishnet_fpn_backbone"
    cfg.MODEL.FISHNET.NORM = "BN"  # trained from scratch, as the demo
    cfg.MODEL.FISHNET.FREEZE_STEM_CONV1 = False
    cfg.MODEL.FPN.IN_FEATURES = ["head2", "head3", "head4", "head5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16], [32], [64], [128], [256]]
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 200
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 50
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 100
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 30
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 4
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 16
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    cfg.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 1
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 16
    cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = 14
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 64
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 64
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.TEST.DETECTIONS_PER_IMAGE = 10
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 0
    return cfg


def register_tiny_shapes(root: Path) -> Dict[str, str]:
    """Register TINY_SHAPES (generated under ``root`` when first loaded): split -> dataset name."""
    return register_synthetic_shapes(TINY_SHAPES_PREFIX, root=root, spec=TINY_SHAPES)


_TINY_SHAPES: Optional[Tuple[Path, Dict[str, str]]] = None


def tiny_shapes(tmp_path_factory) -> Tuple[Path, Dict[str, str]]:
    """TINY_SHAPES generated and registered once per test session: (root, split -> name)."""
    global _TINY_SHAPES
    if _TINY_SHAPES is None:
        root = tmp_path_factory.mktemp("tiny_shapes")
        ensure_synthetic_shapes(root, TINY_SHAPES)  # here, so that worker processes only read it
        _TINY_SHAPES = root, register_tiny_shapes(root)
    return _TINY_SHAPES

"""What the tests share besides fixtures (those are in conftest.py): the tiny FishNet and its
feature names; Detectron2 configs shrunk to it, one way for yacs and LazyConfig configs alike;
the tiny shapes dataset; hand-made training inputs; the official code's reference data; the
converter's command line."""

import contextlib
import dataclasses
import io
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch
from detectron2.config import CfgNode, LazyCall as L, get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from omegaconf import DictConfig

from fishnet_d2 import FishNetArch, FishNetCheckpointer, add_fishnet_config, fishnet_arch
from fishnet_d2.apps.data import SHAPE_CATEGORIES, ShapeImageParams, SyntheticShapesSpec, register_synthetic_shapes
from fishnet_d2.modeling import fishnet_arch_to_config
from fishnet_d2.modeling.optimize.equivalence import (  # noqa: F401  (the tests import them from here)
    GOLDEN_STAGES,
    GOLDEN_TOLERANCE,
    SAME_MATH_FLOAT64,
    randomize_norms,
    relative_error,
)
from fishnet_d2.modeling.optimize.equivalence import training_step as train_step  # noqa: F401
from fishnet_d2.weights.convert import main as convert_main

REPO = Path(__file__).resolve().parents[1]
# Reference data made with the official FishNet code (tests/data/README.md says what and whence).
REFERENCE = REPO / "tests" / "data"
CONVERTER = REPO / "tools" / "convert_fishnet_to_d2.py"

# --- the tiny FishNet -----------------------------------------------------------------------------

# A FishNet small enough for CPU tests: 3 stages per part, one block each.
TINY_ARCH = FishNetArch(
    stem_channels=16,
    tail_channels=(16, 32, 64),
    body_channels=(64, 48, 32),
    head_channels=(48, 112, 208),
    tail_blocks=(1, 1, 1),
    bridge_blocks=1,
    body_blocks=(1, 1, 1),
    head_blocks=(1, 1, 1),
    body_transfer_blocks=(1, 1, 1),
    head_transfer_blocks=(1, 1, 1),
)

# Every feature a FishNet with 3 stages per part returns, in the order it computes them.
ALL_FEATURES = [
    "stem", "tail3", "tail4", "tail5", "bridge",
    "body4", "body3", "body2", "head2", "head3", "head4", "head5",
]  # fmt: skip

# --- the official code's checkpoints and outputs (tests/data; tiny_golden.pt: the `golden` fixture) ---

# The golden file's 11 stage outputs by our feature names (GOLDEN_STAGES), the relative error
# allowed against them (GOLDEN_TOLERANCE; why this value: its comment, and the docstring of
# tests/test_backbone_golden.py) and relative_error: fishnet_d2.modeling.optimize.equivalence,
# which the GPU check shares.


# --- comparing two models' training steps ---------------------------------------------------------

# The tolerance of the fast paths' checks in float64 (SAME_MATH_FLOAT64: why this value, its
# comment), randomize_norms and train_step (a training step's outputs and gradients):
# fishnet_d2.modeling.optimize.equivalence, which the GPU check shares.


def assert_close_to_scale(a, b, rel: float = SAME_MATH_FLOAT64) -> None:
    """Equal up to ``rel`` of the largest magnitude of each tensor (dicts: the same names, in order)."""
    names = None
    if isinstance(a, dict):
        assert list(a) == list(b)
        names, a, b = list(a), list(a.values()), list(b.values())
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        name = names[i] if names else i
        assert x is not None and y is not None and x.shape == y.shape, name
        assert (x - y).abs().max() <= rel * y.abs().max(), (name, (x - y).abs().max(), y.abs().max())


def reference_layout(depth: int) -> Dict[str, tuple]:
    """The official FishNet-``depth`` checkpoint's keys and shapes
    (tests/data/official_keys_fishnet{depth}.tsv): {key: shape}."""
    layout = {}
    for line in (REFERENCE / f"official_keys_fishnet{depth}.tsv").read_text().splitlines():
        if line.startswith("#") or line.startswith("key\t"):
            continue
        key, shape = line.split("\t")
        layout[key] = () if shape == "scalar" else tuple(int(s) for s in shape.split("x"))
    return layout


def random_official_state_dict(depth: int) -> Dict[str, torch.Tensor]:
    """A state_dict in the official FishNet-``depth`` layout with random values (seed ``depth``)."""
    generator = torch.Generator().manual_seed(depth)
    return {
        key: torch.randint(0, 100, shape, generator=generator)
        if key.endswith("num_batches_tracked")
        else torch.randn(shape, generator=generator)
        for key, shape in reference_layout(depth).items()
    }


# --- Detectron2 configs on the tiny FishNet --------------------------------------------------------

NUM_THING_CLASSES = 3
NUM_SEM_SEG_CLASSES = 4
# The heads of every shrunk detector: narrow, few anchors, proposals and ROIs.
TINY_FPN_CHANNELS = 32
TINY_RPN_BATCH = 32
TINY_PRE_NMS_TOPK = (200, 100)  # training, test
TINY_POST_NMS_TOPK = (50, 30)  # training, test
TINY_ROI_BATCH = 16
TINY_FC_DIM = 64
TINY_MASK_CONV_DIM = 16


def fishnet_cfg() -> CfgNode:
    """Detectron2's default config with MODEL.FISHNET added and the plain FishNet backbone, on CPU."""
    cfg = get_cfg()
    add_fishnet_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_fishnet_backbone"
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def use_tiny_arch(cfg: CfgNode) -> CfgNode:
    """Switch cfg's FishNet to TINY_ARCH (DEPTH 0), in place."""
    cfg.MODEL.FISHNET.merge_from_other_cfg(CfgNode(fishnet_arch_to_config(TINY_ARCH)))
    return cfg


def shrink_config(cfg: CfgNode, num_classes: int = NUM_THING_CLASSES) -> CfgNode:
    """Make any detector config cheap to train on CPU, in place: TINY_ARCH, the TINY_* heads,
    ``num_classes`` things, no pretrained weights, 2 images per batch."""
    use_tiny_arch(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.FPN.OUT_CHANNELS = TINY_FPN_CHANNELS
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = TINY_RPN_BATCH
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN, cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = TINY_PRE_NMS_TOPK
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN, cfg.MODEL.RPN.POST_NMS_TOPK_TEST = TINY_POST_NMS_TOPK
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = TINY_ROI_BATCH
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = TINY_FC_DIM
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = TINY_MASK_CONV_DIM
    cfg.MODEL.RETINANET.NUM_CLASSES = num_classes
    cfg.MODEL.RETINANET.NUM_CONVS = 1
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = NUM_SEM_SEG_CLASSES
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 0
    return cfg


def shrink_lazy_model(model: DictConfig, num_classes: int = NUM_THING_CLASSES) -> DictConfig:
    """shrink_config for the ``model`` of a LazyConfig R-CNN, in place."""
    model.backbone.bottom_up.arch = L(fishnet_arch)(depth=0, **dataclasses.asdict(TINY_ARCH))
    channels = TINY_FPN_CHANNELS
    model.backbone.out_channels = channels
    model.proposal_generator.head.in_channels = channels
    model.proposal_generator.batch_size_per_image = TINY_RPN_BATCH
    model.proposal_generator.pre_nms_topk = TINY_PRE_NMS_TOPK
    model.proposal_generator.post_nms_topk = TINY_POST_NMS_TOPK
    heads = model.roi_heads
    heads.num_classes = num_classes
    heads.batch_size_per_image = TINY_ROI_BATCH
    heads.box_head.input_shape = ShapeSpec(channels=channels, height=7, width=7)
    heads.box_head.fc_dims = [TINY_FC_DIM, TINY_FC_DIM]
    heads.box_predictor.input_shape = ShapeSpec(channels=TINY_FC_DIM)
    if heads.mask_head is not None:
        heads.mask_head.input_shape = ShapeSpec(channels=channels, height=14, width=14)
        heads.mask_head.conv_dims = [TINY_MASK_CONV_DIM, TINY_MASK_CONV_DIM]
    return model


def tiny_mask_rcnn_cfg() -> CfgNode:
    """Mask R-CNN with FPN (on head2..head5, as the paper) on TINY_ARCH with BatchNorm, shrunk
    (shrink_config), one mask conv, 64-pixel images, one class per shape of TINY_SHAPES."""
    cfg = fishnet_cfg()
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.BACKBONE.NAME = "build_fishnet_fpn_backbone"
    cfg.MODEL.FISHNET.NORM = "BN"  # trained from scratch, as the demo
    cfg.MODEL.FISHNET.FREEZE_STEM_CONV1 = False
    cfg.MODEL.FPN.IN_FEATURES = ["head2", "head3", "head4", "head5"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16], [32], [64], [128], [256]]
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    cfg.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 1
    cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = 14
    shrink_config(cfg, num_classes=len(SHAPE_CATEGORIES))
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 64
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 64
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.TEST.DETECTIONS_PER_IMAGE = 10
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.WARMUP_ITERS = 0
    return cfg


DETECTOR_ARCHITECTURES = ("mask_rcnn", "faster_rcnn", "retinanet")


def tiny_detector_cfg(architecture: str) -> CfgNode:
    """The tiny Mask R-CNN (tiny_mask_rcnn_cfg), or its Faster R-CNN or RetinaNet; every detection
    kept (score threshold 0), so that the random weights give TEST.DETECTIONS_PER_IMAGE (10)."""
    cfg = tiny_mask_rcnn_cfg()
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    if architecture == "faster_rcnn":
        cfg.MODEL.MASK_ON = False
    elif architecture == "retinanet":
        cfg.MODEL.MASK_ON = False
        cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
        cfg.MODEL.BACKBONE.NAME = "build_retinanet_fishnet_fpn_backbone"
        cfg.MODEL.FISHNET.OUT_FEATURES = ["head3", "head4", "head5"]
        cfg.MODEL.FPN.IN_FEATURES = ["head3", "head4", "head5"]
        cfg.MODEL.RETINANET.NUM_CLASSES = 4
        cfg.MODEL.RETINANET.SCORE_THRESH_TEST = 0.0
    return cfg


def export_cfg(architecture: str) -> CfgNode:
    """tiny_detector_cfg's model at test sizes from 96: the exported programs take sizes from 65
    (Mask R-CNN; RetinaNet 129: the coarsest map 2 pixels): tiny_detector_cfg's 64 is too small."""
    cfg = tiny_detector_cfg(architecture)
    cfg.INPUT.MIN_SIZE_TEST = 96 if architecture != "retinanet" else 136
    cfg.INPUT.MAX_SIZE_TEST = 2 * cfg.INPUT.MIN_SIZE_TEST
    return cfg


def write_model(cfg: CfgNode, directory: Path) -> Path:
    """``cfg``'s model with random weights (seed 0), saved by FishNetCheckpointer; returns a YAML
    config with MODEL.WEIGHTS set to it."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    FishNetCheckpointer(build_model(cfg), save_dir=str(directory)).save("model")
    cfg = cfg.clone()
    cfg.MODEL.WEIGHTS = str(directory / "model.pth")
    path = directory / "config.yaml"
    path.write_text(cfg.dump())
    return path


# --- data -----------------------------------------------------------------------------------------

# The demo's shape categories, small images, few of them (the `tiny_shapes` fixture).
TINY_SHAPES = SyntheticShapesSpec(
    seed=7, num_train=8, num_val=4, image=ShapeImageParams(height=64, width=64, shape_size=(16, 40))
)
TINY_SHAPES_PREFIX = "fishnet_tests_tiny_shapes"


def register_tiny_shapes(root: Path) -> Dict[str, str]:
    """Register TINY_SHAPES (generated under ``root`` when first loaded): split -> dataset name."""
    return register_synthetic_shapes(TINY_SHAPES_PREFIX, root=root, spec=TINY_SHAPES)


IMAGE_SIZE = (64, 96)  # height, width of synthetic_batch: multiples of FishNet's size divisibility


def synthetic_batch(num_images: int = 2, seed: int = 0) -> List[Dict]:
    """Detectron2 training inputs without a dataset: images with two boxes each (bitmask masks
    inside the boxes) and a semantic segmentation map (with some pixels ignored, 255)."""
    generator = torch.Generator().manual_seed(seed)
    height, width = IMAGE_SIZE
    batch = []
    for _ in range(num_images):
        image = torch.randint(0, 256, (3, height, width), generator=generator).float()
        boxes = torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 10.0, 90.0, 60.0]])
        masks = torch.zeros(len(boxes), height, width, dtype=torch.bool)
        for mask, (x0, y0, x1, y1) in zip(masks, boxes.long().tolist()):
            mask[y0:y1, x0:x1] = True
        instances = Instances(IMAGE_SIZE)
        instances.gt_boxes = Boxes(boxes)
        instances.gt_classes = torch.randint(0, NUM_THING_CLASSES, (len(boxes),), generator=generator)
        instances.gt_masks = BitMasks(masks)
        sem_seg = torch.randint(0, NUM_SEM_SEG_CLASSES, IMAGE_SIZE, generator=generator)
        sem_seg[:4] = 255
        batch.append(
            {"image": image, "height": height, "width": width, "instances": instances, "sem_seg": sem_seg}
        )
    return batch


# --- checks and commands --------------------------------------------------------------------------


def assert_scripted_equals_eager(model: torch.nn.Module, x: torch.Tensor) -> None:
    """``torch.jit.script(model)`` gives eager mode's features, bit for bit (the same kernels run)."""
    scripted = torch.jit.script(model)
    with torch.no_grad():
        eager, script = model(x), scripted(x)
    assert list(eager) == list(script)
    for name in eager:
        torch.testing.assert_close(script[name], eager[name], rtol=0, atol=0)


def run_converter(*args, script: bool = False) -> subprocess.CompletedProcess:
    """The converter's command line on ``args``: its ``main`` in this process (the tool is a thin
    script around it), or with ``script=True`` the script itself in a new interpreter."""
    argv = [str(a) for a in args]
    if script:
        return subprocess.run([sys.executable, str(CONVERTER), *argv], capture_output=True, text=True)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            returncode = convert_main(argv)
        except SystemExit as e:  # argparse's usage errors
            returncode = e.code
    return subprocess.CompletedProcess([str(CONVERTER), *argv], returncode, stdout.getvalue(), stderr.getvalue())


def run_main(main: Callable[[List[str]], int], *args) -> Tuple[int, str, str]:
    """A tool's ``main`` run in this process on ``args`` (each made a string): (exit status,
    stdout, stderr); argparse's usage errors give their exit status too."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            status = main([str(a) for a in args])
        except SystemExit as e:
            status = e.code
    return status, stdout.getvalue(), stderr.getvalue()

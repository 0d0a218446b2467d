"""The paper's COCO configs (sec. 4.4) hold exactly the paper's setup, in YAML and LazyConfig."""

import math

import pytest
from detectron2.config import LazyConfig, instantiate

from fishnet_d2.engine import Trainer
from fishnet_d2.solver import GradientClipping

from .support import REPO, fishnet_cfg

PAPER_YAML = {
    "configs/COCO-InstanceSegmentation/mask_rcnn_fishnet150_FPN_paper.yaml": True,  # MASK_ON
    "configs/COCO-Detection/faster_rcnn_fishnet150_FPN_paper.yaml": False,
}
PAPER_LAZY = {
    "configs/COCO-InstanceSegmentation/mask_rcnn_fishnet150_FPN_paper.py": True,
    "configs/COCO-Detection/faster_rcnn_fishnet150_FPN_paper.py": False,
}

# Paper: 16 GPUs x 1 image; epochs of COCO train2017's images with annotations.
IMAGES_PER_EPOCH = 117266
IMS_PER_BATCH = 16


def at_epoch(epochs: float) -> int:
    """The configs' rounding rule: the first iteration after ``epochs`` whole epochs."""
    return math.ceil(epochs * IMAGES_PER_EPOCH / IMS_PER_BATCH)


def test_epoch_arithmetic():
    assert IMAGES_PER_EPOCH * 32 / IMS_PER_BATCH == 234532  # 32 epochs: a whole number
    assert [at_epoch(e) for e in (32, 20, 28, 1, 2)] == [234532, 146583, 205216, 7330, 14659]


def load_yaml(path):
    cfg = fishnet_cfg()
    cfg.merge_from_file(str(REPO / path))
    return cfg


@pytest.mark.parametrize("path, mask_on", PAPER_YAML.items())
def test_paper_yaml(path, mask_on):
    cfg = load_yaml(path)
    solver = cfg.SOLVER
    assert solver.MAX_ITER == at_epoch(32)
    assert tuple(solver.STEPS) == (at_epoch(20), at_epoch(28))
    assert solver.GAMMA == 0.1
    assert (solver.WARMUP_METHOD, solver.WARMUP_ITERS) == ("linear", at_epoch(1))
    clip = solver.CLIP_GRADIENTS
    assert (clip.ENABLED, clip.CLIP_TYPE, clip.CLIP_VALUE, clip.NORM_TYPE) == (True, "full_model", 5.0, 2.0)
    assert clip.UNTIL_ITER == at_epoch(2)
    assert (solver.BASE_LR, solver.MOMENTUM, solver.WEIGHT_DECAY) == (0.02, 0.9, 0.0001)
    assert (solver.IMS_PER_BATCH, solver.REFERENCE_WORLD_SIZE) == (16, 16)
    fish = cfg.MODEL.FISHNET
    assert (fish.DEPTH, fish.NORM, fish.FREEZE_AT, fish.FREEZE_STEM_CONV1) == (150, "FrozenBN", 0, True)
    assert cfg.MODEL.FPN.IN_FEATURES == ["head2", "head3", "head4", "head5"]
    assert cfg.MODEL.WEIGHTS == "fishnet://ImageNet/fishnet150_official"
    assert cfg.MODEL.MASK_ON is mask_on
    assert (cfg.DATASETS.TRAIN, cfg.DATASETS.TEST) == (("coco_2017_train",), ("coco_2017_val",))
    # Detectron v1, as Detectron2's Detectron1-Comparisons
    assert cfg.INPUT.MIN_SIZE_TRAIN == (800,)
    assert (cfg.MODEL.RPN.SMOOTH_L1_BETA, cfg.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA) == (0.1111, 1.0)
    for head in (cfg.MODEL.ROI_BOX_HEAD, cfg.MODEL.ROI_MASK_HEAD):
        assert (head.POOLER_TYPE, head.POOLER_SAMPLING_RATIO) == ("ROIAlign", 2)


def test_paper_schedule_on_fewer_gpus():
    """On 8 GPUs (1 image each, as the paper), Trainer.auto_scale_workers halves the batch and
    the LR and doubles every iteration count, clipping's UNTIL_ITER included."""
    cfg = load_yaml(next(iter(PAPER_YAML)))
    scaled = Trainer.auto_scale_workers(cfg, 8)
    assert scaled.SOLVER.IMS_PER_BATCH == 8
    assert scaled.SOLVER.BASE_LR == pytest.approx(0.01)
    assert scaled.SOLVER.MAX_ITER == 2 * at_epoch(32)
    assert scaled.SOLVER.CLIP_GRADIENTS.UNTIL_ITER == 2 * at_epoch(2)
    assert cfg.SOLVER.CLIP_GRADIENTS.UNTIL_ITER == at_epoch(2)  # the input is left as it was
    assert Trainer.auto_scale_workers(cfg, 16) is cfg


@pytest.mark.parametrize("path, mask_on", PAPER_LAZY.items())
def test_paper_lazyconfig_matches_yaml(path, mask_on):
    lazy = LazyConfig.load(str(REPO / path))
    yaml = load_yaml(path.replace(".py", ".yaml"))
    solver = yaml.SOLVER
    assert lazy.train.max_iter == solver.MAX_ITER
    assert lazy.train.init_checkpoint == yaml.MODEL.WEIGHTS
    assert lazy.dataloader.train.total_batch_size == solver.IMS_PER_BATCH
    schedule = lazy.lr_multiplier
    assert list(schedule.scheduler.milestones) == list(solver.STEPS)
    assert list(schedule.scheduler["values"]) == pytest.approx([1.0, solver.GAMMA, solver.GAMMA**2])
    assert schedule.scheduler.num_updates == solver.MAX_ITER
    assert schedule.warmup_length * solver.MAX_ITER == pytest.approx(solver.WARMUP_ITERS)
    assert (schedule.warmup_method, schedule.warmup_factor) == (solver.WARMUP_METHOD, solver.WARMUP_FACTOR)
    optimizer = lazy.optimizer
    assert (optimizer.optimizer, optimizer.lr, optimizer.momentum, optimizer.weight_decay) == (
        "SGD",
        solver.BASE_LR,
        solver.MOMENTUM,
        solver.WEIGHT_DECAY,
    )
    assert (optimizer.params.bias_lr_factor, optimizer.params.weight_decay_bias) == (
        solver.BIAS_LR_FACTOR,
        solver.WEIGHT_DECAY_BIAS,
    )
    clip = solver.CLIP_GRADIENTS
    assert instantiate(optimizer.clipping) == GradientClipping(
        clip.CLIP_TYPE, clip.CLIP_VALUE, clip.NORM_TYPE, clip.UNTIL_ITER
    )
    backbone = lazy.model.backbone.bottom_up
    assert backbone.arch.depth == yaml.MODEL.FISHNET.DEPTH
    assert (backbone.norm, backbone.freeze_at, backbone.freeze_stem_conv1) == ("FrozenBN", 0, True)
    assert list(backbone.out_features) == yaml.MODEL.FPN.IN_FEATURES
    assert list(lazy.dataloader.train.mapper.augmentations[0].short_edge_length) == list(yaml.INPUT.MIN_SIZE_TRAIN)
    assert lazy.model.proposal_generator.smooth_l1_beta == yaml.MODEL.RPN.SMOOTH_L1_BETA
    assert lazy.model.proposal_generator.post_nms_topk[0] == yaml.MODEL.RPN.POST_NMS_TOPK_TRAIN
    assert lazy.model.roi_heads.box_predictor.smooth_l1_beta == yaml.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA
    poolers = {"box": lazy.model.roi_heads.box_pooler, "mask": lazy.model.roi_heads.mask_pooler}
    assert (poolers["mask"] is not None) is mask_on is (lazy.model.roi_heads.mask_head is not None)
    for kind, pooler in poolers.items():
        if pooler is not None:
            head = yaml.MODEL.ROI_BOX_HEAD if kind == "box" else yaml.MODEL.ROI_MASK_HEAD
            assert (pooler.pooler_type, pooler.sampling_ratio) == (head.POOLER_TYPE, head.POOLER_SAMPLING_RATIO)
    assert lazy.dataloader.train.mapper.use_instance_mask is mask_on

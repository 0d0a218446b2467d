"""The paper's COCO training (Sun et al., NeurIPS 2018, sec. 4.4) for LazyConfig files: the same
values as ../Base-RCNN-FishNet-FPN-Paper.yaml, which says where each comes from ("paper" or
"Detectron v1", the values Detectron2's configs/Detectron1-Comparisons use)."""

import math

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from detectron2.solver.build import get_default_optimizer_params
from fvcore.common.param_scheduler import MultiStepParamScheduler

from fishnet_d2.solver import GradientClipping, build_clipped_optimizer

from .data.coco import dataloader

# Paper: epochs of COCO train2017's 117,266 images with annotations, 16 GPUs x 1 image.
COCO_TRAIN2017_IMAGES = 117266
IMS_PER_BATCH = 16


def epochs_to_iters(epochs: float) -> int:
    """Rounding rule: what happens at epoch e happens at iteration ceil(e * 117266 / 16), the
    first iteration after e whole epochs of images."""
    return math.ceil(epochs * COCO_TRAIN2017_IMAGES / IMS_PER_BATCH)


def use_detectron_v1_heads(model) -> None:
    """Detectron v1's head details (as Detectron2's configs/Detectron1-Comparisons), in place."""
    model.proposal_generator.smooth_l1_beta = 0.1111
    # Detectron v1 keeps 2000 proposals per batch of each GPU; the paper's is 1 image per GPU.
    model.proposal_generator.post_nms_topk = (2000, 1000)
    model.roi_heads.box_predictor.smooth_l1_beta = 1.0
    poolers = [model.roi_heads.box_pooler]
    if model.roi_heads.get("mask_pooler") is not None:
        poolers.append(model.roi_heads.mask_pooler)
    for pooler in poolers:
        pooler.pooler_type = "ROIAlign"
        pooler.sampling_ratio = 2


dataloader.train.total_batch_size = IMS_PER_BATCH
# Detectron v1: no scale augmentation (shorter side 800, longer side at most 1333).
dataloader.train.mapper.augmentations[0].short_edge_length = (800,)

train = model_zoo.get_config("common/train.py").train
train.max_iter = epochs_to_iters(32)  # 234532
# Paper: the official FishNet-150 ImageNet weights, trained without tricks; fetched and converted on
# first use (docs/weights.md).
train.init_checkpoint = "fishnet://ImageNet/fishnet150_official"

optimizer = L(build_clipped_optimizer)(
    params=L(get_default_optimizer_params)(
        # params.model is set to the model by the training script
        base_lr="${..lr}",
        bias_lr_factor=2.0,  # Detectron v1: biases at twice the learning rate ...
        weight_decay_bias=0.0,  # ... and without weight decay
        weight_decay_norm=0.0,
    ),
    optimizer="SGD",
    lr=0.02,
    momentum=0.9,
    weight_decay=1e-4,
    # Paper: gradient clipping at max norm 5.0 (of all gradients together) in the first 2 epochs.
    clipping=L(GradientClipping)(
        clip_type="full_model", clip_value=5.0, norm_type=2.0, until_iter=epochs_to_iters(2)
    ),
)

# Paper: LR / 10 at epochs 20 and 28, linear warmup for 1 epoch (from 1/3 of the LR: Detectron v1).
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01],
        milestones=[epochs_to_iters(20), epochs_to_iters(28)],
        num_updates=train.max_iter,
    ),
    warmup_length=epochs_to_iters(1) / train.max_iter,
    warmup_method="linear",
    warmup_factor=1.0 / 3,
)

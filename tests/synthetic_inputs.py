"""Hand-made training inputs for Detectron2 models (no dataset, no data loader), and a config
shrink so that one training step of any FishNet config is fast on CPU."""

import dataclasses
from typing import Dict, List

import torch
from detectron2.config import CfgNode, LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.structures import BitMasks, Boxes, Instances
from omegaconf import DictConfig

from fishnet_d2 import fishnet_arch

from .common import TINY_ARCH, use_tiny_arch

IMAGE_SIZE = (64, 96)  # height, width: multiples of the FishNet's size divisibility (32)
NUM_THING_CLASSES = 3
NUM_SEM_SEG_CLASSES = 4


def shrink_config(cfg: CfgNode) -> CfgNode:
    """Make a full-size config cheap to train on CPU, in place: tiny FishNet, narrow heads,
    few anchors / proposals / ROIs, no pretrained weights."""
    use_tiny_arch(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 200
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 50
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 16
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = NUM_THING_CLASSES
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 32
    cfg.MODEL.RETINANET.NUM_CLASSES = NUM_THING_CLASSES
    cfg.MODEL.RETINANET.NUM_CONVS = 1
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = NUM_SEM_SEG_CLASSES
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 0
    return cfg


def shrink_lazy_model(model: DictConfig, num_classes: int = NUM_THING_CLASSES) -> DictConfig:
    """shrink_config for the ``model`` of a LazyConfig R-CNN, in place."""
    model.backbone.bottom_up.arch = L(fishnet_arch)(depth=0, **dataclasses.asdict(TINY_ARCH))
    channels = 32
    model.backbone.out_channels = channels
    model.proposal_generator.head.in_channels = channels
    model.proposal_generator.batch_size_per_image = 32
    model.proposal_generator.pre_nms_topk = (200, 100)
    model.proposal_generator.post_nms_topk = (50, 50)
    heads = model.roi_heads
    heads.num_classes = num_classes
    heads.batch_size_per_image = 16
    heads.box_head.input_shape = ShapeSpec(channels=channels, height=7, width=7)
    heads.box_head.fc_dims = [64, 64]
    heads.box_predictor.input_shape = ShapeSpec(channels=64)
    if heads.mask_head is not None:
        heads.mask_head.input_shape = ShapeSpec(channels=channels, height=14, width=14)
        heads.mask_head.conv_dims = [channels, channels]
    return model


def synthetic_batch(num_images: int = 2, seed: int = 0) -> List[Dict]:
    """Detectron2 training inputs: images with two boxes each (bitmask masks inside the boxes)
    and a semantic segmentation map (with some pixels ignored, 255)."""
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

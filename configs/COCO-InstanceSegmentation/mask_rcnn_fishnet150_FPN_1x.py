# Mask R-CNN FishNet-150 FPN, Detectron2's standard 1x schedule, as mask_rcnn_fishnet150_FPN_1x.yaml.
from detectron2 import model_zoo

from ..common.data.coco import dataloader
from ..common.models.mask_rcnn_fishnet_fpn import model

optimizer = model_zoo.get_config("common/optim.py").SGD
lr_multiplier = model_zoo.get_config("common/coco_schedule.py").lr_multiplier_1x
train = model_zoo.get_config("common/train.py").train
train.max_iter = 90000
train.init_checkpoint = "fishnet://ImageNet/fishnet150_official"

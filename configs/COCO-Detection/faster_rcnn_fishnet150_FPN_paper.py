# The paper's Faster R-CNN with FishNet-150 FPN (table "FPN" column), as
# faster_rcnn_fishnet150_FPN_paper.yaml. Train with Detectron2's tools/lazyconfig_train_net.py.
from ..common.fishnet_paper import dataloader, lr_multiplier, optimizer, train, use_detectron_v1_heads
from ..common.models.faster_rcnn_fishnet_fpn import model

use_detectron_v1_heads(model)
dataloader.train.mapper.use_instance_mask = False

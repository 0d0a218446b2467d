# The paper's Mask R-CNN with FishNet-150 FPN (table "Mask R-CNN" column), as
# mask_rcnn_fishnet150_FPN_paper.yaml. Train with Detectron2's tools/lazyconfig_train_net.py.
from ..common.fishnet_paper import dataloader, lr_multiplier, optimizer, train, use_detectron_v1_heads
from ..common.models.mask_rcnn_fishnet_fpn import model

use_detectron_v1_heads(model)

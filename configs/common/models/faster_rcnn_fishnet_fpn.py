"""Faster R-CNN FPN with a FishNet-150 backbone: ./mask_rcnn_fishnet_fpn.py without the mask head."""

from .mask_rcnn_fishnet_fpn import model

model.roi_heads.update(mask_in_features=None, mask_pooler=None, mask_head=None)

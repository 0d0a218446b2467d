"""Mask R-CNN FPN with a FishNet-150 backbone: Detectron2's common/models/mask_rcnn_fpn.py with
its ResNet replaced by a FishNet whose head (head2..head5, strides 4 to 32) feeds the FPN, as the
paper attaches it (sec. 4.4). Other depths: ``model.backbone.bottom_up.arch.depth = 99`` or 201."""

from detectron2 import model_zoo
from detectron2.config import LazyCall as L

from fishnet_d2 import build_fishnet, fishnet_arch

model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model

# build_fishnet: the FishNet with the speed and memory paths MODEL.FISHNET's keys choose, as
# keyword arguments (their defaults those of the YAML configs: FrozenBN folded, channels-last;
# e.g. memory_efficient=True, activation_checkpointing=["stem", "tail3", "body2"]).
model.backbone.bottom_up = L(build_fishnet)(
    arch=L(fishnet_arch)(depth=150),
    # Paper (sec. 4.4): every BatchNorm frozen, and the first stem conv (the only one at full
    # input resolution) frozen.
    norm="FrozenBN",
    freeze_at=0,
    freeze_stem_conv1=True,
    out_features=["head2", "head3", "head4", "head5"],
)
# FPN's in_features follow bottom_up.out_features ("${.bottom_up.out_features}").

# The official ImageNet models read RGB images normalized by torchvision's ImageNet mean and std.
model.pixel_mean = [123.675, 116.280, 103.530]
model.pixel_std = [58.395, 57.120, 57.375]
model.input_format = "RGB"

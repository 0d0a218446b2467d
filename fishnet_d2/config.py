"""Config keys added by fishnet_d2: ``add_fishnet_config(cfg)``."""

from detectron2.config import CfgNode as CN

__all__ = ["add_fishnet_config"]


def add_fishnet_config(cfg: CN) -> None:
    """Add ``MODEL.FISHNET`` and fishnet_d2's solver options to a Detectron2 config, in place."""
    _C = cfg

    _C.MODEL.FISHNET = CN()
    # 99, 150 or 201: the official variants (fishnet_d2.FISHNET_VARIANTS).
    # 0: the custom architecture given in MODEL.FISHNET.ARCH.
    _C.MODEL.FISHNET.DEPTH = 150
    # Names of the features to return: "stem", "tail3".."tail5", "bridge", "body4".."body2",
    # "head2".."head5" (the number is log2 of the stride), and "linear" when NUM_CLASSES > 0.
    # The paper attaches FPN to the head: head2..head5 (strides 4, 8, 16, 32).
    _C.MODEL.FISHNET.OUT_FEATURES = ["head2", "head3", "head4", "head5"]
    # Normalization, any choice of detectron2.layers.get_norm: "FrozenBN", "BN", "SyncBN",
    # "nnSyncBN", "naiveSyncBN", "GN" (32 groups, gcd(32, C) for widths C not multiples of 32),
    # or "" (none).
    # The paper froze every BatchNorm for COCO: FrozenBN.
    _C.MODEL.FISHNET.NORM = "FrozenBN"
    # Freeze the first FREEZE_AT stages, in the order they run (parameters get no gradient,
    # BatchNorm becomes FrozenBatchNorm2d), as Detectron2's MODEL.BACKBONE.FREEZE_AT does for ResNets:
    #   0: nothing           1: stem              2: + tail3   3: + tail4   4: + tail5
    #   5: + bridge          6: + body4           7: + body3   8: + body2
    #   9: + head3 (its refinement is head2)      10: + head4  11: + head5 (all but the classifier)
    _C.MODEL.FISHNET.FREEZE_AT = 0
    # Freeze the stem's first conv (and its norm): the only convolution at full input resolution,
    # which the paper froze for COCO ("the conv weights at 224x224 resolution").
    _C.MODEL.FISHNET.FREEZE_STEM_CONV1 = True
    # 0: backbone only. > 0: add the official classifier (score unit + global pool + conv) and
    # return its logits as the feature "linear" (1000 for the ImageNet checkpoints).
    _C.MODEL.FISHNET.NUM_CLASSES = 0
    # Dilation of the body's refining blocks, one per body stage. [1, 2, 4] is the official model.
    _C.MODEL.FISHNET.BODY_DILATIONS = [1, 2, 4]
    # Where the refining blocks are dilated (the paper's dilation ablation, sec. 4.3):
    # "body" (the official model: BODY_DILATIONS), "body+head" (the head too, with the body's
    # rates mirrored: [4, 2, 1] for FishNet-150's head) or "none" (BODY_DILATIONS unused).
    _C.MODEL.FISHNET.DILATED_PARTS = "body"
    # How the tail and the head halve the resolution (the paper's Table 2): "max2" (2x2 max-pool,
    # stride 2: the paper's choice and the official model), "max3" (3x3 max-pool, stride 2),
    # "avg2" (2x2 average pool, stride 2) or "conv" (the last residual block of each tail and
    # head stage has stride 2 and a strided 1x1 conv on its shortcut; weights the official
    # checkpoints do not hold).
    _C.MODEL.FISHNET.DOWNSAMPLE = "max2"
    # FishNeXt (paper, sec. 4.2, Table 1): > 0 makes every residual block ResNeXt's grouped
    # bottleneck, with groups of GROUP_WIDTH channels at stride 4, doubling with each halving of
    # the resolution. 4 with DEPTH 150 is the paper's FishNeXt-150 (4d) (fishnet_d2.FISHNEXT_VARIANTS).
    # 0: FishNet's ungrouped blocks (the official model).
    _C.MODEL.FISHNET.GROUP_WIDTH = 0
    # Activation checkpointing: the stages that recompute their activations in the backward pass
    # instead of keeping them; saves training memory for extra compute (off in the paper).
    # None, False or "none": no stage. True or "all": every stage. "stride4": the stem, the last
    # body stage and the first head stage, which compute at stride 4 (27% of the memory).
    # "tail", "body", "head": that part's stages. Or a
    # stage name ("stem", "tail3", "bridge", "body2", "head3", ...), or a list of names/choices.
    # ["stem", "tail", "bridge", "body4", "body3"]: 32% less training memory for 7% more time;
    # ["stride4", "tail"]: 46% less for 6-13% more (README.md, "Performance").
    # None (not False) by default so that a YAML file or merge_from_list may set any of these.
    _C.MODEL.FISHNET.CHECKPOINT = None
    # Compute in the channels-last memory format (NHWC), which oneDNN's and cuDNN's convolutions
    # run fastest on (README.md, "Performance"). The features keep that format (same shapes), so
    # the FPN and heads on them run in it too. False: the input's format (NCHW).
    _C.MODEL.FISHNET.CHANNELS_LAST = True
    # Compile the FishNet with torch.compile and this backend ("inductor"); "" runs it eagerly.
    # The same math. Measured on a 2-core Xeon (README.md, "Performance"): FishNet-150 Mask R-CNN
    # inference 0.86x and 0.98x the eager time in two runs, but training slower (backbone step 1.55x, iteration 1.14x,
    # once its sizes were compiled as dynamic); the first calls compile for minutes, again for
    # each new mode and the first change of input size. Exporting (tools/export_model.py) runs
    # the eager model.
    _C.MODEL.FISHNET.COMPILE = ""

    # A custom architecture, used when DEPTH is 0; every list has one entry per stage of its part
    # (all the same length n, 3 in the official variants). Empty lists leave DEPTH in charge.
    # The report's FishNet-77 (FishNet-99 at 1/4 width) is
    #   STEM_CHANNELS 16, TAIL_CHANNELS [32, 64, 128], BODY_CHANNELS [128, 96, 64],
    #   HEAD_CHANNELS [80, 208, 400], blocks and transfer blocks as FishNet-99.
    _C.MODEL.FISHNET.ARCH = CN()
    # Width of the stem's output (its first two convs have half of it).
    _C.MODEL.FISHNET.ARCH.STEM_CHANNELS = 0
    # Width of each tail stage (the bridge keeps the last one).
    _C.MODEL.FISHNET.ARCH.TAIL_CHANNELS = []
    # Width of each body stage's refined map (before concatenation with the tail); each must
    # divide the channels entering its stage (channel-wise summation, paper eq. 8).
    _C.MODEL.FISHNET.ARCH.BODY_CHANNELS = []
    # Width of each head stage's refined map (before concatenation with the body).
    _C.MODEL.FISHNET.ARCH.HEAD_CHANNELS = []
    # Residual blocks in each tail stage, in the bridge, in each body and head stage.
    _C.MODEL.FISHNET.ARCH.TAIL_BLOCKS = []
    _C.MODEL.FISHNET.ARCH.BRIDGE_BLOCKS = 0
    _C.MODEL.FISHNET.ARCH.BODY_BLOCKS = []
    _C.MODEL.FISHNET.ARCH.HEAD_BLOCKS = []
    # Transfer blocks (T) of each body and head stage.
    _C.MODEL.FISHNET.ARCH.BODY_TRANSFER_BLOCKS = []
    _C.MODEL.FISHNET.ARCH.HEAD_TRANSFER_BLOCKS = []

    # Gradient clipping (Detectron2's SOLVER.CLIP_GRADIENTS, extended by fishnet_d2.solver):
    # CLIP_TYPE also accepts "full_model": clip the norm of all gradients together, as
    # torch.nn.utils.clip_grad_norm_(model.parameters()) does (the paper's clipping).
    # Clip only while the iteration is below UNTIL_ITER; 0 clips for the whole run.
    _C.SOLVER.CLIP_GRADIENTS.UNTIL_ITER = 0

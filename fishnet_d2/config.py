"""Config keys added by fishnet_d2: ``add_fishnet_config(cfg)``."""

from detectron2.config import CfgNode as CN

from .modeling.build import fishnet_arch_config_defaults

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
    # Activation checkpointing: the stages that recompute their activations in the backward pass
    # instead of keeping them, which trades training memory for extra compute (off in the paper).
    # None, False or "none": no stage. True or "all": every stage. "stride4": the stem, the last
    # body stage and the first head stage, which compute at stride 4. "tail", "body", "head":
    # that part's stages. Or a stage name ("stem", "tail3", "bridge", "body2", "head3", ...), or a
    # list of names and choices. docs/performance.md measures the memory and time of each choice.
    # None (not False) by default so that a YAML file or merge_from_list may set any of these.
    _C.MODEL.FISHNET.CHECKPOINT = None
    # Memory-efficient training: keep less for the backward pass, recomputing elementwise
    # operations and, in runs of FrozenBN blocks that recover their inputs from their outputs,
    # one 1x1 convolution per block: FrozenBN pre-activations keep their input where it is kept
    # anyway, blocks their unfolded weights, max-pools one byte per output. The same outputs; the
    # same gradients up to rounding (tested in float64). Adds to CHECKPOINT. docs/performance.md
    # says what each part keeps, and measures its memory and time.
    _C.MODEL.FISHNET.MEMORY_EFFICIENT = False
    # FOLD_FROZEN_BN and CHANNELS_LAST: None (the default) takes MODEL.DEVICE's choice, True or
    # False sets it. The choices by device, and where each was measured, are one table:
    # fishnet_d2/modeling/optimize/device_defaults.py (True and True on CPU; on CUDA the CPU's
    # choices until measured there: docs/performance.md, "The GPU check").
    # Compute FrozenBN in fewer passes over the activations: folded into the convolution before
    # it (the convolution's weight scaled, its bias the norm's shift), else as one fused
    # multiply-add. The same math. False: Detectron2's FrozenBatchNorm2d as it is.
    _C.MODEL.FISHNET.FOLD_FROZEN_BN = None
    # Compute in the channels-last memory format (NHWC), which oneDNN's and cuDNN's convolutions
    # run fastest on. The features keep that format (same shapes), so the FPN and heads on them
    # run in it too. False: the input's format (NCHW).
    _C.MODEL.FISHNET.CHANNELS_LAST = None
    # Compile the FishNet with torch.compile and this backend ("inductor"); "" runs it eagerly.
    # The same math; the first calls compile, and again for each new mode (training or
    # not) and the first change of input size. docs/performance.md measures its speed against
    # the eager model. Exporting (tools/export_model.py) runs the eager model.
    _C.MODEL.FISHNET.COMPILE = ""

    # The options the paper varies on an official variant (FishNetArch's VARIANT_OPTIONS):
    # BODY_DILATIONS, DILATED_PARTS, DOWNSAMPLE and GROUP_WIDTH, defaults the official model's; and
    # a custom architecture, used when DEPTH is 0, in ARCH: the other fields of FishNetArch.
    # Each key is a FishNetArch field, upper-case, made from the fields: what each means is its
    # field's description (fishnet_d2/modeling/arch.py; metadata["doc"]). Every list has one entry
    # per stage of its part (all the same length n, 3 in the official variants). 0 and [] in ARCH
    # are unset: they leave DEPTH in charge.
    # The report's FishNet-77 (FishNet-99 at 1/4 width) is
    #   STEM_CHANNELS 16, TAIL_CHANNELS [32, 64, 128], BODY_CHANNELS [128, 96, 64],
    #   HEAD_CHANNELS [80, 208, 400], blocks and transfer blocks as FishNet-99.
    for key, value in fishnet_arch_config_defaults().items():
        setattr(_C.MODEL.FISHNET, key, CN(value) if isinstance(value, dict) else value)

    # Gradient clipping (Detectron2's SOLVER.CLIP_GRADIENTS, extended by fishnet_d2.solver):
    # CLIP_TYPE also accepts "full_model": clip the norm of all gradients together, as
    # torch.nn.utils.clip_grad_norm_(model.parameters()) does (the paper's clipping).
    # Clip only while the iteration is below UNTIL_ITER; 0 clips for the whole run.
    _C.SOLVER.CLIP_GRADIENTS.UNTIL_ITER = 0

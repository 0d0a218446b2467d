"""The models the benchmark compares, built from the configs their users train with, and the
inputs it feeds them."""

from dataclasses import dataclass, replace
from typing import Any, Dict, List, Sequence, Tuple

import torch
from detectron2 import model_zoo
from detectron2.config import CfgNode, get_cfg
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.modeling.backbone.resnet import BasicStem, ResNet
from detectron2.structures import BitMasks, Boxes, Instances
from torch import nn

from fishnet_d2 import FISHNET_VARIANTS, FishNet, add_fishnet_config
from fishnet_d2 import model_zoo as fishnet_model_zoo

__all__ = [
    "ModelSpec",
    "MODEL_SPECS",
    "LIGHT_CHECKPOINT",
    "LEAN_CHECKPOINT",
    "parse_models",
    "build_detector",
    "plain_fishnet",
    "calibrate_norms",
    "calibrate_detections",
    "imagenet_classifier",
    "inference_input",
    "training_batch",
]


@dataclass(frozen=True)
class ModelSpec:
    """A Mask R-CNN FPN the benchmark builds: from ``config`` (the name of a fishnet_d2 config,
    or ``model_zoo:`` and the name of a Detectron2 one) with ``opts`` on top."""

    name: str
    config: str
    opts: Tuple[str, ...] = ()
    # FishNet depth or ResNet depth: the ImageNet classifier counted at 224x224.
    family: str = "fishnet"
    depth: int = 150
    # Measured only in training (activation checkpointing changes nothing in inference).
    training_only: bool = False
    # True: the detector's FishNet rebuilt with every fast path off (:func:`plain_fishnet`), with
    # the same weights: what fishnet_d2's fast paths are measured against.
    plain_reference: bool = False
    # The same network as another row, compiled (MODEL.FISHNET.COMPILE): FLOPs not counted again
    # (fvcore's tracer does not run compiled modules); its warm-up round compiles.
    compiled: bool = False
    # The same network as another row in another memory format or with FrozenBN computed another
    # way (MODEL.FISHNET.CHANNELS_LAST, FOLD_FROZEN_BN; a ResNet converted to channels-last):
    # FLOPs not counted again.
    variant: bool = False
    # The whole detector converted to the channels-last memory format after it is built (as
    # --channels-last does for every model): Detectron2's ResNets compute in NCHW otherwise.
    channels_last: bool = False


def _fishnet(depth: int) -> ModelSpec:
    config = f"COCO-InstanceSegmentation/mask_rcnn_fishnet{depth}_FPN_3x.yaml"
    return ModelSpec(f"FishNet-{depth}", config, family="fishnet", depth=depth)


def _resnet(depth: int) -> ModelSpec:
    config = f"model_zoo:COCO-InstanceSegmentation/mask_rcnn_R_{depth}_FPN_3x.yaml"
    return ModelSpec(f"R-{depth}", config, family="resnet", depth=depth)


MODEL_SPECS: Dict[str, ModelSpec] = {
    "fishnet99": _fishnet(99),
    "fishnet150": _fishnet(150),
    "fishnet201": _fishnet(201),
    "r50": _resnet(50),
    "r101": _resnet(101),
    "fishnet150-plain": ModelSpec(
        "FishNet-150 plain", _fishnet(150).config, depth=150, plain_reference=True
    ),
    "fishnet150-ckpt": ModelSpec(
        "FishNet-150 ckpt",
        _fishnet(150).config,
        opts=("MODEL.FISHNET.CHECKPOINT", True),
        depth=150,
        training_only=True,
    ),
    "fishnet150-compile": ModelSpec(
        "FishNet-150 compiled",
        _fishnet(150).config,
        opts=("MODEL.FISHNET.COMPILE", "inductor"),
        depth=150,
        compiled=True,
    ),
}
# Each fast path that DEVICE_DEFAULTS chooses by device (fishnet_d2/modeling/optimize/device_defaults.py)
# off, against FishNet-150 with it on: the data to choose it on a device. And the ResNets in
# channels-last, FishNet's default format.
MODEL_SPECS["fishnet150-nchw"] = ModelSpec(
    "FishNet-150 NCHW", _fishnet(150).config, opts=("MODEL.FISHNET.CHANNELS_LAST", False), depth=150, variant=True
)
MODEL_SPECS["fishnet150-unfolded"] = ModelSpec(
    "FishNet-150 unfolded", _fishnet(150).config, opts=("MODEL.FISHNET.FOLD_FROZEN_BN", False), depth=150, variant=True
)
for _depth in (50, 101):
    MODEL_SPECS[f"r{_depth}-cl"] = replace(
        _resnet(_depth), name=f"R-{_depth} channels-last", variant=True, channels_last=True
    )
# The MODEL.FISHNET.CHECKPOINT for a larger batch at little cost: the stages whose recomputation
# costs the least time per MB of memory it saves (docs/performance.md, "Activation checkpointing").
LIGHT_CHECKPOINT = ("stem", "tail", "bridge", "body4", "body3")
# With MODEL.FISHNET.MEMORY_EFFICIENT, the stages whose recomputation then saves the most memory
# per millisecond (docs/performance.md, "Memory-efficient training").
LEAN_CHECKPOINT = ("stem", "tail3", "body2")
# One row per named choice of MODEL.FISHNET.CHECKPOINT but "none" and "all" ("fishnet150-ckpt"),
# the pair ["stride4", "tail"] (the least memory for less than "all"'s time), LIGHT_CHECKPOINT and
# LEAN_CHECKPOINT.
for _choice in ("stride4", "tail", "body", "head", ("stride4", "tail"), LIGHT_CHECKPOINT, LEAN_CHECKPOINT):
    _name = _choice if isinstance(_choice, str) else "+".join(_choice)
    MODEL_SPECS[f"fishnet150-ckpt-{_name.replace('+', '-')}"] = ModelSpec(
        f"FishNet-150 ckpt {_name}",
        _fishnet(150).config,
        opts=("MODEL.FISHNET.CHECKPOINT", _choice),
        depth=150,
        training_only=True,
    )
# MODEL.FISHNET.MEMORY_EFFICIENT ("lean"): alone, and with each checkpointing row's choice.
MODEL_SPECS["fishnet150-lean"] = ModelSpec(
    "FishNet-150 lean",
    _fishnet(150).config,
    opts=("MODEL.FISHNET.MEMORY_EFFICIENT", True),
    depth=150,
    training_only=True,
)
for _key, _spec in list(MODEL_SPECS.items()):
    if _key.startswith("fishnet150-ckpt"):
        MODEL_SPECS[_key.replace("fishnet150-", "fishnet150-lean-")] = replace(
            _spec,
            name=_spec.name.replace("FishNet-150", "FishNet-150 lean"),
            opts=_spec.opts + ("MODEL.FISHNET.MEMORY_EFFICIENT", True),
        )


def parse_models(names: List[str]) -> List[ModelSpec]:
    unknown = [n for n in names if n not in MODEL_SPECS]
    if unknown or not names:
        raise ValueError(f"--models {names}: unknown {unknown}; allowed: {list(MODEL_SPECS)}")
    return [MODEL_SPECS[n] for n in dict.fromkeys(names)]


def detector_config(spec: ModelSpec, device: str, opts: Sequence[str] = ()) -> CfgNode:
    cfg = get_cfg()
    add_fishnet_config(cfg)
    if spec.config.startswith("model_zoo:"):
        cfg.merge_from_file(model_zoo.get_config_file(spec.config[len("model_zoo:") :]))
    else:
        cfg.merge_from_file(fishnet_model_zoo.get_config_file(spec.config))
    cfg.merge_from_list(list(spec.opts) + list(opts))
    cfg.MODEL.WEIGHTS = ""  # random weights: time and memory do not depend on their values
    cfg.MODEL.DEVICE = device
    return cfg


def build_detector(spec: ModelSpec, device: str, opts: Sequence[str] = ()) -> nn.Module:
    """The detector with random weights, its FrozenBN statistics set as :func:`calibrate_norms`."""
    torch.manual_seed(0)
    model = build_model(detector_config(spec, device, opts))
    if spec.plain_reference:
        model.backbone.bottom_up = plain_fishnet(model.backbone.bottom_up).to(device)
    if spec.channels_last:
        model.to(memory_format=torch.channels_last)
    images = [{"image": image} for image in random_images(2, 256, 320, seed=0, device=device)]
    calibrate_norms(model.backbone.bottom_up, model.preprocess_image(images).tensor)
    return model


def plain_fishnet(fishnet: FishNet, norm: Any = "FrozenBN") -> FishNet:
    """``fishnet``'s network, weights and frozen parameters as the paper writes it, with no speed
    or memory path (:class:`FishNet` alone: NCHW, Detectron2's own ``FrozenBatchNorm2d``, neither
    folded into the conv before it nor computed as one fused multiply-add). What stays: the ReLUs
    that run in place. The same features as ``fishnet``'s (tested)."""
    plain = FishNet(
        fishnet.arch,
        in_channels=fishnet.in_channels,
        norm=norm,
        out_features=list(fishnet.output_shape()),
        num_classes=fishnet.num_classes,
    )
    plain.load_state_dict(fishnet.state_dict())
    for p, q in zip(plain.parameters(), fishnet.parameters()):  # frozen stages and stem conv
        p.requires_grad_(q.requires_grad)
    return plain


def calibrate_norms(backbone: nn.Module, images: torch.Tensor) -> None:
    """Give each FrozenBN the mean and variance of what it normalizes on ``images``.

    With random weights and FrozenBN's identity statistics, activations grow with depth (the
    head of a random FishNet-150 reaches ~1e3, R-50's res5 ~20), unlike a trained model's; the
    RPN then proposes degenerate boxes, and the heads' work would not be a trained model's.
    Statistics set in execution order (a pre-hook per FrozenBN) keep every feature at unit scale.
    A FishNet computes some FrozenBNs inside the conv before them, without calling the norm: its
    statistics are set on :func:`plain_fishnet`'s copy, which calls every norm, and loaded back.
    """
    if isinstance(backbone, FishNet):
        plain = plain_fishnet(backbone).to(images.device)
        calibrate_norms_in_order(plain, images)
        backbone.load_state_dict(plain.state_dict())
    else:
        calibrate_norms_in_order(backbone, images)


def calibrate_norms_in_order(backbone: nn.Module, images: torch.Tensor) -> None:
    """:func:`calibrate_norms` for a backbone that calls each of its FrozenBNs."""

    def set_statistics(norm: FrozenBatchNorm2d, inputs) -> None:
        x = inputs[0]
        norm.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        norm.running_var.copy_(x.var(dim=(0, 2, 3)))

    norms = [m for m in backbone.modules() if isinstance(m, FrozenBatchNorm2d)]
    hooks = [norm.register_forward_pre_hook(set_statistics) for norm in norms]
    with torch.no_grad():
        backbone(images)
    for hook in hooks:
        hook.remove()


def imagenet_classifier(spec: ModelSpec) -> nn.Module:
    """The ImageNet model (1000 classes, BatchNorm) of the same backbone: the paper's FLOPs."""
    if spec.family == "fishnet":
        classifier = FishNet(FISHNET_VARIANTS[spec.depth], norm="BN", num_classes=1000)
        return plain_fishnet(classifier, norm="BN") if spec.plain_reference else classifier
    stages = ResNet.make_default_stages(spec.depth, norm="BN")
    return ResNet(BasicStem(3, 64, norm="BN"), stages, num_classes=1000)  # output: "linear"


def random_images(num: int, height: int, width: int, seed: int, device: str) -> List[torch.Tensor]:
    """Random uint8-range images, ``(3, height, width)`` float, as a Detectron2 mapper gives."""
    g = torch.Generator().manual_seed(seed)
    images = [torch.randint(0, 256, (3, height, width), generator=g).float() for _ in range(num)]
    return [image.to(device) for image in images]


def training_batch(
    num_images: int, height: int, width: int, *, instances: int, seed: int, device: str
) -> List[dict]:
    """Images with ``instances`` random ground-truth boxes each (masks: the filled boxes)."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for image in random_images(num_images, height, width, seed, device):
        size = torch.rand(instances, 2, generator=g) * torch.tensor([width, height]) * 0.5 + 16
        corner = torch.rand(instances, 2, generator=g) * (torch.tensor([width, height]) - size)
        boxes = torch.cat([corner, corner + size], dim=1).round()
        masks = torch.zeros(instances, height, width, dtype=torch.bool)
        for mask, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
            mask[y0:y1, x0:x1] = True
        target = Instances((height, width))
        target.gt_boxes = Boxes(boxes)
        target.gt_classes = torch.randint(0, 80, (instances,), generator=g)
        target.gt_masks = BitMasks(masks)
        batch.append({"image": image, "instances": target.to(device)})
    return batch


def inference_input(height: int, width: int, seed: int, device: str) -> List[dict]:
    (image,) = random_images(1, height, width, seed, device)
    return [{"image": image, "height": height, "width": width}]


def calibrate_detections(model: nn.Module, inputs: List[dict]) -> int:
    """Make a randomly initialized detector return as many detections as a trained one does on
    a busy image: ``TEST.DETECTIONS_PER_IMAGE`` (the box predictor's ``test_topk_per_image``,
    100), the same number for every model, so that each runs its mask head on as many.

    With random weights every class score is about 1/81, under the 0.05 threshold: no
    detection, and the mask head would never run. The box predictor's score threshold is set
    just under the ``k``-th highest class score on ``inputs``; NMS removes overlapping
    candidates (how many differs from model to model: R-50 kept 32 of 300, FishNet-150 100),
    so ``k`` doubles until NMS leaves at least the cap. Returns the number of detections; a
    ``RuntimeError`` if even every class score of every proposal leaves fewer.
    """
    predictor = model.roi_heads.box_predictor
    captured = []
    handle = predictor.register_forward_hook(lambda m, i, out: captured.append(out))
    with torch.no_grad():
        model(inputs)
    handle.remove()
    logits, _ = captured[0]  # softmax classification (the configs' default), last: background
    scores = logits.softmax(dim=-1)[:, :-1].flatten().sort(descending=True).values
    wanted = predictor.test_topk_per_image
    k = wanted
    while True:
        k = min(k, scores.numel())
        predictor.test_score_thresh = scores[k - 1].item() * (1 - 1e-6)
        with torch.no_grad():
            found = len(model(inputs)[0]["instances"])
        if found >= wanted:
            return found
        if k == scores.numel():
            raise RuntimeError(
                f"calibrate_detections: every one of the {k} class scores gives {found} detections "
                f"after NMS, fewer than the {wanted} (TEST.DETECTIONS_PER_IMAGE) every model should run"
            )
        k *= 2

"""The registered timm models and their pretrained tags (importing this module registers them).

``fishnet99``, ``fishnet150``, ``fishnet201``, ``fishnext150``; one tag per published weights
file (:data:`fishnet_d2.weights.zoo.PUBLISHED_WEIGHTS`): ``fishnet150_official_welltrained`` is
``fishnet150.official_welltrained_in1k``, its ``pretrained_cfg["url"]``
``fishnet://ImageNet/fishnet150_official_welltrained``. A model's first tag is its default (the
official code's weights, as the project's configs start from). FishNeXt-150 has no published
weights: no tag.

Each tag's input configuration is the official evaluation's (the paper, section 4.1, and the
official code's ``main.py``): the shorter side resized to 256 (bilinear, torchvision's default),
the center 224x224 (``crop_pct`` 224/256 = 0.875), pixels in [0, 1] normalized by ImageNet's mean
and std. pytorchcv evaluates its FishNet-150 the same way.
"""

from typing import Any, Dict, Optional

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, get_arch_pretrained_cfgs, register_model

from ..modeling import FISHNET_VARIANTS, FISHNEXT_VARIANTS, FishNetArch
from ..weights.zoo import PUBLISHED_WEIGHTS, SCHEME, PublishedWeights
from .features import default_out_indices
from .model import TimmFishNet
from .weights import CLASSIFIER, FIRST_CONV, checkpoint_filter_fn, named_weights_overlay

__all__ = ["fishnet99", "fishnet150", "fishnet201", "fishnext150", "model_tag"]

PAPER = dict(
    paper_name="FishNet: A Versatile Backbone for Image, Region, and Pixel Level Prediction",
    paper_ids="arXiv:1901.03495",
)


def model_tag(weights: PublishedWeights) -> str:
    """``fishnet150.official_welltrained_in1k`` for ``fishnet150_official_welltrained``."""
    arch = f"fishnet{weights.depth}"
    return f"{arch}.{weights.name[len(arch) + 1 :]}_in1k"


def _cfg(weights: Optional[PublishedWeights] = None) -> Dict[str, Any]:
    cfg: Dict[str, Any] = dict(
        num_classes=1000,
        input_size=(3, 224, 224),
        min_input_size=(3, 32, 32),  # height and width: multiples of 32
        pool_size=(7, 7),
        crop_pct=0.875,
        crop_mode="center",
        interpolation="bilinear",
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        first_conv=FIRST_CONV,
        classifier=CLASSIFIER,
        **PAPER,
    )
    if weights is not None:
        cfg.update(
            url=SCHEME + weights.name,  # resolved by fishnet_d2's download, not timm's (weights.py)
            origin_url=weights.url,
            description=weights.description,
            notes=(f"ImageNet-1k val top-1 {weights.top1}% (its source's)", f"{weights.layout} layout"),
        )
        if weights.layout == "pytorchcv":
            cfg["license"] = "mit"
    return cfg


default_cfgs = generate_default_cfgs(
    {
        **{model_tag(weights): _cfg(weights) for weights in PUBLISHED_WEIGHTS.values()},
        "fishnext150": _cfg(),
    }
)


def _check_tag(variant: str, pretrained_cfg: Any) -> None:
    """An unknown tag, named with the allowed ones (timm's own error names none)."""
    if not isinstance(pretrained_cfg, str):
        return
    names = list(get_arch_pretrained_cfgs(variant))  # "fishnet150.official_in1k", ...
    if f"{variant}.{pretrained_cfg}" not in names:
        raise RuntimeError(f"{variant}.{pretrained_cfg}: no such pretrained tag; allowed: {', '.join(names)}")


def _create(variant: str, named_arch: FishNetArch, pretrained: bool, **kwargs: Any) -> TimmFishNet:
    # As timm's own entrypoints do (resnet's layers=), a keyword argument overrides the name's
    # architecture: any FishNetArch (the tests build the official code's tiny reference network).
    arch = kwargs.pop("arch", named_arch)
    _check_tag(variant, kwargs.get("pretrained_cfg"))
    feature_cls = kwargs.pop("feature_cls", "getter")
    if feature_cls != "getter":
        raise ValueError(
            f"feature_cls={feature_cls!r}: FishNet's features come from forward_intermediates; allowed: 'getter' "
            "(its body and head stages read other stages' outputs, which timm's hook, list and dict "
            "extractors cannot follow)"
        )
    overlay = named_weights_overlay(variant, pretrained, kwargs.get("pretrained_cfg"), kwargs.pop("pretrained_cfg_overlay", None))
    feature_cfg = dict(feature_cls="getter", out_indices=default_out_indices(arch, kwargs.get("feature_location", "head")))
    return build_model_with_cfg(
        TimmFishNet,
        variant,
        pretrained,
        pretrained_cfg_overlay=overlay,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=feature_cfg,
        arch=arch,
        **kwargs,
    )


@register_model
def fishnet99(pretrained: bool = False, **kwargs: Any) -> TimmFishNet:
    """FishNet-99 (16.6M parameters, 77.41% top-1 with the official weights)."""
    return _create("fishnet99", FISHNET_VARIANTS[99], pretrained, **kwargs)


@register_model
def fishnet150(pretrained: bool = False, **kwargs: Any) -> TimmFishNet:
    """FishNet-150 (25.0M parameters; 78.14%, 79.35% or 80.74% top-1 by its tag's weights)."""
    return _create("fishnet150", FISHNET_VARIANTS[150], pretrained, **kwargs)


@register_model
def fishnet201(pretrained: bool = False, **kwargs: Any) -> TimmFishNet:
    """FishNet-201 (44.6M parameters, 79.71% top-1 with the official well-trained weights)."""
    return _create("fishnet201", FISHNET_VARIANTS[201], pretrained, **kwargs)


@register_model
def fishnext150(pretrained: bool = False, **kwargs: Any) -> TimmFishNet:
    """FishNeXt-150 (the paper's grouped FishNet-150; no published weights)."""
    return _create("fishnext150", FISHNEXT_VARIANTS[150], pretrained, **kwargs)

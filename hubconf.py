"""torch.hub entry points: FishNet-99/150/201 and FishNeXt-150 as timm models (fishnet_d2.timm_models).

    model = torch.hub.load("<this repository's directory>", "fishnet150", source="local", pretrained=True)

``pretrained=True`` loads the published ImageNet weights of the model's default tag by name
(fishnet_d2's download: cache, ``FISHNET_D2_MIRROR``, checks); other keyword arguments are
``timm.create_model``'s (``num_classes``, ``features_only``, ``pretrained_cfg="pytorchcv_in1k"``,
...; docs/timm.md).
"""

from typing import Any

dependencies = ["torch", "timm", "detectron2"]


def _create(name: str, pretrained: bool, **kwargs: Any):
    import timm

    import fishnet_d2.timm_models  # noqa: F401  registers FishNet in timm

    return timm.create_model(name, pretrained=pretrained, **kwargs)


def fishnet99(pretrained: bool = False, **kwargs: Any):
    """FishNet-99; pretrained: the official weights (77.41% ImageNet top-1)."""
    return _create("fishnet99", pretrained, **kwargs)


def fishnet150(pretrained: bool = False, **kwargs: Any):
    """FishNet-150; pretrained: the official weights (78.14%; pretrained_cfg="official_welltrained_in1k"
    79.35%, "pytorchcv_in1k" 80.74%)."""
    return _create("fishnet150", pretrained, **kwargs)


def fishnet201(pretrained: bool = False, **kwargs: Any):
    """FishNet-201; pretrained: the official well-trained weights (79.71%)."""
    return _create("fishnet201", pretrained, **kwargs)


def fishnext150(pretrained: bool = False, **kwargs: Any):
    """FishNeXt-150 (no published weights: pretrained=True raises, naming the ways on)."""
    return _create("fishnext150", pretrained, **kwargs)

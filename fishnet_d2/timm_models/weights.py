"""Weights of the timm models: their keys, the files they read, the named weights.

Keys: a timm FishNet holds fishnet_d2's ``FishNet`` as ``fishnet`` and the official classifier
as ``classifier``, so its state_dict is fishnet_d2's ``FishNet(arch, num_classes=N)``'s with
``fishnet.`` before every key but the classifier's (``stem.conv1.conv.weight`` is
``fishnet.stem.conv1.conv.weight``; ``classifier.fc.weight`` is itself): :func:`timm_key`,
:func:`fishnet_d2_key`.

Files: a weights file given as ``pretrained_cfg_overlay=dict(file=...)`` (or ``url=...``), and
the cache entry of named weights, are FishNet-specific formats, so their pretrained_cfg says
``custom_load``: timm hands the path to the model's ``load_pretrained``
(:func:`load_pretrained_file`), which reads it with fishnet_d2's reader (official checkpoints,
pytorchcv files, this project's converted ``.pth``/``.pkl``, any state_dict; no code in the file
runs), converts it to the model's keys and checks its architecture
(:func:`checkpoint_filter_fn`), then adapts what timm adapts (the first conv to ``in_chans``; a
classifier of another number of classes is left out). ``checkpoint_path=`` goes through timm's
reader (the ``state_dict`` or ``model`` entry of a torch file) and the model's
``load_state_dict``, which converts the same layouts.

Named weights: ``pretrained=True`` resolves the tag's ``fishnet://ImageNet/<name>`` (its
``pretrained_cfg["url"]``) with :func:`fishnet_d2.weights.download.fetch_named_weights`: the same
download, checks, cache, mirror and errors as Detectron2's ``MODEL.WEIGHTS``
(:func:`named_weights_overlay`).
"""

import logging
from typing import Any, Dict, Mapping, Optional

import torch
from torch import nn

from ..modeling import FISHNET_VARIANTS, FISHNEXT_VARIANTS, FishNetArch
from ..weights.convert import convert_state_dict, load_state_dict
from ..weights.download import UnpublishedWeightsError, WeightsUnavailableError, fetch_named_weights
from ..weights.files import CheckpointLoadError, listing
from ..weights.zoo import SCHEME

__all__ = [
    "TIMM_PREFIX",
    "timm_key",
    "fishnet_d2_key",
    "describe_arch",
    "checkpoint_filter_fn",
    "load_pretrained_file",
    "named_weights_overlay",
]

logger = logging.getLogger(__name__)

TIMM_PREFIX = "fishnet."
# The timm model's modules whose weights timm itself adapts while loading pretrained weights: the
# first conv to in_chans != 3 (pretrained_cfg["first_conv"]), the classifier's last conv to
# another number of classes (pretrained_cfg["classifier"]; timm drops it).
FIRST_CONV = "fishnet.stem.conv1.conv"
CLASSIFIER = "classifier.fc"

# How a timm user gives a file instead of the download, for the download's errors.
TIMM_WAYS_ON = (
    "With timm, a copy of the published file itself (no conversion needed) loads with "
    "timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=PATH))."
)


def timm_key(key: str) -> str:
    """The timm model's key for fishnet_d2's ``FishNet`` (with classifier) key ``key``."""
    return key if key.startswith("classifier.") else TIMM_PREFIX + key


def fishnet_d2_key(key: str) -> str:
    """fishnet_d2's ``FishNet`` key for the timm model's key ``key``."""
    return key[len(TIMM_PREFIX) :] if key.startswith(TIMM_PREFIX) else key


def describe_arch(arch: FishNetArch) -> str:
    """"FishNet-150", "FishNeXt-150", or "a custom FishNet"."""
    for family, variants in (("FishNet", FISHNET_VARIANTS), ("FishNeXt", FISHNEXT_VARIANTS)):
        for depth, variant in variants.items():
            if arch == variant:
                return f"{family}-{depth}"
    return "a custom FishNet"


def _timm_name(description: str) -> str:
    """The timm model of a variant's description ("FishNet-99" -> "fishnet99"), else ""."""
    family, _, depth = description.partition("-")
    return f"{family.lower()}{depth}" if depth else ""


def _source(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("architecture") or type(model).__name__
    where = cfg.get("file") or (cfg.get("url") if not cfg.get("state_dict") else None)
    return f"{name}: the weights {'in ' + str(where) if where else 'given'}"


def _fits(state_dict: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state_dict`` has the model's own keys and shapes, but for what timm adapts (the
    first conv's input channels, the classifier's classes, which it may also lack)."""
    adapted = (f"{CLASSIFIER}.weight", f"{CLASSIFIER}.bias")
    if set(state_dict) - set(own) or set(own) - set(state_dict) - set(adapted):
        return False
    for key, value in state_dict.items():
        shape, expected = tuple(getattr(value, "shape", ())), tuple(own[key].shape)
        if key == f"{FIRST_CONV}.weight" and len(shape) == 4:
            shape, expected = shape[:1] + shape[2:], expected[:1] + expected[2:]
        if key not in adapted and shape != expected:
            return False
    return True


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> Dict[str, torch.Tensor]:
    """``state_dict`` (weights timm read from a file) in ``model``'s keys: as is when it has them,
    else converted from the official, pytorchcv or fishnet_d2 layout after checking every key and
    shape. Timm's ``pretrained_filter_fn``.

    Raises:
        CheckpointLoadError: weights of another architecture, or not a FishNet's, saying which.
    """
    own = model.state_dict()
    if _fits(state_dict, own):
        return dict(state_dict)
    expected = describe_arch(model.arch)
    try:
        converted = convert_state_dict(state_dict)
    except CheckpointLoadError as e:
        raise CheckpointLoadError(
            f"{_source(model)} are not {expected}'s in any layout it reads (official, pytorchcv, fishnet_d2, "
            f"or the timm model's own: {_mismatch(state_dict, own)}): {e}"
        ) from None
    if converted.arch != model.arch:
        found = describe_arch(converted.arch)
        other = _timm_name(found)
        instead = f"; timm.create_model({other!r}) takes them" if other else ""
        raise CheckpointLoadError(
            f"{_source(model)} are {found}'s ({converted.num_classes or 'no'} classes, {converted.layout} layout), "
            f"not {expected}'s{instead}. Allowed: weights of {expected} in the official, pytorchcv, fishnet_d2 "
            "or timm layout."
        )
    return {timm_key(key): value for key, value in converted.state_dict.items()}


def _mismatch(state_dict: Mapping[str, Any], own: Mapping[str, torch.Tensor]) -> str:
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    misshaped = [k for k in own if k in state_dict and getattr(state_dict[k], "shape", None) != own[k].shape]
    parts = [f"{title} ({len(keys)}): {listing(keys)}" for title, keys in
             (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if keys]  # fmt: skip
    return "; ".join(parts) or "no difference"


def load_pretrained_file(model: nn.Module, path: str) -> None:
    """Load the weights file ``path`` into ``model``, as timm loads pretrained weights: read by
    fishnet_d2's reader, in any layout :func:`checkpoint_filter_fn` takes, the first conv adapted
    to the model's ``in_chans``, a classifier conv of another number of classes left out (the
    model keeps its own). Everything else must load; ``custom_load``'s timm calls this."""
    from timm.models import adapt_input_conv  # timm's own adaptation of a pretrained first conv

    state_dict = checkpoint_filter_fn(load_state_dict(path), model)
    own = model.state_dict()
    first = f"{FIRST_CONV}.weight"
    if state_dict[first].shape[1] != own[first].shape[1]:
        state_dict[first] = adapt_input_conv(own[first].shape[1], state_dict[first], base_chans=state_dict[first].shape[1])
    left_out = [k for k in (f"{CLASSIFIER}.weight", f"{CLASSIFIER}.bias")
                if k in state_dict and (k not in own or own[k].shape != state_dict[k].shape)]  # fmt: skip
    for key in left_out:
        del state_dict[key]
    if left_out:
        logger.info(f"{_source(model)}: their classifier conv is for another number of classes; left out")
    result = model.load_state_dict(state_dict, strict=False)
    # BatchNorm's batch counters, which this project's converted files leave out, keep the model's.
    missing = [k for k in result.missing_keys if k.rsplit(".", 1)[0] != CLASSIFIER and not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:  # checkpoint_filter_fn checked them: a bug if reached
        raise RuntimeError(f"{_source(model)}: missing {missing}, unexpected {result.unexpected_keys}")


def named_weights_overlay(
    variant: str, pretrained: bool, pretrained_cfg: Any, overlay: Optional[Mapping[str, Any]]
) -> Dict[str, Any]:
    """``pretrained_cfg_overlay`` for timm's ``build_model_with_cfg``: with ``pretrained`` and no
    file or state_dict of the user's, ``file`` = the local path of the tag's named weights
    (``url`` ``fishnet://ImageNet/<name>``), fetched on first use.

    Raises:
        UnpublishedWeightsError: the model has no published weights (FishNeXt-150).
        WeightsUnavailableError: as fishnet_d2's download (its message, and how to give timm a file).
    """
    from timm.models import resolve_pretrained_cfg  # timm's own resolution of tag and overlay

    overlay = dict(overlay or {})
    if overlay.get("file") or overlay.get("url"):
        # A file of the user's: a FishNet format, read by fishnet_d2 (load_pretrained_file).
        overlay.setdefault("custom_load", True)
    if not pretrained or overlay.get("file") or overlay.get("state_dict") or overlay.get("hf_hub_id"):
        return overlay
    url = resolve_pretrained_cfg(variant, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=overlay).url
    if not url:
        raise UnpublishedWeightsError(
            f"{variant}: no ImageNet weights of it are published, so pretrained=True has none to load. Allowed: "
            "pretrained=False (then train it), or your own weights of it with pretrained_cfg_overlay=dict(file=PATH) "
            "or checkpoint_path=PATH; the models with published weights: "
            "timm.list_models('fishnet*', pretrained=True)."
        )
    if isinstance(url, str) and url.startswith(SCHEME):
        try:
            overlay.update(file=fetch_named_weights(url), custom_load=True)
        except WeightsUnavailableError as e:
            raise type(e)(f"{e} {TIMM_WAYS_ON}") from None
    return overlay

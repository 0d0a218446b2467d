"""What a file of converted FishNet ImageNet weights holds (the converter's output and the cache
entries of ``fishnet://ImageNet/<name>``), so that a detector loads it without reports of tensors
it has no use for.

Format 2 (``"fishnet_d2_format": 2``), the one written now:

* ``"model"``: the network's tensors but the classifier's, under :class:`FishNet`'s names, without
  BatchNorm's ``num_batches_tracked`` counters. A FrozenBN has no counter; a trainable BN gets 0,
  which its running statistics do not depend on (Detectron2's BatchNorms keep a fixed momentum; the
  counter only counts), as with Detectron2's own converted ImageNet weights.
* ``"imagenet_classifier"``: the ImageNet classifier's tensors (``classifier.*``, same rule), apart:
  Detectron2's ``DetectionCheckpointer`` leaves them out of the model and reports nothing;
  :class:`fishnet_d2.FishNetCheckpointer` loads them into a FishNet built with a classifier.
* ``"__author__"`` and ``"matching_heuristics": True`` as Detectron2's model-zoo files have them.

Format 1 (no ``"fishnet_d2_format"``; ``"__author__"`` begins with ``fishnet_d2``) held every tensor
under ``"model"``. Such files still load everywhere; :func:`upgraded` rewrites one in format 2.
"""

from typing import Any, Dict, Mapping, Tuple

__all__ = [
    "CLASSIFIER_KEY",
    "FORMAT_KEY",
    "WEIGHTS_FORMAT",
    "file_content",
    "file_format",
    "is_converted_file",
    "split_weights",
    "upgraded",
    "whole_state_dict",
]

FORMAT_KEY = "fishnet_d2_format"
WEIGHTS_FORMAT = 2  # the format file_content writes
CLASSIFIER_KEY = "imagenet_classifier"
_CLASSIFIER_PREFIX = "classifier."
_COUNTER = "num_batches_tracked"


def split_weights(state_dict: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(network, classifier): ``state_dict``'s tensors as format 2 keeps them: the BatchNorm
    counters left out, the classifier's (``classifier.*``) apart from the rest."""
    network: Dict[str, Any] = {}
    classifier: Dict[str, Any] = {}
    for key, value in state_dict.items():
        if key.endswith(_COUNTER):
            continue
        (classifier if key.startswith(_CLASSIFIER_PREFIX) else network)[key] = value
    return network, classifier


def file_content(state_dict: Mapping[str, Any], author: str) -> Dict[str, Any]:
    """The content of a format-2 file of the FishNet weights ``state_dict`` (our names)."""
    network, classifier = split_weights(state_dict)
    content: Dict[str, Any] = {
        "model": network,
        "__author__": author,
        "matching_heuristics": True,
        FORMAT_KEY: WEIGHTS_FORMAT,
    }
    if classifier:
        content[CLASSIFIER_KEY] = classifier
    return content


def is_converted_file(checkpoint: Mapping[str, Any]) -> bool:
    """Whether ``checkpoint`` (a file's content) is converted ImageNet weights, of either format."""
    return FORMAT_KEY in checkpoint or str(checkpoint.get("__author__", "")).startswith("fishnet_d2")


def file_format(checkpoint: Mapping[str, Any]) -> int:
    """The format of a converted file's content (1 for files without the format's key)."""
    return int(checkpoint.get(FORMAT_KEY, 1))


def whole_state_dict(checkpoint: Mapping[str, Any]) -> Dict[str, Any]:
    """Every tensor of a converted file, the classifier's included, under our names."""
    weights = dict(checkpoint["model"])
    weights.update(checkpoint.get(CLASSIFIER_KEY) or {})
    return weights


def upgraded(checkpoint: Mapping[str, Any]) -> Dict[str, Any]:
    """A converted file's content in the current format (the same tensors, author and extras)."""
    content = file_content(whole_state_dict(checkpoint), str(checkpoint.get("__author__", "fishnet_d2")))
    extras = {k: v for k, v in checkpoint.items() if k not in ("model", CLASSIFIER_KEY, FORMAT_KEY)}
    return {**extras, **content}

"""Reading weight files without running code from them: the one reader behind the checkpointer
(:class:`fishnet_d2.weights.checkpointer.FishNetCheckpointer`) and the converter
(:mod:`fishnet_d2.weights.convert`).

* :func:`read_pickle` (``.pkl``, Detectron2 / Detectron1 / Caffe2 model zoo): through
  :func:`fishnet_d2.weights.safe_pickle.load_pickle`, which rebuilds only containers, strings,
  numbers and numpy arrays.
* :func:`read_torch` (anything else): ``torch.load(..., weights_only=True)``, which rebuilds only
  tensors and plain data.
* :func:`read_checkpoint`: either, and the weights found in what it read, as Detectron2 finds them.

A file that names any other function or class raises :class:`UnsafeCheckpointError` before
anything in it runs; empty, truncated and unreadable files, and files that hold no weights, raise
:class:`CheckpointLoadError`, naming the file.
"""

import os
import pickle
import re
import zipfile
from typing import Any, Dict, List, Mapping

import numpy as np
import torch

from .imagenet_file import CLASSIFIER_KEY
from .safe_pickle import ForbiddenGlobalError, load_pickle

__all__ = [
    "CheckpointLoadError",
    "UnsafeCheckpointError",
    "listing",
    "read_checkpoint",
    "read_pickle",
    "read_torch",
    "strip_module_prefix",
]


class CheckpointLoadError(ValueError):
    """A file that cannot be loaded as a checkpoint of the model: missing data, truncated, not a
    checkpoint, or the weights of another model."""


class UnsafeCheckpointError(CheckpointLoadError):
    """A file whose unpickling would call a function or class that checkpoints never need."""


def _check_not_empty(filename: str) -> None:
    if not os.path.isfile(filename):
        raise FileNotFoundError(f"{filename}: no such file")
    if os.path.getsize(filename) == 0:
        raise CheckpointLoadError(f"{filename}: empty file, not a checkpoint")


_MAX_LISTED = 8  # items shown in a message; the rest are counted
# What load_pickle (.pkl) and torch.load(weights_only=True) rebuild, for the error messages.
_ALLOWED_PKL = "numpy arrays, dicts, lists, tuples, strings, numbers, booleans and None"
_ALLOWED_TORCH = "tensors, dicts, lists, tuples, strings, numbers, booleans and None"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def _refused(filename: str, global_names: List[str], allowed: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"{filename}: refused to load: reading it would call {', '.join(global_names)}, not "
        f"allowed in a checkpoint (allowed: {allowed}). Nothing in the file was run; it may be "
        "malicious -- load it only if you trust its source and know why it holds code."
    )


def listing(items: List[str]) -> str:
    """``items`` joined by commas, at most _MAX_LISTED of them, with how many more there are."""
    more = f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return ", ".join(items[:_MAX_LISTED]) + more


def read_pickle(filename: str) -> Any:
    """The content of a model-zoo pickle, rebuilt without running code from it."""
    _check_not_empty(filename)
    if zipfile.is_zipfile(filename):
        raise CheckpointLoadError(
            f"{filename}: a torch checkpoint (zip archive) under a .pkl name: name it .pth "
            "(.pkl files are read as Detectron2 model-zoo pickles)"
        )
    with open(filename, "rb") as f:
        try:
            return load_pickle(f)
        except ForbiddenGlobalError as e:
            raise _refused(filename, [f"{e.module}.{e.name}"], _ALLOWED_PKL) from None
        except Exception as e:  # pickle raises many types for broken data
            raise CheckpointLoadError(
                f"{filename}: not a readable pickle (truncated, or not a pickle): {_first_line(e)}"
            ) from None


def _unsafe_globals(filename: str, error: Exception) -> List[str]:
    """The globals that made ``torch.load(weights_only=True)`` refuse ``filename``."""
    if zipfile.is_zipfile(filename) and hasattr(torch.serialization, "get_unsafe_globals_in_checkpoint"):
        try:
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(filename))
        except Exception:  # a damaged archive: fall back on torch's message
            pass
    return re.findall(r"GLOBAL ([\w.]+)", str(error))[:1]


def read_torch(filename: str) -> Any:
    """The content of a torch-saved file, loaded with ``weights_only=True``."""
    _check_not_empty(filename)
    try:
        return torch.load(filename, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        forbidden = _unsafe_globals(filename, e)
        if forbidden:
            raise _refused(filename, forbidden, _ALLOWED_TORCH) from None
        reason = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(e))
        reason = reason.group(1) if reason else _first_line(e)
    except Exception as e:  # truncated archives, other formats: torch raises many types
        raise CheckpointLoadError(
            f"{filename}: not a readable torch checkpoint (truncated, or another format): "
            f"{_first_line(e)}"
        ) from None
    if not zipfile.is_zipfile(filename):
        # A plain pickle under a torch name? Say what it would have called, or what it is.
        try:
            read_pickle(filename)
        except UnsafeCheckpointError:
            raise
        except CheckpointLoadError:
            pass
        else:
            raise CheckpointLoadError(
                f"{filename}: a plain pickle, not a torch checkpoint (torch.save writes a zip "
                "archive); if it is in Detectron2's model-zoo format, name it .pkl"
            )
    raise CheckpointLoadError(
        f"{filename}: not a readable torch checkpoint (truncated, or another format): {reason}"
    )


def strip_module_prefix(weights: Mapping[str, Any]) -> Dict[str, Any]:
    """As fvcore does before loading: drop DataParallel's ``module.`` when every key has it."""
    if weights and all(k.startswith("module.") for k in weights):
        return {k[len("module.") :]: v for k, v in weights.items()}
    return dict(weights)


def _checked_weights(filename: str, weights: Any, part: str = "model") -> Dict[str, torch.Tensor]:
    """``weights`` (the file's ``part``) as tensors, DataParallel's ``module.`` prefix removed;
    CheckpointLoadError unless they are tensors or numeric numpy arrays named by strings."""
    if not isinstance(weights, Mapping) or not weights:
        what = "empty" if isinstance(weights, Mapping) else f"a {type(weights).__name__}"
        raise CheckpointLoadError(f"{filename}: not a checkpoint: its weights ({part!r}) are {what}")
    bad = []
    for key, value in weights.items():
        if not isinstance(key, str):
            bad.append(f"{key!r} (a {type(key).__name__} key)")
        elif isinstance(value, np.ndarray):
            if value.dtype.kind not in "biuf":
                bad.append(f"{key} (numpy dtype {value.dtype})")
        elif not isinstance(value, torch.Tensor):
            bad.append(f"{key} ({type(value).__name__})")
    if bad:
        raise CheckpointLoadError(
            f"{filename}: not a checkpoint: weights must be tensors or numeric numpy arrays, named "
            f"by strings; {len(bad)} of {len(weights)} are not: {listing(bad)}"
        )
    tensors = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in weights.items()}
    return strip_module_prefix(tensors)


def read_checkpoint(filename: str) -> Dict[str, Any]:
    """The checkpoint in ``filename``, read without running code from it: a dict whose ``"model"``
    holds the weights, as tensors named by strings (DataParallel's ``module.`` prefix removed).

    The weights are found where Detectron2's ``DetectionCheckpointer`` finds them (it reads
    ``.pkl`` and ``.pyth`` files with ``pickle.load`` and ``torch.load``, which run any code a file
    names, so they are read here):

    * ``.pkl`` in Detectron2's model-zoo format (``"model"`` and ``"__author__"``): as it is.
    * other ``.pkl`` (Detectron1 / Caffe2 model zoo): the weights, under ``"blobs"`` in detection
      models, without SGD's ``*_momentum`` blobs, with ``"__author__": "Caffe2"`` and
      ``"matching_heuristics": True``.
    * ``.pyth`` (pycls): its ``"model_state"`` without BatchNorm's ``num_batches_tracked``, with
      ``"__author__": "pycls"`` and ``"matching_heuristics": True``.
    * anything else (``torch.save``): as it is when it has ``"model"``; else the ``"state_dict"``
      of a checkpoint of the official FishNet code (its epoch and optimizer left out), or the
      whole file as a bare state_dict.

    The ImageNet classifier that fishnet_d2's converted files keep apart (``"imagenet_classifier"``,
    :mod:`fishnet_d2.weights.imagenet_file`) is checked and made tensors as the weights are.

    Raises CheckpointLoadError (naming the file) for anything else, UnsafeCheckpointError for a
    file that names code, FileNotFoundError for a missing file.
    """
    if filename.endswith(".pkl"):
        data, holder = read_pickle(filename), "the pickle"
    else:
        data, holder = read_torch(filename), "the file"
    if not isinstance(data, dict):
        raise CheckpointLoadError(
            f"{filename}: not a checkpoint: {holder} holds a {type(data).__name__}, not a dict of weights"
        )
    if filename.endswith(".pkl"):
        if "model" in data and "__author__" in data:
            checkpoint = dict(data)
        else:
            blobs = data.get("blobs", data)
            if isinstance(blobs, Mapping):
                blobs = {k: v for k, v in blobs.items() if not str(k).endswith("_momentum")}
            checkpoint = {"model": blobs, "__author__": "Caffe2", "matching_heuristics": True}
    elif filename.endswith(".pyth"):
        if not isinstance(data.get("model_state"), Mapping):
            found = listing(sorted(map(str, data)))
            raise CheckpointLoadError(f"{filename}: a .pyth (pycls) checkpoint needs a dict 'model_state'; found {found}")
        weights = {k: v for k, v in data["model_state"].items() if not str(k).endswith("num_batches_tracked")}
        checkpoint = {"model": weights, "__author__": "pycls", "matching_heuristics": True}
    elif "model" in data:
        checkpoint = dict(data)
    elif "state_dict" in data:
        checkpoint = {"model": data["state_dict"]}
    else:
        checkpoint = {"model": data}
    checkpoint["model"] = _checked_weights(filename, checkpoint["model"])
    if CLASSIFIER_KEY in checkpoint:
        checkpoint[CLASSIFIER_KEY] = _checked_weights(filename, checkpoint[CLASSIFIER_KEY], CLASSIFIER_KEY)
    return checkpoint

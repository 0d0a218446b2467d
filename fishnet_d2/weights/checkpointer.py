"""``FishNetCheckpointer``: Detectron2's ``DetectionCheckpointer`` that runs no code from the files
it reads, refuses files that are not checkpoints of the model, and never leaves a partial file.

    checkpointer = FishNetCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
    checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)

Reading: the formats ``DetectionCheckpointer`` reads, found as it finds them, read by
:func:`fishnet_d2.weights.files.read_checkpoint`: ``.pkl`` files by a reader that rebuilds only
containers, strings, numbers and numpy arrays, anything else with ``torch.load(...,
weights_only=True)``. A file that names any other function or class raises
:class:`UnsafeCheckpointError` before anything in it runs. Empty, truncated and unreadable files,
files that hold no weights, and weights that are not arrays raise :class:`CheckpointLoadError`,
naming the file.

"A file of another model": fewer than ``min_backbone_match`` (default one half) of the tensors of
the model's backbone -- ``model.backbone`` for Detectron2's meta-architectures, the whole model
otherwise; BatchNorm's ``num_batches_tracked`` counters aside -- find a tensor of the same name
and shape in the file (after Detectron2's name matching, for files that ask for it). Such a file
raises :class:`CheckpointLoadError` and the model is left as it was. Heads are not counted: a
checkpoint of the same backbone with other heads, or backbone-only weights (ImageNet), load as in
Detectron2, which logs the keys it skipped.

Converted ImageNet weights (:mod:`fishnet_d2.weights.imagenet_file`, either format) give the
network's tensors without BatchNorm's counters, and the ImageNet classifier's only to a model
that has a classifier of its names (a FishNet with ``NUM_CLASSES``): a detector reports no tensor
of the file as unused, only its own new modules as missing.

Writing: each checkpoint and the ``last_checkpoint`` tag go to a temporary file in the same
directory, flushed to disk, then renamed over the final name (:func:`fishnet_d2.weights.atomic_file.
atomic_write`); a process killed while saving leaves the previous checkpoint and tag intact and
possibly a ``.{name}.*.tmp`` file, which nothing reads.
"""

import os
from typing import Any, Dict, Mapping, Optional
from urllib.parse import urlparse

import torch
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from torch import nn

from ..backports import DetectionCheckpointer
from .atomic_file import atomic_write
from .files import CheckpointLoadError, UnsafeCheckpointError, listing, read_checkpoint
from .imagenet_file import CLASSIFIER_KEY, is_converted_file, split_weights, whole_state_dict

__all__ = ["CheckpointLoadError", "UnsafeCheckpointError", "FishNetCheckpointer"]

# The last line of the error for a file of another model.
CONVERT_HINT = (
    "ImageNet weights of a FishNet (the official code's, pytorchcv's or fishnet_d2's)? Convert them "
    "first: python tools/convert_fishnet_to_d2.py INPUT OUTPUT.pth"
)


class FishNetCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that loads without running pickled code, refuses files that are
    not checkpoints of the model, and saves atomically (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        save_dir: str = "",
        *,
        save_to_disk: Optional[bool] = None,
        min_backbone_match: float = 0.5,
        **checkpointables: Any,
    ):
        """
        Args:
            model, save_dir, save_to_disk, checkpointables: as ``DetectionCheckpointer``.
            min_backbone_match: the least fraction, in [0, 1], of the backbone's tensors that a
                file must give a value to; below it the file is "of another model" and refused.
                0 accepts any file of weights.
        """
        if isinstance(min_backbone_match, bool) or not isinstance(min_backbone_match, (int, float)) or not (
            0.0 <= min_backbone_match <= 1.0
        ):
            raise ValueError(f"min_backbone_match={min_backbone_match!r}: allowed a number in [0, 1]")
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.min_backbone_match = float(min_backbone_match)
        self._loading: Optional[str] = None

    # ---- reading ----

    def load(self, path: str, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        """Load ``path`` (see ``fvcore``'s ``Checkpointer.load``; a path may end in
        ``?matching_heuristics=True``, as in Detectron2 main). A missing local file raises
        FileNotFoundError."""
        if path:
            filename = urlparse(path)._replace(query="").geturl()  # as DetectionCheckpointer.load
            if "://" not in filename and not os.path.isfile(filename):
                raise FileNotFoundError(f"checkpoint {filename!r}: no such file")
        self._loading = path
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._loading = None

    def _load_file(self, filename: str) -> Dict[str, Any]:
        # DetectionCheckpointer reads .pkl and .pyth files with pickle.load and torch.load.
        if filename.endswith((".pkl", ".pyth")):
            return read_checkpoint(filename)
        return super()._load_file(filename)  # reads with _torch_load, then applies the path's query

    def _torch_load(self, filename: str) -> Dict[str, Any]:
        return read_checkpoint(filename)

    def _load_model(self, checkpoint: Dict[str, Any]) -> Any:
        if is_converted_file(checkpoint):
            self._take_imagenet_weights(checkpoint)
        heuristics = checkpoint.get("matching_heuristics", False)
        if heuristics:  # as DetectionCheckpointer would, before checking what the names give
            checkpoint["model"] = align_and_update_state_dicts(
                self.model.state_dict(), checkpoint["model"], c2_conversion=checkpoint.get("__author__") == "Caffe2"
            )
            checkpoint["matching_heuristics"] = False  # applied
        self._check_same_model(checkpoint["model"], heuristics)
        return super()._load_model(checkpoint)

    def _take_imagenet_weights(self, checkpoint: Dict[str, Any]) -> None:
        """Put under ``"model"`` what the model takes of converted ImageNet weights: the network
        without BatchNorm's counters, with the classifier only if the model has one of its names."""
        network, classifier = split_weights(whole_state_dict(checkpoint))
        checkpoint.pop(CLASSIFIER_KEY, None)
        model_keys = self.model.state_dict().keys()
        # As Detectron2's name matching (and plain loading) would find the classifier in the model.
        if any(k == c or k.endswith("." + c) for c in classifier for k in model_keys):
            network.update(classifier)
        checkpoint["model"] = network

    def _check_same_model(self, weights: Mapping[str, torch.Tensor], heuristics: bool) -> None:
        """Raise CheckpointLoadError, before anything is loaded, for a file of another model."""
        model_state = self.model.state_dict()
        keys = [k for k in model_state if not k.endswith("num_batches_tracked")]
        scope = "model"
        if isinstance(getattr(self.model, "backbone", None), nn.Module):
            backbone_keys = [k for k in keys if k.startswith("backbone.")]
            if backbone_keys:
                keys, scope = backbone_keys, "backbone"
        if not keys:
            return
        matched = [k for k in keys if k in weights and tuple(weights[k].shape) == tuple(model_state[k].shape)]
        if len(matched) >= self.min_backbone_match * len(keys):
            return
        misshaped = [
            f"{k}: {tuple(weights[k].shape)} in the file, {tuple(model_state[k].shape)} in the model"
            for k in keys
            if k in weights and k not in matched
        ]
        lines = [
            f"{self._loading or 'checkpoint'}: the weights of another model: the file gives "
            f"{len(matched)} of the {len(keys)} tensors of the model's {scope} (same name and "
            f"shape{', after Detectron2 matched names by suffix and logged shape mismatches' if heuristics else ''}), "
            f"fewer than min_backbone_match={self.min_backbone_match:g} of them; nothing was loaded.",
            f"  not in the file: {listing([k for k in keys if k not in weights])}",
        ]
        if misshaped:
            lines.append(f"  other shape: {listing(misshaped)}")
        lines.append(f"  the file's names: {listing(sorted(weights))}")
        lines.append(f"  {CONVERT_HINT}")
        raise CheckpointLoadError("\n".join(lines))

    # ---- writing ----

    def save(self, name: str, **kwargs: Any) -> None:
        """Save the model and checkpointables to ``{save_dir}/{name}.pth`` and tag it as the last
        checkpoint, each atomically."""
        if not self.save_dir or not self.save_to_disk:
            return
        if "://" in self.save_dir:
            raise ValueError(f"save_dir={self.save_dir!r}: FishNetCheckpointer saves to local directories only")
        basename = f"{name}.pth"
        if os.path.basename(basename) != basename or name in ("", ".", ".."):
            raise ValueError(f"name={name!r}: must be a file name, without a directory")
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Write ``last_filename_basename`` to ``{save_dir}/last_checkpoint``, atomically."""
        atomic_write(
            os.path.join(self.save_dir, "last_checkpoint"),
            lambda f: f.write(last_filename_basename),
            binary=False,
        )

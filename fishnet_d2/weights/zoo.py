"""The published FishNet ImageNet weights, by name: ``fishnet://ImageNet/<name>`` (see
:mod:`fishnet_d2.weights.handler`), where each file comes from and how it is checked.

* ``official``: the official code's checkpoints (github.com/kevin-ssy/FishNet, Dropbox links of
  its README, fetched with ``dl=1``). No checksum is published; what is checked is the content:
  a torch checkpoint, read without running code, whose ``state_dict`` has every key and shape of
  the named variant with a 1000-class classifier, and nothing else.
* ``pytorchcv``: imgclsmob's release file, a zip holding one ``.pth`` (a plain state_dict). As
  pytorchcv checks it: the SHA-1 of the ``.pth`` begins with the 8 hex digits in its name.

Networks that no one has published ImageNet weights for have names too
(:data:`UNPUBLISHED_WEIGHTS`), so that a config names what it needs and training stops with the
ways on instead of a missing file.
"""

import os
from dataclasses import dataclass
from typing import Dict, Optional
from urllib.parse import urlparse

__all__ = [
    "SCHEME",
    "PublishedWeights",
    "PUBLISHED_WEIGHTS",
    "UNPUBLISHED_WEIGHTS",
    "weight_name",
]

SCHEME = "fishnet://ImageNet/"


@dataclass(frozen=True)
class PublishedWeights:
    """One published ImageNet weights file of a FishNet, and how to check it."""

    name: str  # the name after fishnet://ImageNet/
    depth: int  # the FishNet variant (MODEL.FISHNET.DEPTH) the file holds, 1000 classes
    layout: str  # its key names: a layout of fishnet_d2.weights.convert.LAYOUTS
    url: str  # where its source publishes it
    top1: float  # ImageNet-1k val top-1 accuracy (%) its source reports
    description: str  # what it is, for the docs and the messages
    sha1_prefix: Optional[str] = None  # pytorchcv: the first hex digits of the .pth's SHA-1

    @property
    def file_name(self) -> str:
        """The published file's name, which a mirror serves it under."""
        return os.path.basename(urlparse(self.url).path)

    @property
    def archive_member(self) -> Optional[str]:
        """The ``.pth`` inside a zipped file (pytorchcv), else None."""
        return self.file_name[: -len(".zip")] if self.file_name.endswith(".zip") else None


def _official(name: str, depth: int, share: str, top1: float, description: str) -> PublishedWeights:
    url = f"https://www.dropbox.com/s/{share}?dl=1"
    return PublishedWeights(name, depth, "official", url, top1, description)


PUBLISHED_WEIGHTS: Dict[str, PublishedWeights] = {
    weights.name: weights
    for weights in (
        _official("fishnet99_official", 99, "hvojbdsad5ue7yb/fishnet99_ckpt.tar", 77.41,
                  "FishNet-99, the official code's ImageNet training"),
        _official("fishnet150_official", 150, "hjadcef18ln3o2v/fishnet150_ckpt.tar", 78.14,
                  "FishNet-150, the official code's ImageNet training (the paper's)"),
        _official("fishnet150_official_welltrained", 150, "ajy9p6f97y45f1r/fishnet150_ckpt_welltrained.tar",
                  79.35, "FishNet-150, official, trained with cosine LR and label smoothing"),
        _official("fishnet201_official_welltrained", 201, "kvz2dmxe3fzn10m/fishnet201_ckpt_welltrain.tar",
                  79.71, "FishNet-201, official, trained with cosine LR and label smoothing"),
        PublishedWeights(
            "fishnet150_pytorchcv", 150, "pytorchcv",
            "https://github.com/osmr/imgclsmob/releases/download/v0.0.502/fishnet150-0475-93e26daa.pth.zip",
            80.74, "FishNet-150, pytorchcv's own ImageNet training (imgclsmob)", sha1_prefix="93e26daa",
        ),
    )
}  # fmt: skip

# Networks of fishnet_d2's configs without published ImageNet weights: name -> the network.
UNPUBLISHED_WEIGHTS: Dict[str, str] = {
    "fishnext150": "FishNeXt-150 (MODEL.FISHNET.GROUP_WIDTH 4)",
    "fishnet150_downsample_conv": "FishNet-150 with strided-conv down-sampling (MODEL.FISHNET.DOWNSAMPLE conv)",
}


def weight_name(path: str) -> str:
    """The name in ``fishnet://ImageNet/<name>``; ValueError for any other path."""
    if not path.startswith(SCHEME) or "/" in path[len(SCHEME) :] or path == SCHEME:
        raise ValueError(
            f"{path!r}: FishNet ImageNet weights are named {SCHEME}<name>, with <name> one of "
            f"{', '.join(PUBLISHED_WEIGHTS)}"
        )
    return path[len(SCHEME) :]

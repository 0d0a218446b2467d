"""The official FishNet checkpoint layout, and its mapping to :class:`FishNet`'s state_dict.

In the official code a FishNet is ``conv1-3`` (stem) and ``fish.fish.{i}``: stage ``i`` is tail
``0..n-1``, bridge ``n``, body ``n+1..2n`` and head ``2n+1..3n``. Within a stage, ``.0`` holds the
residual blocks and ``.1`` the transfer blocks (body, head); the bridge has its score unit at
``.0``/``.1``, its blocks at ``.2`` and its SE unit at ``.3.0``; the last head stage has the
classifier at ``.3``/``.4.1``. Inside a block: ``bn1, conv1, bn2, conv2, bn3, conv3`` and
``shortcut.0`` (BN) / ``shortcut.2`` (conv) for a projection.
"""

import re
from typing import Callable, Dict, Mapping, Optional, Tuple

import torch

from ..modeling import FISHNET_VARIANTS, FishNet, FishNetArch
from ..modeling.arch import official_body_dilations

__all__ = ["official_key", "official_layout", "renamed_layout", "infer_arch", "variant_name"]

# Our module names inside a block (and inside the score / SE units) -> the official ones.
_BLOCK = {
    "norm1": "bn1",
    "conv1": "conv1",
    "norm2": "bn2",
    "conv2": "conv2",
    "norm3": "bn3",
    "conv3": "conv3",
    "shortcut.norm": "shortcut.0",
    "shortcut.conv": "shortcut.2",
}
# The official score unit is Sequential(bn, relu, conv, bn, relu) followed by the last conv.
_SCORE = {"norm1": "0", "conv1": "2", "norm2": "3"}
_SE = {"norm": "0", "squeeze": "3", "excite": "5"}
# Sub-module of a body / head stage -> its index in the official stage.
_REFINEMENT = {"refine": "0", "transfer": "1"}

_KEY = re.compile(r"(?P<module>.+)\.(?P<leaf>[^.]+)$")


def official_key(key: str, num_stages: int) -> str:
    """The official name of one of :class:`FishNet`'s state_dict keys."""
    n = num_stages
    module, leaf = _KEY.fullmatch(key).group("module", "leaf")
    parts = module.split(".")
    part = parts[0]
    if part == "stem":  # stem.conv{k}.{conv,norm} -> conv{k}.{0,1}
        return f"{parts[1]}.{ {'conv': 0, 'norm': 1}[parts[2]] }.{leaf}"
    if part == "tail":  # tail.{i}.blocks.{b}.*
        i, block, inner = int(parts[1]), parts[3], ".".join(parts[4:])
        return f"fish.fish.{i}.0.{block}.{_BLOCK[inner]}.{leaf}"
    if part == "bridge":
        stage = f"fish.fish.{n}"
        if parts[1] == "score" and parts[2] == "fc":
            return f"{stage}.1.{leaf}"
        if parts[1] == "score":
            return f"{stage}.0.{_SCORE[parts[2]]}.{leaf}"
        if parts[1] == "attention":
            return f"{stage}.3.0.{_SE[parts[2]]}.{leaf}"
        block, inner = parts[2], ".".join(parts[3:])  # bridge.blocks.{b}.*
        return f"{stage}.2.{block}.{_BLOCK[inner]}.{leaf}"
    if part in ("body", "head"):  # {body,head}.{i}.{refine,transfer}.{b}.*
        first = n + 1 if part == "body" else 2 * n + 1
        stage = f"fish.fish.{first + int(parts[1])}"
        block, inner = parts[3], ".".join(parts[4:])
        return f"{stage}.{_REFINEMENT[parts[2]]}.{block}.{_BLOCK[inner]}.{leaf}"
    if part == "classifier":
        stage = f"fish.fish.{3 * n}"
        if parts[1] == "fc":
            return f"{stage}.4.1.{leaf}"
        return f"{stage}.3.{_SCORE[parts[1]]}.{leaf}"
    raise KeyError(f"{key} is not a FishNet state_dict key")


def renamed_layout(
    arch: FishNetArch, num_classes: int, rename: Callable[[str, int], str]
) -> Dict[str, Tuple[str, torch.Size]]:
    """``{rename(our key, stages per part): (our key, shape)}`` for a FishNet with BatchNorm (as
    the official and pytorchcv's models are).

    Built from :class:`FishNet` itself, so it lists every parameter and buffer the model has.
    """
    with torch.device("meta"):
        model = FishNet(arch, norm="BN", num_classes=num_classes)
    return {rename(key, arch.num_stages): (key, value.shape) for key, value in model.state_dict().items()}


def official_layout(arch: FishNetArch, num_classes: int) -> Dict[str, Tuple[str, torch.Size]]:
    """``{official key: (our key, shape)}``: :func:`renamed_layout` by :func:`official_key`."""
    return renamed_layout(arch, num_classes, official_key)


def _count(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Number of consecutive blocks ``{prefix}.{b}.conv1.weight``, b = 0, 1, ..."""
    count = 0
    while f"{prefix}.{count}.conv1.weight" in state_dict:
        count += 1
    return count


def _width(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    return state_dict[f"{prefix}.0.conv3.weight"].shape[0]


def infer_arch(state_dict: Mapping[str, torch.Tensor]) -> Tuple[FishNetArch, int]:
    """The architecture and number of classes of an official-layout state_dict.

    Reads widths and block counts from the keys and shapes. Dilation leaves no trace in weights:
    the official model's body dilations are assumed (:func:`official_body_dilations`). Raises
    KeyError or ValueError when the state_dict is not a FishNet's.
    """
    stages = {int(m.group(1)) for k in state_dict if (m := re.match(r"fish\.fish\.(\d+)\.", k))}
    if not stages or (max(stages) % 3) or stages != set(range(max(stages) + 1)):
        raise ValueError(
            f"official FishNet stages are fish.fish.0 .. fish.fish.3n (n stages per part); "
            f"found {sorted(stages)}"
        )
    n = max(stages) // 3
    body = [f"fish.fish.{n + 1 + i}" for i in range(n)]
    head = [f"fish.fish.{2 * n + 1 + i}" for i in range(n)]
    classifier_fc = f"fish.fish.{3 * n}.4.1.weight"
    arch = FishNetArch(
        stem_channels=state_dict["conv3.0.weight"].shape[0],
        tail_channels=tuple(_width(state_dict, f"fish.fish.{i}.0") for i in range(n)),
        body_channels=tuple(_width(state_dict, f"{s}.0") for s in body),
        head_channels=tuple(_width(state_dict, f"{s}.0") for s in head),
        tail_blocks=tuple(_count(state_dict, f"fish.fish.{i}.0") for i in range(n)),
        bridge_blocks=_count(state_dict, f"fish.fish.{n}.2"),
        body_blocks=tuple(_count(state_dict, f"{s}.0") for s in body),
        head_blocks=tuple(_count(state_dict, f"{s}.0") for s in head),
        body_transfer_blocks=tuple(_count(state_dict, f"{s}.1") for s in body),
        head_transfer_blocks=tuple(_count(state_dict, f"{s}.1") for s in head),
        body_dilations=official_body_dilations(n),
    )
    num_classes = state_dict[classifier_fc].shape[0] if classifier_fc in state_dict else 0
    return arch, num_classes


def variant_name(arch: FishNetArch) -> Optional[str]:
    """``"FishNet-150"`` for an official variant, else None."""
    for depth, variant in FISHNET_VARIANTS.items():
        if arch == variant:
            return f"FishNet-{depth}"
    return None

"""pytorchcv's FishNet layout (``pytorchcv.models.fishnet``, imgclsmob), and its mapping to
:class:`FishNet`'s state_dict.

pytorchcv builds the official architecture (FishNet-99 and -150) under its own names:

* ``features.init_block.conv{1,2,3}.{conv,bn}``: the stem.
* ``features.hg`` (a "sesquialteral hourglass") with five sequences of units ``unit1 .. unitN``
  (1-based), each unit's residual blocks at ``blocks.block1 .. blockM``:

  - ``down1_seq.unit{i+1}``: tail stage ``i``;
  - ``skip1_seq``: the tail side; ``unit{j}`` (``j <= n``) are the transfer blocks of the body
    stage that reads tail stage ``j - 1`` (the stem for ``j = 1``), i.e. body stage ``n - j``;
    ``unit{n+1}`` is the bridge: score unit ``conv1`` (BN, conv) and ``conv2`` (BN, conv with
    bias), SE unit ``se.{bn,conv1,conv2}``, and its blocks;
  - ``up_seq.unit{i+1}``: the refining blocks of body stage ``i``;
  - ``skip2_seq``: the body side; ``unit{j}`` are the transfer blocks of head stage ``n - j``
    (``unit{n+1}`` is an identity, without weights);
  - ``down2_seq.unit{i+1}``: the refining blocks of head stage ``i``.

* ``features.final_block.{conv1.{bn,conv},preactiv.bn}`` and ``output.final_conv``: the
  classifier (its 7x7 average pool needs a 224x224 input for one logit per class).

Inside a block, the pre-activated convolutions are ``body.conv{1,2,3}.{bn,conv}`` and a
projection shortcut is ``identity_conv.{bn,conv}``.
"""

import re
from typing import Dict, Tuple

import torch

from ..modeling import FISHNET_VARIANTS, FishNetArch
from .official_layout import renamed_layout

__all__ = ["PYTORCHCV_VARIANTS", "pytorchcv_key", "pytorchcv_layout"]

# The variants pytorchcv builds (fishnet99(), fishnet150()).
PYTORCHCV_VARIANTS: Dict[int, FishNetArch] = {depth: FISHNET_VARIANTS[depth] for depth in (99, 150)}

# Our module names inside a residual block -> pytorchcv's.
_BLOCK = {
    "norm1": "body.conv1.bn",
    "conv1": "body.conv1.conv",
    "norm2": "body.conv2.bn",
    "conv2": "body.conv2.conv",
    "norm3": "body.conv3.bn",
    "conv3": "body.conv3.conv",
    "shortcut.norm": "identity_conv.bn",
    "shortcut.conv": "identity_conv.conv",
}
# The bridge's score unit, its SE unit, and the classifier (a score unit with a global pool).
_SCORE = {"norm1": "conv1.bn", "conv1": "conv1.conv", "norm2": "conv2.bn", "fc": "conv2.conv"}
_SE = {"norm": "se.bn", "squeeze": "se.conv1", "excite": "se.conv2"}
_CLASSIFIER = {
    "norm1": "features.final_block.conv1.bn",
    "conv1": "features.final_block.conv1.conv",
    "norm2": "features.final_block.preactiv.bn",
    "fc": "output.final_conv",
}

_KEY = re.compile(r"(?P<module>.+)\.(?P<leaf>[^.]+)$")
_HG = "features.hg"


def _block(block: str, inner: str) -> str:
    """``blocks.{b}.{inner}`` of ours -> pytorchcv's ``blocks.block{b+1}.{...}``."""
    return f"blocks.block{int(block) + 1}.{_BLOCK[inner]}"


def pytorchcv_key(key: str, num_stages: int) -> str:
    """pytorchcv's name of one of :class:`FishNet`'s state_dict keys (``num_stages`` per part)."""
    n = num_stages
    match = _KEY.fullmatch(key)
    if match is None:
        raise KeyError(f"{key} is not a FishNet state_dict key")
    module, leaf = match.group("module", "leaf")
    parts = module.split(".")
    part = parts[0]
    if part == "stem":  # stem.conv{k}.{conv,norm}
        return f"features.init_block.{parts[1]}.{ {'conv': 'conv', 'norm': 'bn'}[parts[2]] }.{leaf}"
    if part == "tail":  # tail.{i}.blocks.{b}.*
        return f"{_HG}.down1_seq.unit{int(parts[1]) + 1}.{_block(parts[3], '.'.join(parts[4:]))}.{leaf}"
    if part == "bridge":
        unit = f"{_HG}.skip1_seq.unit{n + 1}"
        if parts[1] == "score":
            return f"{unit}.{_SCORE[parts[2]]}.{leaf}"
        if parts[1] == "attention":
            return f"{unit}.{_SE[parts[2]]}.{leaf}"
        return f"{unit}.{_block(parts[2], '.'.join(parts[3:]))}.{leaf}"  # bridge.blocks.{b}.*
    if part in ("body", "head"):  # {body,head}.{i}.{refine,transfer}.{b}.*
        i, role = int(parts[1]), parts[2]
        if role == "refine":
            unit = f"{'up_seq' if part == 'body' else 'down2_seq'}.unit{i + 1}"
        else:  # the transfer blocks: numbered from the side they read, the other way round
            unit = f"{'skip1_seq' if part == 'body' else 'skip2_seq'}.unit{n - i}"
        return f"{_HG}.{unit}.{_block(parts[3], '.'.join(parts[4:]))}.{leaf}"
    if part == "classifier":
        return f"{_CLASSIFIER[parts[1]]}.{leaf}"
    raise KeyError(f"{key} is not a FishNet state_dict key")


def pytorchcv_layout(arch: FishNetArch, num_classes: int) -> Dict[str, Tuple[str, torch.Size]]:
    """``{pytorchcv key: (our key, shape)}``: :func:`~fishnet_d2.weights.official_layout.renamed_layout` by
    :func:`pytorchcv_key`."""
    return renamed_layout(arch, num_classes, pytorchcv_key)
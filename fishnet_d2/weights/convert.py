"""Convert a FishNet ImageNet checkpoint into a file Detectron2 loads as ``MODEL.WEIGHTS``.

    python tools/convert_fishnet_to_d2.py fishnet150_ckpt.tar weights/fishnet150_imagenet_d2.pth

The input's layout is recognised by its keys (``--layout`` names it instead):

* ``official``: the official FishNet code's checkpoints (``fish.fish.*``), as published (a dict
  whose ``state_dict`` may carry DataParallel's ``module.`` prefix) or a bare state_dict;
  FishNet-99/150/201, or a custom architecture inferred from the keys (:mod:`fishnet_d2.weights.official_layout`).
* ``pytorchcv``: pytorchcv's (imgclsmob) FishNet-99/150, a plain state_dict
  (``features.init_block.*``, ``features.hg.*``, ``output.final_conv.*``;
  :mod:`fishnet_d2.weights.pytorchcv_layout`).
* ``fishnet_d2``: this project's own keys (:class:`FishNet`'s state_dict), bare or inside
  ``{"model": ...}`` as this converter writes them (``.pkl`` too).

The input is read by :func:`fishnet_d2.weights.files.read_checkpoint`, as the checkpointer reads
it (torch files with ``weights_only=True``, ``.pkl`` files by a reader that rebuilds only arrays
and containers), so no code in the input runs. Every key and shape is checked against the
layout of the architecture found; on any mismatch nothing is written and the closest layout's
missing, unexpected and mis-shaped keys are listed. The output is written atomically: ``.pkl``
in Detectron2's model-zoo format (numpy arrays), anything else as a torch-saved
``{"model": tensors, ...}``; what it holds (the network under ``"model"``, without BatchNorm's
counters; the ImageNet classifier apart) is :mod:`fishnet_d2.weights.imagenet_file`'s format.
"""

import argparse
import functools
import os
import pickle
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from detectron2.utils.file_io import PathManager

from .atomic_file import atomic_write
from .files import CheckpointLoadError, listing, read_checkpoint
from .imagenet_file import CLASSIFIER_KEY, file_content, whole_state_dict
from ..modeling import FISHNET_VARIANTS, FishNetArch, fishnet_arch_to_config
from .official_layout import infer_arch, official_key, official_layout, variant_name
from .pytorchcv_layout import PYTORCHCV_VARIANTS, pytorchcv_layout

__all__ = [
    "CheckpointLoadError",
    "ConvertedCheckpoint",
    "LAYOUTS",
    "load_state_dict",
    "load_official_state_dict",
    "convert_state_dict",
    "convert_official_state_dict",
    "save_d2_checkpoint",
    "main",
]

# {input key: (our key, shape)} for an architecture and a number of classes.
KeyMap = Dict[str, Tuple[str, torch.Size]]
# The (architecture, classes) pairs a state_dict may hold, and why none could be inferred.
Candidates = Tuple[List[Tuple[FishNetArch, int]], Optional[str]]


@dataclass
class ConvertedCheckpoint:
    """A state_dict renamed to FishNet's keys, with what the converter found in it."""

    state_dict: Dict[str, torch.Tensor]  # keys as in FishNet's own state_dict
    arch: FishNetArch
    num_classes: int
    layout: str  # the input's layout, a key of LAYOUTS

    def describe(self) -> str:
        """Which architecture this is, and the config that builds it."""
        name = variant_name(self.arch)
        classes = f"{self.num_classes} classes" if self.num_classes else "no classifier"
        lines = ["MODEL:", "  FISHNET:"]
        if name is not None:
            lines.append(f"    DEPTH: {name.split('-')[1]}")
        else:
            name = "a custom FishNet"
            config = fishnet_arch_to_config(self.arch)
            lines += [f"    DEPTH: {config['DEPTH']}", "    ARCH:"]
            lines += [f"      {key}: {value}" for key, value in config["ARCH"].items()]
        if self.num_classes:
            lines.append(f"    NUM_CLASSES: {self.num_classes}  # only to use the classifier")
        return f"{name} ({classes}); its config:\n" + "\n".join(lines)


def _infer(state_dict: Mapping[str, torch.Tensor]) -> Candidates:
    """:func:`infer_arch` on an official-layout state_dict, as a candidate list."""
    try:
        return [infer_arch(state_dict)], None
    except (KeyError, ValueError, IndexError) as e:
        return [], f"could not infer an architecture from the keys: {type(e).__name__}: {e}"


def _official_candidates(state_dict: Mapping[str, torch.Tensor]) -> Candidates:
    # The official variants are candidates too, so that a damaged official checkpoint is
    # reported against its variant.
    inferred, note = _infer(state_dict)
    return inferred + [(arch, 1000) for arch in FISHNET_VARIANTS.values()], note


def _pytorchcv_candidates(state_dict: Mapping[str, torch.Tensor]) -> Candidates:
    # pytorchcv builds FishNet-99 and -150 only; its classifier may have been re-sized.
    fc = state_dict.get("output.final_conv.weight")
    classes = sorted({1000, fc.shape[0]} if fc is not None and fc.dim() == 4 and fc.shape[0] else {1000})
    return [(arch, n) for arch in PYTORCHCV_VARIANTS.values() for n in classes], None


def _fishnet_d2_candidates(state_dict: Mapping[str, torch.Tensor]) -> Candidates:
    # Our keys name the official ones one to one: infer the architecture from those.
    tail = {int(m.group(1)) for k in state_dict if (m := re.match(r"tail\.(\d+)\.", k))}
    inferred: List[Tuple[FishNetArch, int]] = []
    note: Optional[str] = "could not infer an architecture from the keys: no tail.* keys"
    if tail:
        renamed = {}
        for key, value in state_dict.items():
            try:
                renamed[official_key(key, max(tail) + 1)] = value
            except (KeyError, AttributeError, IndexError, ValueError):  # not a FishNet key
                pass
        inferred, note = _infer(renamed)
    fc = state_dict.get("classifier.fc.weight")
    classes = fc.shape[0] if fc is not None and fc.dim() > 0 else 0
    return inferred + [(arch, classes) for arch in FISHNET_VARIANTS.values()], note


def _fishnet_d2_layout(arch: FishNetArch, num_classes: int) -> KeyMap:
    return {ours: (ours, shape) for ours, shape in _layout("official", arch, num_classes).values()}


@dataclass(frozen=True)
class Layout:
    """A naming of FishNet's weights: how to read its architecture and map its keys to ours."""

    name: str
    title: str  # "an official FishNet state_dict"
    prefixes: Tuple[str, ...]  # the first names of its keys, to recognise it
    candidates: Callable[[Mapping[str, torch.Tensor]], Candidates]
    key_map: Callable[[FishNetArch, int], KeyMap]
    # Keys that may be absent, by their last name (this project's files leave out BatchNorm's counters).
    optional: Tuple[str, ...] = ()


LAYOUTS: Dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout(
            "official", "an official FishNet state_dict", ("conv1.", "conv2.", "conv3.", "fish.fish."),
            _official_candidates, official_layout,
        ),
        Layout(
            "pytorchcv", "a pytorchcv FishNet state_dict", ("features.", "output."),
            _pytorchcv_candidates, pytorchcv_layout,
        ),
        Layout(
            "fishnet_d2", "a fishnet_d2 FishNet state_dict",
            ("stem.", "tail.", "bridge.", "body.", "head.", "classifier."),
            _fishnet_d2_candidates, _fishnet_d2_layout, optional=("num_batches_tracked",),
        ),
    )
}  # fmt: skip


@functools.lru_cache(maxsize=None)
def _layout(name: str, arch: FishNetArch, num_classes: int) -> KeyMap:
    """LAYOUTS[name].key_map, built once per architecture (each builds a FishNet on "meta")."""
    return LAYOUTS[name].key_map(arch, num_classes)


def load_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The weights in ``path``, found as :func:`fishnet_d2.weights.files.read_checkpoint` finds
    them (the ``state_dict`` of an official checkpoint, the ``model`` of a Detectron2 weights file,
    or a bare state_dict; in this converter's files, the classifier kept apart too), as tensors,
    DataParallel's ``module.`` prefix removed. No code in the file runs. Raises
    CheckpointLoadError for anything else."""
    return whole_state_dict(read_checkpoint(path))


# The name the first version gave load_state_dict, which read official checkpoints only.
load_official_state_dict = load_state_dict


def _mismatches(
    state_dict: Mapping[str, torch.Tensor], layout: KeyMap, optional: Tuple[str, ...] = ()
) -> Tuple[List[str], List[str], List[str]]:
    missing = [k for k in layout if k not in state_dict and k.rsplit(".", 1)[-1] not in optional]
    unexpected = [k for k in state_dict if k not in layout]
    misshaped = [
        f"{k}: {tuple(state_dict[k].shape)}, expected {tuple(layout[k][1])}"
        for k in layout
        if k in state_dict and state_dict[k].shape != layout[k][1]
    ]
    return missing, unexpected, misshaped


def _coverage(state_dict: Mapping[str, torch.Tensor], name: str) -> int:
    """How many of the state_dict's keys start as the keys of layout ``name`` do."""
    return sum(k.startswith(LAYOUTS[name].prefixes) for k in state_dict)


def convert_state_dict(state_dict: Mapping[str, torch.Tensor], layout: Optional[str] = None) -> ConvertedCheckpoint:
    """Rename a FishNet state_dict in ``layout`` (a key of :data:`LAYOUTS`; None: recognised from
    the keys) to :class:`FishNet`'s keys, after checking every key and shape against the layout of
    the architecture it holds.

    Only the layouts that name most of the keys are compared (those the keys were meant to be
    in: all three when none names any). Raises CheckpointLoadError when nothing matches, listing
    the keys that are missing, unexpected and mis-shaped for the closest match: the architecture,
    in those layouts, with the fewest differences.
    """
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: allowed {', '.join(LAYOUTS)}, or None to recognise it")
    names = list(LAYOUTS) if layout is None else [layout]
    coverage = {name: _coverage(state_dict, name) for name in names}
    recognised = [name for name in names if coverage[name] == max(coverage.values())]
    best = None
    for name in recognised:
        candidates, note = LAYOUTS[name].candidates(state_dict)
        for arch, num_classes in dict.fromkeys(candidates):
            mapping = _layout(name, arch, num_classes)
            problems = _mismatches(state_dict, mapping, LAYOUTS[name].optional)
            if not any(problems):
                converted = {mapping[k][0]: v.detach().clone().contiguous() for k, v in state_dict.items()}
                return ConvertedCheckpoint(converted, arch, num_classes, name)
            if best is None or sum(map(len, problems)) < sum(map(len, best[3])):
                best = (name, arch, num_classes, problems, note)
    name, arch, num_classes, (missing, unexpected, misshaped), note = best
    variant = variant_name(arch) or "the architecture inferred from the keys"
    classes = f"{num_classes} classes" if num_classes else "no classifier"
    if layout is None:
        report = [
            f"not a FishNet state_dict in any layout this converter reads (tried: {', '.join(LAYOUTS)}); "
            f"the closest is the {name} layout of {variant} ({classes}):"
        ]
    else:
        report = [f"not {LAYOUTS[name].title}: compared with {variant} ({classes}), the closest layout:"]
    if note:
        report.append(f"  ({note})")
    for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if items:
            report.append(f"  {title} ({len(items)}): {listing(items)}")
    raise CheckpointLoadError("\n".join(report))


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor]) -> ConvertedCheckpoint:
    """:func:`convert_state_dict` for the official layout only."""
    return convert_state_dict(state_dict, layout="official")


def save_d2_checkpoint(state_dict: Mapping[str, torch.Tensor], output: str, author: str) -> None:
    """Write the FishNet weights ``state_dict`` (our names) as a Detectron2 weights file,
    atomically (temp file, then rename), in :mod:`fishnet_d2.weights.imagenet_file`'s format: the
    network under ``"model"`` without BatchNorm's counters, the classifier apart.

    ``.pkl``: Detectron2's model-zoo format (numpy arrays, read with plain pickle by Detectron2).
    Otherwise torch format, which torch >= 2.6 loads with ``weights_only`` (no pickled code).
    ``matching_heuristics`` lets one file initialise the plain backbone and the FPN backbone alike
    (Detectron2 matches the keys by suffix).
    """
    content = file_content(state_dict, author)
    if Path(output).suffix == ".pkl":
        for part in ("model", CLASSIFIER_KEY):
            if part in content:
                content[part] = {k: v.numpy() for k, v in content[part].items()}
        atomic_write(output, lambda f: pickle.dump(content, f))
    else:
        atomic_write(output, lambda f: torch.save(content, f))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Convert FishNet ImageNet weights (official, pytorchcv, or fishnet_d2's own) to "
        "Detectron2 MODEL.WEIGHTS."
    )
    parser.add_argument(
        "input",
        help="official checkpoint (e.g. fishnet150_ckpt.tar), pytorchcv weights "
        "(e.g. fishnet150-0475-93e26daa.pth), a state_dict in fishnet_d2's keys, or a weight name "
        "(fishnet://ImageNet/<name>, docs/weights.md)",
    )
    parser.add_argument("output", help="output file: .pth (torch, default) or .pkl (model-zoo format)")
    parser.add_argument(
        "--layout",
        choices=list(LAYOUTS),
        help="the input's key names (default: recognised from the keys): official (fish.fish.*), "
        "pytorchcv (features.hg.*), fishnet_d2 (stem.*, tail.*, ...)",
    )
    args = parser.parse_args(argv)
    if os.path.abspath(args.input) == os.path.abspath(args.output):
        print(f"error: OUTPUT is the INPUT file ({args.input}); choose another path", file=sys.stderr)
        return 2
    try:
        # A name Detectron2's PathManager resolves (fishnet://ImageNet/<name>, a URL): its local file.
        source = PathManager.get_local_path(args.input) if "://" in args.input else args.input
        converted = convert_state_dict(load_state_dict(source), layout=args.layout)
    except (CheckpointLoadError, FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"error: {e}\nnothing was written to {args.output}", file=sys.stderr)
        return 1
    author = f"fishnet_d2 converter, from {os.path.basename(args.input)} ({converted.layout} layout)"
    save_d2_checkpoint(converted.state_dict, args.output, author)
    how = "as --layout says" if args.layout else "recognised from the keys"
    print(f"read the {converted.layout} layout ({how}); found {converted.describe()}")
    print(f"wrote {len(converted.state_dict)} tensors to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Convert an official FishNet checkpoint into a file Detectron2 loads as ``MODEL.WEIGHTS``.

    python tools/convert_fishnet_to_d2.py fishnet150_ckpt.tar weights/fishnet150_imagenet_d2.pth

The input is an official checkpoint as published (a torch-saved dict whose ``state_dict`` may
carry DataParallel's ``module.`` prefix) or a bare official state_dict; it is loaded with
``weights_only=True``, so it cannot run pickled code. Every key and shape is checked against the
layout of the architecture found (an official variant, or a custom one inferred from the keys);
on any mismatch nothing is written. The output is written atomically: ``.pkl`` in Detectron2's
model-zoo format (numpy arrays), anything else as a torch-saved ``{"model": tensors, ...}``.
"""

import argparse
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .atomic_file import atomic_write
from .checkpoint_file import CheckpointLoadError, listing, read_torch, strip_module_prefix
from .modeling import FISHNET_VARIANTS, FishNetArch, fishnet_arch_to_config
from .official import infer_arch, official_layout, variant_name

__all__ = [
    "CheckpointLoadError",
    "ConvertedCheckpoint",
    "load_official_state_dict",
    "convert_official_state_dict",
    "save_d2_checkpoint",
    "main",
]

@dataclass
class ConvertedCheckpoint:
    state_dict: Dict[str, torch.Tensor]  # keys as in FishNet's own state_dict
    arch: FishNetArch
    num_classes: int

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


def load_official_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The official state_dict in ``path`` (``module.`` prefix removed), loaded without running
    pickled code. Raises CheckpointLoadError for anything else."""
    loaded = read_torch(path)
    if isinstance(loaded, Mapping) and "state_dict" in loaded:
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not loaded:
        raise CheckpointLoadError(
            f"{path}: expected an official checkpoint (a dict with 'state_dict') or a state_dict; "
            f"found {type(loaded).__name__}"
        )
    not_tensors = [str(k) for k, v in loaded.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointLoadError(f"{path}: the state_dict has non-tensor entries: {listing(not_tensors)}")
    return strip_module_prefix(loaded)


def _mismatches(
    state_dict: Mapping[str, torch.Tensor], layout: Mapping[str, Tuple[str, torch.Size]]
) -> Tuple[List[str], List[str], List[str]]:
    missing = [k for k in layout if k not in state_dict]
    unexpected = [k for k in state_dict if k not in layout]
    misshaped = [
        f"{k}: {tuple(state_dict[k].shape)}, expected {tuple(layout[k][1])}"
        for k in layout
        if k in state_dict and state_dict[k].shape != layout[k][1]
    ]
    return missing, unexpected, misshaped


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor]) -> ConvertedCheckpoint:
    """Rename an official state_dict to :class:`FishNet`'s keys, after checking every key and
    shape against the layout of the architecture it holds.

    The architecture is inferred from the keys; the official variants (1000 classes) are
    candidates too, so that a damaged official checkpoint is reported against its variant.
    """
    candidates: List[Tuple[FishNetArch, int]] = []
    inference_error: Optional[str] = None
    try:
        candidates.append(infer_arch(state_dict))
    except (KeyError, ValueError, IndexError) as e:
        inference_error = f"{type(e).__name__}: {e}"
    candidates += [(arch, 1000) for arch in FISHNET_VARIANTS.values() if (arch, 1000) not in candidates]

    best = None
    for arch, num_classes in candidates:
        layout = official_layout(arch, num_classes)
        problems = _mismatches(state_dict, layout)
        if best is None or sum(map(len, problems)) < sum(map(len, best[3])):
            best = (arch, num_classes, layout, problems)
    arch, num_classes, layout, (missing, unexpected, misshaped) = best
    if missing or unexpected or misshaped:
        name = variant_name(arch) or "the architecture inferred from the keys"
        report = [
            f"not an official FishNet state_dict: compared with {name} "
            f"({num_classes} classes), the closest layout:"
        ]
        if inference_error:
            report.append(f"  (could not infer an architecture from the keys: {inference_error})")
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                report.append(f"  {title} ({len(items)}): {listing(items)}")
        raise CheckpointLoadError("\n".join(report))
    converted = {layout[k][0]: v.detach().clone().contiguous() for k, v in state_dict.items()}
    return ConvertedCheckpoint(converted, arch, num_classes)


def save_d2_checkpoint(state_dict: Mapping[str, torch.Tensor], output: str, author: str) -> None:
    """Write ``state_dict`` as a Detectron2 weights file, atomically (temp file, then rename).

    ``.pkl``: Detectron2's model-zoo format (numpy arrays, read with plain pickle by Detectron2).
    Otherwise torch format, which torch >= 2.6 loads with ``weights_only`` (no pickled code).
    ``matching_heuristics`` lets one file initialise the plain backbone, the FPN backbone and the
    classifier alike (Detectron2 matches the keys by suffix).
    """
    content = {"model": dict(state_dict), "__author__": author, "matching_heuristics": True}
    if Path(output).suffix == ".pkl":
        content["model"] = {k: v.numpy() for k, v in state_dict.items()}
        atomic_write(output, lambda f: pickle.dump(content, f))
    else:
        atomic_write(output, lambda f: torch.save(content, f))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Convert an official FishNet checkpoint (ImageNet) to Detectron2 MODEL.WEIGHTS."
    )
    parser.add_argument("input", help="official checkpoint (e.g. fishnet150_ckpt.tar) or state_dict")
    parser.add_argument("output", help="output file: .pth (torch, default) or .pkl (model-zoo format)")
    args = parser.parse_args(argv)
    if os.path.abspath(args.input) == os.path.abspath(args.output):
        print(f"error: OUTPUT is the INPUT file ({args.input}); choose another path", file=sys.stderr)
        return 2
    try:
        converted = convert_official_state_dict(load_official_state_dict(args.input))
    except (CheckpointLoadError, FileNotFoundError) as e:
        print(f"error: {e}\nnothing was written to {args.output}", file=sys.stderr)
        return 1
    author = f"fishnet_d2 converter, from {os.path.basename(args.input)}"
    save_d2_checkpoint(converted.state_dict, args.output, author)
    print(f"found {converted.describe()}")
    print(f"wrote {len(converted.state_dict)} tensors to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

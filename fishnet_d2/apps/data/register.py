"""Register synthetic shapes datasets in Detectron2's catalogs; they are generated when first
loaded."""

import os
from pathlib import Path
from typing import Dict, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .shapes import SHAPE_CATEGORIES
from .synthetic import SPLITS, PathLike, SyntheticShapesSpec, ensure_synthetic_shapes, split_paths

__all__ = ["DEMO_DATASET_PREFIX", "DEMO_SPEC", "demo_dataset_root", "register_synthetic_shapes"]

# The demo's datasets: "fishnet_demo_train" and "fishnet_demo_val".
DEMO_DATASET_PREFIX = "fishnet_demo"
DEMO_SPEC = SyntheticShapesSpec()

# Distinct, saturated colours for drawing the categories.
_THING_COLORS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48)]


def demo_dataset_root() -> Path:
    """Where the demo dataset lives: ``$DETECTRON2_DATASETS/fishnet_demo``, by default
    ``datasets/fishnet_demo`` in the working directory (Detectron2's convention)."""
    return (
        Path(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))) / DEMO_DATASET_PREFIX
    )


def _load(name: str, root: Path, spec: SyntheticShapesSpec, split: str):
    ensure_synthetic_shapes(root, spec)
    json_file, image_root = split_paths(root, split)
    return load_coco_json(str(json_file), str(image_root), name)


def register_synthetic_shapes(
    prefix: str = DEMO_DATASET_PREFIX,
    root: Optional[PathLike] = None,
    spec: SyntheticShapesSpec = DEMO_SPEC,
) -> Dict[str, str]:
    """Register the splits of a synthetic shapes dataset as ``{prefix}_train`` and ``{prefix}_val``.

    Like ``detectron2.data.datasets.register_coco_instances`` (COCO json, ``evaluator_type``
    "coco"), except that nothing is written now: the dataset is generated under ``root`` (default
    :func:`demo_dataset_root`) the first time a split is loaded with ``DatasetCatalog.get``.
    Registering the same name again with the same root and spec does nothing; with another
    root or spec it raises ValueError.

    Returns:
        split -> registered name.
    """
    if not isinstance(prefix, str) or not prefix:
        raise ValueError(f"prefix={prefix!r}: must be a non-empty string")
    if not isinstance(spec, SyntheticShapesSpec):
        raise ValueError(f"spec={spec!r}: must be a SyntheticShapesSpec")
    root = Path(root) if root is not None else demo_dataset_root()
    names = {}
    for split in SPLITS:
        name = f"{prefix}_{split}"
        json_file, image_root = split_paths(root, split)
        metadata = dict(
            json_file=str(json_file),
            image_root=str(image_root),
            evaluator_type="coco",
            thing_classes=list(SHAPE_CATEGORIES),
            thing_colors=list(_THING_COLORS),
            thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(SHAPE_CATEGORIES))},
            synthetic_shapes_spec=spec.to_dict(),
        )
        if name in DatasetCatalog.list():
            registered = MetadataCatalog.get(name)
            if getattr(registered, "synthetic_shapes_spec", None) != metadata[
                "synthetic_shapes_spec"
            ] or (getattr(registered, "json_file", None) != metadata["json_file"]):
                raise ValueError(
                    f"dataset {name!r} is already registered with other data; "
                    "register this dataset under another prefix"
                )
        else:
            DatasetCatalog.register(
                name, lambda name=name, split=split: _load(name, root, spec, split)
            )
            MetadataCatalog.get(name).set(**metadata)
        names[split] = name
    return names

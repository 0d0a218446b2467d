"""A deterministic synthetic instance-segmentation dataset in COCO format, written to disk.

``ensure_synthetic_shapes(root, spec)`` writes, under ``root``::

    manifest.json                     generator version, parameters, and a SHA-256 of every file
    annotations/instances_train.json  COCO instances (masks as RLE, iscrowd 0)
    annotations/instances_val.json
    train/000000.png ...
    val/000000.png ...

Every image comes from its own random stream, seeded by (seed, split, index): the same
parameters give byte-identical files, and the train and val images are independent draws.
The dataset is built in a temporary directory beside ``root`` and renamed into place when
complete; a later call with the same parameters reuses it.
"""

import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Tuple, Union

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from .shapes import SHAPE_CATEGORIES, ShapeImageParams, render_shapes_image

__all__ = [
    "SPLITS",
    "SyntheticShapesSpec",
    "coco_categories",
    "split_paths",
    "render_split",
    "ensure_synthetic_shapes",
    "is_complete",
]

logger = logging.getLogger(__name__)

SPLITS: Tuple[str, ...] = ("train", "val")
# Bump when the generator's output changes for the same parameters: existing datasets get rebuilt.
GENERATOR_VERSION = 1
_MANIFEST = "manifest.json"
_SPLIT_STREAM = {"train": 0, "val": 1}

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class SyntheticShapesSpec:
    """The parameters of a synthetic shapes dataset; equal specs give byte-identical datasets."""

    seed: int = 0
    num_train: int = 1000
    num_val: int = 200
    image: ShapeImageParams = field(default_factory=ShapeImageParams)

    def __post_init__(self) -> None:
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed={self.seed!r}: must be an integer >= 0")
        for name in ("num_train", "num_val"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: must be an integer >= 1 (images)")
        if not isinstance(self.image, ShapeImageParams):
            raise ValueError(f"image={self.image!r}: must be a ShapeImageParams")

    def num_images(self, split: str) -> int:
        _check_split(split)
        return self.num_train if split == "train" else self.num_val

    def to_dict(self) -> Dict:
        """The parameters as plain JSON values (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: allowed {list(SPLITS)}")


def coco_categories() -> List[Dict]:
    """The COCO ``categories``: ids 1..K in the order of SHAPE_CATEGORIES."""
    return [
        {"id": i + 1, "name": name, "supercategory": "shape"}
        for i, name in enumerate(SHAPE_CATEGORIES)
    ]


def split_paths(root: PathLike, split: str) -> Tuple[Path, Path]:
    """``(json_file, image_root)`` of a split of the dataset at ``root``."""
    _check_split(split)
    root = Path(root)
    return root / "annotations" / f"instances_{split}.json", root / split


def _png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _annotation(mask: np.ndarray, category: int, image_id: int, annotation_id: int) -> Dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": category + 1,
        "segmentation": {
            "size": [int(s) for s in rle["size"]],
            "counts": rle["counts"].decode("ascii"),
        },
        "area": int(mask.sum()),
        "bbox": [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0],
        "iscrowd": 0,
    }


def render_split(
    spec: SyntheticShapesSpec, split: str
) -> Iterator[Tuple[str, bytes, Dict, List[Dict]]]:
    """The images of one split, in order, as
    ``(file_name, png_bytes, coco_image, coco_annotations)``.

    Image ids run 1..N within the split, annotation ids 1..M.
    """
    _check_split(split)
    params = spec.image
    annotation_id = 1
    for index in range(spec.num_images(split)):
        rng = np.random.default_rng([spec.seed, _SPLIT_STREAM[split], index])
        rendered = render_shapes_image(rng, params)
        image_id = index + 1
        file_name = f"{index:06d}.png"
        annotations = []
        for instance in rendered.instances:
            annotations.append(
                _annotation(instance.mask, instance.category, image_id, annotation_id)
            )
            annotation_id += 1
        coco_image = {
            "id": image_id,
            "file_name": file_name,
            "height": params.height,
            "width": params.width,
        }
        yield file_name, _png_bytes(rendered.image), coco_image, annotations


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n").encode("utf-8")


def _write_dataset(directory: Path, spec: SyntheticShapesSpec) -> None:
    files: Dict[str, str] = {}

    def write(relative: str, data: bytes) -> None:
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files[relative] = hashlib.sha256(data).hexdigest()

    for split in SPLITS:
        images, annotations = [], []
        for file_name, png, coco_image, coco_annotations in render_split(spec, split):
            write(f"{split}/{file_name}", png)
            images.append(coco_image)
            annotations.extend(coco_annotations)
        coco = {
            "info": {
                "description": f"fishnet_d2 synthetic shapes, {split} split",
                "version": str(GENERATOR_VERSION),
            },
            "licenses": [],
            "categories": coco_categories(),
            "images": images,
            "annotations": annotations,
        }
        write(f"annotations/instances_{split}.json", _json_bytes(coco))
    # Written last: a directory with a manifest is complete.
    manifest = {"generator_version": GENERATOR_VERSION, "spec": spec.to_dict(), "files": files}
    (directory / _MANIFEST).write_bytes(_json_bytes(manifest))


def _read_manifest(root: Path):
    try:
        return json.loads((root / _MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_complete(root: PathLike, spec: SyntheticShapesSpec) -> bool:
    """Whether ``root`` holds the dataset of ``spec``, every file intact (checked by SHA-256)."""
    root = Path(root)
    manifest = _read_manifest(root)
    if not isinstance(manifest, dict):
        return False
    if (
        manifest.get("generator_version") != GENERATOR_VERSION
        or manifest.get("spec") != spec.to_dict()
    ):
        return False
    for relative, digest in manifest.get("files", {}).items():
        try:
            data = (root / relative).read_bytes()
        except OSError:
            return False
        if hashlib.sha256(data).hexdigest() != digest:
            return False
    return bool(manifest.get("files"))


def ensure_synthetic_shapes(
    root: PathLike, spec: SyntheticShapesSpec = SyntheticShapesSpec()
) -> Path:
    """Make ``root`` hold the dataset of ``spec`` and return ``root``.

    An existing complete dataset of the same spec is reused as is. One of another spec (or a
    damaged one) is replaced; a directory at ``root`` that is not a dataset written by this
    function is left alone and raises ValueError. The new dataset is written to a temporary
    directory beside ``root`` and renamed into place, so ``root`` never holds a partial dataset.
    """
    if not isinstance(spec, SyntheticShapesSpec):
        raise ValueError(f"spec={spec!r}: must be a SyntheticShapesSpec")
    root = Path(root)
    if is_complete(root, spec):
        return root
    if root.exists() and (
        not root.is_dir() or (any(root.iterdir()) and _read_manifest(root) is None)
    ):
        raise ValueError(
            f"{root} exists but is not a synthetic shapes dataset (no readable {_MANIFEST}); "
            "remove it or choose another directory"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    logger.info(
        f"Writing the synthetic shapes dataset ({spec.num_train} train, {spec.num_val} val "
        f"images) to {root}"
    )
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        _write_dataset(tmp, spec)
        if root.exists():
            if is_complete(root, spec):  # written meanwhile by another process
                return root
            old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
            os.replace(root, old / root.name)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, root)
        except OSError:
            if not is_complete(root, spec):  # not another process's complete copy: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root

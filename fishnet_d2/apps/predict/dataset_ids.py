"""The image ids and category ids of a dataset the predicted images belong to, so that the COCO
results ``tools/predict.py`` writes evaluate against that dataset's annotations (pycocotools'
``COCO.loadRes`` refuses ids the annotations do not have).

Two sources: a dataset registered in Detectron2's ``DatasetCatalog`` (``--dataset NAME``: its
records' ``file_name`` and ``image_id``, its metadata's ``thing_dataset_id_to_contiguous_id``), or
a COCO annotations file (``--annotations FILE``: its ``images`` and ``categories``, the categories
numbered in id order as Detectron2's ``load_coco_json`` numbers them). An image is found by its
file name: the dataset's image whose path shares the most trailing components with the image's
(at least the name), and only one such image.
"""

import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import PurePath
from typing import Dict, List, Mapping, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from .images import InputError

__all__ = ["DatasetIds", "dataset_ids", "annotations_ids"]


def _parts(path: str) -> Tuple[str, ...]:
    return PurePath(os.path.normpath(path)).parts


@dataclass
class DatasetIds:
    """What a dataset numbers its images and categories by."""

    source: str  # the dataset's name or the annotations file, for messages
    images: List[Tuple[Tuple[str, ...], int]]  # (path components of file_name, image_id)
    category_ids: Dict[int, int]  # dataset category id -> the model's class index

    def image_ids(self, files: Sequence[str]) -> Dict[str, int]:
        """The ``image_id`` of each of ``files`` (see the module's docstring).

        Raises:
            InputError: naming the files that are not in the dataset, or that match two of its
                images equally well.
        """
        by_name: Dict[str, List[Tuple[Tuple[str, ...], int]]] = defaultdict(list)
        for parts, image_id in self.images:
            by_name[parts[-1]].append((parts, image_id))
        ids: Dict[str, int] = {}
        missing, ambiguous = [], []
        for file in files:
            parts = _parts(os.path.abspath(file))
            best, found = 0, []
            for candidate, image_id in by_name.get(parts[-1], []):
                shared = 0
                while shared < min(len(parts), len(candidate)) and parts[-1 - shared] == candidate[-1 - shared]:
                    shared += 1
                if shared > best:
                    best, found = shared, [image_id]
                elif shared == best:
                    found.append(image_id)
            if not found:
                missing.append(file)
            elif len(set(found)) > 1:
                ambiguous.append(f"{file} (image ids {sorted(set(found))})")
            else:
                ids[file] = found[0]
        if missing or ambiguous:
            problems = []
            if missing:
                more = " ..." if len(missing) > 5 else ""
                problems.append(f"not in it ({len(missing)}): {', '.join(missing[:5])}{more}")
            if ambiguous:
                problems.append(f"matching two of its images equally: {', '.join(ambiguous[:5])}")
            raise InputError(
                f"the inputs must be images of {self.source}, found by file name; {'; '.join(problems)}"
            )
        return ids


def dataset_ids(name: str) -> DatasetIds:
    """The ids of the dataset registered as ``name`` (its records are loaded).

    Raises:
        InputError: no dataset of that name is registered, or its records have no image ids.
    """
    if name not in DatasetCatalog.list():
        registered = ", ".join(sorted(DatasetCatalog.list()))
        raise InputError(f"--dataset {name}: no dataset of that name is registered; registered: {registered}")
    records = DatasetCatalog.get(name)
    lacking = [r.get("file_name", "?") for r in records if "image_id" not in r or "file_name" not in r]
    if lacking:
        raise InputError(f"--dataset {name}: records without file_name or image_id, e.g. {lacking[0]}")
    mapping: Mapping[int, int] = MetadataCatalog.get(name).get("thing_dataset_id_to_contiguous_id", None) or {}
    images = [(_parts(os.path.abspath(r["file_name"])), int(r["image_id"])) for r in records]
    return DatasetIds(f"dataset {name}", images, dict(mapping))


def annotations_ids(path: str) -> DatasetIds:
    """The ids of a COCO annotations file (its ``images`` and ``categories``).

    Raises:
        InputError: the file cannot be read, or is not COCO annotations.
    """
    try:
        with open(path) as f:
            coco = json.load(f)
        images = [(_parts(image["file_name"]), int(image["id"])) for image in coco["images"]]
        category_ids = sorted(int(c["id"]) for c in coco["categories"])
    except OSError as e:
        raise InputError(f"--annotations {path}: cannot be read: {e}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(
            f"--annotations {path}: not COCO annotations (a JSON object with 'images' of 'id' and "
            f"'file_name', and 'categories' of 'id'): {type(e).__name__}: {e}"
        ) from None
    return DatasetIds(f"annotations {path}", images, {c: i for i, c in enumerate(category_ids)})

"""The synthetic shapes dataset: determinism, valid annotations, atomic reuse, registration."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image

from fishnet_d2.apps.data import (
    SHAPE_CATEGORIES,
    ShapeImageParams,
    SyntheticShapesSpec,
    ensure_synthetic_shapes,
    is_complete,
    register_synthetic_shapes,
    render_shapes_image,
    split_paths,
)

from .support import REPO

SMALL = SyntheticShapesSpec(seed=3, num_train=12, num_val=6)


def _files(root: Path) -> dict:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    return ensure_synthetic_shapes(tmp_path_factory.mktemp("shapes") / "small", SMALL)


def test_same_seed_gives_identical_files(small_dataset, tmp_path):
    again = ensure_synthetic_shapes(tmp_path / "again", SMALL)
    first, second = _files(small_dataset), _files(again)
    assert len(first) == 12 + 6 + 2 + 1  # images, two json files, manifest
    assert first == second


def test_other_seed_gives_other_images(small_dataset, tmp_path):
    other = ensure_synthetic_shapes(
        tmp_path / "other", SyntheticShapesSpec(seed=4, num_train=12, num_val=6)
    )
    first, second = _files(small_dataset), _files(other)
    assert first.keys() == second.keys()
    images = [k for k in first if k.endswith(".png")]
    assert all(first[k] != second[k] for k in images)


def test_train_and_val_are_disjoint(small_dataset):
    digests = {}
    for split in ("train", "val"):
        _, image_root = split_paths(small_dataset, split)
        digests[split] = {
            hashlib.sha256(p.read_bytes()).hexdigest() for p in image_root.glob("*.png")
        }
    assert len(digests["train"]) == 12 and len(digests["val"]) == 6
    assert not digests["train"] & digests["val"]


@pytest.mark.parametrize("split", ["train", "val"])
def test_coco_annotations_are_valid(small_dataset, split):
    json_file, image_root = split_paths(small_dataset, split)
    coco = json.loads(json_file.read_text())
    assert [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])] == list(
        SHAPE_CATEGORIES
    )
    category_ids = {c["id"] for c in coco["categories"]}
    images = {im["id"]: im for im in coco["images"]}
    assert len(images) == SMALL.num_images(split)
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    masks_by_image = {i: [] for i in images}
    for ann in coco["annotations"]:
        image = images[ann["image_id"]]
        h, w = image["height"], image["width"]
        assert ann["category_id"] in category_ids and ann["iscrowd"] == 0
        mask = mask_util.decode(ann["segmentation"]).astype(bool)
        assert mask.shape == (h, w)
        assert mask.sum() >= SMALL.image.min_visible_area
        assert ann["area"] == mask.sum() == mask_util.area(ann["segmentation"])
        x, y, bw, bh = ann["bbox"]
        assert 0 <= x and 0 <= y and x + bw <= w and y + bh <= h and bw > 0 and bh > 0
        assert list(mask_util.toBbox(ann["segmentation"])) == [x, y, bw, bh]
        masks_by_image[ann["image_id"]].append(mask)
    for image_id, masks in masks_by_image.items():
        assert masks, f"image {image_id} has no instance"
        coverage = np.sum(masks, axis=0)
        assert coverage.max() == 1, "visible masks of one image overlap"
        with Image.open(image_root / images[image_id]["file_name"]) as im:
            assert (
                im.size == (images[image_id]["width"], images[image_id]["height"])
                and im.mode == "RGB"
            )


def test_occlusion_cuts_the_masks_below():
    params = ShapeImageParams(max_noise_std=0.0)
    occluded = 0
    for index in range(40):
        rendered = render_shapes_image(np.random.default_rng(index), params)
        covered = np.zeros(rendered.image.shape[:2], dtype=bool)
        for instance in reversed(rendered.instances):  # top to bottom
            assert not (instance.mask & ~instance.full_mask).any()
            np.testing.assert_array_equal(instance.mask, instance.full_mask & ~covered)
            assert instance.mask.sum() >= params.min_visible_area
            assert instance.mask.sum() >= params.min_visible_fraction * instance.full_mask.sum()
            # without noise, the visible part shows exactly the shape's colour
            assert (rendered.image[instance.mask] == instance.colour).all()
            covered |= instance.full_mask
            occluded += int(instance.mask.sum() < instance.full_mask.sum())
    assert occluded >= 10


@pytest.mark.parametrize("noise", [0.0, 12.0])
def test_too_occluded_shapes_are_not_painted(noise):
    # Many large shapes on a small image: most would be hidden, and are left out.
    params = ShapeImageParams(
        height=32, width=32, num_shapes=(12, 12), shape_size=(24, 32), max_noise_std=noise
    )
    dropped = 0
    for index in range(10):
        rendered = render_shapes_image(np.random.default_rng(index), params)
        assert len(rendered.instances) + rendered.num_dropped == 12
        dropped += rendered.num_dropped
        shapes = np.zeros(rendered.image.shape[:2], dtype=bool)
        for instance in rendered.instances:
            assert instance.mask.sum() >= params.min_visible_fraction * instance.full_mask.sum()
            shapes |= instance.mask
        # outside the kept instances the image is the bare background: no dropped shape shows
        np.testing.assert_array_equal(rendered.image[~shapes], rendered.background[~shapes])
        assert (rendered.image[shapes] != rendered.background[shapes]).any()
    assert dropped > 0


def test_existing_dataset_is_reused_and_a_damaged_one_rebuilt(small_dataset):
    manifest = small_dataset / "manifest.json"
    before = manifest.stat().st_mtime_ns
    assert ensure_synthetic_shapes(small_dataset, SMALL) == small_dataset
    assert manifest.stat().st_mtime_ns == before

    image = next((small_dataset / "train").glob("*.png"))
    original = image.read_bytes()
    image.write_bytes(original[:-10])
    assert not is_complete(small_dataset, SMALL)
    ensure_synthetic_shapes(small_dataset, SMALL)
    assert image.read_bytes() == original and is_complete(small_dataset, SMALL)
    assert not [
        p for p in small_dataset.parent.iterdir() if p.name.startswith(".")
    ], "temporary directories left"


def test_other_spec_replaces_dataset(tmp_path):
    root = tmp_path / "shapes"
    ensure_synthetic_shapes(root, SyntheticShapesSpec(num_train=2, num_val=1))
    spec = SyntheticShapesSpec(num_train=3, num_val=1)
    ensure_synthetic_shapes(root, spec)
    assert is_complete(root, spec)
    assert len(list((root / "train").glob("*.png"))) == 3


def test_foreign_directory_is_not_touched(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a synthetic shapes dataset"):
        ensure_synthetic_shapes(root, SMALL)
    assert (root / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ShapeImageParams(height=8), "height"),
        (lambda: ShapeImageParams(num_shapes=(3, 2)), "num_shapes"),
        (lambda: ShapeImageParams(shape_size=(20, 300)), "shape_size"),
        (lambda: ShapeImageParams(min_visible_fraction=0.0), "min_visible_fraction"),
        (lambda: SyntheticShapesSpec(num_val=0), "num_val"),
        (lambda: SyntheticShapesSpec(seed=-1), "seed"),
        (lambda: split_paths("x", "test"), "split"),
    ],
)
def test_bad_parameters_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_registration_is_lazy_and_loads_coco(tmp_path):
    root = tmp_path / "lazy"
    spec = SyntheticShapesSpec(seed=5, num_train=4, num_val=2)
    names = register_synthetic_shapes("test_shapes_lazy", root, spec)
    assert names == {"train": "test_shapes_lazy_train", "val": "test_shapes_lazy_val"}
    assert not root.exists(), "registering must not write the dataset"
    metadata = MetadataCatalog.get(names["val"])
    assert metadata.thing_classes == list(SHAPE_CATEGORIES)
    assert metadata.evaluator_type == "coco"

    records = DatasetCatalog.get(names["val"])
    assert is_complete(root, spec)
    assert len(records) == 2
    assert Path(metadata.json_file).is_file() and Path(metadata.image_root).is_dir()
    for record in records:
        assert Path(record["file_name"]).is_file() and (record["height"], record["width"]) == (
            128,
            128,
        )
        for ann in record["annotations"]:
            assert 0 <= ann["category_id"] < len(SHAPE_CATEGORIES)
            assert ann["bbox_mode"] == BoxMode.XYWH_ABS
            assert isinstance(ann["segmentation"], dict)
    assert len(DatasetCatalog.get(names["train"])) == 4

    # the same again is fine; other data under the same names is refused
    assert register_synthetic_shapes("test_shapes_lazy", root, spec) == names
    with pytest.raises(ValueError, match="already registered"):
        register_synthetic_shapes(
            "test_shapes_lazy", root, SyntheticShapesSpec(seed=6, num_train=4, num_val=2)
        )


@pytest.mark.slow
def test_import_registers_demo_datasets_without_writing(tmp_path):
    code = (
        "import fishnet_d2.apps.data\n"
        "from detectron2.data import DatasetCatalog, MetadataCatalog\n"
        "names = DatasetCatalog.list()\n"
        "assert 'fishnet_demo_train' in names and 'fishnet_demo_val' in names, names\n"
        "print(MetadataCatalog.get('fishnet_demo_val').json_file)\n"
    )
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(
        tmp_path / "fishnet_demo" / "annotations" / "instances_val.json"
    )
    assert list(tmp_path.iterdir()) == []

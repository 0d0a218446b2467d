"""tools/predict.py (fishnet_d2.apps.predict): a tiny Mask R-CNN with random weights predicts a folder of
good and bad files, a video, and degenerate inputs; drawings, COCO results that pycocotools reads,
a clear message per bad input, and nothing half-written."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import default_argument_parser
from detectron2.structures import Boxes, Instances
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import fishnet_d2.apps.data  # noqa: F401  (registers the demo datasets, as tools/predict.py does)
from fishnet_d2.apps.predict import (
    InputError,
    Predictor,
    assign_image_ids,
    coco_results,
    expand_inputs,
    load_config,
    main,
    output_size,
    read_image_file,
)
from fishnet_d2.apps.visualization import draw_predictions, prediction_metadata
from fishnet_d2.engine import main as train_net_main

from .support import REPO, run_main, tiny_mask_rcnn_cfg, write_model

SCRIPT = REPO / "tools" / "predict.py"
GOOD = ["good.png", "photo.jpg", "gray.png", "rgba.png", "depth16.png"]
BAD = {"corrupt.png": "corrupt or truncated image", "notes.txt": "not an image"}


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    cfg = tiny_mask_rcnn_cfg()
    cfg.DATASETS.TEST = ("fishnet_demo_val",)  # the shapes' class names and COCO category ids 1..4
    return write_model(cfg, tmp_path_factory.mktemp("model"))


def _rgb(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """A folder of the five readable kinds of GOOD and the two BAD files."""
    folder = tmp_path_factory.mktemp("images")
    Image.fromarray(_rgb(80, 100, 1)).save(folder / "good.png")
    Image.fromarray(_rgb(50, 70, 2)).save(folder / "photo.jpg")
    Image.fromarray(_rgb(60, 60, 3)[:, :, 0]).save(folder / "gray.png")
    rgba = np.dstack([_rgb(48, 64, 4), np.linspace(0, 255, 48 * 64).reshape(48, 64).astype(np.uint8)])
    Image.fromarray(rgba).save(folder / "rgba.png")
    Image.fromarray((np.arange(60 * 60).reshape(60, 60) * 18).astype(np.uint16)).save(folder / "depth16.png")
    (folder / "corrupt.png").write_bytes((folder / "good.png").read_bytes()[:300])
    (folder / "notes.txt").write_text("not an image\n")
    return folder


def run(*args):
    """tools/predict.py's main in this process: (exit status, stdout, stderr)."""
    return run_main(main, *args)


def leftovers(directory: Path):
    """Temporary files of atomic writes left in ``directory``."""
    return [p.name for p in directory.iterdir() if p.name.startswith(".")] if directory.exists() else []


def coco_ground_truth(images_json: Path) -> COCO:
    """A COCO ground truth with the predicted images and the shapes' categories, no annotations."""
    gt = COCO()
    classes = MetadataCatalog.get("fishnet_demo_val").thing_classes
    gt.dataset = {
        "images": json.loads(images_json.read_text()),
        "annotations": [],
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(classes)],
    }
    gt.createIndex()
    return gt


@pytest.fixture(scope="module")
def folder_run(config_file, images, tmp_path_factory):
    output = tmp_path_factory.mktemp("out") / "drawings"
    status, out, err = run(
        "--config-file", config_file, "--input", images, "--output", output, "--confidence-threshold", "0"
    )
    return status, out, err, output


def test_folder_of_good_and_bad_files(folder_run, images):
    status, out, err, output = folder_run
    assert status == 1, "an input failed: the exit status says so"
    for name, reason in BAD.items():
        assert f"{images / name}: {reason}" in err
    assert "2 input(s) failed" in err and "predicted 5 of 7 inputs" in out
    assert sorted(p.name for p in output.iterdir()) == sorted(GOOD + ["coco_instances_results.json", "images.json"])
    for name in GOOD:
        with Image.open(images / name) as original, Image.open(output / name) as drawn:
            assert drawn.size == original.size and drawn.mode == "RGB"
            plain = read_image_file(str(images / name), "RGB")
            assert (np.asarray(drawn).astype(int) - plain).any(), f"{name}: nothing drawn"
    assert not leftovers(output)


def test_results_are_coco_results(folder_run, images):
    _, _, _, output = folder_run
    listed = json.loads((output / "images.json").read_text())
    assert sorted(Path(i["file_name"]).name for i in listed) == sorted(GOOD)
    sizes = {i["id"]: (i["height"], i["width"]) for i in listed}
    for entry in listed:
        with Image.open(entry["file_name"]) as im:
            assert (entry["width"], entry["height"]) == im.size

    gt = coco_ground_truth(output / "images.json")
    results = json.loads((output / "coco_instances_results.json").read_text())
    loaded = gt.loadRes(str(output / "coco_instances_results.json"))
    assert len(loaded.getAnnIds()) == len(results)
    assert {r["image_id"] for r in results} == set(sizes)  # every image has detections...
    assert all(len(loaded.getAnnIds(imgIds=[i])) <= 10 for i in sizes)  # ...TEST.DETECTIONS_PER_IMAGE at most
    for r in results:
        assert set(r) == {"image_id", "category_id", "bbox", "score", "segmentation"}
        height, width = sizes[r["image_id"]]
        assert r["category_id"] in (1, 2, 3, 4) and 0.0 <= r["score"] <= 1.0
        x, y, w, h = r["bbox"]
        assert -1e-3 <= x <= x + w <= width + 1e-3 and -1e-3 <= y <= y + h <= height + 1e-3
        assert r["segmentation"]["size"] == [height, width]


def test_sixteen_bit_grayscale_and_rgba_are_converted(images):
    depth = read_image_file(str(images / "depth16.png"), "RGB")
    values = np.arange(60 * 60).reshape(60, 60) * 18
    assert depth.shape == (60, 60, 3) and depth.dtype == np.uint8
    np.testing.assert_array_equal(depth[:, :, 0], np.round(values / 257))  # scaled, not clipped
    assert depth.max() == 252 and len(np.unique(depth)) > 200
    for name in ("good.png", "photo.jpg", "gray.png", "rgba.png"):  # as Detectron2 reads them
        for fmt in ("RGB", "BGR"):
            np.testing.assert_array_equal(read_image_file(str(images / name), fmt), read_image(str(images / name), fmt))
    assert read_image_file(str(images / "gray.png"), "BGR").shape == (60, 60, 3)


def test_unreadable_files_raise_naming_the_file(images, tmp_path, monkeypatch):
    for name, reason in BAD.items():
        with pytest.raises(InputError, match=f"{name}: {reason}"):
            read_image_file(str(images / name), "BGR")
    Image.fromarray(np.zeros((4, 4), np.float32), mode="F").save(tmp_path / "float.tif")
    with pytest.raises(InputError, match="float.tif: a 32-bit floating-point image"):
        read_image_file(str(tmp_path / "float.tif"), "BGR")
    # Over Pillow's decompression-bomb limit (twice MAX_IMAGE_PIXELS): refused, naming the file.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(InputError, match="good.png: refused, too large"):
        read_image_file(str(images / "good.png"), "BGR")


def test_inputs_expand_files_directories_and_patterns(images, tmp_path):
    (tmp_path / "empty").mkdir()
    files, errors = expand_inputs(
        [str(images / "good.png"), str(images / "*.jpg"), str(images), str(tmp_path / "missing.png"),
         str(tmp_path / "empty"), str(tmp_path / "*.webp")]
    )  # fmt: skip
    assert [Path(f).name for f in files] == ["good.png", "photo.jpg"] + sorted(
        n for n in GOOD + list(BAD) if n not in ("good.png", "photo.jpg")
    )
    assert [str(e) for e in errors] == [
        f"{tmp_path / 'missing.png'}: no such file or directory",
        f"{tmp_path / 'empty'}: the directory holds no files to predict (its hidden files and subdirectories are not read)",
        f"{tmp_path / '*.webp'}: no file matches this pattern",
    ]


def test_image_ids():
    assert assign_image_ids(["a/000000397133.jpg", "b/42.png"]) == {"a/000000397133.jpg": 397133, "b/42.png": 42}
    assert assign_image_ids(["x.png", "7.png"]) == {"x.png": 1, "7.png": 2}
    assert assign_image_ids(["1.png", "d/001.png"]) == {"1.png": 1, "d/001.png": 2}  # 1 twice: by order


def test_ids_from_a_coco_annotations_file_by_file_name(config_file, images, tmp_path):
    """The results evaluate against the annotations: COCO.loadRes takes them, ids and categories."""
    annotations = {
        "images": [
            {"id": 17, "file_name": f"{images.name}/good.png", "height": 80, "width": 100},
            {"id": 5, "file_name": "photo.jpg", "height": 50, "width": 70},
            {"id": 9, "file_name": "elsewhere/good.png", "height": 80, "width": 100},  # a name twice
        ],
        "annotations": [],
        "categories": [{"id": c, "name": name} for c, name in zip((40, 10, 30, 20), "abcd")],
    }
    (tmp_path / "instances.json").write_text(json.dumps(annotations))
    status, _, err = run(
        "--config-file", config_file, "--input", images / "good.png", images / "photo.jpg",
        "--annotations", tmp_path / "instances.json", "--output", tmp_path / "out", "--confidence-threshold", "0",
    )  # fmt: skip
    assert status == 0, err
    listed = json.loads((tmp_path / "out" / "images.json").read_text())
    assert {Path(i["file_name"]).name: i["id"] for i in listed} == {"good.png": 17, "photo.jpg": 5}
    results = json.loads((tmp_path / "out" / "coco_instances_results.json").read_text())
    assert {r["image_id"] for r in results} == {17, 5}
    assert {r["category_id"] for r in results} <= {10, 20, 30, 40}  # class i: the i-th id in order
    gt = COCO(str(tmp_path / "instances.json"))
    assert len(gt.loadRes(str(tmp_path / "out" / "coco_instances_results.json")).getAnnIds()) == len(results)


def test_ids_from_a_registered_dataset(config_file, tiny_shapes, tmp_path):
    root, names = tiny_shapes
    records = DatasetCatalog.get(names["val"])
    files = [r["file_name"] for r in records[:3]]
    status, _, err = run(
        "--config-file", config_file, "--input", *files, "--dataset", names["val"], "--output", tmp_path, "--confidence-threshold", "0"
    )
    assert status == 0, err
    listed = json.loads((tmp_path / "images.json").read_text())
    assert {i["file_name"]: i["id"] for i in listed} == {r["file_name"]: r["image_id"] for r in records[:3]}
    assert {r["image_id"] for r in json.loads((tmp_path / "coco_instances_results.json").read_text())} <= {
        r["image_id"] for r in records[:3]
    }


def test_images_not_in_the_dataset_are_refused(config_file, images, tiny_shapes, tmp_path):
    _, names = tiny_shapes
    status, _, err = run(
        "--config-file", config_file, "--input", images / "good.png", "--dataset", names["val"], "--output", tmp_path / "out"
    )
    assert status == 1
    assert f"error: the inputs must be images of dataset {names['val']}, found by file name; not in it (1): {images / 'good.png'}" in err
    assert not (tmp_path / "out").exists()
    status, _, err = run("--config-file", config_file, "--input", images, "--dataset", "no_such_set", "--output", tmp_path / "out")
    assert status == 1 and "--dataset no_such_set: no dataset of that name is registered; registered: " in err
    (tmp_path / "bad.json").write_text('{"images": []}')
    status, _, err = run("--config-file", config_file, "--input", images, "--annotations", tmp_path / "bad.json", "--output", tmp_path / "out")
    assert status == 1 and f"--annotations {tmp_path / 'bad.json'}: not COCO annotations" in err
    status, _, err = run(
        "--config-file", config_file, "--video-input", "clip.mp4", "--dataset", names["val"], "--output", tmp_path / "out"
    )
    assert status == 2 and "--dataset and --annotations number images (--input)" in err
    assert not (tmp_path / "out").exists()


def test_config_overrides_after_the_options_or_after_opts(config_file, images, tmp_path):
    for overrides in (["TEST.DETECTIONS_PER_IMAGE", "3"], ["--opts", "TEST.DETECTIONS_PER_IMAGE", "3"]):
        output = tmp_path / overrides[0]
        status, _, err = run(
            "--config-file", config_file, "--input", images / "good.png", "--output", output, "--confidence-threshold", "0", *overrides
        )
        assert status == 0, err
        assert len(json.loads((output / "coco_instances_results.json").read_text())) == 3
    status, _, err = run(
        "--config-file", config_file, "--output", tmp_path, "--input", images / "good.png", "MODEL.DEVICE", "cpu"
    )  # --input takes every path up to the next option: the overrides come after the options
    assert status == 2 and "MODEL.DEVICE is a config key, not a file; config overrides go after the last option" in err
    status, _, err = run(
        "--config-file", config_file, "--input", images / "good.png", "--output", tmp_path, "MODEL.DEVICE", "cpu", "--opts", "X", "1"
    )
    assert status == 2 and "config overrides are KEY VALUE pairs, after every option; --opts is among them" in err


@pytest.mark.slow
def test_results_on_the_demo_split_evaluate_to_the_ap_of_train_net_eval_only(demo_checkpoint, tmp_path):
    """The docs' example: predict the demo's validation images with --dataset, evaluate the results
    with pycocotools (COCO.loadRes + COCOeval) against the split's annotations: the AP that
    tools/train_net.py --eval-only (COCOEvaluator) reports for the same weights."""
    config, weights, names = demo_checkpoint
    # Score threshold 0: detections to evaluate from briefly trained weights.
    overrides = ["MODEL.WEIGHTS", weights, "DATASETS.TEST", f"('{names['val']}',)", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]
    reported = train_net_main(
        default_argument_parser().parse_args(
            ["--config-file", str(config), "--eval-only", *map(str, overrides), "OUTPUT_DIR", str(tmp_path / "eval")]
        )
    )
    records = DatasetCatalog.get(names["val"])
    folder = Path(records[0]["file_name"]).parent
    assert len(records) == len(list(folder.iterdir())) == 200
    status, _, err = run(
        "--config-file", config, "--input", folder, "--dataset", names["val"], "--confidence-threshold", "0",
        "--output", tmp_path / "predict", *overrides,
    )  # fmt: skip
    assert status == 0, err
    annotations = COCO(MetadataCatalog.get(names["val"]).json_file)
    for iou_type in ("bbox", "segm"):
        evaluation = COCOeval(annotations, annotations.loadRes(str(tmp_path / "predict" / "coco_instances_results.json")), iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
        ap = 100 * evaluation.stats[0]
        assert math.isfinite(reported[iou_type]["AP"]) and ap > 0
        assert abs(ap - reported[iou_type]["AP"]) <= 0.5, (iou_type, ap, reported[iou_type]["AP"])


@pytest.mark.parametrize("argument", ["missing.png", "empty", "nothing*.png"])
def test_inputs_that_name_no_file_fail_with_a_message(config_file, tmp_path, argument):
    (tmp_path / "empty").mkdir()
    status, _, err = run("--config-file", config_file, "--input", tmp_path / argument, "--output", tmp_path / "out")
    assert status == 1
    assert f"{tmp_path / argument}: " in err and "error: no input file to predict" in err
    assert not (tmp_path / "out").exists()


def test_a_one_pixel_image_is_predicted_into_an_output_file(config_file, tmp_path):
    Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(tmp_path / "dot.png")
    status, out, err = run(
        "--config-file", config_file, "--input", tmp_path / "dot.png", "--output", tmp_path / "drawn.jpg",
        "--confidence-threshold", "0",
    )  # fmt: skip
    assert status == 0, err
    with Image.open(tmp_path / "drawn.jpg") as drawn:
        assert drawn.size == (1, 1) and drawn.format == "JPEG"
    results = json.loads((tmp_path / "drawn_coco_instances_results.json").read_text())
    assert results and all(r["segmentation"]["size"] == [1, 1] for r in results)
    assert json.loads((tmp_path / "drawn_images.json").read_text())[0]["width"] == 1


def test_output_file_needs_one_input_and_never_overwrites_an_input(config_file, images, tmp_path):
    status, _, err = run("--config-file", config_file, "--input", images, "--output", tmp_path / "one.png")
    assert status == 2 and "is one file, but --input names 7 files; give a directory" in err
    status, _, err = run("--config-file", config_file, "--input", images / "good.png", "--output", images)
    assert status == 2 and f"would overwrite the input {images / 'good.png'}" in err
    assert not (tmp_path / "one.png").exists()


def test_bad_config_and_device_are_usage_errors(config_file, images, tmp_path):
    status, _, err = run("--config-file", "no/such.yaml", "--input", images, "--output", tmp_path)
    assert status == 2 and "'no/such.yaml' is not a fishnet_d2 config; available" in err
    status, _, err = run("--config-file", config_file, "--input", images, "--output", tmp_path, "--opts", "MODEL.DEVICE")
    assert status == 2 and "KEY VALUE pairs" in err
    if not torch.cuda.is_available():
        status, _, err = run(
            "--config-file", config_file, "--input", images, "--output", tmp_path, "--opts", "MODEL.DEVICE", "cuda"
        )
        assert status == 2 and "this machine has no CUDA device" in err


def _write_video(path: Path, frames: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (80, 64), True)
    for i in range(frames):
        writer.write(_rgb(64, 80, i))
    writer.release()


def _count_frames(path: Path) -> int:
    video = cv2.VideoCapture(str(path))
    count = 0
    while video.read()[0]:
        count += 1
    video.release()
    return count


def test_video_is_drawn_frame_by_frame(config_file, tmp_path):
    _write_video(tmp_path / "clip.mp4", 3)
    output = tmp_path / "out"
    status, out, err = run(
        "--config-file", config_file, "--video-input", tmp_path / "clip.mp4", "--output", output,
        "--confidence-threshold", "0",
    )  # fmt: skip
    assert status == 0, err
    assert sorted(p.name for p in output.iterdir()) == ["clip.mp4", "clip_coco_instances_results.json"]
    assert _count_frames(output / "clip.mp4") == 3
    results = json.loads((output / "clip_coco_instances_results.json").read_text())
    assert {r["image_id"] for r in results} == {0, 1, 2}
    assert all(r["segmentation"]["size"] == [64, 80] for r in results)


def test_a_video_that_fails_midway_leaves_no_file(config_file, tmp_path, monkeypatch):
    _write_video(tmp_path / "clip.mp4", 3)
    calls = []
    predict = Predictor.__call__

    def fail_on_second_frame(self, image):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return predict(self, image)

    monkeypatch.setattr(Predictor, "__call__", fail_on_second_frame)
    output = tmp_path / "out"
    status, _, err = run("--config-file", config_file, "--video-input", tmp_path / "clip.mp4", "--output", output / "v.avi")
    assert status == 1
    assert "clip, frame 1: prediction failed: RuntimeError: out of memory" in err
    assert list(output.iterdir()) == []  # neither the video nor its temporary file


def test_unreadable_video_and_missing_camera_fail_with_a_message(config_file, tmp_path):
    (tmp_path / "clip.mp4").write_text("not a video\n")
    status, _, err = run("--config-file", config_file, "--video-input", tmp_path / "clip.mp4", "--output", tmp_path / "out")
    assert status == 1 and f"error: {tmp_path / 'clip.mp4'}: OpenCV cannot open this video" in err
    status, _, err = run("--config-file", config_file, "--video-input", tmp_path / "gone.mp4", "--output", tmp_path / "out")
    assert status == 1 and f"error: {tmp_path / 'gone.mp4'}: no such file or directory" in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())

    camera = cv2.VideoCapture(0)
    has_camera = camera.isOpened()
    camera.release()
    if has_camera:
        pytest.skip("this machine has a camera: --webcam would record from it")
    status, _, err = run("--config-file", config_file, "--webcam", "--output", tmp_path / "out")
    assert status == 1 and "error: --webcam: no camera: OpenCV could not open camera 0" in err


def test_output_size_bounds_huge_images():
    assert output_size(1, 1) == (1, 1)
    assert output_size(3000, 4000) == (3000, 4000)
    assert output_size(10000, 10000) == (4096, 4096)
    height, width = output_size(20000, 5000)
    assert height * width <= 4096 * 4096 and abs(height / width - 4) < 1e-3


def test_results_of_outputs_smaller_than_the_image_are_scaled():
    mask = torch.zeros(1, 10, 20, dtype=torch.bool)
    mask[0, 2:6, 4:10] = True
    instances = Instances(
        (10, 20), pred_boxes=Boxes(torch.tensor([[4.0, 2.0, 10.0, 6.0]])), scores=torch.tensor([0.9]),
        pred_classes=torch.tensor([2]), pred_masks=mask,
    )  # fmt: skip
    metadata = MetadataCatalog.get("fishnet_demo_val")
    [result] = coco_results(instances, 7, (30, 60), metadata)
    assert result["image_id"] == 7 and result["category_id"] == 3  # the dataset's id of class 2
    assert result["bbox"] == pytest.approx([12.0, 6.0, 18.0, 12.0])
    assert result["segmentation"]["size"] == [30, 60]
    from pycocotools import mask as mask_util

    assert mask_util.area(result["segmentation"]) == 12 * 18
    assert coco_results(instances, 7, (10, 20), metadata)[0]["bbox"] == pytest.approx([4.0, 2.0, 6.0, 4.0])


@pytest.mark.slow
def test_a_10000_pixel_square_image_is_predicted(config_file, tmp_path):
    """Resized to the model's test size for predicting; masks and drawing at 4096x4096; the results
    in the image's own coordinates."""
    Image.fromarray(np.full((10000, 10000), 90, np.uint8)).save(tmp_path / "huge.png")
    status, out, err = run(
        "--config-file", config_file, "--input", tmp_path / "huge.png", "--output", tmp_path / "out",
        "--confidence-threshold", "0", "--opts", "TEST.DETECTIONS_PER_IMAGE", "2",
    )  # fmt: skip
    assert status == 0, err
    with Image.open(tmp_path / "out" / "huge.png") as drawn:
        assert drawn.size == (4096, 4096)
    results = json.loads((tmp_path / "out" / "coco_instances_results.json").read_text())
    assert len(results) == 2
    for r in results:
        assert r["segmentation"]["size"] == [10000, 10000]
        x, y, w, h = r["bbox"]
        assert 0 <= x <= x + w <= 10000.01 and 0 <= y <= y + h <= 10000.01


def _tiny_segmentation_cfg(meta_architecture: str):
    cfg = tiny_mask_rcnn_cfg()
    cfg.MODEL.META_ARCHITECTURE = meta_architecture
    cfg.MODEL.SEM_SEG_HEAD.NAME = "SemSegFPNHead"
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 16
    cfg.MODEL.SEM_SEG_HEAD.NORM = ""
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = 0.0
    cfg.MODEL.PANOPTIC_FPN.COMBINE.OVERLAP_THRESH = 0.0
    cfg.MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT = 0
    return cfg


@pytest.mark.parametrize("meta_architecture", ["SemanticSegmentor", "PanopticFPN", "GeneralizedRCNN"])
def test_each_kind_of_output_is_drawn(meta_architecture, tmp_path):
    cfg = load_config(str(write_model(_tiny_segmentation_cfg(meta_architecture), tmp_path)))
    image = _rgb(48, 72, 5)
    prediction = Predictor(cfg)(image[:, :, ::-1])  # the tiny config reads BGR
    key = {"SemanticSegmentor": "sem_seg", "PanopticFPN": "panoptic_seg", "GeneralizedRCNN": "instances"}
    assert key[meta_architecture] in prediction.outputs
    assert prediction.image_size == prediction.output_size == (48, 72)
    drawn = draw_predictions(image, prediction.outputs, prediction_metadata(cfg))
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert (drawn != image).mean() > 0.05, "the predictions are not drawn"


@pytest.mark.slow
def test_the_script_runs(config_file, images, tmp_path):
    """tools/predict.py itself, in a new interpreter, on this checkout's fishnet_d2."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    process = subprocess.run(
        [sys.executable, str(SCRIPT), "--config-file", str(config_file), "--input", str(images / "good.png"),
         str(images / "notes.txt"), "--output", str(tmp_path)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert process.returncode == 1, process.stderr
    assert f"skipped: {images / 'notes.txt'}: not an image" in process.stderr
    assert (tmp_path / "good.png").is_file() and "predicted 1 of 2 inputs" in process.stdout

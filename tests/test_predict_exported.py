"""tools/predict.py --exported DIR (fishnet_d2.apps.predict with fishnet_d2.apps.export): the model
that tools/export_model.py wrote to DIR predicts in place of the config's eager model, and the COCO
results, images.json, drawings and videos are the eager model's: tiny FishNet detectors with random
weights (the config's MODEL.WEIGHTS) exported as an ExportedProgram (torch.export), TorchScript by
tracing and by scripting, and ONNX by tracing, then predicted both ways on the same images. A
directory it cannot use is refused with what is wrong and what is allowed, before anything is
written.

The AOTInductor package is not tested here: its compile takes ~150 s on two cores (too long for
this suite), and predict runs it as it runs the ExportedProgram -- a callable taking the image and
giving the tuple that export_info.json's "outputs" names, through the same code
(tests/test_export_program.py checks the package's outputs against eager mode). ONNX by the
dynamo exporter (~40 s) gives the same outputs as the ONNX tracing writes, and runs through the
same onnxruntime path.
"""

import json
import sys
from pathlib import Path
from typing import Dict, List

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util

from fishnet_d2.apps.export import main as export_main
from fishnet_d2.apps.predict import main as predict_main

from .support import export_cfg, run_main, write_model

pytestmark = [
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]

# (architecture, --export-method, --format); the ExportedProgram's export takes ~25 s, its loading
# ~12 s; the others a few seconds each.
EXPORTS = [
    ("mask_rcnn", "export", "program"),
    ("mask_rcnn", "tracing", "torchscript"),
    ("retinanet", "scripting", "torchscript"),  # RetinaNet's exported boxes are raw
    ("faster_rcnn", "tracing", "onnx"),
]
BOX_TOLERANCE = 1e-2  # pixels
SCORE_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Images smaller and larger than the test size, of three aspect ratios, colour and gray."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)).save(folder / "small.png")
    Image.fromarray(rng.integers(0, 256, (300, 170, 3), dtype=np.uint8)).save(folder / "tall.jpg")
    Image.fromarray(rng.integers(0, 256, (90, 90), dtype=np.uint8)).save(folder / "gray.png")
    return folder


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """exports(architecture, method, format) -> (config file, export directory): the model of
    export_cfg (sizes the exported programs take) with random weights, exported once per module
    (--skip-check: this file compares the predictions itself)."""
    made = {}

    def get(architecture: str, method: str, format: str):
        key = (architecture, method, format)
        if key not in made:
            root = tmp_path_factory.mktemp("-".join(key))
            config = write_model(export_cfg(architecture), root / "model")
            status, _, err = run_main(
                export_main, "--config-file", config, "--export-method", method, "--format", format,
                "--output", root / "exported", "--skip-check",
            )  # fmt: skip
            assert status == 0, err
            made[key] = config, root / "exported"
        return made[key]

    return get


def predict(*args) -> str:
    status, out, err = run_main(predict_main, *args)
    assert status == 0, err
    return out


def read_results(path: Path) -> List[Dict]:
    return json.loads(path.read_text())


def assert_same_results(eager: List[Dict], exported: List[Dict]) -> None:
    """The same detections: each eager one paired with an exported one of its image and category
    (the closest box; detections of tied scores may come in another order), boxes within
    BOX_TOLERANCE pixels, scores within SCORE_TOLERANCE; their masks the same pixels, give or take
    a few at the borders."""
    assert len(exported) == len(eager)
    unpaired = list(exported)
    differing = union = 0
    for detection in eager:
        same = [d for d in unpaired if (d["image_id"], d["category_id"]) == (detection["image_id"], detection["category_id"])]
        assert same, f"no exported detection of image {detection['image_id']}, category {detection['category_id']}"
        other = min(same, key=lambda d: max(abs(a - b) for a, b in zip(d["bbox"], detection["bbox"])))
        unpaired.remove(other)
        assert other["bbox"] == pytest.approx(detection["bbox"], abs=BOX_TOLERANCE)
        assert other["score"] == pytest.approx(detection["score"], abs=SCORE_TOLERANCE)
        assert ("segmentation" in other) == ("segmentation" in detection)
        if "segmentation" in detection:
            assert other["segmentation"]["size"] == detection["segmentation"]["size"]
            mine, theirs = mask_util.decode(other["segmentation"]), mask_util.decode(detection["segmentation"])
            differing += int((mine ^ theirs).sum())
            union += int((mine | theirs).sum())
    assert differing <= max(2, 0.02 * union), (differing, union)


@pytest.mark.slow
@pytest.mark.parametrize("architecture, method, format", EXPORTS)
def test_predict_with_the_exported_model_writes_the_eager_results(exports, images, tmp_path, architecture, method, format):
    """The results of tools/predict.py --exported are the eager model's, at a --confidence-threshold
    that drops some of the exported model's detections (it was exported keeping all)."""
    config, exported = exports(architecture, method, format)
    info = json.loads((exported / "export_info.json").read_text())
    assert (info["export_method"], info["format"]) == (method, format)

    predict("--config-file", config, "--input", images, "--output", tmp_path / "all", "--confidence-threshold", "0")
    scores = sorted(r["score"] for r in read_results(tmp_path / "all" / "coco_instances_results.json"))
    threshold = 0.0
    if architecture != "retinanet":  # random RetinaNet's scores are 1.0 give or take 1e-7: no gap
        gap, threshold = max((b - a, (a + b) / 2) for a, b in zip(scores, scores[1:]))
        # exported and eager scores differ by float rounding (~1e-7): none crosses a threshold this far
        assert gap > 2e-5, "no threshold between two scores far from both"

    common = ["--config-file", config, "--input", images, "--confidence-threshold", threshold]
    predict(*common, "--output", tmp_path / "eager")
    out = predict(*common, "--output", tmp_path / "exported", "--exported", exported)
    assert f"{method}, {format}" in out and "predicted 3 of 3 inputs" in out

    eager = read_results(tmp_path / "eager" / "coco_instances_results.json")
    results = read_results(tmp_path / "exported" / "coco_instances_results.json")
    assert len({r["image_id"] for r in eager}) == 3
    if threshold:
        assert 0 < len(eager) < len(scores), "the threshold drops some detections, not all"
    assert_same_results(eager, results)
    assert (tmp_path / "exported" / "images.json").read_text() == (tmp_path / "eager" / "images.json").read_text()
    for name in ("small.png", "tall.jpg", "gray.png"):  # the drawings (colours are random: not compared)
        with Image.open(tmp_path / "eager" / name) as drawn, Image.open(tmp_path / "exported" / name) as other:
            assert other.size == drawn.size


@pytest.mark.slow
def test_a_video_is_predicted_with_the_exported_model(exports, tmp_path):
    """--video-input runs the same predictor: the frames' results are the eager model's."""
    config, exported = exports("mask_rcnn", "tracing", "torchscript")
    writer = cv2.VideoWriter(str(tmp_path / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (112, 80), True)
    for seed in range(2):
        writer.write(np.random.default_rng(seed).integers(0, 256, (80, 112, 3), dtype=np.uint8))
    writer.release()
    common = ["--config-file", config, "--video-input", tmp_path / "clip.mp4", "--confidence-threshold", "0"]
    predict(*common, "--output", tmp_path / "eager.mp4")
    out = predict(*common, "--output", tmp_path / "exported.mp4", "--exported", exported)
    assert "wrote 2 drawn frames" in out
    eager = read_results(tmp_path / "eager_coco_instances_results.json")
    assert {r["image_id"] for r in eager} == {0, 1}
    assert_same_results(eager, read_results(tmp_path / "exported_coco_instances_results.json"))


# --- directories that cannot be predicted with --------------------------------------------------


INFO = {
    "meta_architecture": "GeneralizedRCNN",
    "export_method": "tracing",
    "format": "torchscript",
    "file": "model.ts",
    "outputs": ["pred_boxes", "pred_classes", "pred_masks", "scores", "image_size"],
}


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    """The tiny Mask R-CNN's config, no weights (an exported model needs none)."""
    path = tmp_path_factory.mktemp("config") / "config.yaml"
    path.write_text(export_cfg("mask_rcnn").dump())
    return path


def write_export(directory: Path, model: bytes = b"", **changes) -> Path:
    """An export directory: INFO with ``changes`` (None: the key left out), and the model file when
    ``model`` is given."""
    directory.mkdir()
    info = {k: v for k, v in {**INFO, **changes}.items() if v is not None}
    (directory / "export_info.json").write_text(json.dumps(info))
    if model:
        (directory / info["file"]).write_bytes(model)
    return directory


BAD_EXPORTS = {
    "no directory": (lambda d: d / "missing", "missing: no such directory; give the directory that tools/export_model.py --output wrote"),
    "no export_info.json": (lambda d: d, "no export_info.json in it; give the directory that tools/export_model.py --output wrote"),
    "unknown format": (
        lambda d: write_export(d / "x", b"x", format="tensorrt"),
        "unknown export (export_method 'tracing', format 'tensorrt'); allowed: export_method scripting: format "
        "torchscript; export_method tracing: format torchscript or onnx; export_method export: format program or aoti or onnx",
    ),
    "no model file": (
        lambda d: write_export(d / "x"),
        "model.ts: no such file; {info} names it as the exported model (tracing, torchscript): export again",
    ),
    "another architecture": (
        lambda d: write_export(d / "x", b"x", meta_architecture="RetinaNet", outputs=["pred_boxes", "pred_classes", "scores", "image_size"]),
        "the exported model is a RetinaNet, the config's MODEL.META_ARCHITECTURE is GeneralizedRCNN; give the config "
        "the model was exported with",
    ),
    "no masks": (
        lambda d: write_export(d / "x", b"x", outputs=["pred_boxes", "pred_classes", "scores", "image_size"]),
        "the exported model gives no masks, the config's MODEL.MASK_ON is True",
    ),
    "no outputs": (lambda d: write_export(d / "x", b"x", outputs=None), "no outputs; tools/export_model.py writes"),
    "not a model": (lambda d: write_export(d / "x", b"not a model"), "model.ts: cannot load it as torchscript (tracing): "),
}


@pytest.mark.parametrize("case", list(BAD_EXPORTS))
def test_a_directory_that_is_not_a_usable_export_is_refused(config_file, images, tmp_path, case):
    make, message = BAD_EXPORTS[case]
    directory = make(tmp_path)
    status, _, err = run_main(
        predict_main, "--config-file", config_file, "--exported", directory, "--input", images, "--output", tmp_path / "out"
    )  # fmt: skip
    assert status == 1, err
    assert f"error: --exported {directory}" in err
    assert message.format(info=directory / "export_info.json") in err
    assert not (tmp_path / "out").exists(), "nothing is written"


def test_an_onnx_export_without_onnxruntime_says_what_to_install(config_file, images, tmp_path, monkeypatch):
    directory = write_export(tmp_path / "x", b"x", format="onnx", file="model.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    status, _, err = run_main(
        predict_main, "--config-file", config_file, "--exported", directory, "--input", images, "--output", tmp_path / "out"
    )  # fmt: skip
    assert status == 1
    assert f"error: --exported {directory / 'model.onnx'}: an ONNX model runs in onnxruntime, which is not installed (pip install onnxruntime)" in err
    assert not (tmp_path / "out").exists()

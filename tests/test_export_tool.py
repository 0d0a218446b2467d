"""tools/export_model.py (fishnet_d2.apps.export): tiny FishNet Mask R-CNN, Faster R-CNN and RetinaNet with
random weights exported to TorchScript (scripting, tracing) and ONNX (tracing); the exported models
give eager mode's detections, and the TorchScript files do so in a new Python process that imports
neither fishnet_d2 nor Detectron2.

Detectron2 main imports ``detectron2.export``; v0.6's imports caffe2 and fails, and the tool loads
its TorchScript modules on their own (fishnet_d2.backports.detectron2_export_modules): every
export works in both.
Where even that fails the tool says what to install (simulated here)."""

import copy
import dataclasses
import io
from itertools import islice
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances
from PIL import Image

import fishnet_d2.apps.data  # noqa: F401  (registers the demo datasets, as tools/export_model.py does)
from fishnet_d2.apps.data import DEMO_SPEC, render_split
from fishnet_d2.apps.export import compare_instances, d2export, detectron2_export, export_model, main
from fishnet_d2.apps.predict import load_config, load_model

from .support import DETECTOR_ARCHITECTURES, run_main, tiny_detector_cfg, write_model

pytestmark = [
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]

ARCHITECTURES = DETECTOR_ARCHITECTURES
EXPORTS = (("scripting", "torchscript"), ("tracing", "torchscript"), ("tracing", "onnx"))
FIELDS = {
    "mask_rcnn": ["pred_boxes", "scores", "pred_classes", "pred_masks"],
    "faster_rcnn": ["pred_boxes", "scores", "pred_classes"],
    "retinanet": ["pred_boxes", "scores", "pred_classes"],
}


@pytest.fixture(scope="module")
def config_files(tmp_path_factory):
    return {a: write_model(tiny_detector_cfg(a), tmp_path_factory.mktemp(a)) for a in ARCHITECTURES}


def run(*args):
    """tools/export_model.py's main in this process: (exit status, stdout, stderr)."""
    return run_main(main, *args)


# The test's own check: the file alone, in an interpreter that never imports fishnet_d2.
FRESH = """
import sys
import torch, torchvision
model_file, image_file, outputs_file, method, names = sys.argv[1:6]
model = torch.jit.load(model_file)
image = torch.load(image_file)
with torch.no_grad():
    if method == "scripting":
        outputs = model(({"image": image},))[0]
    else:
        outputs = dict(zip(names.split(","), model(image)))
assert not [m for m in sys.modules if m.startswith("fishnet_d2")], "fishnet_d2 was imported"
torch.save(dict(outputs), outputs_file)
"""


def eager(model, image):
    """The detections the exported model computes, by Detectron2's own calls."""
    with torch.no_grad():
        if isinstance(model, GeneralizedRCNN):
            return model.inference([{"image": image}], do_postprocess=False)[0]
        return model([{"image": image}])[0]["instances"]


def assert_close_to_eager(fields, expected: Instances, tolerance=1e-3):
    assert len(fields["scores"]) == len(expected) > 0
    for name, value in expected.get_fields().items():
        value = value.tensor if isinstance(value, Boxes) else value
        other = fields[name].reshape(value.shape).float()
        scale = max(float(value.abs().max()), 1e-6)
        assert float((other - value.float()).abs().max()) <= tolerance * scale, name


# Sizes other than the samples' (64x64 and 64x48 for the tiny models): larger, smaller, portrait.
IMAGE_SIZES = ((48, 64), (96, 80), (40, 40), (72, 32))


def shapes_image(size, index=2):
    """A validation image of the demo's shapes dataset (not one the tool checks on), resized to
    ``size`` (height, width): a BGR float (3, H, W) tensor, as the exported models take it."""
    _, png, _, _ = next(islice(render_split(DEMO_SPEC, "val"), index, None))
    rgb = Image.open(io.BytesIO(png)).convert("RGB").resize(size[::-1], Image.BILINEAR)
    return torch.as_tensor(np.asarray(rgb)[:, :, ::-1].copy()).permute(2, 0, 1).float()


def assert_onnxruntime_matches_eager(model_file, output_names, model, sizes=IMAGE_SIZES, tolerance=1e-3):
    """The ONNX file, run by onnxruntime as a deployment runs it, gives eager mode's detections on
    images of ``sizes`` (compared as detections: fishnet_d2.apps.export.matching)."""
    session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    for height, width in sizes:
        image = shapes_image((height, width))
        outputs = dict(zip(output_names, session.run(None, {"image": image.numpy()})))
        assert [int(s) for s in outputs.pop("image_size")] == [height, width]
        fields = {k: torch.as_tensor(v) for k, v in outputs.items()}
        fields["pred_boxes"] = Boxes(fields["pred_boxes"])
        expected = eager(model, image)
        assert len(expected) > 0
        comparison = compare_instances(f"{height}x{width}", Instances((height, width), **fields), expected, tolerance)
        assert comparison.failure(tolerance) is None, comparison


@pytest.mark.slow
@pytest.mark.parametrize("method,format", EXPORTS)
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_export_matches_eager(config_files, tmp_path, architecture, method, format):
    args = ["--config-file", config_files[architecture], "--export-method", method, "--format", format]
    sample = None
    if architecture == "mask_rcnn" and format == "onnx":  # a given sample image (else made ones)
        sample = tmp_path / "sample.png"
        Image.fromarray(np.random.default_rng(3).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(sample)
        args += ["--sample-image", sample]
    status, out, err = run(*args, "--output", tmp_path / "out")
    assert status == 0, err
    info = json.loads((tmp_path / "out" / "export_info.json").read_text())
    assert (info["export_method"], info["format"]) == (method, format)
    check = info["check"]
    assert check["passed"] and check["max_relative_difference"] < 1e-3
    assert {d["output"] for d in check["differences"]} == set(FIELDS[architecture])
    assert all(d["relative"] < 1e-3 for d in check["differences"]) and len(check["differences"]) == 2 * len(FIELDS[architecture])
    assert "largest difference to eager:" in out
    if sample is not None:
        assert check["images"][0] == str(sample)

    model = load_model(load_config(str(config_files[architecture])))
    if format == "onnx":
        assert check["runtime"] == f"onnxruntime {onnxruntime.__version__} (CPU)"
        exported = onnx.load(str(tmp_path / "out" / "model.onnx"))
        onnx.checker.check_model(exported, full_check=True)
        assert [i.name for i in exported.graph.input] == ["image"]
        assert [o.name for o in exported.graph.output] == info["outputs"] == sorted(FIELDS[architecture]) + ["image_size"]
        assert_onnxruntime_matches_eager(tmp_path / "out" / "model.onnx", info["outputs"], model)
        return
    assert check["fresh_process_max_relative_difference"] < 1e-3
    image = shapes_image((48, 64))  # not a size traced
    expected = eager(model, image)
    torch.save(image, tmp_path / "image.pt")
    process = subprocess.run(
        [sys.executable, "-c", FRESH, str(tmp_path / "out" / "model.ts"), str(tmp_path / "image.pt"),
         str(tmp_path / "outputs.pt"), method, ",".join(info["outputs"])],
        capture_output=True, text=True,
    )  # fmt: skip
    assert process.returncode == 0, process.stderr
    fields = torch.load(tmp_path / "outputs.pt")
    if method == "scripting" and architecture == "retinanet":  # its boxes before detector_postprocess
        raw = Instances((48, 64), **{k: (Boxes(v) if k == "pred_boxes" else v) for k, v in fields.items()})
        fields = {k: (v.tensor if isinstance(v, Boxes) else v) for k, v in detector_postprocess(raw, 48, 64).get_fields().items()}
    assert_close_to_eager(fields, expected)


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["mask_rcnn", "faster_rcnn"])
def test_the_trained_demo_model_in_onnxruntime_matches_eager(demo_checkpoint, tmp_path, architecture):
    """Trained weights (the demo's Mask R-CNN, and its Faster R-CNN: the same without the mask
    head): the ONNX file in onnxruntime on images of other sizes than the sample's; timed."""
    config, weights, _ = demo_checkpoint
    # Score threshold 0: TEST.DETECTIONS_PER_IMAGE (20) detections from briefly trained weights.
    overrides = ["MODEL.WEIGHTS", str(weights), "MODEL.MASK_ON", str(architecture == "mask_rcnn"), "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]
    status, out, err = run(
        "--config-file", config, "--format", "onnx", "--output", tmp_path, "--time", "1", "--threads", "1,2", *overrides
    )  # fmt: skip
    assert status == 0, err
    info = json.loads((tmp_path / "export_info.json").read_text())
    assert info["check"]["passed"] and info["check"]["runtime"].startswith("onnxruntime")
    assert [(d["eager"], d["paired"]) for d in info["check"]["detections"]] == [(20, 20), (20, 20)]
    assert [o for o in info["outputs"] if o != "image_size"] == sorted(FIELDS[architecture])
    runs = info["timing"]["runs"]
    assert [r["threads"] for r in runs] == [1, 2]
    assert all(r["eager_seconds_per_image"] > 0 and r["exported_seconds_per_image"] > 0 for r in runs)
    assert "seconds per image, 2 threads: eager " in out
    model = load_model(load_config(str(config), overrides))
    assert_onnxruntime_matches_eager(tmp_path / "model.onnx", info["outputs"], model, sizes=((96, 128), (160, 120), (128, 64)))


@pytest.mark.slow
def test_skip_check_writes_the_model_without_running_it_and_still_times_it(config_files, tmp_path, monkeypatch):
    """--skip-check (docs/deploy.md times FishNet-150 from random weights so): no check runs, the
    model and export_info.json (check: null) are written, and --time times it."""

    def no_check(*args, **kwargs):
        raise AssertionError("--skip-check ran the check")

    monkeypatch.setattr("fishnet_d2.apps.export.cli.check_export", no_check)
    overrides = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]
    status, out, err = run("--config-file", config_files["mask_rcnn"], "--format", "onnx", "--output", tmp_path,
                           "--skip-check", "--time", "1", *overrides)  # fmt: skip
    assert status == 0, err
    info = json.loads((tmp_path / "export_info.json").read_text())
    assert info["check"] is None and info["timing"]["runs"][0]["exported_seconds_per_image"] > 0
    assert (tmp_path / "model.onnx").is_file() and "largest difference" not in out


@pytest.mark.slow
def test_a_compiled_or_training_path_config_exports_the_eager_model(config_files, tmp_path):
    """COMPILE, and the training paths, which TorchScript refuses, are left out of the export
    (they change nothing in what the model computes in inference), with a note."""
    status, out, err = run(
        "--config-file", config_files["faster_rcnn"], "--export-method", "scripting",
        "--output", tmp_path / "out", "--opts", "MODEL.FISHNET.COMPILE", "inductor",
        "MODEL.FISHNET.MEMORY_EFFICIENT", "True", "MODEL.FISHNET.CHECKPOINT", "stride4",
    )  # fmt: skip
    assert status == 0, err
    assert (
        "note: exporting the eager FishNet without MODEL.FISHNET.CHECKPOINT, MODEL.FISHNET.MEMORY_EFFICIENT, "
        "MODEL.FISHNET.COMPILE" in err
    )
    assert json.loads((tmp_path / "out" / "export_info.json").read_text())["check"]["passed"]


@pytest.mark.slow
def test_config_overrides_after_the_options_as_detectron2s_export_model(config_files, tmp_path):
    status, _, err = run(
        "--config-file", config_files["faster_rcnn"], "--format", "onnx", "--output", tmp_path / "out",
        "TEST.DETECTIONS_PER_IMAGE", "4", "MODEL.DEVICE", "cpu",
    )  # fmt: skip
    assert status == 0, err
    detections = json.loads((tmp_path / "out" / "export_info.json").read_text())["check"]["detections"]
    assert [(d["eager"], d["exported"]) for d in detections] == [(4, 4), (4, 4)]


def test_scripting_to_onnx_is_a_usage_error(config_files, tmp_path):
    status, _, err = run(
        "--config-file", config_files["faster_rcnn"], "--export-method", "scripting", "--format", "onnx",
        "--output", tmp_path,
    )  # fmt: skip
    assert status == 2
    assert "--export-method scripting exports to --format torchscript; --format onnx comes from --export-method tracing or export" in err


def test_other_meta_architectures_are_refused(tmp_path):
    cfg = tiny_detector_cfg("faster_rcnn")
    cfg.MODEL.META_ARCHITECTURE = "SemanticSegmentor"
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.SEM_SEG_HEAD.NORM = ""
    status, _, err = run("--config-file", write_model(cfg, tmp_path), "--output", tmp_path / "out")
    assert status == 1
    assert "builds a SemanticSegmentor; export supports GeneralizedRCNN (Mask R-CNN, Faster R-CNN) and RetinaNet" in err
    assert not (tmp_path / "out").exists()


def test_a_sample_that_is_not_an_image_is_named(config_files, tmp_path):
    (tmp_path / "notes.txt").write_text("text\n")
    status, _, err = run(
        "--config-file", config_files["faster_rcnn"], "--sample-image", tmp_path / "notes.txt", "--output", tmp_path / "out"
    )
    assert status == 1 and f"error: {tmp_path / 'notes.txt'}: not an image" in err


@pytest.mark.slow
def test_a_failed_check_writes_nothing(config_files, tmp_path, monkeypatch):
    def half_the_scores(name, exported, eager, tolerance):
        eager = Instances(eager.image_size, **eager.get_fields())
        eager.scores = eager.scores / 2
        return compare_instances(name, exported, eager, tolerance)

    monkeypatch.setattr("fishnet_d2.apps.export.cli.compare_instances", half_the_scores)
    status, _, err = run("--config-file", config_files["faster_rcnn"], "--output", tmp_path / "out")
    assert status == 1
    assert "differs from eager mode by 1 of the output scale (scores, shapes 000000.png)" in err
    assert "more than --tolerance 0.001; nothing written" in err
    assert not (tmp_path / "out").exists()


def detections(boxes, scores, classes, image_size=(100, 100)):
    return Instances(
        image_size,
        pred_boxes=Boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)),
        scores=torch.as_tensor(scores, dtype=torch.float32),
        pred_classes=torch.as_tensor(classes, dtype=torch.int64),
    )


def take(instances, order):
    return instances[torch.tensor(order, dtype=torch.long)]


EAGER = detections(
    [[10, 10, 40, 40], [50, 50, 90, 90], [0, 0, 20, 30], [60, 5, 95, 30], [5, 60, 30, 95]],
    [1.0, 1.0, 1.0, 0.8, 0.6],
    [0, 1, 0, 2, 3],
)


def test_detections_of_equal_score_in_another_order_are_the_same_output():
    comparison = compare_instances("image", take(EAGER, [2, 1, 0, 3, 4]), EAGER, 1e-3)
    assert (comparison.matched, comparison.unmatched_eager, comparison.unmatched_exported) == (5, 0, 0)
    assert comparison.max_relative == 0 and comparison.failure(1e-3) is None


def test_a_tie_at_the_cut_off_may_keep_another_detection():
    """Eager keeps [1.0, 1.0, 1.0, 0.8, 0.6]; the exported model, of two detections of 0.6, the other."""
    other = detections([[5, 60, 30, 95], [70, 70, 80, 80]], [0.6, 0.6000001], [3, 1])
    exported = Instances.cat([take(EAGER, [0, 1, 2, 3]), other[1:]])
    comparison = compare_instances("image", exported, EAGER, 1e-3)
    assert (comparison.matched, comparison.unmatched_eager, comparison.unmatched_exported, comparison.untied) == (4, 1, 1, 0)
    assert comparison.failure(1e-3) is None


def test_detections_that_differ_are_refused():
    moved = detections([[10, 10, 40, 41]], [1.0], [0])  # one pixel in 100
    comparison = compare_instances("image", Instances.cat([moved, take(EAGER, [1, 2, 3, 4])]), EAGER, 1e-3)
    assert (comparison.unmatched_eager, comparison.unmatched_exported) == (1, 1)
    assert comparison.failure(1e-3) is None  # alone, a tie (both 1.0) ...
    all_moved = detections(EAGER.pred_boxes.tensor + 1, EAGER.scores, EAGER.pred_classes)
    failure = compare_instances("image", all_moved, EAGER, 1e-3).failure(1e-3)  # ... not all of them
    assert "5 of eager mode's 5 detections and 5 of the exported model's 5 have no counterpart" in failure
    lower = detections(EAGER.pred_boxes.tensor, EAGER.scores - 0.01, EAGER.pred_classes)
    failure = compare_instances("image", lower, EAGER, 1e-3).failure(1e-3)
    assert "differs from eager mode by 0.01 of the output scale (scores, image)" in failure
    other_classes = detections(EAGER.pred_boxes.tensor[3:], [0.8, 0.6], [1, 2])
    comparison = compare_instances("image", Instances.cat([take(EAGER, [0, 1, 2]), other_classes]), EAGER, 1e-3)
    assert "2 of eager mode's 5 detections and 2 of the exported model's 5 have no counterpart" in comparison.failure(1e-3)
    assert "0 of them not a tie in score; allowed: at most 1 a side, each a tie" in comparison.failure(1e-3)
    not_a_tie = detections([[60, 5, 95, 35]], [0.7], [2])
    comparison = compare_instances("image", Instances.cat([take(EAGER, [0, 1, 2, 4]), not_a_tie]), EAGER, 1e-3)
    assert "1 of eager mode's 5 detections and 1 of the exported model's 5 have no counterpart" in comparison.failure(1e-3)
    assert "2 of them not a tie in score" in comparison.failure(1e-3)
    missing = compare_instances("image", take(EAGER, [0, 1, 2, 3]), EAGER, 1e-3).failure(1e-3)
    assert "1 of eager mode's 5 detections and 0 of the exported model's 4" in missing


def wrong_exports(change):
    """export_model for the tool, exporting a copy of the model that ``change`` altered."""

    def export(model, method, format, sample, d2):
        wrong = copy.deepcopy(model)
        change(wrong)
        return export_model(wrong, method, format, sample, d2)

    return export


def perturb_a_weight(model):
    weight = model.roi_heads.box_predictor.bbox_pred.weight
    with torch.no_grad():
        weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)) * 0.1 * weight.std())


def unaligned_roi_align(model):
    """ROIAlign without the half-pixel offset of Detectron2's ``ROIAlign(aligned=True)``."""
    poolers = [p for pooler in (model.roi_heads.box_pooler, model.roi_heads.mask_pooler) for p in pooler.level_poolers]
    assert poolers and all(p.aligned for p in poolers)
    for p in poolers:
        p.aligned = False


@pytest.mark.slow
@pytest.mark.parametrize("change", [perturb_a_weight, unaligned_roi_align], ids=["perturbed_weight", "unaligned_roi_align"])
def test_a_wrong_onnx_model_is_refused(config_files, tmp_path, monkeypatch, change):
    monkeypatch.setattr("fishnet_d2.apps.export.cli.export_model", wrong_exports(change))
    status, out, err = run(
        "--config-file", config_files["mask_rcnn"], "--format", "onnx", "--output", tmp_path / "out"
    )  # fmt: skip
    assert status == 1, out
    assert "running the exported model with onnxruntime" in out
    assert "nothing written" in err and ("have no counterpart" in err or "differs from eager mode by" in err)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_an_onnx_model_with_swapped_outputs_is_refused(config_files, tmp_path, monkeypatch):
    def swapped_outputs(*args):
        exported = export_model(*args)
        run = exported.run

        def swapped(image):
            instances = run(image)
            scores, classes = instances.scores, instances.pred_classes
            instances.scores, instances.pred_classes = classes.float(), scores
            return instances

        return dataclasses.replace(exported, run=swapped)

    monkeypatch.setattr("fishnet_d2.apps.export.cli.export_model", swapped_outputs)
    status, out, err = run("--config-file", config_files["faster_rcnn"], "--format", "onnx", "--output", tmp_path / "out")
    assert status == 1, out
    assert "10 of eager mode's 10 detections and 10 of the exported model's 10 have no counterpart" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_without_onnxruntime_the_check_runs_onnx_reference_evaluator(config_files, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    status, out, err = run("--config-file", config_files["retinanet"], "--format", "onnx", "--output", tmp_path / "out")
    assert status == 0, err
    runtime = f"onnx {onnx.__version__} reference evaluator (onnxruntime is not installed)"
    assert f"running the exported model with {runtime}" in out
    assert json.loads((tmp_path / "out" / "export_info.json").read_text())["check"]["runtime"] == runtime


def test_detectron2_export_is_found_on_either_detectron2():
    export = detectron2_export()
    if getattr(sys.modules["detectron2.export"], "__file__", None) is None:  # its __init__ did not run
        assert "without the package (v0.6: it imports caffe2)" in export.how
    else:
        assert export.how == "detectron2.export"
    assert export.TracingAdapter.__name__ == "TracingAdapter"
    assert export.scripting_with_instances.__name__ == "scripting_with_instances"


def test_without_usable_export_modules_the_tool_says_what_to_install(config_files, tmp_path, monkeypatch):
    """As on a Detectron2 v0.6 whose export modules do not load without caffe2."""

    def no_export_modules():
        raise ImportError("cannot import detectron2.export.flatten (simulated)")

    monkeypatch.setattr(d2export, "detectron2_export_modules", no_export_modules)
    status, out, err = run("--config-file", config_files["faster_rcnn"], "--output", tmp_path / "out")
    assert status == 1 and "Traceback" not in err
    assert "error: cannot export with this detectron2: detectron2" in err
    assert "its export tools cannot be loaded" in err and "(simulated)" in err
    assert "D2_SOURCE=git bash tools/setup_env.sh" in err and "D2_SOURCE=/path/to/detectron2" in err
    assert not (tmp_path / "out").exists()

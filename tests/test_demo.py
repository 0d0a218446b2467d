"""The embedded demo (tools/demo.py) end to end at a tiny scale: a few images, two iterations."""

import contextlib
import io
import json
import math
import os

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_argument_parser
from PIL import Image

import fishnet_d2.apps.data  # noqa: F401  (registers the demo datasets, as tools/demo.py does)
from fishnet_d2.apps.data import SyntheticShapesSpec, register_synthetic_shapes
from fishnet_d2.apps.demo import (
    argument_parser,
    main,
    prediction_panels,
    setup_demo,
    prepare_datasets,
    read_loss_history,
    save_loss_plot,
)
from fishnet_d2.engine import Trainer
from fishnet_d2.engine import main as train_net_main
from fishnet_d2.engine import setup

from .support import REPO

DEMO_CONFIG = REPO / "configs" / "Demo" / "mask_rcnn_fishnet_tiny_FPN_demo.yaml"
PREFIX = "fishnet_tests_demo_smoke"
METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
# The demo sets torch's threads for the whole process; the tests keep conftest's one thread.
ONE_THREAD = ["--torch-threads", "1"]


def _tiny_opts():
    return [
        "DATASETS.TRAIN", f"('{PREFIX}_train',)",
        "DATASETS.TEST", f"('{PREFIX}_val',)",
        "SOLVER.MAX_ITER", "2",
        "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.STEPS", "(1,)",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",  # an untrained model: keep every detection
        "DATALOADER.NUM_WORKERS", "0",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """tools/demo.py's main on 8 training and 4 validation images, 2 iterations."""
    tmp = tmp_path_factory.mktemp("demo")
    register_synthetic_shapes(
        PREFIX, tmp / "data", SyntheticShapesSpec(seed=11, num_train=8, num_val=4)
    )
    output = tmp / "output"
    args = argument_parser(default_config=str(DEMO_CONFIG)).parse_args(
        ["--output", str(output), "--num-images", "3", "--score-threshold", "0", *ONE_THREAD,
         *_tiny_opts()]
    )
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        result = main(args)
    return result, output, stdout.getvalue()


def test_demo_writes_results_checkpoint_and_pictures(demo_run):
    result, output, _ = demo_run
    assert set(result.results) == {"bbox", "segm"}
    for metrics in result.results.values():
        assert set(METRICS) <= set(metrics)
        assert all(isinstance(metrics[m], float) for m in METRICS)
    assert result.summary.startswith(f"{PREFIX}_val: box AP ") and "mask AP" in result.summary

    assert result.checkpoint == output / "model_final.pth"
    state = torch.load(result.checkpoint, map_location="cpu", weights_only=False)
    assert state["iteration"] == 1 and any(
        k.startswith("backbone.bottom_up.") for k in state["model"]
    )

    for path, min_width in ((result.predictions_png, 800), (result.losses_png, 500)):
        assert path.parent == output and path.stat().st_size > 10_000
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG" and im.width >= min_width
            pixels = np.asarray(im.convert("RGB"))
        assert pixels.std() > 10, f"{path.name} is nearly blank"
    assert not [p for p in output.iterdir() if p.name.startswith(".")], "temporary files left"


def test_demo_prints_the_ap_table(demo_run):
    result, _, out = demo_run
    header = next(line for line in out.splitlines() if line.startswith("| task"))
    assert all(m in header for m in METRICS)
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert {"bbox", "segm"} <= set(rows)
    assert f"{result.results['bbox']['AP']:.2f}" in rows["bbox"]
    assert f"DEMO RESULT  {result.summary}" in out


def test_predictions_are_drawn(demo_run, tmp_path):
    result, _, _ = demo_run
    cfg = setup(_train_net_args(str(tmp_path), result.checkpoint))
    model = Trainer.build_model(cfg)
    DetectionCheckpointer(model).load(str(result.checkpoint))
    records = DatasetCatalog.get(f"{PREFIX}_val")[:3]
    panels = prediction_panels(
        model, cfg, records, MetadataCatalog.get(f"{PREFIX}_val"), score_threshold=0.0
    )
    assert len(panels) == 3
    assert sum(p.num_predictions for p in panels) > 0
    for panel in panels:
        assert panel.image.shape == panel.prediction.shape == panel.ground_truth.shape
        assert (panel.ground_truth != panel.image).any(), "ground truth not drawn"
        if panel.num_predictions:
            assert (panel.prediction != panel.image).any(), "predictions not drawn"


def _train_net_args(output: str, weights):
    args = default_argument_parser().parse_args(
        [
            "--config-file",
            str(DEMO_CONFIG),
            "--eval-only",
            "OUTPUT_DIR",
            output,
            "MODEL.WEIGHTS",
            str(weights),
        ]
        + _tiny_opts()
    )
    return args


def test_train_net_eval_only_reproduces_the_demo_ap(demo_run, tmp_path):
    result, _, _ = demo_run
    results = train_net_main(_train_net_args(str(tmp_path), result.checkpoint))
    assert set(results) == set(result.results)
    for task, metrics in result.results.items():
        for name, value in metrics.items():
            again = results[task][name]
            assert (math.isnan(value) and math.isnan(again)) or again == pytest.approx(
                value, abs=1e-6
            ), (task, name)


def test_loss_history_reads_only_the_last_run(tmp_path):
    lines = [
        {"iteration": 19, "total_loss": 3.0, "loss_cls": 1.0, "lr": 0.01},
        {"iteration": 39, "total_loss": 2.0, "loss_cls": 0.8, "lr": 0.01},
        {"iteration": 39, "bbox/AP": 1.0},
        {"iteration": 19, "total_loss": 2.5, "loss_cls": 0.9, "lr": 0.01},  # a new run
        {"iteration": 39, "total_loss": 1.5, "loss_cls": 0.5, "lr": 0.01},
        {"iteration": 59, "total_loss": 1.0, "loss_cls": 0.4, "lr": 0.01},
    ]
    metrics = tmp_path / "metrics.json"
    metrics.write_text("".join(json.dumps(line) + "\n" for line in lines))
    history = read_loss_history(metrics)
    assert history == {
        "total_loss": [(19, 2.5), (39, 1.5), (59, 1.0)],
        "loss_cls": [(19, 0.9), (39, 0.5), (59, 0.4)],
    }
    png = save_loss_plot(metrics, tmp_path / "losses.png")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 300


def test_loss_plot_of_a_file_without_losses_raises(tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"iteration": 0, "bbox/AP": 1.0}) + "\n")
    with pytest.raises(ValueError, match="no losses"):
        save_loss_plot(metrics, tmp_path / "losses.png")
    assert not (tmp_path / "losses.png").exists()


def test_bad_demo_arguments_raise(tmp_path):
    parser = argument_parser(default_config=str(DEMO_CONFIG))
    with pytest.raises(ValueError, match="eval-only"):
        main(parser.parse_args(["--eval-only", "--output", str(tmp_path)]))
    with pytest.raises(ValueError, match="torch-threads"):
        main(parser.parse_args(["--torch-threads", "0", "--output", str(tmp_path)]))
    cfg = setup_demo(
        parser.parse_args(["--output", str(tmp_path), "DATASETS.TEST", "('no_such_dataset',)"])
    )
    with pytest.raises(ValueError, match="no_such_dataset"):
        prepare_datasets(cfg)


def test_demo_uses_one_thread_per_cpu_it_may_run_on_by_default():
    args = argument_parser(str(DEMO_CONFIG)).parse_args([])
    assert args.torch_threads == len(os.sched_getaffinity(0))


def test_demo_config_trains_from_scratch_on_the_demo_datasets(tmp_path):
    cfg = setup_demo(
        argument_parser(str(DEMO_CONFIG)).parse_args(["--output", str(tmp_path), *ONE_THREAD])
    )
    assert cfg.OUTPUT_DIR == str(tmp_path)
    assert cfg.MODEL.WEIGHTS == "" and cfg.MODEL.DEVICE == "cpu"
    fish = cfg.MODEL.FISHNET
    assert fish.DEPTH == 0 and fish.NORM == "BN" and fish.FREEZE_AT == 0
    assert fish.FREEZE_STEM_CONV1 is False
    assert cfg.MODEL.FPN.IN_FEATURES == ["head2", "head3", "head4", "head5"]
    assert set(cfg.MODEL.FPN.IN_FEATURES) <= set(fish.OUT_FEATURES)
    assert cfg.MODEL.MASK_ON and cfg.INPUT.MASK_FORMAT == "bitmask"
    assert cfg.DATASETS.TRAIN == ("fishnet_demo_train",) and cfg.DATASETS.TEST == (
        "fishnet_demo_val",
    )
    assert cfg.SEED == 42  # a fixed seed: the demo's numbers repeat (test_demo_training_is_deterministic)


def test_demo_training_is_deterministic(demo_run, tmp_path):
    result, _, _ = demo_run
    args = argument_parser(default_config=str(DEMO_CONFIG)).parse_args(
        ["--output", str(tmp_path), "--num-images", "1", *ONE_THREAD, *_tiny_opts()]
    )
    with contextlib.redirect_stdout(io.StringIO()):
        again = main(args)
    first = torch.load(result.checkpoint, map_location="cpu", weights_only=False)["model"]
    second = torch.load(again.checkpoint, map_location="cpu", weights_only=False)["model"]
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert again.summary == result.summary

"""The figures of README.md and docs/*.md against what they come from: the benchmark's data
(docs/performance.json), the configs, the network, the weight table, the demo's dataset, the
tools' constants. Each test first finds the sentence or table row it checks (``says``), so that a
figure changed in the text fails here until its source says the same, and a source that changes
fails here until the text does.

docs/performance.md's tables between its generated-part markers are the benchmark's own output
(tests/test_benchmark_tool.py::test_the_performance_document_is_what_the_benchmark_generates).

Not checked, because nothing in the repository holds their source: measurements made once on a
named machine (docs/demo.md's AP table, its run time, per-iteration times and recipe table;
docs/deploy.md's timing table and largest export difference; docs/weights.md's download and
conversion times and sizes; docs/cluster.md's checkpoint size), and published results of others
(docs/paper.md's COCO table, the paper's setup).
"""

import math
import re
from typing import Dict, List

import pytest
import torch

from fishnet_d2 import FISHNET_VARIANTS, FishNet
from fishnet_d2.apps.benchmark.models import LEAN_CHECKPOINT, MODEL_SPECS
from fishnet_d2.apps.benchmark.report import load_reports, ratios
from fishnet_d2.apps.data import DEMO_SPEC
from fishnet_d2.apps.export.exporters import ONNX_OPSET
from fishnet_d2.apps.export.matching import MAX_UNMATCHED_SHARE
from fishnet_d2.engine import REQUEUE_EXIT_CODE
from fishnet_d2.model_zoo import get_config
from fishnet_d2.requirements import MINIMUM_VERSIONS
from fishnet_d2.weights.zoo import PUBLISHED_WEIGHTS

from .doc_blocks import REPO
from .support import ALL_FEATURES


def text_of(doc: str) -> str:
    """The document, its whitespace runs as single spaces (sentences wrap anywhere)."""
    return re.sub(r"\s+", " ", (REPO / doc).read_text(encoding="utf-8"))


def says(doc: str, sentence: str) -> None:
    assert re.sub(r"\s+", " ", sentence) in text_of(doc), f"{doc} no longer says: {sentence!r}; update this test"


def measured(label: str) -> List[float]:
    """Every run's value of a ratio of docs/performance.json (the label as its tables write it)."""
    reports = load_reports([str(REPO / "docs" / "performance.json")])
    values = [r["value"] for report in reports for r in ratios(report["results"]) if r["label"] == label]
    assert values, f"docs/performance.json has no run with {label!r}"
    return values


def about(values: List[float], claim: float, within: float) -> bool:
    return all(abs(value / claim - 1) <= within for value in values)


# "About" a figure: within 10% of it; "about 1.6 times": 1.6 to two digits.
def test_readme_memory_figures_are_the_benchmarks():
    says("README.md", "by default its backbone's training step takes about twice R-101's memory, a whole Mask R-CNN "
         "training iteration about 1.6 times.")  # fmt: skip
    assert about(measured("FishNet-150 / R-101, backbone training peak memory"), 2.0, 0.10)
    assert about(measured("FishNet-150 / R-101, training iteration peak memory"), 1.6, 0.05)
    says("docs/performance.md", "its peak training memory without checkpointing is about twice R-101's")

    says("README.md", "`MODEL.FISHNET.MEMORY_EFFICIENT True` with `MODEL.FISHNET.CHECKPOINT \"['stem', 'tail3', 'body2']\"` "
         "trains it in about R-101's memory, for a few percent more time")  # fmt: skip
    spec = MODEL_SPECS["fishnet150-lean-ckpt-stem-tail3-body2"]  # the benchmark's row of that config
    opts = dict(zip(spec.opts[::2], spec.opts[1::2]))
    assert opts == {"MODEL.FISHNET.CHECKPOINT": LEAN_CHECKPOINT, "MODEL.FISHNET.MEMORY_EFFICIENT": True}
    assert LEAN_CHECKPOINT == ("stem", "tail3", "body2")
    lean = "FishNet-150 lean ckpt stem+tail3+body2"
    assert about(measured(f"{lean} / R-101, backbone training peak memory"), 1.0, 0.10)
    assert about(measured(f"{lean} / R-101, training iteration peak memory"), 1.0, 0.10)
    times = [t for step in ("backbone fwd+bwd", "training iteration") for t in measured(f"{lean} / FishNet-150, {step} time")]
    assert all(0.97 <= t <= 1.10 for t in times), times  # "a few percent more"


def test_readme_requirements_are_the_packages():
    says("README.md", "It needs torch 2.4, torchvision 0.19 and detectron2 0.6 or newer")
    assert MINIMUM_VERSIONS == {"torch": (2, 4), "torchvision": (0, 19), "detectron2": (0, 6)}
    says("README.md", "On a fresh machine (Python 3.11, 3.12 or 3.13")
    assert 'python_requires=">=3.11"' in (REPO / "setup.py").read_text()


def _feature_table() -> Dict[str, tuple]:
    """README's feature table: name -> (stride, channels), for the rows of numbers."""
    rows = re.findall(r"^\| (`[^|]+) \| [^|]+ \| ([\d, ]+) \| ([\d, ]+) \|$", (REPO / "README.md").read_text(), re.M)
    table = {}
    for names, strides, channels in rows:
        names = re.findall(r"`(\w+)`", names)
        strides, channels = [int(s) for s in strides.split(",")], [int(c) for c in channels.split(",")]
        strides, channels = strides * (len(names) // len(strides)), channels * (len(names) // len(channels))
        table.update({name: (s, c) for name, s, c in zip(names, strides, channels)})
    return table


@pytest.mark.parametrize("depth", [99, 150, 201])
def test_readme_feature_table_is_the_networks(depth):
    says("README.md", "Its output features (FishNet-99/150/201 share widths")
    table = _feature_table()
    assert list(table) == ALL_FEATURES
    with torch.device("meta"):
        shapes = FishNet(FISHNET_VARIANTS[depth], out_features=ALL_FEATURES).output_shape()
    assert {name: (s.stride, s.channels) for name, s in shapes.items()} == table


def test_top1_figures_are_the_weight_tables():
    top1 = {name: weights.top1 for name, weights in PUBLISHED_WEIGHTS.items()}
    official = [v for name, v in top1.items() if name.endswith(("_official", "_official_welltrained"))]
    says("README.md", f"(the official code's, {min(official):.2f} to {max(official):.2f}% top-1)")
    says("README.md", f"`fishnet150_pytorchcv` ({top1['fishnet150_pytorchcv']:.2f}%)")
    rows = re.findall(r"^\| `(\w+)` \|.*\| ([\d.]+)% \|", (REPO / "docs" / "weights.md").read_text(), re.M)
    assert {name: float(value) for name, value in rows} == top1


def test_schedules_are_the_configs():
    says("README.md", "Detectron2's 1x (90k iterations) / 3x (270k)")
    for depth in (99, 150, 201):
        for task in ("COCO-InstanceSegmentation/mask_rcnn", "COCO-Detection/faster_rcnn", "COCO-Detection/retinanet"):
            assert get_config(f"{task}_fishnet{depth}_FPN_1x.yaml").SOLVER.MAX_ITER == 90000
            assert get_config(f"{task}_fishnet{depth}_FPN_3x.yaml").SOLVER.MAX_ITER == 270000
    says("README.md", "`make demo`'s small FishNet, synthetic shapes | 900 iterations |")
    assert get_config("Demo/mask_rcnn_fishnet_tiny_FPN_demo.yaml").SOLVER.MAX_ITER == 900

    # docs/paper.md: epochs of train2017's 117,266 images at 16 per iteration, to iterations.
    says("docs/paper.md", "Epochs are counted on train2017's 117,266 images with annotations, at 16 images per iteration "
         "(7,329.125 iterations per epoch)")  # fmt: skip
    assert 117266 / 16 == 7329.125
    iteration = lambda epochs: math.ceil(epochs * 117266 / 16)  # noqa: E731  (the doc's rounding rule)
    paper = (REPO / "docs" / "paper.md").read_text()
    for task in ("COCO-InstanceSegmentation/mask_rcnn", "COCO-Detection/faster_rcnn"):
        solver = get_config(f"{task}_fishnet150_FPN_paper.yaml").SOLVER
        assert solver.IMS_PER_BATCH == 16
        values = {"SOLVER.MAX_ITER": ([32], [solver.MAX_ITER]), "SOLVER.STEPS": ([20, 28], list(solver.STEPS)),
                  "SOLVER.WARMUP_ITERS": ([1], [solver.WARMUP_ITERS]),
                  "SOLVER.CLIP_GRADIENTS.UNTIL_ITER": ([2], [solver.CLIP_GRADIENTS.UNTIL_ITER])}  # fmt: skip
        for key, (epochs, iterations) in values.items():
            assert iterations == [iteration(e) for e in epochs], key
            row = re.search(rf"^\| `{re.escape(key)}`[^|]*\| ([^|]+) \| ([^|]+) \|$", paper, re.M)
            assert row, f"docs/paper.md has no row {key}"
            assert row.groups() == (", ".join(map(str, epochs)), ", ".join(f"{i:,}" for i in iterations)), key


def test_demo_figures_are_its_config_and_dataset_parameters():
    cfg = get_config("Demo/mask_rcnn_fishnet_tiny_FPN_demo.yaml")
    says("docs/demo.md", "from scratch, 900 iterations of 8 images")
    assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH, cfg.MODEL.WEIGHTS) == (900, 8, "")
    says("docs/demo.md", "seed 42.")
    assert cfg.SEED == 42
    says("docs/demo.md", "The config keeps the late decays, at 900 iterations: `SOLVER.STEPS (760, 860)`.")
    assert tuple(cfg.SOLVER.STEPS) == (760, 860)
    says("docs/demo.md", "which lets the learning rate be 0.04")
    assert cfg.SOLVER.BASE_LR == 0.04

    says("docs/demo.md", "small custom FishNet (`MODEL.FISHNET.DEPTH 0` and `MODEL.FISHNET.ARCH`, 0.5M backbone parameters")
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    from detectron2.modeling import build_backbone

    parameters = sum(p.numel() for p in build_backbone(cfg).bottom_up.parameters())
    assert round(parameters / 1e6, 1) == 0.5, parameters

    image = DEMO_SPEC.image
    says("docs/demo.md", f"{image.height}x{image.width} PNG images")
    says("docs/demo.md", f"random size ({image.shape_size[0]} to {image.shape_size[1]} pixels)")
    says("docs/demo.md", f"when less than half of it (or fewer than {image.min_visible_area} pixels) would show")
    assert image.min_visible_fraction == 0.5
    says("docs/demo.md", f"The train split ({DEMO_SPEC.num_train:,} images")
    says("docs/demo.md", f"the held-out val split ({DEMO_SPEC.num_val} images")


@pytest.mark.slow
def test_demo_dataset_counts_are_the_generated_datasets(demo_datasets):
    """"1,000 images, 3,636 instances", "200 images, 712 instances", "1 to 6 shapes each": the
    dataset the demo generates (conftest's demo_datasets)."""
    import json

    from fishnet_d2.apps.data import DEMO_DATASET_PREFIX

    says("docs/demo.md", "PNG images with 1 to 6 shapes each")
    for split, images, instances in (("train", 1000, 3636), ("val", 200, 712)):
        says("docs/demo.md", f"{split} split ({images:,} images, {instances:,} instances)")
        data = json.loads((demo_datasets / DEMO_DATASET_PREFIX / "annotations" / f"instances_{split}.json").read_text())
        per_image = {image["id"]: 0 for image in data["images"]}
        for annotation in data["annotations"]:
            per_image[annotation["image_id"]] += 1
        assert (len(per_image), sum(per_image.values())) == (images, instances)
        assert (min(per_image.values()), max(per_image.values())) == (1, 6)


def test_deploy_and_cluster_figures_are_the_tools_constants():
    says("docs/deploy.md", "`tracing` (TorchScript or ONNX, opset 17)")
    assert ONNX_OPSET == 17
    says("docs/deploy.md", "within `--tolerance` (default 1e-3)")
    from fishnet_d2.apps.export.cli import argument_parser

    assert argument_parser().get_default("tolerance") == 1e-3
    says("docs/deploy.md", "at most a fifth of them")
    assert MAX_UNMATCHED_SHARE == 0.2
    says("docs/cluster.md", "every process exits with status **75**")
    says("README.md", "exits with status 75")
    assert REQUEUE_EXIT_CODE == 75

"""tools/benchmark.py's measuring parts: peak memory, FLOPs, paired ratios, arguments, the CPU's
instruction sets, and the plain eager reference it measures FishNet against (which must be the
same network: tests/test_backbone_fast_paths.py compares their outputs in float64). (Nothing here
times anything.)"""

import sys

import pytest
import torch
from torch import nn

from .common import REPO

sys.path.insert(0, str(REPO / "tools"))
from benchmark import cpu_ticks, instruction_sets, parse_args, stolen_fraction  # noqa: E402
from benchmarking.measure import count_flops, peak_memory  # noqa: E402
from benchmarking.models import (  # noqa: E402
    LIGHT_CHECKPOINT,
    MODEL_SPECS,
    calibrate_detections,
    inference_input,
    parse_models,
)
from benchmarking.reference import PlainFishNet  # noqa: E402
from benchmarking.report import markdown, ratios  # noqa: E402


def test_peak_memory_on_cpu_is_the_most_allocated_at_once():
    kept = []

    def allocate():
        a = torch.empty(1_000_000)  # 4 MB
        b = torch.empty(2_000_000)  # 8 MB: 12 MB together
        del a, b
        kept.append(torch.empty(2_500_000))  # 10 MB, still allocated at the end

    peak = peak_memory(allocate, "cpu")
    assert 12_000_000 <= peak < 12_100_000

    def free_then_allocate():
        kept.pop()  # allocated before: its free does not lower the count
        torch.empty(1_000_000)

    assert 4_000_000 <= peak_memory(free_then_allocate, "cpu") < 4_100_000


def test_flops_count_one_multiply_add_as_one():
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1, bias=False)
    assert count_flops(conv, torch.zeros(1, 3, 16, 16))["total"] == 8 * 3 * 9 * 16 * 16


def result(times, memory=None):
    return {"times": {"backbone_train": times}, "memory": {"backbone_train": memory}}


def test_ratios_are_medians_of_paired_rounds():
    results = {
        "FishNet-150": result([2.0, 9.0, 3.0], memory=500),
        "R-101": result([2.0, 10.0, 4.0]),
        "FishNet-150 plain": result([3.0, 9.0, 4.2]),
        "FishNet-150 ckpt": result([3.0, 9.9, 3.3], memory=250),
        "FishNet-150 ckpt stem+tail+bridge+body4+body3": result([2.2, 9.9, 3.0], memory=400),
        "FishNet-150 ckpt stride4+tail": result([2.4, 9.9, 3.3], memory=300),
        "FishNet-150 compiled": result([1.6, 7.0, 3.6]),
    }
    out = {r["label"]: r for r in ratios(results)}
    vs_resnet = out["FishNet-150 / R-101, backbone fwd+bwd time"]
    assert vs_resnet["value"] == pytest.approx(0.9)  # rounds: 1.0, 0.9, 0.75
    assert not vs_resnet["met"] and vs_resnet["target"] == 0.80
    vs_plain = out["FishNet-150 plain / FishNet-150, backbone fwd+bwd time"]
    assert vs_plain["value"] == pytest.approx(1.4) and vs_plain["met"]  # >= 1.3: 1.5, 1.0, 1.4
    ckpt_time = out["FishNet-150 ckpt / FishNet-150, backbone fwd+bwd time"]
    assert ckpt_time["value"] == pytest.approx(1.1) and ckpt_time["met"]
    ckpt_memory = out["FishNet-150 ckpt / FishNet-150, backbone training peak memory"]
    assert ckpt_memory["value"] == pytest.approx(0.5) and ckpt_memory["met"]
    light = out["FishNet-150 ckpt stem+tail+bridge+body4+body3 / FishNet-150, backbone fwd+bwd time"]
    assert light["value"] == pytest.approx(1.1) and light["met"]  # <= 1.10: 1.1, 1.1, 1.0
    light_memory = out["FishNet-150 ckpt stem+tail+bridge+body4+body3 / FishNet-150, backbone training peak memory"]
    assert light_memory["value"] == pytest.approx(0.8) and not light_memory["met"]  # <= 0.70
    stride4 = out["FishNet-150 ckpt stride4+tail / FishNet-150, backbone fwd+bwd time"]
    assert stride4["value"] == pytest.approx(1.1) and stride4["met"] is None  # 1.2, 1.1, 1.1: no target
    compiled = out["FishNet-150 compiled / R-101, backbone fwd+bwd time"]
    assert compiled["value"] == pytest.approx(0.8) and compiled["met"]  # 0.8, 0.7, 0.9
    assert out["FishNet-150 compiled / FishNet-150, backbone fwd+bwd time"]["met"] is None
    assert not any("R-50" in label for label in out)  # not measured: no ratio


def test_every_checkpointing_choice_has_a_row():
    from fishnet_d2.modeling.fishnet import CHECKPOINT_CHOICES

    rows = {spec.opts[1] for spec in MODEL_SPECS.values() if spec.opts[:1] == ("MODEL.FISHNET.CHECKPOINT",)}
    assert rows == {True, ("stride4", "tail"), LIGHT_CHECKPOINT, *CHECKPOINT_CHOICES} - {"none", "all"}
    light = parse_models(["fishnet150-ckpt-stem-tail-bridge-body4-body3"])[0]
    assert light.name == "FishNet-150 ckpt stem+tail+bridge+body4+body3"
    assert parse_models(["fishnet150-ckpt-stride4-tail"])[0].name == "FishNet-150 ckpt stride4+tail"
    assert MODEL_SPECS["fishnet150-plain"].plain_reference
    assert MODEL_SPECS["fishnet150-compile"].opts == ("MODEL.FISHNET.COMPILE", "inductor")


def test_plain_reference_loads_fishnets_state_dict():
    from fishnet_d2 import FishNet

    from .common import TINY_ARCH

    fish = FishNet(TINY_ARCH, norm="FrozenBN")
    plain = PlainFishNet(TINY_ARCH, norm="FrozenBN")
    plain.load_state_dict(fish.state_dict())  # strict: the same keys and shapes
    assert all(p.is_contiguous() for p in plain.parameters())  # NCHW, as built
    assert not any(type(m).__name__.startswith("Fused") for m in plain.modules())


def test_instruction_sets_from_cpuinfo_flags():
    assert instruction_sets("flags\t\t: fpu sse avx2 fma avx512f avx512_vnni\n") == "AVX-512 VNNI, AVX-512, AVX2"
    assert instruction_sets("flags\t\t: fpu avx avx2\n") == "AVX2"
    assert instruction_sets("flags\t\t: fpu sse4_2\n") == "no AVX2"


def test_stolen_cpu_time_from_proc_stat():
    before = cpu_ticks("cpu  100 0 50 800 10 0 5 35 7 0\ncpu0 50 0 25 400 5 0 2 18 3 0\n")
    assert before == (35, 1000)  # steal; user..steal (guest is inside user)
    after = (35 + 30, 1000 + 200)
    assert stolen_fraction(before, after) == pytest.approx(0.15)
    assert stolen_fraction(None, after) is None and stolen_fraction(after, after) is None
    with pytest.raises(ValueError, match="expected 'cpu user nice"):
        cpu_ticks("intr 1 2 3\n")


def test_bad_arguments_name_what_is_allowed():
    with pytest.raises(ValueError, match="allowed: .*fishnet150"):
        parse_models(["fishnet151"])
    with pytest.raises(ValueError, match="multiples of 32"):
        parse_args(["--size", "500", "640"])
    with pytest.raises(ValueError, match="--device gpu: allowed"):
        parse_args(["--device", "gpu"])
    with pytest.raises(ValueError, match="--kinds .*unknown \\['training'\\]; allowed: .*backbone_train"):
        parse_args(["--kinds", "backbone_train", "training"])
    assert parse_args(["--kinds", "inference"]).kinds == ["inference"]
    quick = parse_args(["--quick"])
    assert quick.reps == 1 and tuple(quick.size) == (128, 160)
    assert parse_args(["--quick", "--reps", "3"]).reps == 3


def test_markdown_table_has_every_model_and_ratio():
    report = {
        "environment": {"device": "CPU", "threads": 2, "torch": "t", "detectron2": "d",
                        "load_min": 0.1, "load_max": 0.5},  # fmt: skip
        "args": {"size": [512, 640], "det_size": [800, 1216], "batch": 2, "reps": 3, "warmup": 1},
        "results": {
            name: {
                "params": {"backbone": 1e6, "model": 2e6},
                "flops": {"backbone_size": 1e9},
                "summary": {"backbone_train": {"median": 1.5}, "inference": {"median": 0.25}},
                "memory": {"backbone_train": 2**20},
                "detections": 100,
            }
            for name in ("FishNet-150", "R-101")
        },
        "ratios": [{"label": "FishNet-150 / R-101, x", "value": 0.9, "target": 1.0, "met": True}],
    }
    report["environment"]["isa"] = "AVX-512, AVX2"
    report["environment"]["stolen"] = 0.123
    report["ratios"].append({"label": "A / B, y", "value": 1.5, "target": -1.3, "met": True})
    report["ratios"].append({"label": "A / C, z", "value": 0.5, "target": None, "met": None})
    text = markdown(report)
    assert "| FishNet-150 | 1.50 | 1500.00 | - | 0.25 | 100 | 1 |" in text and "| R-101 |" in text
    assert "| FishNet-150 / R-101, x | 0.900 | <= 1.0 (met) |" in text
    assert "| A / B, y | 1.500 | >= 1.3 (met) |" in text and "| A / C, z | 0.500 | - |" in text
    assert text.startswith("Device: CPU (AVX-512, AVX2); 2 threads")
    assert "during the rounds, 12.3% of CPU time stolen; medians" in text


@pytest.fixture(scope="module")
def random_tiny_detector():
    """A tiny FishNet Mask R-CNN with random weights, as the benchmark builds its detectors."""
    from detectron2.modeling import build_model

    from .common import fishnet_cfg, use_tiny_arch

    cfg = fishnet_cfg()
    cfg.merge_from_file(str(REPO / "configs/Base-RCNN-FishNet-FPN.yaml"))
    use_tiny_arch(cfg)
    cfg.MODEL.MASK_ON = True
    torch.manual_seed(0)
    return build_model(cfg).eval()


@pytest.mark.parametrize("cap", [20, 400])
def test_every_model_runs_its_mask_head_on_the_detection_cap(random_tiny_detector, cap, monkeypatch):
    """The inference times compare models on the same mask-head work: calibrated, a random
    detector returns exactly TEST.DETECTIONS_PER_IMAGE detections (R-50 and FishNet-150 had
    32 and 100 when the threshold let a fixed 300 class scores through NMS; 400 needs more)."""
    model = random_tiny_detector
    monkeypatch.setattr(model.roi_heads.box_predictor, "test_topk_per_image", cap)
    inputs = inference_input(128, 160, seed=3, device="cpu")
    assert calibrate_detections(model, inputs) == cap
    with torch.no_grad():
        assert len(model(inputs)[0]["instances"]) == cap


def test_too_many_detections_wanted_is_an_error(random_tiny_detector, monkeypatch):
    model = random_tiny_detector
    # 5 proposals of 80 classes: at most 400 detections, fewer than the 500 asked for.
    monkeypatch.setitem(model.proposal_generator.post_nms_topk, False, 5)
    monkeypatch.setattr(model.roi_heads.box_predictor, "test_topk_per_image", 500)
    with pytest.raises(RuntimeError, match="fewer than the 500 .*DETECTIONS_PER_IMAGE"):
        calibrate_detections(model, inference_input(64, 64, seed=3, device="cpu"))

"""tools/benchmark.py's parts (fishnet_d2.apps.benchmark): peak memory, FLOPs, paired ratios,
arguments, the CPU's instruction sets, the plain row (FishNet with every fast path off, which
must be the same network), and the performance document it writes. (Nothing here times anything:
the runs are faked.)"""

import json

import pytest
import torch
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

from fishnet_d2 import FishNet
from fishnet_d2.apps.benchmark import (
    LEAN_CHECKPOINT,
    LIGHT_CHECKPOINT,
    MODEL_SPECS,
    calibrate_detections,
    count_flops,
    cpu_ticks,
    inference_input,
    instruction_sets,
    load_reports,
    main,
    markdown,
    parse_args,
    parse_models,
    peak_memory,
    plain_fishnet,
    ratios,
    stolen_fraction,
    write_doc,
)
from fishnet_d2.apps.benchmark import cli as benchmark_cli
from fishnet_d2.apps.benchmark.report import DOC_BEGIN, DOC_END
from fishnet_d2.apps.benchmark.workloads import KINDS
from fishnet_d2.modeling.optimize import CHECKPOINT_CHOICES

from .support import REPO, TINY_ARCH, fishnet_cfg, shrink_config, use_tiny_arch


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
        "FishNet-150 compiled": result([1.6, 7.0, 3.6]),
    }
    measured = {r["label"]: r for r in ratios(results)}
    out = {label: r["value"] for label, r in measured.items()}
    assert out["FishNet-150 / R-101, backbone fwd+bwd time"] == pytest.approx(0.9)  # 1.0, 0.9, 0.75
    assert measured["FishNet-150 / R-101, backbone fwd+bwd time"]["range"] == pytest.approx([0.75, 1.0])
    assert out["FishNet-150 plain / FishNet-150, backbone fwd+bwd time"] == pytest.approx(1.4)  # 1.5, 1.0, 1.4
    assert out["FishNet-150 ckpt / FishNet-150, backbone fwd+bwd time"] == pytest.approx(1.1)
    assert out["FishNet-150 ckpt / FishNet-150, backbone training peak memory"] == pytest.approx(0.5)
    light = "FishNet-150 ckpt stem+tail+bridge+body4+body3 / FishNet-150"
    assert out[f"{light}, backbone fwd+bwd time"] == pytest.approx(1.1)  # 1.1, 1.1, 1.0
    assert out[f"{light}, backbone training peak memory"] == pytest.approx(0.8)
    assert out["FishNet-150 compiled / FishNet-150, backbone fwd+bwd time"] == pytest.approx(0.8)
    assert not any("R-50" in label or "stride4" in label for label in out)  # not measured: no ratio


def test_every_checkpointing_choice_has_a_row():
    rows = {spec.opts[1] for spec in MODEL_SPECS.values() if spec.opts[:1] == ("MODEL.FISHNET.CHECKPOINT",)}
    assert rows == {True, ("stride4", "tail"), LIGHT_CHECKPOINT, LEAN_CHECKPOINT, *CHECKPOINT_CHOICES} - {"none", "all"}
    light = parse_models(["fishnet150-ckpt-stem-tail-bridge-body4-body3"])[0]
    assert light.name == "FishNet-150 ckpt stem+tail+bridge+body4+body3"
    assert parse_models(["fishnet150-ckpt-stride4-tail"])[0].name == "FishNet-150 ckpt stride4+tail"
    assert MODEL_SPECS["fishnet150-plain"].plain_reference
    assert MODEL_SPECS["fishnet150-compile"].opts == ("MODEL.FISHNET.COMPILE", "inductor")


def random_frozen_statistics(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for name, buffer in model.state_dict().items():
        if name.endswith(("running_mean", "bias")):
            buffer.copy_(torch.randn(buffer.shape, generator=g) * 0.1)
        elif name.endswith(("running_var", "weight")) and buffer.dim() == 1:
            buffer.copy_(torch.rand(buffer.shape, generator=g) + 0.5)


def test_plain_row_is_fishnet_with_the_same_outputs_and_gradients():
    """The plain row is the same network (float64, training mode, frozen stem conv), computed
    without the fast paths: NCHW weights, Detectron2's own FrozenBatchNorm2d, nothing folded."""
    torch.manual_seed(0)
    fast = FishNet(TINY_ARCH, norm="FrozenBN", freeze_stem_conv1=True).double()
    random_frozen_statistics(fast, seed=1)
    plain = plain_fishnet(fast).double()
    norms = [m for m in plain.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert norms and all(type(m) is FrozenBatchNorm2d for m in norms)
    assert all(p.is_contiguous() for p in plain.parameters())  # NCHW
    assert [p.requires_grad for p in plain.parameters()] == [p.requires_grad for p in fast.parameters()]
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64, requires_grad=True)
    fast_out, plain_out = fast(x), plain(x)
    assert list(fast_out) == list(plain_out)
    for name in fast_out:
        torch.testing.assert_close(plain_out[name], fast_out[name], rtol=1e-9, atol=1e-9)
    trained = [p.requires_grad for p in fast.parameters()]
    assert not all(trained)  # the stem conv is frozen
    fast_grads = torch.autograd.grad(
        sum(o.pow(2).sum() for o in fast_out.values()), [x, *(p for p in fast.parameters() if p.requires_grad)]
    )
    plain_grads = torch.autograd.grad(
        sum(o.pow(2).sum() for o in plain_out.values()), [x, *(p for p in plain.parameters() if p.requires_grad)]
    )
    assert len(plain_grads) == len(fast_grads) == 1 + sum(trained)
    for a, b in zip(plain_grads, fast_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


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
    with pytest.raises(ValueError, match="--write-doc perf.txt: allowed a markdown file"):
        parse_args(["--write-doc", "perf.txt"])
    assert parse_args(["--kinds", "inference"]).kinds == ["inference"]
    quick = parse_args(["--quick"])
    assert quick.reps == 1 and tuple(quick.size) == (128, 160)
    assert parse_args(["--quick", "--reps", "3"]).reps == 3


def fake_measurement(args):
    """What benchmark_cli.run returns for ``args`` (parsed, or a command line), for two models,
    without measuring anything."""
    args = parse_args(args) if isinstance(args, list) else args
    results = {
        name: {
            "params": {"backbone": 1e6, "model": 2e6},
            "flops": {"backbone_size": 1e9},
            "times": {"backbone_train": times, "inference": [0.25, 0.25]},
            "summary": {"backbone_train": {"median": sum(times) / 2}, "inference": {"median": 0.25}},
            "memory": {"backbone_train": 2**20},
            "detections": 100,
        }
        for name, times in (("FishNet-150", [1.5, 1.5]), ("R-101", [2.0, 1.0]))
    }
    environment = {"device": "Fake CPU, 2 cores (CPU)", "isa": "AVX-512, AVX2", "threads": 2, "torch": "t",
                   "detectron2": "d", "load_min": 0.1, "load_max": 0.5, "stolen": 0.123}  # fmt: skip
    return {"environment": environment, "args": vars(args), "results": results, "ratios": ratios(results)}


def test_markdown_has_the_machine_every_model_and_ratio():
    text = markdown(fake_measurement(["--reps", "2"]))
    assert text.startswith("Device: Fake CPU, 2 cores (CPU) (AVX-512, AVX2); 2 threads; torch t, detectron2 d")
    assert "during the rounds, 12.3% of CPU time stolen; medians of 2 rounds after 1 warm-up" in text
    assert "| FishNet-150 | 1.50 | - | 0.25 | 100 | 1 | - | - |" in text and "| R-101 | 1.50 |" in text
    assert "| FishNet-150 / R-101, backbone fwd+bwd time | 1.125 |" in text  # rounds: 0.75, 1.5
    assert "target" not in text and "met" not in text


def test_a_run_writes_its_command_and_tables_into_the_document(tmp_path, monkeypatch):
    """--write-doc: the generated part of the document is the run's command, machine and
    tables; the explanations around it are kept; the data goes beside it."""
    monkeypatch.setattr(benchmark_cli, "run", fake_measurement)
    doc = tmp_path / "performance.md"
    doc.write_text(f"# Performance\n\nHow to read it.\n\n{DOC_BEGIN}\nan older run\n{DOC_END}\n\nMore text.\n")
    argv = ["--reps", "2", "--models", "fishnet150", "r101", "--output", str(tmp_path / "out"), "--write-doc", str(doc)]
    main(argv)
    text = doc.read_text()
    assert text.startswith("# Performance\n\nHow to read it.\n\n" + DOC_BEGIN) and text.endswith(f"{DOC_END}\n\nMore text.\n")
    assert "an older run" not in text
    command = "python tools/benchmark.py --reps 2 --models fishnet150 r101 --output " + str(tmp_path / "out")
    assert f"```bash\n{command} --write-doc {doc}\n```" in text
    assert "Device: Fake CPU, 2 cores (CPU) (AVX-512, AVX2); 2 threads" in text
    assert "| FishNet-150 / R-101, backbone fwd+bwd time | 1.125 |" in text
    (saved,) = json.loads(doc.with_suffix(".json").read_text())
    assert saved["command"].startswith(command) and saved["results"]["R-101"]["times"]["backbone_train"] == [2.0, 1.0]
    assert json.loads((tmp_path / "out" / "benchmark.json").read_text())["command"] == saved["command"]

    # Regenerated from the saved data without measuring: the same document.
    monkeypatch.setattr(benchmark_cli, "run", None)
    main(["--from-json", str(doc.with_suffix(".json")), "--write-doc", str(doc)])
    assert doc.read_text() == text


def test_a_new_document_holds_the_generated_part_and_a_bad_one_is_left_alone(tmp_path):
    report = {"command": "python tools/benchmark.py --quick", **fake_measurement(["--quick"])}
    new = tmp_path / "new.md"
    write_doc(new, [report, report])
    text = new.read_text()
    assert text.startswith(DOC_BEGIN) and text.endswith(DOC_END + "\n")
    assert "### Run 1" in text and "### Run 2" in text
    assert load_reports([str(new.with_suffix(".json"))]) == json.loads(json.dumps([report, report]))

    bad = tmp_path / "bad.md"
    bad.write_text("# Performance, without the generated part's markers\n")
    with pytest.raises(ValueError, match="must have one line .*generated by tools/benchmark.py"):
        write_doc(bad, [report])
    assert bad.read_text() == "# Performance, without the generated part's markers\n"
    assert not bad.with_suffix(".json").exists()
    (tmp_path / "partial.json").write_text(json.dumps({"results": {}}))
    with pytest.raises(ValueError, match="partial.json: a run without \\['command', 'environment'"):
        load_reports([str(tmp_path / "partial.json")])


def test_the_performance_document_is_what_the_benchmark_generates(tmp_path):
    """docs/performance.md's tables are the ones tools/benchmark.py writes from the runs saved
    beside it (docs/performance.json): nobody edited a figure by hand."""
    doc = tmp_path / "performance.md"
    doc.write_text((REPO / "docs" / "performance.md").read_text())
    write_doc(doc, load_reports([str(REPO / "docs" / "performance.json")]))
    assert doc.read_text() == (REPO / "docs" / "performance.md").read_text()


@pytest.fixture(scope="module")
def random_tiny_detector():
    """A Mask R-CNN FPN from the configs' base on TINY_ARCH with random weights, as the
    benchmark builds its detectors (80 classes, Detectron2's proposal counts)."""
    from detectron2.modeling import build_model

    cfg = fishnet_cfg()
    cfg.merge_from_file(str(REPO / "configs/Base-RCNN-FishNet-FPN.yaml"))
    use_tiny_arch(cfg)
    cfg.MODEL.MASK_ON = True
    torch.manual_seed(0)
    return build_model(cfg).eval()


@pytest.mark.parametrize("cap", [20, pytest.param(400, marks=pytest.mark.slow)])  # 400: seconds
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


@pytest.mark.slow  # calibration searches for 500 detections before it gives up: seconds
def test_too_many_detections_wanted_is_an_error(random_tiny_detector, monkeypatch):
    model = random_tiny_detector
    # 5 proposals of 80 classes: at most 400 detections, fewer than the 500 asked for.
    monkeypatch.setitem(model.proposal_generator.post_nms_topk, False, 5)
    monkeypatch.setattr(model.roi_heads.box_predictor, "test_topk_per_image", 500)
    with pytest.raises(RuntimeError, match="fewer than the 500 .*DETECTIONS_PER_IMAGE"):
        calibrate_detections(model, inference_input(64, 64, seed=3, device="cpu"))


# --- rows for choosing the fast paths by device; mixed precision ------------------------------------


def test_each_path_chosen_by_device_has_a_row_with_it_off_and_ratios_against_it_on():
    assert MODEL_SPECS["fishnet150-nchw"].opts == ("MODEL.FISHNET.CHANNELS_LAST", False)
    assert MODEL_SPECS["fishnet150-unfolded"].opts == ("MODEL.FISHNET.FOLD_FROZEN_BN", False)
    for key in ("r50-cl", "r101-cl"):
        spec = MODEL_SPECS[key]
        assert spec.channels_last and spec.family == "resnet" and spec.name.endswith("channels-last")
    results = {
        name: {"times": {"backbone_train": [1.0, 2.0], "train_iter": [1.0, 4.0]}, "memory": {}}
        for name in ("FishNet-150", "FishNet-150 NCHW", "FishNet-150 unfolded")
    }
    results["FishNet-150 NCHW"]["times"] = {"backbone_train": [1.5, 2.0], "train_iter": [2.0, 4.0]}
    measured = {r["label"]: r["value"] for r in ratios(results)}
    assert measured["FishNet-150 NCHW / FishNet-150, backbone fwd+bwd time"] == pytest.approx(1.25)
    assert measured["FishNet-150 NCHW / FishNet-150, training iteration time"] == pytest.approx(1.5)
    assert measured["FishNet-150 unfolded / FishNet-150, training iteration time"] == pytest.approx(1.0)
    chosen = ratios(results, pairs=[("FishNet-150 NCHW", "FishNet-150", "train_iter")])
    assert [r["label"] for r in chosen] == ["FishNet-150 NCHW / FishNet-150, training iteration time"]


def test_a_resnet_row_in_channels_last_is_converted_after_it_is_built():
    from fishnet_d2.apps.benchmark import build_detector

    model = build_detector(MODEL_SPECS["r50-cl"], "cpu")
    assert model.backbone.bottom_up.stem.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.roi_heads.mask_head.mask_fcn1.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.fixture(scope="module")
def small_detector():
    """A Mask R-CNN FPN shrunk (TINY_ARCH, narrow heads: float16 convolutions are slow on CPUs)
    for steps run here, with the benchmark's 80 classes (not the shared detector)."""
    from detectron2.modeling import build_model

    cfg = fishnet_cfg()
    cfg.merge_from_file(str(REPO / "configs/Base-RCNN-FishNet-FPN.yaml"))
    shrink_config(cfg, num_classes=80)
    cfg.MODEL.MASK_ON = True
    cfg.TEST.DETECTIONS_PER_IMAGE = 10
    torch.manual_seed(0)
    return build_model(cfg)


@pytest.mark.parametrize("amp, dtype", [(None, torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_amp_runs_every_step_under_autocast_and_fp16_training_scales_its_loss(small_detector, amp, dtype):
    from fishnet_d2.apps.benchmark import Workloads

    argv = ["--quick", "--size", "64", "64", "--det-size", "128", "128", "--instances", "2"]
    args = parse_args(argv + (["--amp", amp] if amp else []))
    workloads = Workloads(MODEL_SPECS["fishnet150"], small_detector, args, "cpu")
    seen = []  # the dtype of the stem's first convolution's output, at each call
    hook = workloads.backbone.stem.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    scaled = []
    if workloads.scaler is not None:
        scale = workloads.scaler.scale
        workloads.scaler.scale = lambda loss: scaled.append(loss.detach()) or scale(loss)
    try:
        for kind in KINDS:
            workloads.prepare(kind)
            workloads.steps[kind]()
    finally:
        hook.remove()
    assert seen == [dtype] * len(KINDS)
    assert (workloads.scaler is not None) == (amp == "fp16")
    assert len(scaled) == (1 if amp == "fp16" else 0) and all(torch.isfinite(s) for s in scaled)
    text = markdown(fake_measurement(argv + (["--amp", amp] if amp else [])))
    assert ("autocast" in text.splitlines()[0]) == (amp is not None)
    if amp == "fp16":
        assert "autocast float16 (training with a GradScaler" in text

"""How large each part of the check runs, by device, as data: on a GPU the sizes that answer the
questions (FishNet-150's Mask R-CNN at 800x1216, the demo's whole schedule), on the CPU the same
code on sizes that take seconds, so that the suite runs every part on every CI run."""

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from fishnet_d2.modeling import FishNetArch, fishnet_arch_to_config

from ..data import ShapeImageParams, SyntheticShapesSpec

__all__ = ["Scale", "SCALES", "scale_for", "CHECK_ARCH", "SMALL_DETECTOR_OPTS", "BENCHMARK_MODELS", "CPU_BENCHMARK_MODELS"]

# A detector that takes seconds on a CPU (with narrow FPN and heads, few proposals: below): one
# block per stage. The GPU runs the configs as they are.
SMALL_ARCH = FishNetArch(
    stem_channels=16,
    tail_channels=(16, 32, 64),
    body_channels=(64, 48, 32),
    head_channels=(48, 112, 208),
    tail_blocks=(1, 1, 1),
    bridge_blocks=1,
    body_blocks=(1, 1, 1),
    head_blocks=(1, 1, 1),
    body_transfer_blocks=(1, 1, 1),
    head_transfer_blocks=(1, 1, 1),
)

# The FishNet of the equivalence checks: narrow, with runs of blocks long enough that the
# memory-efficient path recovers inputs in each place it can (tail4, head2's refinement, transfer
# runs; tests/test_training_memory.py's LONG_RUNS_ARCH). Float64 on every device.
CHECK_ARCH = dataclasses.replace(
    SMALL_ARCH,
    tail_blocks=(1, 4, 2),
    bridge_blocks=3,
    head_blocks=(2, 1, 2),
    body_transfer_blocks=(1, 2, 2),
    head_transfer_blocks=(1, 1, 3),
)


def _arch_opts(arch: FishNetArch) -> Tuple[str, ...]:
    """``MODEL.FISHNET`` overrides that make a config's FishNet ``arch`` (DEPTH 0)."""
    values = fishnet_arch_to_config(arch)
    opts = ["MODEL.FISHNET.DEPTH", "0"]
    for key, value in values["ARCH"].items():  # lists without spaces: one word each on a command line
        opts += [f"MODEL.FISHNET.ARCH.{key}", str(list(value) if isinstance(value, (list, tuple)) else value).replace(" ", "")]
    return tuple(opts)


SMALL_DETECTOR_OPTS = _arch_opts(SMALL_ARCH) + (
    "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "32",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "100",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "30",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "16",
    "TEST.DETECTIONS_PER_IMAGE", "10",
)  # fmt: skip

# The benchmark's rows: FishNet-99/150/201 against R-50 and R-101 (also in channels-last), each
# path that DEVICE_DEFAULTS chooses by device off, and the memory choice (docs/performance.md:
# MEMORY_EFFICIENT with CHECKPOINT [stem, tail3, body2]).
BENCHMARK_MODELS = (
    "fishnet99", "fishnet150", "fishnet201", "r50", "r101", "r50-cl", "r101-cl",
    "fishnet150-nchw", "fishnet150-unfolded", "fishnet150-lean-ckpt-stem-tail3-body2",
)  # fmt: skip
# On the CPU one row of each kind (the others differ from them by their config alone; a ResNet in
# channels-last by one conversion, which tests/test_benchmark_tool.py checks).
CPU_BENCHMARK_MODELS = (
    "fishnet150", "r50", "fishnet150-nchw", "fishnet150-unfolded", "fishnet150-lean-ckpt-stem-tail3-body2",
)  # fmt: skip


@dataclass(frozen=True)
class Scale:
    """The sizes of every part on one kind of device, and the seconds each is expected to take
    there (the GPU's: estimates for an H100 from a prepared environment, docs/performance.md)."""

    name: str
    # correctness: the equivalence checks' input (images, height, width), float64.
    equivalence_input: Tuple[int, int, int]
    # amp: FishNet-150's Mask R-CNN training steps (with these config overrides).
    amp_opts: Tuple[str, ...]
    amp_image_size: Tuple[int, int]
    amp_steps: int
    # amp: the total loss of fp16 and bf16 before and after the steps, relative to fp32's, at most.
    # Autocast rounds activations to 11 (fp16) or 8 (bf16) significant bits, which moves the RPN's
    # scores enough to change some of the proposals the heads sample, and so their losses; a
    # broken cast (an overflow, a loss in float16) moves it by far more, or makes it non-finite.
    amp_loss_bounds: Dict[str, float]
    # amp: the backbone step whose peak memory is measured, default and memory-efficient path.
    amp_memory_size: Tuple[int, int]
    # benchmark: tools/benchmark.py's command line, run once in float32 and once with --amp.
    benchmark_argv: Tuple[str, ...]
    benchmark_amp: str
    # training: the demo's config with these overrides, on this dataset (None: the demo's own).
    training_opts: Tuple[str, ...]
    training_dataset: Optional[SyntheticShapesSpec]
    # Whether the training is the demo's whole schedule, so that its AP compares with the CPU demo's.
    compare_ap: bool
    # torch's intra-op threads for the run (None: torch's default).
    threads: Optional[int] = None
    expected_seconds: Dict[str, int] = field(default_factory=dict)


_BENCHMARK_COMMON = ("--no-flops", "--batch", "2")

SCALES: Dict[str, Scale] = {
    "cuda": Scale(
        name="GPU: the configs' models at their training sizes, the demo's whole schedule",
        equivalence_input=(2, 128, 192),
        amp_opts=(),
        amp_image_size=(800, 1216),
        amp_steps=5,
        # 512 proposals sampled per image: measured 0.3% (bf16, the first step, CPU at 256x384).
        amp_loss_bounds={"fp16": 0.05, "bf16": 0.10},
        amp_memory_size=(512, 640),
        # Medians of 3 rounds after 1 warm-up: a GPU's rounds vary by a few percent, a shared
        # CPU's by tens (docs/performance.md).
        benchmark_argv=("--models", *BENCHMARK_MODELS, *_BENCHMARK_COMMON, "--reps", "3", "--warmup", "1"),
        benchmark_amp="fp16",
        # Data loading in 4 worker processes: the demo's (its default, 0, maps every image in the
        # training process, which a GPU would wait for). The same images and augmentations.
        training_opts=("DATALOADER.NUM_WORKERS", "4"),
        training_dataset=None,
        compare_ap=True,
        expected_seconds={"correctness": 40, "amp": 45, "benchmark": 150, "training": 150},
    ),
    "cpu": Scale(
        name="CPU: every part on small sizes (seconds), that the suite runs",
        equivalence_input=(2, 64, 96),
        amp_opts=SMALL_DETECTOR_OPTS,
        amp_image_size=(64, 64),
        amp_steps=3,
        # 16 proposals sampled per image: one changed proposal moves a loss more. Measured up to
        # 3.5% (fp16) and 4.4% (bf16) over 6 seeds.
        amp_loss_bounds={"fp16": 0.10, "bf16": 0.10},
        amp_memory_size=(64, 64),
        benchmark_argv=(
            "--models", *CPU_BENCHMARK_MODELS, *_BENCHMARK_COMMON, "--reps", "1", "--warmup", "0", "--size", "64", "64",
            "--det-size", "128", "128", "--instances", "2", "--opts", *SMALL_DETECTOR_OPTS,
        ),  # fmt: skip
        # float16 convolutions run ~60x slower than float32 on CPUs without AVX-512 FP16
        # (measured: 3.4 s against 0.06 s for a 256-channel 3x3 conv): bfloat16, which the CPU
        # has; the amp part runs float16 too, on its small sizes.
        benchmark_amp="bf16",
        training_opts=(
            "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
            "SOLVER.STEPS", "()", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
            "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
            # Detections from a model trained for 2 iterations (its scores are under the 0.05 of
            # the config): an AP to compute and detections to compare with the exported model's.
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
        ),  # fmt: skip
        training_dataset=SyntheticShapesSpec(
            seed=7, num_train=4, num_val=2, image=ShapeImageParams(height=64, width=64, shape_size=(16, 40))
        ),
        compare_ap=False,
        # One thread: these small models run fastest in one, and on a machine busy with other
        # jobs two threads ran the correctness part 12x slower (54 s against 4.7 s, 2 cores).
        threads=1,
        expected_seconds={"correctness": 5, "amp": 5, "benchmark": 15, "training": 15},
    ),
}

def scale_for(device: str) -> Scale:
    """The scale of ``device``'s kind ("cuda:1" -> "cuda")."""
    kind = device.split(":")[0]
    if kind not in SCALES:
        raise ValueError(f"device {device!r}: allowed {sorted(SCALES)} (cuda:N too)")
    return SCALES[kind]

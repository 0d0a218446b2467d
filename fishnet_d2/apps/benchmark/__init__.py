"""The benchmark (``tools/benchmark.py``): FishNet-99/150/201 against Detectron2's R-50 and
R-101, each as a Mask R-CNN FPN with FrozenBN, in one run on one machine; also FishNet-150 with
every fast path off (``fishnet150-plain``), with activation checkpointing (``fishnet150-ckpt*``),
compiled (``fishnet150-compile``), with each path chosen by device off (``fishnet150-nchw``,
``fishnet150-unfolded``), and the ResNets in channels-last (``r50-cl``, ``r101-cl``); in float32 or
under autocast (``--amp fp16``, ``bf16``). It measures parameters, FLOPs, the backbone's forward +
backward time, a training iteration, inference per image and peak tensor memory, and writes the
tables, with the machine and the command, into ``docs/performance.md`` (``--write-doc``)."""

from .cli import main, parse_args, run
from .machine import cpu_ticks, environment, instruction_sets, stolen_fraction
from .measure import count_flops, count_parameters, peak_memory, wall_time
from .models import (
    LEAN_CHECKPOINT,
    LIGHT_CHECKPOINT,
    MODEL_SPECS,
    ModelSpec,
    build_detector,
    calibrate_detections,
    imagenet_classifier,
    inference_input,
    parse_models,
    plain_fishnet,
)
from .report import RATIOS, load_reports, markdown, ratios, write_doc
from .workloads import AMP_DTYPES, KINDS, Workloads

__all__ = [
    "main",
    "parse_args",
    "run",
    "cpu_ticks",
    "environment",
    "instruction_sets",
    "stolen_fraction",
    "count_flops",
    "count_parameters",
    "peak_memory",
    "wall_time",
    "LEAN_CHECKPOINT",
    "LIGHT_CHECKPOINT",
    "MODEL_SPECS",
    "ModelSpec",
    "build_detector",
    "calibrate_detections",
    "imagenet_classifier",
    "inference_input",
    "parse_models",
    "plain_fishnet",
    "RATIOS",
    "load_reports",
    "markdown",
    "ratios",
    "write_doc",
    "AMP_DTYPES",
    "KINDS",
    "Workloads",
]

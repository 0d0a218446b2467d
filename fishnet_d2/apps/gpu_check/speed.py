"""Part "benchmark": ``tools/benchmark.py``'s rows on the device (:mod:`fishnet_d2.apps.benchmark`,
in this process), once in float32 and once under autocast: FishNet-99/150/201 against R-50 and
R-101 (also in channels-last), FishNet-150 with each path that the device defaults choose off, and
the memory choice; times of the backbone step, a training iteration and inference, peak memory
(``torch.cuda.max_memory_allocated`` on a GPU). Each ratio is the median of paired rounds of one
run. And the data to choose each path's default on this device (``DEVICE_DEFAULTS``)."""

import shlex
import warnings
from typing import Dict, List, Tuple

from fishnet_d2.modeling.optimize.device_defaults import PATHS_BY_DEVICE, device_defaults

from ..benchmark.cli import parse_args, run
from ..benchmark.report import markdown, ratios
from .records import Check, PartResult
from .scale import Scale

__all__ = ["FISHNET_ROWS", "RESNET_ROWS", "PATH_ROWS", "comparison_pairs", "run_benchmark"]

FISHNET_ROWS = ("FishNet-99", "FishNet-150", "FishNet-201")
RESNET_ROWS = ("R-50", "R-101", "R-50 channels-last", "R-101 channels-last")
# Each path chosen by device: the row with it off, compared with FishNet-150 (on).
PATH_ROWS = {"channels_last": "FishNet-150 NCHW", "fold_frozen_bn": "FishNet-150 unfolded"}
MEMORY_CHOICE = "FishNet-150 lean ckpt stem+tail3+body2"
KIND_LABELS = {"backbone_train": "backbone fwd+bwd", "train_iter": "train iter", "inference": "inference"}


def comparison_pairs() -> List[Tuple[str, str, str]]:
    """The ratios of the report: each FishNet against each ResNet row, each path off against on,
    the memory choice against FishNet-150 and R-101; times of each kind, and peak memory."""
    kinds = list(KIND_LABELS)
    pairs = [(f, r, k) for f in FISHNET_ROWS for r in RESNET_ROWS for k in kinds]
    pairs += [(f, r, f"memory:{k}") for f in FISHNET_ROWS for r in ("R-50", "R-101") for k in ("backbone_train", "train_iter")]
    pairs += [(row, "FishNet-150", k) for row in PATH_ROWS.values() for k in kinds]
    pairs += [(MEMORY_CHOICE, "FishNet-150", k) for k in ("backbone_train", "train_iter")]
    pairs += [(MEMORY_CHOICE, "R-101", f"memory:{k}") for k in ("backbone_train", "train_iter")]
    return pairs


def ratio_table(reports: Dict[str, dict]) -> Tuple[str, Dict[str, Dict[str, float]]]:
    """The ratios of each run side by side (a time ratio: median of the run's paired rounds)."""
    values: Dict[str, Dict[str, float]] = {}
    for precision, report in reports.items():
        for r in ratios(report["results"], comparison_pairs()):
            values.setdefault(r["label"], {})[precision] = r["value"]
    header = "| ratio | " + " | ".join(reports) + " |\n|---|" + "---|" * len(reports)
    rows = [
        f"| {label} | " + " | ".join(f"{by[p]:.3f}" if p in by else "-" for p in reports) + " |"
        for label, by in values.items()
    ]
    return header + "\n" + "\n".join(rows), values


def defaults_table(device: str, values: Dict[str, Dict[str, float]]) -> Tuple[str, List[Check]]:
    """For each path chosen by device: its default here and the measured time with it off over
    with it on (above 1: the path helps), to revisit DEVICE_DEFAULTS with."""
    defaults = device_defaults(device)
    measured_on = defaults.measured_on or "not measured on this kind of device: the CPU's choices"
    lines = [
        f"DEVICE_DEFAULTS for {device} (fishnet_d2/modeling/optimize/device_defaults.py; measured on: "
        f"{measured_on}). Time with the path off / with it on: above 1, the path helps.",
        "",
        "| path | default here | " + " | ".join(f"{k} {p}" for k in KIND_LABELS.values() for p in ("fp32", "amp")) + " |",
        "|---|---|" + "---|" * (2 * len(KIND_LABELS)),
    ]
    checks = []
    for path in PATHS_BY_DEVICE:
        row, cells = PATH_ROWS[path], []
        for kind, label in KIND_LABELS.items():
            for precision in ("fp32", "amp"):
                value = values.get(f"{row} / FishNet-150, {_time_label(kind)}", {}).get(precision)
                cells.append("-" if value is None else f"{value:.3f}")
        lines.append(f"| {path} | {getattr(defaults, path)} | " + " | ".join(cells) + " |")
        measured = [c for c in cells if c != "-"]
        checks.append(Check(f"{path}: measured with it off and on, {len(measured)} of {len(cells)} ratios", len(measured),
                            passed=bool(measured), why="the data DEVICE_DEFAULTS is chosen by"))  # fmt: skip
    return "\n".join(lines), checks


def _time_label(kind: str) -> str:
    return {"backbone_train": "backbone fwd+bwd time", "train_iter": "training iteration time",
            "inference": "inference time per image"}[kind]  # fmt: skip


def run_benchmark(result: PartResult, device: str, scale: Scale) -> None:
    """Fill ``result`` with the benchmark's runs on ``device``, in float32 and with --amp."""
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch / detectron2 v0.6 notices, as the benchmark
    reports = {}
    for precision, extra in (("fp32", []), ("amp", ["--amp", scale.benchmark_amp])):
        args = parse_args([*scale.benchmark_argv, "--device", device, *extra])
        report = run(args)
        arguments = " ".join(map(shlex.quote, [*scale.benchmark_argv, "--device", device, *extra]))
        report["command"] = f"python tools/benchmark.py {arguments}"
        reports[precision] = report
        title = "float32" if precision == "fp32" else f"autocast {scale.benchmark_amp}"
        result.tables.append(f"{title}: tools/benchmark.py with `{arguments}`\n\n{markdown(report)}")
        missing = [name for name, r in report["results"].items() if not r["times"] or not any(r["times"].values())]
        result.checks.append(Check(f"{precision}: every row timed", not missing, passed=not missing,
                                   why=f"rows without times: {missing}" if missing else ""))  # fmt: skip
    table, values = ratio_table(reports)
    result.tables.append(f"Ratios, each the median of one run's paired rounds (amp: {scale.benchmark_amp}):\n\n{table}")
    defaults, checks = defaults_table(device, values)
    result.tables.append(defaults)
    result.checks += checks
    result.data["runs"] = reports
    result.data["ratios"] = values

"""Time per image of an exported model and of eager mode on the same inputs (``tools/export_model.py
--time N``): what deploying with the exported file gains or costs on this machine."""

import os
import platform
import time
from typing import Any, Callable, Dict, List, Sequence

import torch
from torch import Tensor, nn

from .exporters import Exported, eager_instances

__all__ = ["seconds_per_image", "time_export"]


def seconds_per_image(runs: Sequence[Callable[[Tensor], Any]], images: Sequence[Tensor], rounds: int) -> List[float]:
    """The mean seconds of each of ``runs`` on each of ``images``, over ``rounds`` passes in which
    the runs take turns (so that a busy machine slows them alike), after one untimed pass
    (warm-up: first-call allocations, onnxruntime's graph optimizations)."""
    for run in runs:
        for image in images:
            run(image)
    totals = [0.0] * len(runs)
    for _ in range(rounds):
        for k, run in enumerate(runs):
            start = time.perf_counter()
            for image in images:
                run(image)
            totals[k] += time.perf_counter() - start
    return [total / (rounds * len(images)) for total in totals]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_export(
    model: nn.Module, exported: Exported, images: Sequence[Tensor], rounds: int, threads: Sequence[int] = ()
) -> Dict[str, Any]:
    """Seconds per image of ``exported`` (its raw outputs, in the runtime it runs in) and of eager
    mode (the same outputs: :func:`eager_instances`), taking turns, with the machine; with
    ``threads``, once per thread count (torch's, AOTInductor's and onnxruntime's intra-op threads),
    else with torch's current count. torch's thread count is restored."""
    current = torch.get_num_threads()
    runs = []
    try:
        for count in threads or [current]:
            torch.set_num_threads(count)
            eager, exported_seconds = seconds_per_image(
                [lambda image: eager_instances(model, image), exported.run_raw], images, rounds
            )
            runs.append(
                {
                    "threads": count,
                    "eager_seconds_per_image": eager,
                    "exported_seconds_per_image": exported_seconds,
                    "exported_over_eager": exported_seconds / eager,
                }
            )
    finally:
        torch.set_num_threads(current)
    return {
        "images": [list(image.shape[1:]) for image in images],
        "rounds": rounds,
        "exported_runtime": exported.runtime,
        "machine": f"{_cpu_name()}, {os.cpu_count()} logical CPUs",
        "runs": runs,
    }

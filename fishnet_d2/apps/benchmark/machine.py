"""The machine a benchmark runs on: the CPU and its instruction sets, the time a hypervisor
stole, the software versions. What the timings depend on, printed with every run."""

import os
import platform
import subprocess
from pathlib import Path
from typing import Dict, Optional, Tuple

import detectron2
import fvcore
import torch

__all__ = ["instruction_sets", "cpu_ticks", "stolen_fraction", "read_cpu_ticks", "environment"]


def instruction_sets(cpuinfo: str) -> str:
    """The vector instruction sets a CPU has, from /proc/cpuinfo's flags: what oneDNN's and
    MKL's kernels (and so the timings) depend on most."""
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    named = [
        ("amx_tile", "AMX"),
        ("avx512_bf16", "AVX-512 BF16"),
        ("avx512_vnni", "AVX-512 VNNI"),
        ("avx512f", "AVX-512"),
        ("avx2", "AVX2"),
    ]
    found = [name for flag, name in named if flag in flags]
    return ", ".join(found) if found else ("no AVX2" if flags else "")


def cpu_ticks(stat: str) -> Tuple[int, int]:
    """``(stolen, total)`` clock ticks of all CPUs from /proc/stat's first line: the time a
    hypervisor ran something else on this virtual machine's CPUs, which slows every model's
    rounds unevenly, and the time in all."""
    fields = stat.splitlines()[0].split()
    if fields[0] != "cpu" or len(fields) < 9:
        raise ValueError(f"/proc/stat: expected 'cpu user nice system idle iowait irq softirq steal ...', got {fields[:9]}")
    ticks = [int(f) for f in fields[1:]]
    # guest and guest_nice (fields 9, 10) are already counted in user and nice.
    return ticks[7], sum(ticks[:8])


def stolen_fraction(before: Optional[Tuple[int, int]], after: Optional[Tuple[int, int]]) -> Optional[float]:
    """The share of CPU time stolen between two :func:`cpu_ticks` readings (None without them)."""
    if before is None or after is None or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def read_cpu_ticks() -> Optional[Tuple[int, int]]:
    stat = Path("/proc/stat")
    return cpu_ticks(stat.read_text()) if stat.exists() else None


def environment(device: str) -> Dict[str, object]:
    """The device (CPU model and cores, or GPU name), instruction sets, threads and versions."""
    isa = ""
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(device)
    else:
        cpuinfo = Path("/proc/cpuinfo")
        text = cpuinfo.read_text() if cpuinfo.exists() else ""
        model = next(
            (line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
            platform.processor() or "CPU",
        )
        name = f"{model}, {os.cpu_count()} cores (CPU)"
        isa = instruction_sets(text)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "device": name,
        "isa": isa,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "detectron2": detectron2.__version__,
        "fvcore": getattr(fvcore, "__version__", "unknown"),
        "python": platform.python_version(),
        "commit": commit,
    }

#!/usr/bin/env python
"""Benchmark FishNet-99/150/201 against Detectron2's R-50 and R-101, each as a Mask R-CNN FPN
with FrozenBN, in one run on this machine; also FishNet-150's plain eager reference
(``fishnet150-plain``: the same network and weights without fishnet_d2's fast paths) and its
activation checkpointing choices (``fishnet150-ckpt``: every stage; ``fishnet150-ckpt-stride4``,
``-tail``, ``-body``, ``-head``: MODEL.FISHNET.CHECKPOINT's named choices), and FishNet-150
compiled by torch.compile's inductor (``fishnet150-compile``: MODEL.FISHNET.COMPILE; its warm-up
round spends minutes compiling on a CPU).

Measures parameters, FLOPs (fvcore), backbone forward + backward time, training iteration time,
inference time per image and peak tensor memory. Times are medians over rounds; within a round
every model is measured once, one after the other (the order reversed every other round), so
that the machine's load falls on all of them alike. Writes benchmark.json, benchmark.md and
benchmark.png to --output.

    .venv/bin/python tools/benchmark.py                       # everything, defaults below
    .venv/bin/python tools/benchmark.py --quick               # smoke run: small inputs, 1 round
    .venv/bin/python tools/benchmark.py --models fishnet150 r101 --reps 9 --device cuda
    .venv/bin/python tools/benchmark.py --models fishnet150 fishnet150-plain r101 r50 \
        fishnet150-ckpt fishnet150-ckpt-stride4 --threads 2
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import detectron2
import fvcore
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmarking.measure import count_flops, count_parameters, peak_memory, wall_time  # noqa: E402
from benchmarking.models import (  # noqa: E402
    MODEL_SPECS,
    build_detector,
    imagenet_classifier,
    parse_models,
)
from benchmarking.report import markdown, plot, ratios, summarize  # noqa: E402
from benchmarking.workloads import KINDS, Workloads  # noqa: E402

QUICK = dict(size=(128, 160), det_size=(256, 320), reps=1, warmup=1)


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--models", nargs="+", default=list(MODEL_SPECS), help=f"of {list(MODEL_SPECS)}")
    p.add_argument("--reps", type=int, default=5, help="timed rounds (default: 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: 1)")
    p.add_argument("--size", type=int, nargs=2, default=(512, 640), metavar=("H", "W"),
                   help="backbone input for its fwd+bwd time and FLOPs (default: 512 640)")
    p.add_argument("--det-size", type=int, nargs=2, default=(800, 1216), metavar=("H", "W"),
                   help="detector images: training, inference and FLOPs (default: 800 1216)")
    p.add_argument("--batch", type=int, default=2, help="images per training step (default: 2)")
    p.add_argument("--instances", type=int, default=8, help="random ground truth per image")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--channels-last", action="store_true",
                   help="convert every model to the channels-last memory format (FishNet computes "
                   "in it by default, MODEL.FISHNET.CHANNELS_LAST; Detectron2's ResNets do not)")
    p.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE",
                   help="config options for every model, e.g. MODEL.BACKBONE.FREEZE_AT 0 "
                   "(ResNets) MODEL.FISHNET.FREEZE_AT 2 (FishNets)")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), metavar="KIND",
                   help=f"what to time and measure, of {list(KINDS)} (default: all)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak memory measurements")
    p.add_argument("--output", default="output/benchmark", help="directory for the results")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: {QUICK} unless given explicitly")  # fmt: skip
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    unknown = [k for k in args.kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"--kinds {args.kinds}: unknown {unknown}; allowed: {list(KINDS)}")
    if len(args.opts) % 2:
        raise ValueError(f"--opts {args.opts}: allowed KEY VALUE pairs")
    if args.reps < 1 or args.warmup < 0 or args.batch < 1 or args.instances < 1:
        raise ValueError("--reps, --batch and --instances must be >= 1 and --warmup >= 0")
    for flag in ("size", "det_size"):
        if min(getattr(args, flag)) < 32 or any(v % 32 for v in getattr(args, flag)):
            raise ValueError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: allowed multiples of 32")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available here; allowed: cpu")
    if not args.device.startswith(("cpu", "cuda")):
        raise ValueError(f"--device {args.device}: allowed cpu, cuda, cuda:N")
    return args


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
    isa = ""
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(device)
    else:
        model = next(
            (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")),
            platform.processor() or "CPU",
        ) if Path("/proc/cpuinfo").exists() else (platform.processor() or "CPU")  # fmt: skip
        name = f"{model}, {os.cpu_count()} cores (CPU)"
        isa = instruction_sets(Path("/proc/cpuinfo").read_text()) if Path("/proc/cpuinfo").exists() else ""
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


def static_measures(workloads: Workloads, args) -> dict:
    """Parameters and FLOPs (independent of the machine)."""
    spec, model, backbone = workloads.spec, workloads.model, workloads.backbone
    params = {"backbone": count_parameters(backbone), "model": count_parameters(model)}
    if spec.training_only or spec.compiled:  # the same network as another row
        return {"params": params, "flops": {}}
    device = args.device
    model.eval()
    flops = {
        "imagenet_224": count_flops(imagenet_classifier(spec).eval(), torch.zeros(1, 3, 224, 224)),
        "backbone_224": count_flops(backbone, torch.zeros(1, 3, 224, 224, device=device)),
        "backbone_size": count_flops(backbone, torch.zeros(1, 3, *args.size, device=device)),
        "model_det_size": count_flops(model, workloads.inference_input),
    }
    uncounted = sorted({op for f in flops.values() for op in f["uncounted_ops"]})
    return {
        "params": params,
        "flops": {k: f["total"] for k, f in flops.items()},
        "uncounted_ops": uncounted,
    }


def run(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    specs = parse_models(args.models)
    print(f"Building {', '.join(s.name for s in specs)} ...", flush=True)
    workloads = []
    for spec in specs:
        model = build_detector(spec, args.device, args.opts)
        if args.channels_last:
            model.to(memory_format=torch.channels_last)
        workloads.append(Workloads(spec, model, args, args.device))
    results = {}
    for w in workloads:
        print(f"Counting parameters and FLOPs of {w.spec.name} ...", flush=True)
        results[w.spec.name] = {**static_measures(w, args), "detections": w.detections}

    times = {w.spec.name: {kind: [] for kind in w.steps} for w in workloads}
    loads = []
    ticks = None
    for round_ in range(args.warmup + args.reps):
        if round_ == args.warmup:
            ticks = read_cpu_ticks()
        warm = round_ < args.warmup
        loads.append(os.getloadavg()[0])
        order = workloads if round_ % 2 == 0 else workloads[::-1]
        for kind in KINDS:
            for w in order:
                if kind not in w.steps:
                    continue
                w.prepare(kind)
                seconds = wall_time(w.steps[kind], args.device)
                if not warm:
                    times[w.spec.name][kind].append(seconds)
        label = "warm-up" if warm else f"{round_ - args.warmup + 1}/{args.reps}"
        print(f"Round {label} done (load average {loads[-1]:.2f})", flush=True)
    loads.append(os.getloadavg()[0])
    stolen = stolen_fraction(ticks, read_cpu_ticks())

    for w in workloads:
        memory = {}
        if not args.no_memory:
            for kind, step in w.steps.items():
                w.prepare(kind)
                memory[kind] = peak_memory(step, args.device)
        r = results[w.spec.name]
        r.update(times=times[w.spec.name], memory=memory)
        r["summary"] = {kind: summarize(t) for kind, t in times[w.spec.name].items()}

    env = environment(args.device)
    env.update(load_min=min(loads), load_max=max(loads), loads=loads, stolen=stolen)
    report = {"environment": env, "args": vars(args), "results": results}
    report["ratios"] = ratios(results)
    return report


def main(argv: List[str]) -> None:
    args = parse_args(argv)
    # Deprecation notices from torch / detectron2 v0.6 internals, not about what is measured.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    report = run(args)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(report)
    print("\n" + text)
    (out / "benchmark.md").write_text(text)
    (out / "benchmark.json").write_text(json.dumps(report, indent=2, default=list) + "\n")
    plot(report, str(out / "benchmark.png"))
    print(f"Wrote {out / 'benchmark.json'}, {out / 'benchmark.md'}, {out / 'benchmark.png'}")


if __name__ == "__main__":
    main(sys.argv[1:])

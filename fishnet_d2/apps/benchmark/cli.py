"""tools/benchmark.py's command line: build the models, time them round by round, report."""

import argparse
import json
import os
import shlex
import warnings
from pathlib import Path
from typing import List, Optional

import torch

from .machine import environment, read_cpu_ticks, stolen_fraction
from .measure import count_flops, count_parameters, peak_memory, wall_time
from .models import MODEL_SPECS, build_detector, imagenet_classifier, parse_models
from .report import load_reports, markdown, plot, ratios, summarize, write_doc
from .workloads import AMP_DTYPES, KINDS, Workloads

__all__ = ["QUICK", "parse_args", "run", "main"]

QUICK = dict(size=(128, 160), det_size=(256, 320), reps=1, warmup=1)
# How the command line is written in a report (and so in the performance document).
PROG = "python tools/benchmark.py"


def parse_args(argv: List[str], description: Optional[str] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=PROG, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
    p.add_argument("--amp", choices=sorted(AMP_DTYPES), default=None,
                   help="run every step under torch.autocast with this dtype (fp16: training "
                   "steps with a GradScaler, as Detectron2's AMPTrainer, SOLVER.AMP.ENABLED); "
                   "default: float32")
    p.add_argument("--no-memory", action="store_true", help="skip the peak memory measurements")
    p.add_argument("--no-flops", action="store_true",
                   help="skip the FLOPs counts (the same on every machine: docs/performance.md has them)")
    p.add_argument("--output", default="output/benchmark", help="directory for the results")
    p.add_argument("--write-doc", metavar="DOC",
                   help="also write the run's tables and command into this markdown document (e.g. "
                   "docs/performance.md: between its generated-part markers, the rest kept) and "
                   "its data beside it (DOC with .json)")
    p.add_argument("--from-json", nargs="+", metavar="JSON",
                   help="measure nothing: report saved runs (a run's benchmark.json, or the .json "
                   "beside a document), e.g. --from-json docs/performance.json --write-doc docs/performance.md")
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
    if args.write_doc and Path(args.write_doc).suffix != ".md":
        raise ValueError(f"--write-doc {args.write_doc}: allowed a markdown file (.md)")
    return args


def static_measures(workloads: Workloads, args: argparse.Namespace) -> dict:
    """Parameters and FLOPs (independent of the machine)."""
    spec, model, backbone = workloads.spec, workloads.model, workloads.backbone
    params = {"backbone": count_parameters(backbone), "model": count_parameters(model)}
    if spec.training_only or spec.compiled or spec.variant or args.no_flops:  # the same network as another row
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


def run(args: argparse.Namespace) -> dict:
    """Build the models, time every step of every model once per round, measure memory."""
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
    measured = {k: v for k, v in vars(args).items() if k not in ("write_doc", "from_json")}
    return {"environment": env, "args": measured, "results": results, "ratios": ratios(results)}


def main(argv: List[str], description: Optional[str] = None) -> None:
    args = parse_args(argv, description)
    if args.from_json:
        reports = load_reports(args.from_json)
    else:
        # Deprecation notices from torch / detectron2 v0.6 internals, not about what is measured.
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        report = {"command": " ".join([PROG, *map(shlex.quote, argv)]), **run(args)}
        reports = [report]
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "benchmark.md").write_text(markdown(report))
        (out / "benchmark.json").write_text(json.dumps(report, indent=2, default=list) + "\n")
        plot(report, str(out / "benchmark.png"))
        print(f"Wrote {out / 'benchmark.json'}, {out / 'benchmark.md'}, {out / 'benchmark.png'}")
    for report in reports:
        print("\n" + markdown(report))
    if args.write_doc:
        write_doc(Path(args.write_doc), reports)
        print(f"Wrote {args.write_doc} and {Path(args.write_doc).with_suffix('.json')}")

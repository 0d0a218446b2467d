"""The benchmark's report: medians, paired ratios, a markdown table, a plot."""

import statistics
from typing import Dict, List, Optional

from .models import LIGHT_CHECKPOINT

__all__ = ["RATIOS", "summarize", "ratios", "markdown", "plot"]

# (numerator, denominator, measure, target): the issue's targets, each "numerator / denominator
# <= target": FishNet against Detectron2's ResNets, the plain eager reference (reference.py)
# against FishNet (its fast paths: >= 1.3x faster is plain / FishNet >= 1.3), and activation
# checkpointing against none ("all": every stage; LIGHT_CHECKPOINT: the choice for >= 30% less
# memory for <= 10% more time; the other choices without a target). A target below 0 means
# "numerator / denominator >= -target".
LIGHT = "+".join(LIGHT_CHECKPOINT)  # its row's name
RATIOS = (
    ("FishNet-150", "R-101", "backbone_train", 0.80),
    ("FishNet-150 plain", "FishNet-150", "backbone_train", -1.3),
    ("FishNet-150", "R-50", "inference", 1.05),
    ("FishNet-150 plain", "FishNet-150", "inference", None),
    # MODEL.FISHNET.COMPILE: against Detectron2's R-101 as it ships (eager), and what it gains.
    ("FishNet-150 compiled", "R-101", "backbone_train", 0.80),
    ("FishNet-150 compiled", "R-50", "inference", 1.05),
    ("FishNet-150 compiled", "FishNet-150", "backbone_train", None),
    ("FishNet-150 compiled", "FishNet-150", "train_iter", None),
    ("FishNet-150 compiled", "FishNet-150", "inference", None),
    ("FishNet-150 ckpt", "FishNet-150", "backbone_train", 1.4),
    ("FishNet-150 ckpt", "FishNet-150", "memory:backbone_train", 0.6),
    *(
        row
        for choice in (LIGHT, "stride4+tail", "stride4", "tail", "body", "head")
        for row in (
            (f"FishNet-150 ckpt {choice}", "FishNet-150", "backbone_train", 1.10 if choice == LIGHT else None),
            (f"FishNet-150 ckpt {choice}", "FishNet-150", "memory:backbone_train", 0.70 if choice == LIGHT else None),
        )
    ),
)
_LABELS = {
    "backbone_train": "backbone fwd+bwd time",
    "train_iter": "training iteration time",
    "inference": "inference time per image",
    "memory:backbone_train": "backbone training peak memory",
    "memory:train_iter": "training iteration peak memory",
    "memory:inference": "inference peak memory",
}


def summarize(times: List[float]) -> Dict[str, float]:
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


def ratios(results: Dict[str, dict]) -> List[dict]:
    """The targets' ratios, for the models that were measured. Times: the median over rounds of
    each round's ratio (both models measured in the same round, under the same load)."""
    out = []
    for num, den, measure, target in RATIOS:
        if num not in results or den not in results:
            continue
        if measure.startswith("memory:"):
            kind = measure[len("memory:") :]
            a, b = results[num]["memory"].get(kind), results[den]["memory"].get(kind)
            if a is None or b is None:
                continue
            value = a / b
        else:
            a, b = results[num]["times"].get(measure), results[den]["times"].get(measure)
            if not a or not b:
                continue
            value = statistics.median(x / y for x, y in zip(a, b))
        label = f"{num} / {den}, {_LABELS[measure]}"
        met = None if target is None else value >= -target if target < 0 else value <= target
        out.append({"label": label, "value": value, "target": target, "met": met})
    return out


def _fmt(value: Optional[float], scale: float = 1.0, digits: int = 2) -> str:
    return "-" if value is None else f"{value / scale:.{digits}f}"


def markdown(report: dict) -> str:
    env, args, results = report["environment"], report["args"], report["results"]
    size = "x".join(map(str, args["size"]))
    det = "x".join(map(str, args["det_size"]))
    isa = f" ({env['isa']})" if env.get("isa") else ""
    # The share of the timed rounds' CPU time the hypervisor gave to other machines (Linux).
    stolen = "" if env.get("stolen") is None else f", {100 * env['stolen']:.1f}% of CPU time stolen"
    lines = [
        f"Device: {env['device']}{isa}; {env['threads']} threads; torch {env['torch']}, "
        f"detectron2 {env['detectron2']}; load average {env['load_min']:.2f}-{env['load_max']:.2f} "
        f"during the rounds{stolen}; medians of {args['reps']} rounds after {args['warmup']} warm-up, "
        "models alternating within each round.",
        "",
        f"| model | params backbone (M) | params model (M) | GFLOPs ImageNet model @224 "
        f"| GFLOPs backbone @224 | GFLOPs backbone @{size} | GFLOPs model @{det} |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        f = r["flops"]
        lines.append(
            f"| {name} | {_fmt(r['params']['backbone'], 1e6)} | {_fmt(r['params']['model'], 1e6)} "
            f"| {_fmt(f.get('imagenet_224'), 1e9)} | {_fmt(f.get('backbone_224'), 1e9)} "
            f"| {_fmt(f.get('backbone_size'), 1e9)} | {_fmt(f.get('model_det_size'), 1e9)} |"
        )
    lines += [
        "",
        f"| model | backbone fwd+bwd, {args['batch']}x{size} (s) | ms per backbone GFLOP "
        f"| train iter, {args['batch']}x{det} (s) | inference @{det} (s/image) | detections "
        "| peak mem backbone train (MB) | peak mem train iter (MB) | peak mem inference (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        t, m = r["summary"], r["memory"]
        backbone = t.get("backbone_train", {}).get("median")
        flops = r["flops"].get("backbone_size")
        per_gflop = None if backbone is None or not flops else 1e3 * backbone / (flops / 1e9)
        lines.append(
            f"| {name} | {_fmt(backbone)} | {_fmt(per_gflop)} "
            f"| {_fmt(t.get('train_iter', {}).get('median'))} "
            f"| {_fmt(t.get('inference', {}).get('median'))} | {_fmt(r.get('detections'), digits=0)} "
            f"| {_fmt(m.get('backbone_train'), 2**20, 0)} | {_fmt(m.get('train_iter'), 2**20, 0)} "
            f"| {_fmt(m.get('inference'), 2**20, 0)} |"
        )
    if report["ratios"]:
        lines += ["", "| ratio | measured | target |", "|---|---|---|"]
        for r in report["ratios"]:
            target = r["target"]
            if target is None:
                wanted = "-"
            else:
                wanted = f">= {-target}" if target < 0 else f"<= {target}"
                wanted += " (met)" if r["met"] else " (NOT met)"
            lines.append(f"| {r['label']} | {r['value']:.3f} | {wanted} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    names = list(results)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    ax = axes[0]
    for name in names:
        r = results[name]
        t = r["summary"].get("backbone_train", {}).get("median")
        flops = r["flops"].get("backbone_size")
        if t is not None and flops:
            ax.scatter(flops / 1e9, t, color="tab:blue" if "FishNet" in name else "tab:orange")
            ax.annotate(name, (flops / 1e9, t), textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("backbone GFLOPs (forward)")
    ax.set_ylabel("backbone forward + backward (s)")
    ax.set_title("Backbone training step vs FLOPs")
    for ax, key, title, scale, unit in (
        (axes[1], "summary", "Detector time", 1.0, "s"),
        (axes[2], "memory", "Peak tensor memory", 2**20, "MB"),
    ):
        kinds = ["train_iter", "inference"] if key == "summary" else list(
            dict.fromkeys(k for r in results.values() for k in r["memory"])
        )
        width = 0.8 / max(len(kinds), 1)
        for i, kind in enumerate(kinds):
            values = []
            for name in names:
                v = results[name][key].get(kind)
                v = v.get("median") if isinstance(v, dict) else v
                values.append(0.0 if v is None else v / scale)
            label = _LABELS["memory:" + kind if key == "memory" else kind]
            ax.bar([j + i * width for j in range(len(names))], values, width, label=label)
        ax.set_xticks([j + width * (len(kinds) - 1) / 2 for j in range(len(names))])
        ax.set_xticklabels(names, rotation=20)
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle(f"{report['environment']['device']}, {report['environment']['threads']} threads")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

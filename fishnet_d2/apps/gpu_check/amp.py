"""Part "amp": FishNet-150's Mask R-CNN trained for a few steps in float32, under float16
autocast with a GradScaler (what Detectron2's AMPTrainer runs for ``SOLVER.AMP.ENABLED``), and
under bfloat16 autocast, from the same weights on the same batch: every loss finite, and the
total loss after the steps within a stated bound of float32's. And the memory-efficient path under
autocast: its peak memory against the default path's, in each precision, and its outputs.
"""

import contextlib
from typing import ContextManager, Dict, List, Optional

import torch
from detectron2.utils.events import EventStorage

from fishnet_d2.modeling.optimize.equivalence import largest_difference, training_step
from fishnet_d2.modeling.optimize.memory.modules import RecoveringBlocks

from ..benchmark.measure import peak_memory
from ..benchmark.models import MODEL_SPECS, build_detector, detector_config, training_batch
from .records import Check, PartResult
from .scale import Scale

__all__ = ["PRECISIONS", "MAX_SKIPPED", "autocast", "train_steps", "run_amp"]

# name -> autocast dtype (None: float32, no autocast).
PRECISIONS: Dict[str, Optional[torch.dtype]] = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
LOSS_WHY = {
    "fp16": "float16 keeps 11 significant bits: its rounding changes some of the proposals sampled",
    "bf16": "bfloat16 keeps 8 significant bits, 8x float16's rounding",
}


def autocast(device: str, precision: str) -> ContextManager:
    """``torch.autocast`` on ``device``'s type with ``precision``'s dtype; nothing for fp32."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


# The GradScaler starts at 2**16 and halves at each step whose gradients overflow, which it skips
# (the first steps from random weights do): at most this many skips are allowed.
MAX_SKIPPED = 10


def train_steps(model: torch.nn.Module, batch: List[dict], device: str, precision: str, steps: int, lr: float) -> Dict:
    """``steps`` SGD updates of ``model`` on ``batch`` in ``precision`` (fp16: scaled by a
    GradScaler, as AMPTrainer does, which skips a step whose gradients overflow and tries again
    at half the scale), and the losses after them: the losses before each update and after the
    last (``steps + 1``), each forward seeded by the number of updates taken, so that every
    precision samples alike at the same point of its training; and the attempts skipped."""
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(torch.device(device).type) if precision == "fp16" else None
    losses, skipped = [], 0
    while len(losses) <= steps:
        torch.manual_seed(len(losses))
        with EventStorage(), autocast(device, precision):
            loss_dict = model(batch)
            total = sum(loss_dict.values())
        record = {**{k: v.item() for k, v in loss_dict.items()}, "total": total.item()}
        if len(losses) == steps:  # the losses after the last update
            losses.append(record)
            break
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            total.backward()
            optimizer.step()
        else:
            scale = scaler.get_scale()
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
            if scaler.get_scale() < scale:  # inf/NaN gradients: no update; again at half the scale
                skipped += 1
                if skipped > MAX_SKIPPED:
                    raise RuntimeError(f"{precision}: the GradScaler skipped {skipped} steps (overflowing gradients)")
                continue
        losses.append(record)
    return {"losses": losses, "skipped_steps": skipped}


def loss_checks(result: PartResult, device: str, scale: Scale) -> None:
    """FishNet-150's Mask R-CNN (random weights, FrozenBN calibrated) trained from the same
    weights on the same batch in each precision: every loss finite, the total loss before the
    first update and after the last within the scale's bound of float32's."""
    spec = MODEL_SPECS["fishnet150"]
    cfg = detector_config(spec, device, scale.amp_opts)
    model = build_detector(spec, device, scale.amp_opts)  # random weights, FrozenBN calibrated
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    height, width = scale.amp_image_size
    images = 2
    batch = training_batch(images, height, width, instances=4, seed=2, device=device)
    # The learning rate the config's schedule starts with (its linear warm-up's first step),
    # scaled to this batch (Detectron2's linear rule). From random weights a full step throws
    # float32's own trajectory about: at BASE_LR the loss of FishNet-150's Mask R-CNN fell from
    # 6.3 to 3.6 in one step, and runs in two precisions parted by 20-60% after two (CPU, bf16).
    lr = cfg.SOLVER.BASE_LR * cfg.SOLVER.WARMUP_FACTOR * images / cfg.SOLVER.IMS_PER_BATCH
    runs = {}
    for precision in PRECISIONS:
        model.load_state_dict(initial)
        runs[precision] = train_steps(model, batch, device, precision, scale.amp_steps, lr)
    result.data["training_steps"] = {"images": f"{images}x{height}x{width}", "lr": lr, **runs}
    steps = scale.amp_steps
    reference = runs["fp32"]["losses"]
    for precision, run in runs.items():
        finite = all(torch.isfinite(torch.tensor(list(step.values()))).all().item() for step in run["losses"])
        result.checks.append(Check(f"{precision}: every loss finite, {steps} updates", finite, passed=finite))
        if precision != "fp32":
            for when, index in (("before the first update", 0), (f"after {steps} updates", steps)):
                ours, theirs = run["losses"][index]["total"], reference[index]["total"]
                result.checks.append(
                    Check(f"{precision}: total loss {when}, relative to fp32's", abs(ours - theirs) / abs(theirs),
                          scale.amp_loss_bounds[precision], LOSS_WHY[precision])  # fmt: skip
                )
    rows = [
        f"| {update} | " + " | ".join(f"{runs[p]['losses'][update]['total']:.4f}" for p in PRECISIONS) + " |"
        for update in range(steps + 1)
    ]
    skipped = ", ".join(f"{p} {run['skipped_steps']}" for p, run in runs.items() if run["skipped_steps"]) or "none"
    result.tables.append(
        f"FishNet-150 Mask R-CNN, {images} images of {height}x{width}, SGD at lr {lr:g}, the same weights and "
        "batch: total loss after each number of updates\n\n| updates | " + " | ".join(PRECISIONS) + " |\n|---|"
        + "---|" * len(PRECISIONS) + "\n" + "\n".join(rows)
        + f"\n\nSteps the GradScaler skipped (overflowing gradients, tried again at half the scale): {skipped}"
    )


def memory_checks(result: PartResult, device: str, scale: Scale) -> None:
    """The backbone step's peak memory, default and memory-efficient, in each precision; the
    memory-efficient outputs under autocast against the default path's."""
    height, width = scale.amp_memory_size
    x = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(1)).to(device)
    backbones = {}
    for lean, key in ((False, "fishnet150"), (True, "fishnet150-lean")):
        # The detector's calibrated FishNet (unit-scale features: float16 does not overflow).
        backbones[lean] = build_detector(MODEL_SPECS[key], device, scale.amp_opts).backbone.bottom_up.train()
    backbones[True].load_state_dict(backbones[False].state_dict())
    recovering = [m for m in backbones[True].modules() if isinstance(m, RecoveringBlocks)]

    def step(backbone, precision):
        def run() -> None:
            with autocast(device, precision):
                outputs = backbone(x)
                loss = sum(o.float().sum() for o in outputs.values())
            loss.backward()
            backbone.zero_grad(set_to_none=True)

        return run

    memory = {p: {lean: peak_memory(step(backbones[lean], p), device) for lean in (False, True)} for p in PRECISIONS}
    result.data["backbone_peak_memory_bytes"] = {p: {"default": m[False], "memory_efficient": m[True]} for p, m in memory.items()}
    rows = []
    for precision, m in memory.items():
        ratio = m[True] / m[False]
        rows.append(f"| {precision} | {m[False] / 2**20:.0f} | {m[True] / 2**20:.0f} | {ratio:.3f} |")
        result.checks.append(
            Check(f"{precision}: memory-efficient backbone step peak memory / default's", ratio, 1.0,
                  "it keeps less for the backward pass in every precision (less under autocast)")  # fmt: skip
        )
    result.tables.append(
        f"FishNet-150 backbone forward + backward, 2x{height}x{width}: peak memory (MB)\n\n"
        "| precision | default | memory-efficient | ratio |\n|---|---|---|---|\n" + "\n".join(rows)
    )
    for precision in ("fp16", "bf16"):
        with autocast(device, precision):
            outputs, grads = training_step(backbones[False], x)
            lean_outputs, lean_grads = training_step(backbones[True], x)
        result.checks.append(
            Check(f"{precision}: memory-efficient outputs vs default under autocast (bit for bit)",
                  largest_difference(lean_outputs, outputs), 0.0, "the same operations in the same order")  # fmt: skip
        )
        result.checks.append(
            Check(f"{precision}: memory-efficient gradients vs default under autocast, to each one's scale",
                  largest_difference(lean_grads, grads),
                  why="for information: the same math, gradients computed by other kernels")  # fmt: skip
        )
    result.notes.append(
        "Under autocast the memory-efficient path's blocks that recover their inputs (in this FishNet "
        f"{sum(len(m) - m.recover_from for m in recovering)}, in {len(recovering)} run(s)) run the default path: "
        "float16 would round the inputs they recover too coarsely (fishnet_d2/modeling/optimize/memory/modules.py, "
        "RecoveringBlocks). The rest applies: the first block of each run keeps its input, the blocks "
        "their unfolded weights, the max-pools one byte per output."
    )


def run_amp(result: PartResult, device: str, scale: Scale) -> None:
    """Fill ``result`` with the mixed-precision checks on ``device`` (TF32 as PyTorch's default)."""
    loss_checks(result, device, scale)
    memory_checks(result, device, scale)

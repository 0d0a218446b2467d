"""Part "correctness": on the device, FishNet reproduces the official code's outputs
(tests/data/tiny_golden.pt), and every fast path and the memory-efficient training compute what
the plain network computes, with FrozenBN, BN, SyncBN (one process) and GN.

Float64 wherever the device has the kernels (cuDNN runs float64 convolutions): the checks and
tolerances of the suite (:mod:`fishnet_d2.modeling.optimize.equivalence`) hold on any device.
The golden outputs are also reproduced in float32 with TF32 off; with TF32 on (PyTorch's default
for cuDNN convolutions) the difference is measured for information.
"""

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from fishnet_d2.modeling import FishNet, build_fishnet
from fishnet_d2.modeling.optimize.equivalence import (
    GOLDEN_STAGES,
    GOLDEN_TOLERANCE,
    SAME_MATH_FLOAT64,
    largest_difference,
    relative_error,
    training_step,
    twin_fishnets,
)
from fishnet_d2.weights.official_layout import infer_arch, official_layout

from .device import tf32
from .records import Check, PartResult
from .scale import CHECK_ARCH, Scale

__all__ = ["GOLDEN_FILE", "NORMS", "FAST_PATHS", "run_correctness"]

GOLDEN_FILE = Path(__file__).resolve().parents[3] / "tests" / "data" / "tiny_golden.pt"
NORMS = ("FrozenBN", "BN", "SyncBN", "GN")
# build_fishnet's options of the plain network: every path off (NCHW, Detectron2's FrozenBN).
PLAIN = {"channels_last": False, "fold_frozen_bn": False}
# Each fast path alone, and all of them (every stage checkpointed), against PLAIN.
FAST_PATHS: Dict[str, Dict] = {
    "channels-last": {"channels_last": True, "fold_frozen_bn": False},
    "FrozenBN folded": {"channels_last": False, "fold_frozen_bn": True},
    "checkpointing (every stage)": {**PLAIN, "activation_checkpointing": True},
    "all": {"channels_last": True, "fold_frozen_bn": True, "activation_checkpointing": True},
}
# The memory-efficient path against the default one, each choice as build_fishnet takes it.
MEMORY_CHOICES: Dict[str, Dict] = {
    "memory-efficient": {},
    "memory-efficient + CHECKPOINT [stem, tail3, body2]": {"activation_checkpointing": ["stem", "tail3", "body2"]},
}
GOLDEN_WHY = (
    "the golden file's own float32 rounding (8.4e-7 measured) plus ours; 1e-4 leaves two orders "
    "of margin, and a wrong weight or dilation misses it by three"
)
SAME_MATH_WHY = "float64: rounding far below 1e-10 of the scale on any device; a bug is off by O(1)"


def golden_model(golden: Dict, **options) -> Tuple[FishNet, List[str]]:
    """The golden checkpoint's FishNet (its classifier too), from build_fishnet with ``options``,
    with the official weights, and the features to compare (GOLDEN_STAGES, "linear")."""
    arch, num_classes = infer_arch(golden["state_dict"])
    layout = official_layout(arch, num_classes)
    features = GOLDEN_STAGES + ["linear"]
    model = build_fishnet(arch, num_classes=num_classes, out_features=features, **options)
    state = {layout[k][0]: v for k, v in golden["state_dict"].items()}
    keys = model.state_dict().keys()  # FrozenBN keeps no num_batches_tracked
    model.load_state_dict({k: v for k, v in state.items() if k in keys})
    return model, features


def golden_error(golden: Dict, device: str, dtype: torch.dtype, training: bool = False, **options) -> float:
    """The largest relative error (Frobenius) of the stage outputs and logits against the golden
    ones, the model run on ``device`` in ``dtype``; in training with a backward pass (which
    recomputes checkpointed stages) when ``training``."""
    model, features = golden_model(golden, **options)
    model.to(device, dtype).train(training)
    x = golden["input"].to(device, dtype)
    with torch.set_grad_enabled(training):
        outputs = model(x)
    if training:
        sum(o.sum() for o in outputs.values()).backward()
    expected = list(golden["stage_outputs"]) + [golden["logits"]]
    return max(relative_error(outputs[name].cpu(), e) for name, e in zip(features, expected))


def golden_checks(device: str, golden_file: Path) -> List[Check]:
    """The official outputs, reproduced on ``device`` as the suite reproduces them on a CPU."""
    if not golden_file.is_file():
        reason = f"{golden_file} missing: run the check from a fishnet_d2 checkout"
        return [Check("official outputs (tests/data/tiny_golden.pt)", None, unavailable=reason)]
    golden = torch.load(golden_file, map_location="cpu", weights_only=True)
    checks = []
    with tf32(False):
        bn = {"norm": "BN", **PLAIN}  # the network as the paper writes it, no fast path
        checks.append(Check("official outputs, BN, float64", golden_error(golden, device, torch.float64, **bn),
                            GOLDEN_TOLERANCE, GOLDEN_WHY))  # fmt: skip
        checks.append(Check("official outputs, BN, float32, TF32 off", golden_error(golden, device, torch.float32, **bn),
                            GOLDEN_TOLERANCE, GOLDEN_WHY))  # fmt: skip
        frozen = {"norm": "FrozenBN", "activation_checkpointing": True}  # folded, channels-last (defaults)
        for training in (False, True):
            mode = "training with backward" if training else "eval"
            error = golden_error(golden, device, torch.float64, training=training, **frozen)
            checks.append(Check(f"official outputs, every fast path (FrozenBN), {mode}, float64", error,
                                GOLDEN_TOLERANCE, GOLDEN_WHY))  # fmt: skip
    if device.startswith("cuda"):
        with tf32(True):
            error = golden_error(golden, device, torch.float32, norm="BN", **PLAIN)
        checks.append(Check("official outputs, BN, float32, TF32 on (PyTorch's default for convolutions)", error,
                            why="for information: TF32 keeps 10 bits of the mantissa"))  # fmt: skip
    return checks


def step_differences(
    first: FishNet, second: FishNet, x: torch.Tensor, steps: int, *, grads_at_one_scale: bool
) -> Tuple[float, float, float]:
    """The largest differences to scale of the outputs and gradients over ``steps`` training
    steps (the same input), and of the buffers (BatchNorm's statistics) after them. Gradients
    each at its own scale, or ``grads_at_one_scale``: all of them as one vector, as the suite
    compares a path that reorders a computation (with training-mode BatchNorm some gradients are
    rounding noise only: zero in exact arithmetic)."""
    outputs = grads = 0.0
    for _ in range(steps):
        o1, g1 = training_step(first, x)
        o2, g2 = training_step(second, x)
        outputs = max(outputs, largest_difference(o2, o1))
        names = [k for k in g2 if k in g1]  # both compute the input's and the convolutions' gradients
        if len(names) < 2:
            return outputs, float("inf"), float("inf")
        a, b = [g2[k] for k in names], [g1[k] for k in names]
        if grads_at_one_scale:
            a, b = [torch.cat([t.flatten() for t in a])], [torch.cat([t.flatten() for t in b])]
        grads = max(grads, largest_difference(a, b))
    buffers1 = dict(first.named_buffers())
    buffers = [(b, buffers1[name]) for name, b in second.named_buffers() if name in buffers1]
    buffer_difference = largest_difference([a for a, _ in buffers], [b for _, b in buffers]) if buffers else 0.0
    return outputs, grads, buffer_difference


# Every feature of a FishNet with 3 stages per part: every stage's output is compared.
_FEATURES = ["stem", "tail3", "tail4", "tail5", "bridge", "body4", "body3", "body2", "head2", "head3", "head4", "head5"]


def twins_on(device: str, norm: str, plain: Dict, fast: Dict) -> Tuple[FishNet, FishNet]:
    """CHECK_ARCH's twins (:func:`twin_fishnets`) with the options ``plain`` and ``fast``, on
    ``device`` in float64, in training mode."""
    first, second = twin_fishnets(CHECK_ARCH, norm, plain=plain, fast=fast, out_features=_FEATURES)
    return first.to(device, torch.float64).train(), second.to(device, torch.float64).train()


def equivalence_checks(device: str, x: torch.Tensor) -> Tuple[List[Check], Dict[str, Dict[str, float]]]:
    """Each fast path against the plain network, and the memory-efficient path against the
    default one, in float64 training steps, with each norm: checks, and the differences of the
    outputs, gradients and statistics of each."""
    checks, differences_of = [], {}
    comparisons: List[Tuple[str, str, Dict, Dict, int, bool]] = []
    for norm in NORMS:
        for name, options in FAST_PATHS.items():
            if norm != "FrozenBN" and name == "FrozenBN folded":
                continue  # nothing to fold: the same network
            comparisons.append((norm, f"{name} vs plain", PLAIN, options, 1, True))
        for name, options in MEMORY_CHOICES.items():
            memory = {**options, "memory_efficient": True}
            comparisons.append((norm, f"{name} vs default", options, memory, 2, False))
    for norm, what, plain, fast, steps, one_scale in comparisons:
        first, second = twins_on(device, norm, plain, fast)
        differences = step_differences(first, second, x, steps, grads_at_one_scale=one_scale)
        name = f"{what}, {norm}, float64, {steps} training step{'s' if steps > 1 else ''}"
        checks.append(Check(name, max(differences), SAME_MATH_FLOAT64, SAME_MATH_WHY))
        differences_of[name] = dict(zip(("outputs", "gradients", "statistics"), differences))
    return checks, differences_of


def float32_outputs_bit_for_bit(device: str, x: torch.Tensor) -> Check:
    """The memory-efficient forward runs the default path's operations in its order: in float32
    its outputs are the default's, bit for bit (docs/performance.md says so)."""
    default, efficient = twins_on(device, "FrozenBN", {}, {"memory_efficient": True})
    default, efficient = default.float(), efficient.float()
    with tf32(False):
        outputs, _ = training_step(default, x.float())
        efficient_outputs, _ = training_step(efficient, x.float())
    return Check("memory-efficient vs default, FrozenBN, float32 outputs (bit for bit)",
                 largest_difference(efficient_outputs, outputs), 0.0,
                 "the same operations in the same order")  # fmt: skip


def run_correctness(result: PartResult, device: str, scale: Scale, golden_file: Optional[Path] = None) -> None:
    """Fill ``result`` with the correctness checks on ``device`` (TF32 off but where said)."""
    result.checks += golden_checks(device, golden_file or GOLDEN_FILE)
    n, h, w = scale.equivalence_input
    x = torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(device)
    with tf32(False):
        checks, differences = equivalence_checks(device, x)
    result.checks += checks
    result.checks.append(float32_outputs_bit_for_bit(device, x))
    result.data["equivalence"] = {"input": [n, 3, h, w], "differences": differences}
    result.notes.append(
        f"The equivalence checks train FishNets of {n}x3x{h}x{w} images in float64: the largest difference of the "
        "outputs, gradients and BatchNorm statistics, each relative to the largest magnitude of its tensor (a "
        "fast path's gradients all at one scale, as the suite compares them: with training-mode BatchNorm some "
        "are rounding noise). SyncBN in one process synchronizes with no other: it normalizes by its own batch, "
        "as BN does."
    )

"""Part "training": the demo's Mask R-CNN (``make demo``'s config and dataset) trained and evaluated
on the device, its box AP against the CPU demo's (docs/demo.md); then the trained model exported
by ``tools/export_model.py`` (tracing, TorchScript) on the device, and the exported model checked
against eager mode there (the export tool's own check: detections paired, differences within its
tolerance; the file run again in a new process)."""

import json
import statistics
from pathlib import Path
from typing import Dict, List, Optional

from detectron2.config import CfgNode

from fishnet_d2.model_zoo import load_config

from ..data import DEMO_DATASET_PREFIX, register_synthetic_shapes
from ..demo.pipeline import CHECKPOINT_NAME, prepare_datasets, train_and_evaluate
from ..export import ExportUnavailableError, detectron2_export
from ..export import main as export_main
from ..export.cli import INFO_JSON
from .records import Check, PartResult
from .scale import Scale

__all__ = ["DEMO_CONFIG", "CPU_DEMO_BOX_AP", "AP_BOUND", "run_training", "export_checks"]

DEMO_CONFIG = "Demo/mask_rcnn_fishnet_tiny_FPN_demo.yaml"
# `make demo`'s box AP on 2 CPU cores (docs/demo.md, "Result"; tests/test_gpu_check.py reads it there).
CPU_DEMO_BOX_AP = 70.1
# Another device rounds differently (and a GPU's atomic adds in ROIAlign's backward are not
# deterministic): docs/demo.md measured a point or two between CPUs and thread counts.
AP_BOUND = 5.0
AP_WHY = "the same recipe; another device rounds differently (a point or two between CPUs)"


def training_config(device: str, scale: Scale, work: Path) -> CfgNode:
    """The demo's config on ``device`` with the scale's overrides, its dataset registered."""
    if scale.training_dataset is None:  # the demo's, which importing ..data registered
        names = {"train": f"{DEMO_DATASET_PREFIX}_train", "val": f"{DEMO_DATASET_PREFIX}_val"}
    else:
        names = register_synthetic_shapes("fishnet_gpu_check", root=work / "datasets", spec=scale.training_dataset)
    opts = [
        *scale.training_opts,
        "MODEL.DEVICE", device,
        "OUTPUT_DIR", str(work / "training"),
        "DATASETS.TRAIN", f"('{names['train']}',)",
        "DATASETS.TEST", f"('{names['val']}',)",
    ]  # fmt: skip
    return load_config(DEMO_CONFIG, opts)


def seconds_per_iteration(metrics_json: Path) -> Optional[float]:
    """The median of the iteration times Detectron2 logged (metrics.json's "time")."""
    if not metrics_json.is_file():
        return None
    times = [json.loads(line).get("time") for line in metrics_json.read_text().splitlines() if line.strip()]
    times = [t for t in times if t is not None]
    return statistics.median(times) if times else None


def export_checks(config_file: Path, weights: Path, device: str, output: Path) -> List[Check]:
    """``tools/export_model.py`` (its ``main``) on the trained model: TorchScript by tracing on
    ``device``, checked against eager mode there by the tool; its record's differences."""
    name = f"TorchScript (tracing) on {device} vs eager"
    try:
        detectron2_export()
    except ExportUnavailableError as e:
        return [Check(name, None, unavailable=f"Detectron2's export tools: {e}")]
    argv = ["--config-file", str(config_file), "--export-method", "tracing", "--format", "torchscript",
            "--output", str(output), "MODEL.WEIGHTS", str(weights), "MODEL.DEVICE", device]  # fmt: skip
    status = export_main(argv)
    if status != 0:
        return [Check(name, f"tools/export_model.py exited {status} (its messages above)", passed=False)]
    check = json.loads((output / INFO_JSON).read_text())["check"]
    why = f"the export tool's tolerance, relative to each output's scale ({check['runtime']})"
    checks = [
        Check(f"{name}: largest difference ({check['worst']})", check["max_relative_difference"], check["tolerance"], why),
        Check(f"{name}: detections paired (the export tool's check)", check["passed"], passed=bool(check["passed"])),
    ]
    if "fresh_process_max_relative_difference" in check:
        checks.append(Check(f"{name}: the file in a new process vs this one", check["fresh_process_max_relative_difference"],
                            check["tolerance"], "torch and torchvision only, no fishnet_d2"))  # fmt: skip
    return checks


def run_training(result: PartResult, device: str, scale: Scale, work: Path) -> None:
    """Fill ``result``: train and evaluate the demo on ``device``, export and check the model."""
    cfg = training_config(device, scale, work)
    sizes = prepare_datasets(cfg)  # generated here when missing (the demo's: ~10 s)
    _, results = train_and_evaluate(cfg)
    output = Path(cfg.OUTPUT_DIR)
    box: Dict = results.get("bbox", {})
    ap = box.get("AP")
    iteration = seconds_per_iteration(output / "metrics.json")
    result.data.update(
        iterations=cfg.SOLVER.MAX_ITER, images_per_batch=cfg.SOLVER.IMS_PER_BATCH, datasets=sizes,
        seconds_per_iteration=iteration, results=results,
    )  # fmt: skip
    evaluated = isinstance(ap, float) and ap == ap  # NaN when nothing was detected
    result.checks.append(Check("trained and evaluated: box AP is a number", ap, passed=evaluated))
    if scale.compare_ap and evaluated:
        result.checks.append(
            Check(f"box AP {ap:.1f} vs the CPU demo's {CPU_DEMO_BOX_AP} (docs/demo.md), points apart",
                  abs(ap - CPU_DEMO_BOX_AP), AP_BOUND, AP_WHY)  # fmt: skip
        )
    elif not scale.compare_ap:
        result.notes.append(
            f"{cfg.SOLVER.MAX_ITER} iterations on {sizes}: not the demo's schedule, so its AP is not compared "
            f"with the CPU demo's {CPU_DEMO_BOX_AP}."
        )
    rows = [f"| {task} | {m.get('AP', float('nan')):.1f} | {m.get('AP50', float('nan')):.1f} | {m.get('AP75', float('nan')):.1f} |"
            for task, m in results.items()]  # fmt: skip
    per_iteration = "" if iteration is None else f", {iteration:.3f} s per iteration"
    result.tables.append(
        f"The demo's Mask R-CNN, {cfg.SOLVER.MAX_ITER} iterations of {cfg.SOLVER.IMS_PER_BATCH} images on "
        f"{device}{per_iteration}; the CPU demo: box AP {CPU_DEMO_BOX_AP}\n\n| task | AP | AP50 | AP75 |\n|---|---|---|---|\n"
        + "\n".join(rows)
    )
    config_file = output / "config.yaml"
    config_file.write_text(cfg.dump())
    result.checks += export_checks(config_file, output / f"{CHECKPOINT_NAME}.pth", device, work / "export")

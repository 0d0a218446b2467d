"""What ``tools/export_model.py`` runs: its command line (Detectron2's
``tools/deploy/export_model.py`` conventions) and ``main``."""

import argparse
import importlib.util
import os
import platform
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import detectron2
import torch
from detectron2.config import CfgNode
from torch import Tensor, nn

from ...weights.checkpointer import CheckpointLoadError
from ...model_zoo import add_config_arguments, load_config
from ...modeling import inference_fishnet_config
from ..predict.images import InputError
from ..predict.predictor import load_model
from ..predict.results import write_json
from .d2export import ExportUnavailableError, detectron2_export
from .exported import FILE_NAMES, FORMATS, FORMATS_BY_METHOD, METHODS, Exported, check_exportable
from .exporters import ONNX_OPSET, eager_instances, export_model
from .programs import DYNAMO_ONNX_OPSET
from .matching import MAX_UNMATCHED_SHARE, DetectionComparison, compare_instances
from .timing import time_export
from .verify import fresh_process_difference, model_input, sample_images

__all__ = ["INFO_JSON", "DEFAULT_TOLERANCE", "argument_parser", "main"]

INFO_JSON = "export_info.json"
DEFAULT_TOLERANCE = 1e-3

EPILOG = f"""\
examples:
  python tools/export_model.py --config-file COCO-InstanceSegmentation/mask_rcnn_fishnet150_FPN_1x.yaml \\
      --export-method export --format aoti --output exported/ MODEL.WEIGHTS model_final.pth
  python tools/export_model.py --config-file COCO-Detection/retinanet_fishnet150_FPN_1x.yaml \\
      --export-method tracing --format onnx --output exported/ MODEL.WEIGHTS model_final.pth

methods and formats (the first format of each is its default):
  export     torch.export, dynamic image height and width: program (OUTPUT/{FILE_NAMES["program"]},
             torch.export.load), aoti (OUTPUT/{FILE_NAMES["aoti"]}, an AOTInductor package:
             torch._inductor.aoti_load_package), onnx (OUTPUT/model.onnx, the dynamo exporter)
  tracing    TorchScript (deprecated by PyTorch since 2.11): torchscript (OUTPUT/model.ts), onnx
             (the TorchScript-based exporter)
  scripting  TorchScript: torchscript

writes the model and OUTPUT/{INFO_JSON} (how to call the
model, its outputs' names, the differences measured), only after the check: the exported model's
detections and eager mode's on two sample images (--sample-image and its left three quarters, else
two synthetic shapes images), compared as detections: paired by class and box, the differences of
boxes, scores and masks over the pairs at most --tolerance of each output's scale (its largest
absolute value); detections left unpaired only as ties in score (which of two equal scores NMS or
the top-k keeps is the runtime's choice), at most {MAX_UNMATCHED_SHARE:.0%} of them. A TorchScript file is
run again in a new Python process that imports only torch and torchvision (and onnxruntime for ONNX
models), not fishnet_d2 or detectron2. ONNX models run with
onnxruntime (CPU) when it is installed, else with onnx's reference evaluator (slow for full-size
models: pip install onnxruntime, or --skip-check); the tool says which.
exit status: 0 exported and checked, 1 export or check failed (nothing written), 2 bad command line."""


def _thread_counts(text: str) -> List[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: thread counts >= 1, separated by commas (e.g. 1,2)")
    return counts


def argument_parser() -> argparse.ArgumentParser:
    """The command line of Detectron2's ``tools/deploy/export_model.py`` (``--config-file`` taking a
    fishnet_d2 config name too, ``KEY VALUE`` overrides after the options or after ``--opts``), with
    the check's options."""
    parser = argparse.ArgumentParser(
        description="Export a FishNet detector to TorchScript or ONNX and check it against eager mode.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    parser.add_argument("--export-method", choices=METHODS, default="tracing", help="default: tracing")
    parser.add_argument(
        "--format", choices=FORMATS, help="default: the method's first format (see the list below)"
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="directory for the exported model")
    parser.add_argument(
        "--sample-image", metavar="FILE", help="an image to trace with and check on (default: made)"
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="the largest difference to eager allowed, relative to the output's scale "
        f"(default {DEFAULT_TOLERANCE:g})",
    )
    parser.add_argument("--skip-check", action="store_true", help="export without running the exported model")
    parser.add_argument(
        "--threads",
        type=_thread_counts,
        metavar="N[,N...]",
        help="intra-op threads of torch, AOTInductor and onnxruntime; with --time, each count is "
        "timed in turn (e.g. --threads 1,2); the export and the check use the first "
        "(default: torch's default)",
    )
    parser.add_argument(
        "--time",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="after the check, time the exported model and eager mode on the sample images, ROUNDS "
        "passes each after a warm-up, and report the seconds per image (in OUTPUT/" + INFO_JSON + ")",
    )
    return parser


def _print_comparisons(comparisons: Sequence[DetectionComparison]) -> None:
    print(f"{'image':<36} {'output':<14} {'max |diff|':>11} {'scale':>10} {'relative':>10}")
    for c in comparisons:
        for d in c.differences:
            print(f"{d.image:<36} {d.field:<14} {d.max_abs:>11.3g} {d.scale:>10.4g} {d.relative:>10.3g}")
        print(
            f"{c.image:<36} {'detections':<14} eager {c.eager}, exported {c.exported}, paired {c.matched}; "
            f"unpaired: {c.unmatched_eager} eager, {c.unmatched_exported} exported ({c.untied} not a tie)"
        )


def check_export(
    cfg: CfgNode,
    model: nn.Module,
    exported: Exported,
    names: Sequence[str],
    inputs: Sequence[Tensor],
    tolerance: float,
) -> Dict[str, Any]:
    """Compare ``exported``'s detections with eager mode's on ``inputs`` (:mod:`.matching`), and a
    TorchScript file with itself in a new process; print the differences and return them
    (``passed``: all within ``tolerance``).

    Raises:
        RuntimeError: the new process failed.
        ValueError: the exported model lacks one of eager mode's outputs.
    """
    print(f"running the exported model with {exported.runtime}")
    comparisons: List[DetectionComparison] = [
        compare_instances(name, exported.run(image), eager_instances(model, image), tolerance)
        for name, image in zip(names, inputs)
    ]
    _print_comparisons(comparisons)
    worst = max(comparisons, key=lambda c: c.max_relative)
    worst_difference = max(worst.differences, key=lambda d: d.relative)
    check: Dict[str, Any] = {
        "runtime": exported.runtime,
        "images": list(names),
        "detections": [
            dict(
                image=c.image,
                eager=c.eager,
                exported=c.exported,
                paired=c.matched,
                unpaired_eager=c.unmatched_eager,
                unpaired_exported=c.unmatched_exported,
                unpaired_not_a_tie=c.untied,
            )
            for c in comparisons
        ],
        "differences": [
            dict(image=d.image, output=d.field, max_abs=d.max_abs, scale=d.scale, relative=d.relative)
            for c in comparisons
            for d in c.differences
        ],
        "max_relative_difference": worst.max_relative,
        "worst": f"{worst_difference.field}, {worst.image}",
        "tolerance": tolerance,
    }
    failures = [f for f in (c.failure(tolerance) for c in comparisons) if f]
    fresh = fresh_process_difference(exported, inputs, cfg.MODEL.DEVICE)
    check["fresh_process_max_relative_difference"] = fresh
    print(
        f"{exported.file_name} in a new Python process (no fishnet_d2, no detectron2): largest "
        f"difference to this process {fresh:.3g} of the output scale"
    )
    if fresh > tolerance:
        failures.append(
            f"{exported.file_name} in a new process differs from this process by {fresh:.3g} of the "
            f"output scale, more than --tolerance {tolerance:g}"
        )
    check["passed"] = not failures
    if failures:
        check["failure"] = "; ".join(failures)
    return check


def _info(
    args: argparse.Namespace,
    cfg: CfgNode,
    exported: Exported,
    how: str,
    export_seconds: float,
    check: Optional[Dict],
    timing: Optional[Dict],
) -> Dict:
    flat = exported.method != "scripting"  # tracing and export: a tuple of tensors
    load = {
        "torchscript": "torch.jit.load(file)",
        "program": "torch.export.load(file).module()",
        "aoti": "torch._inductor.aoti_load_package(file)",
        "onnx": 'onnxruntime.InferenceSession(file); outputs = session.run(None, {"image": image.numpy()})',
    }
    sizes = exported.input_sizes
    return {
        "config_file": args.config_file,
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "export_method": exported.method,
        "format": exported.format,
        "onnx_opset": (DYNAMO_ONNX_OPSET if exported.method == "export" else ONNX_OPSET)
        if exported.format == "onnx"
        else None,
        "file": exported.file_name,
        "file_bytes": len(exported.data),
        "export_seconds": export_seconds,
        "load": load[exported.format],
        "call": "model(image)" if flat else 'model(({"image": image},))[0]',
        "input": (
            f"image: float32 tensor (3, H, W) in {cfg.INPUT.FORMAT} order, values 0-255, resized so that "
            f"the short side is {cfg.INPUT.MIN_SIZE_TEST} and the long side at most {cfg.INPUT.MAX_SIZE_TEST}"
        )
        + ("; " + ", ".join(f"{n[0].upper()} from {lo}" + (f" to {hi}" if hi else " up") for n, (lo, hi) in sizes.items()) if sizes else ""),
        "outputs": exported.output_names,
        "outputs_are": ("a tuple of tensors in this order" if flat else "a list of one dict of tensors")
        + "; boxes XYXY in the input image's pixels (divide by the resize factor for the original image)",
        "versions": {
            "torch": torch.__version__,
            "detectron2": detectron2.__version__,
            "exported_with": how,
            "python": platform.python_version(),
        },
        "check": check,
        "timing": timing,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``tools/export_model.py`` on ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = argument_parser()
    args = parser.parse_args(argv)
    formats = FORMATS_BY_METHOD[args.export_method]
    if args.format is None:
        args.format = formats[0]
    if args.format not in formats:
        methods = [m for m, fs in FORMATS_BY_METHOD.items() if args.format in fs]
        parser.error(
            f"--export-method {args.export_method} exports to --format {' or '.join(formats)}; "
            f"--format {args.format} comes from --export-method {' or '.join(methods)}"
        )
    if args.time < 0:
        parser.error(f"--time={args.time}: must be >= 0 (rounds; 0: no timing)")
    if not args.tolerance > 0:
        parser.error(f"--tolerance={args.tolerance}: must be > 0")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        parser.error(f"--output {args.output} is a file; give a directory")
    try:
        cfg = load_config(args.config_file, args.opts)
    except (FileNotFoundError, ValueError, KeyError) as e:
        parser.error(str(e))
    cfg, changed = inference_fishnet_config(cfg)
    if changed:
        print(
            f"note: exporting the eager FishNet without {', '.join(changed)} (they change only "
            "training, or how Python runs the model: the exported model computes the same)",
            file=sys.stderr,
        )
    if args.threads is not None:
        torch.set_num_threads(args.threads[0])
    d2 = None  # torch.export needs none of Detectron2's export tools
    if args.export_method != "export":
        try:
            d2 = detectron2_export()
        except ExportUnavailableError as e:
            print(f"error: cannot export with this detectron2: {e}", file=sys.stderr)
            return 1
    needed = ["onnx"] + (["onnxscript"] if args.export_method == "export" else []) if args.format == "onnx" else []
    missing = [package for package in needed if importlib.util.find_spec(package) is None]
    if missing:
        print(
            f"error: --export-method {args.export_method} --format onnx needs {' and '.join(missing)} "
            f"(pip install {' '.join(missing)})",
            file=sys.stderr,
        )
        return 1
    try:
        model = load_model(cfg)
        check_exportable(model, args.export_method, args.format)
        samples = sample_images(cfg, args.sample_image)
    except (CheckpointLoadError, FileNotFoundError, ValueError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    names = [name for name, _ in samples]
    inputs = [model_input(cfg, image) for _, image in samples]
    how = d2.how if d2 else f"torch.export, torch {torch.__version__}"
    print(f"exporting {cfg.MODEL.META_ARCHITECTURE} by {args.export_method} to {args.format} (with {how})")
    start = time.perf_counter()
    exported = export_model(model, args.export_method, args.format, inputs[0], d2)
    export_seconds = time.perf_counter() - start
    print(f"exported in {export_seconds:.1f} s: {exported.file_name}, {len(exported.data) / 2**20:.1f} MiB")

    check = None
    if not args.skip_check:
        try:
            check = check_export(cfg, model, exported, names, inputs, args.tolerance)
        except (RuntimeError, ValueError) as e:
            print(f"error: {e}\nnothing written", file=sys.stderr)
            return 1
        if not check["passed"]:
            print(f"error: {check['failure']}; nothing written", file=sys.stderr)
            return 1
        relative, where = check["max_relative_difference"], check["worst"]
        unpaired = sum(d["unpaired_eager"] for d in check["detections"])
        print(
            f"largest difference to eager: {relative:.3g} of the output scale ({where}); "
            f"tolerance {args.tolerance:g}; eager detections unpaired (ties): {unpaired}"
        )
    timing = None
    if args.time:
        timing = time_export(model, exported, inputs, args.time, args.threads or ())
        for run in timing["runs"]:
            print(
                f"seconds per image, {run['threads']} threads: eager {run['eager_seconds_per_image']:.4g}, "
                f"exported {run['exported_seconds_per_image']:.4g} with {exported.runtime} "
                f"({run['exported_over_eager']:.3g}x eager; {timing['machine']})"
            )
    path = exported.save(args.output)
    info_path = os.path.join(args.output, INFO_JSON)
    write_json(_info(args, cfg, exported, how, export_seconds, check, timing), info_path)
    print(f"wrote {path} and {info_path}")
    return 0

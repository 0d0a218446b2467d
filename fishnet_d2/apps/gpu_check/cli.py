"""What ``tools/gpu_check.py`` runs: its command line and ``main``."""

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .amp import run_amp
from .correctness import run_correctness
from .device import cuda_unavailable_reason, describe
from .records import PASSED, PartResult, run_part
from .report import JSON_NAME, MARKDOWN_NAME, write_reports
from .scale import Scale, scale_for
from .speed import run_benchmark
from .training import run_training

__all__ = ["PARTS", "EXIT_PASSED", "EXIT_FAILED", "EXIT_USAGE", "EXIT_NO_CUDA", "argument_parser", "main"]

# The exit statuses: every part passed; a part failed, raised, or could not run here (its report
# says which and why); the command line was refused; CUDA was asked for and is not there
# (nothing run, nothing written).
EXIT_PASSED, EXIT_FAILED, EXIT_USAGE, EXIT_NO_CUDA = 0, 1, 2, 3

Part = Callable[[PartResult, str, Scale, Path], None]
# The parts, in the order they run: each fills its record from the device, the scale and a
# working directory (removed at the end).
PARTS: Dict[str, Part] = {
    "correctness": lambda result, device, scale, work: run_correctness(result, device, scale),
    "amp": lambda result, device, scale, work: run_amp(result, device, scale),
    "benchmark": lambda result, device, scale, work: run_benchmark(result, device, scale),
    "training": run_training,
}

PROG = "python tools/gpu_check.py"
EPILOG = f"""\
parts: correctness (the official outputs on the device; every fast path and the memory-efficient
training against the plain network, float64), amp (FishNet-150 Mask R-CNN training steps in
float32, float16 with a GradScaler and bfloat16; the memory-efficient path under autocast),
benchmark (tools/benchmark.py's rows in float32 and with --amp), training (the demo trained and
evaluated on the device, then exported to TorchScript and checked against eager mode there).

writes OUTPUT/{JSON_NAME} and OUTPUT/{MARKDOWN_NAME} after each part (a stopped run keeps the
parts it finished). --device cpu runs every part on small sizes, in seconds (the test suite does).
exit status: {EXIT_PASSED} every part passed, {EXIT_FAILED} a part failed (the others still ran), \
{EXIT_USAGE} bad command line, {EXIT_NO_CUDA} CUDA not available (nothing run, nothing written)."""


def argument_parser() -> argparse.ArgumentParser:
    """``--device``, ``--output`` and ``--parts``; the parts and exit statuses in its epilog."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Prove FishNet on a GPU: correctness, mixed precision, memory and speed, a short training.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (small sizes)")
    parser.add_argument("--output", required=True, metavar="DIR", help="directory for the two reports")
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS), metavar="PART",
                        help=f"the parts to run, of {list(PARTS)} (default: all, in that order)")  # fmt: skip
    return parser


def _device(parser: argparse.ArgumentParser, device: str) -> str:
    kind, _, index = device.partition(":")
    if kind == "cpu" and not index or kind == "cuda" and (not index or index.isdigit()):
        return device
    parser.error(f"--device {device}: allowed cuda, cuda:N or cpu")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``tools/gpu_check.py`` on ``argv`` (default ``sys.argv[1:]``); returns the exit status
    (argparse exits with :data:`EXIT_USAGE` itself)."""
    parser = argument_parser()
    args = parser.parse_args(argv)
    device = _device(parser, args.device)
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        parser.error(f"--output {output} is a file; give a directory")
    if device.startswith("cuda"):
        reason = cuda_unavailable_reason(device)
        if reason:
            print(f"{PROG}: {reason}: nothing run, nothing written (exit status {EXIT_NO_CUDA}); "
                  "--device cpu runs the check's small CPU sizes", file=sys.stderr)  # fmt: skip
            return EXIT_NO_CUDA
    parts = list(dict.fromkeys(args.parts))
    scale = scale_for(device)
    threads = torch.get_num_threads()
    if scale.threads:
        torch.set_num_threads(scale.threads)  # before describe(), which reports the threads
    argv_used = sys.argv[1:] if argv is None else list(argv)
    header = {
        "command": " ".join([PROG, *map(shlex.quote, argv_used)]),
        "device": describe(device),
        "scale": scale.name,
        "expected_seconds": {p: scale.expected_seconds.get(p) for p in parts},
    }
    start = time.perf_counter()
    done: List[PartResult] = []
    with tempfile.TemporaryDirectory(prefix="fishnet_gpu_check-") as work:
        for k, name in enumerate(parts):
            print(f"\n=== gpu_check: {name} on {device} (expected {scale.expected_seconds.get(name, '?')} s) ===", flush=True)
            torch.manual_seed(0)
            result = run_part(name, lambda r: PARTS[name](r, device, scale, Path(work)))
            done.append(result)
            header["seconds"] = round(time.perf_counter() - start, 1)
            write_reports(output, header, done, pending=parts[k + 1 :])
            print(f"=== gpu_check: {name} {result.status} in {result.seconds:.1f} s ===", flush=True)
            if result.error:
                print(result.error, file=sys.stderr)
    torch.set_num_threads(threads)
    print(f"\n{PROG}: " + ", ".join(f"{p.part} {p.status} ({p.seconds:.1f} s)" for p in done)
          + f"; reports in {output / JSON_NAME} and {output / MARKDOWN_NAME}")  # fmt: skip
    return EXIT_PASSED if all(p.status == PASSED for p in done) else EXIT_FAILED

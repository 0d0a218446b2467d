"""The GPU check (``tools/gpu_check.py``, ``make gpu-check``): one command that proves FishNet on
a GPU in a few minutes and writes one JSON and one markdown report: correctness on the device
(:mod:`.correctness`), mixed precision (:mod:`.amp`), memory and speed (:mod:`.speed`, the
benchmark's rows), and a short training with an export (:mod:`.training`). ``--device cpu`` runs
the same code on small sizes (:mod:`.scale`), which the test suite does, so that it cannot rot
between the times a GPU is at hand. docs/performance.md, "The GPU check"."""

from .cli import EXIT_FAILED, EXIT_NO_CUDA, EXIT_PASSED, EXIT_USAGE, PARTS, argument_parser, main
from .records import Check, PartResult, run_part
from .report import JSON_NAME, MARKDOWN_NAME, write_reports
from .scale import SCALES, Scale, scale_for

__all__ = [
    "EXIT_FAILED",
    "EXIT_NO_CUDA",
    "EXIT_PASSED",
    "EXIT_USAGE",
    "PARTS",
    "argument_parser",
    "main",
    "Check",
    "PartResult",
    "run_part",
    "JSON_NAME",
    "MARKDOWN_NAME",
    "write_reports",
    "SCALES",
    "Scale",
    "scale_for",
]

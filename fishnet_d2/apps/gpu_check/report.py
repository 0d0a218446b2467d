"""The check's two reports, JSON (every number) and markdown (the tables), written atomically into
the output directory after each part, so that a run stopped by its time limit keeps the parts
it finished (``pending`` lists the others)."""

import json
from pathlib import Path
from typing import Any, Dict, List, Sequence

from fishnet_d2.weights.atomic_file import atomic_write

from .records import PASSED, PartResult

__all__ = ["JSON_NAME", "MARKDOWN_NAME", "overall_status", "report_json", "report_markdown", "write_reports"]

JSON_NAME = "gpu_check.json"
MARKDOWN_NAME = "gpu_check.md"
# Before each fenced block of the markdown: the docs' marker (tests/doc_blocks.py), so that the
# report can go into docs/performance.md as it is.
_NOT_RUN = "<!-- doc: not run: a recorded output of tools/gpu_check.py -->"


def overall_status(parts: Sequence[PartResult], pending: Sequence[str]) -> str:
    """"incomplete" while parts are pending, else "passed" when every part passed, or "failed"."""
    if pending:
        return "incomplete"
    return PASSED if all(p.status == PASSED for p in parts) else "failed"


def report_json(header: Dict[str, Any], parts: Sequence[PartResult], pending: Sequence[str]) -> str:
    """The JSON report: the header (command, device, scale, times), the status, each part's record."""
    record = {
        **header,
        "status": overall_status(parts, pending),
        "parts": [p.to_json() for p in parts],
        "pending": list(pending),
    }
    return json.dumps(record, indent=2, default=str) + "\n"


def _value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "-"}[value]
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def report_markdown(header: Dict[str, Any], parts: Sequence[PartResult], pending: Sequence[str]) -> str:
    """The markdown report: the device and a line per part, then each part's checks (measured,
    bound, status, why), tables and notes, and its error. Its headings start at level 3, to go
    under a section of docs/performance.md; its one kind of code block (an error) carries the
    docs' marker."""
    device = header["device"]
    lines = [
        f"### GPU check: {device['device']}",
        "",
        f"Command: `{header['command']}` ({header['scale']}). Status: **{overall_status(parts, pending)}**.",
        "",
        "Device: " + ", ".join(f"{k} {v}" for k, v in device.items() if k != "device") + ".",
        "",
        "| part | status | seconds | expected (s) |",
        "|---|---|---|---|",
    ]
    expected = header.get("expected_seconds", {})
    lines += [f"| {p.part} | {p.status} | {p.seconds:.1f} | {expected.get(p.part, '-')} |" for p in parts]
    lines += [f"| {name} | not run yet | - | {expected.get(name, '-')} |" for name in pending]
    for part in parts:
        lines += ["", f"#### {part.part}: {part.status} ({part.seconds:.1f} s)", ""]
        if part.checks:
            lines += ["| check | measured | bound | status | why |", "|---|---|---|---|---|"]
            said = set()
            for c in part.checks:
                why = c.unavailable or ("as above" if c.why in said else c.why)
                said.add(c.why)
                lines.append(f"| {c.name} | {_value(c.measured)} | {_value(c.bound)} | {c.status} | {why} |")
        for table in part.tables:
            lines += ["", table]
        for note in part.notes:
            lines += ["", note]
        if part.error:
            lines += ["", _NOT_RUN, "```text", part.error.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def write_reports(output: Path, header: Dict[str, Any], parts: List[PartResult], pending: Sequence[str]) -> None:
    """Both reports in ``output`` (created when missing), each replaced whole or not at all."""
    text_json = report_json(header, parts, pending)
    text_md = report_markdown(header, parts, pending)
    atomic_write(str(output / JSON_NAME), lambda f: f.write(text_json), binary=False)
    atomic_write(str(output / MARKDOWN_NAME), lambda f: f.write(text_md), binary=False)

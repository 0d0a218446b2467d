"""What each part of the check reports: its checks (a measured value against a stated bound, or
a measurement for information), its tables, its data and time; and how a part is run, so that
one part failing leaves the others running."""

import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional

__all__ = ["Check", "PartResult", "PASSED", "FAILED", "ERROR", "UNAVAILABLE", "run_part"]

# A part's status: every check within its bound; a check outside it; the part raised; a check
# could not run here (e.g. the export tools missing), said with the reason. Only PASSED passes.
PASSED, FAILED, ERROR, UNAVAILABLE = "passed", "failed", "error", "unavailable"


@dataclass
class Check:
    """One comparison: ``measured`` against ``bound`` (``passed`` when ``measured <= bound``, or
    as ``passed`` says for a yes/no check); ``bound`` None: a measurement for information only."""

    name: str
    measured: Any
    bound: Optional[float] = None
    why: str = ""
    passed: Optional[bool] = None
    unavailable: str = ""  # why it could not run here

    def __post_init__(self) -> None:
        if self.passed is None and self.bound is not None and not self.unavailable:
            self.passed = isinstance(self.measured, (int, float)) and self.measured <= self.bound

    @property
    def status(self) -> str:
        if self.unavailable:
            return UNAVAILABLE
        if self.passed is None:
            return "info"
        return PASSED if self.passed else FAILED


@dataclass
class PartResult:
    """A part's record: its checks, markdown tables, data for the JSON, time, and error."""

    part: str
    checks: List[Check] = field(default_factory=list)
    tables: List[str] = field(default_factory=list)
    data: Dict[str, Any] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""

    @property
    def status(self) -> str:
        if self.error:
            return ERROR
        statuses = {check.status for check in self.checks}
        if FAILED in statuses:
            return FAILED
        if UNAVAILABLE in statuses:
            return UNAVAILABLE
        return PASSED

    def to_json(self) -> Dict[str, Any]:
        record = asdict(self)
        record["status"] = self.status
        for check, saved in zip(self.checks, record["checks"]):
            saved["status"] = check.status
        return record


def run_part(name: str, function: Callable[[PartResult], None]) -> PartResult:
    """``function(result)`` on a new record of part ``name``, timed; what it raises is the part's
    error (with its traceback), and what it recorded before stays."""
    result = PartResult(name)
    start = time.perf_counter()
    try:
        function(result)
    except Exception as e:  # the part failed; the check goes on with the next one
        result.error = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
    result.seconds = time.perf_counter() - start
    return result

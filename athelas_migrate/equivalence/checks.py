"""The parts of a verification report: check statuses, a `Check`, a `Section` of checks, an `OutputDiff`.

Pure Python (no torch). `report.VerifyReport` holds them and renders the verdict, JSON and JUnit forms; the
check runners build them (and import them from `report`, which re-exports them). To add a status, add its
constant here, put it in `OK_STATUSES` when it lets a run pass, and give it a JUnit element in
`VerifyReport.junit_suites`; to add a number to every check, add a field to `Check` and to its `to_dict`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

PASS, FAIL, ERROR, EXPECTED, SKIP = "pass", "fail", "error", "expected", "skipped"
OK_STATUSES = {PASS, EXPECTED, SKIP}


@dataclass
class Check:
    """One comparison (or one fact established) with its numbers."""

    name: str
    status: str
    detail: str = ""
    max_abs: float | None = None
    max_rel: float | None = None
    atol: float | None = None
    rtol: float | None = None
    duration_s: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Whether the status lets the run pass (pass, expected, skipped)."""
        return self.status in OK_STATUSES

    def to_dict(self) -> dict[str, Any]:
        """The check as JSON-ready data.

        Returns:
            Its fields; non-finite numbers as strings.
        """
        return json_safe({"name": self.name, "status": self.status, "detail": self.detail, "max_abs": self.max_abs,
                       "max_rel": self.max_rel, "atol": self.atol, "rtol": self.rtol,
                       "duration_s": round(self.duration_s, 6), "data": self.data})


@dataclass
class Section:
    """A group of checks: build, weights, outputs, stored, training, domain."""

    name: str
    title: str
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)

    def add(self, check: Check) -> Check:
        """Append a check.

        Args:
            check: a Check; the section keeps its checks in the order they were added.

        Returns:
            The same check, so a caller can fill in its numbers afterwards.
        """
        self.checks.append(check)
        return check

    @property
    def passed(self) -> bool:
        """Whether every check of the section passes (an empty section does)."""
        return all(c.passed for c in self.checks)

    def count(self, status: str) -> int:
        """How many checks have a status.

        Args:
            status: one of PASS, FAIL, ERROR, EXPECTED, SKIP.

        Returns:
            The count.
        """
        return sum(1 for c in self.checks if c.status == status)

    def to_dict(self) -> dict[str, Any]:
        """The section as JSON-ready data.

        Returns:
            Its fields, its verdict and its checks.
        """
        return json_safe({"name": self.name, "title": self.title, "passed": self.passed, "notes": self.notes,
                       "summary": self.summary, "duration_s": round(self.duration_s, 6),
                       "checks": [c.to_dict() for c in self.checks]})


@dataclass
class OutputDiff:
    """Worst difference of one model output over all compared batches."""

    name: str
    max_abs: float = 0.0
    max_rel: float = 0.0
    passed: bool = True
    batches: int = 0

    def update(self, check: Check) -> None:
        """Fold one batch's comparison of this output in.

        Args:
            check: the batch's check; NaN differences stay NaN.
        """
        self.batches += 1
        self.max_abs = _max(self.max_abs, check.max_abs)
        self.max_rel = _max(self.max_rel, check.max_rel)
        self.passed = self.passed and check.passed

    def to_dict(self) -> dict[str, Any]:
        """The worst difference as JSON-ready data.

        Returns:
            max_abs, max_rel, passed, batches.
        """
        return json_safe({"max_abs": self.max_abs, "max_rel": self.max_rel, "passed": self.passed,
                       "batches": self.batches})


# ---------------------------------------------------------------------- helpers

def _max(a: float | None, b: float | None) -> float:
    vals = [v for v in (a, b) if v is not None]
    if not vals:
        return 0.0
    if any(math.isnan(v) for v in vals):
        return math.nan
    return max(vals)


def json_safe(obj: Any) -> Any:
    """A value strict JSON can hold: the report forms never write NaN literals.

    Args:
        obj: numbers, strings, dicts, lists, tuples, None, or anything else.

    Returns:
        The same data with non-finite floats as strings ("nan", "inf", "-inf"), tuples as lists and unknown
        objects as their repr.
    """
    if isinstance(obj, float):
        if math.isnan(obj):
            return "nan"
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if obj is None or isinstance(obj, str | int | bool):
        return obj
    return repr(obj)

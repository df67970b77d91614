"""The verification report: checks grouped in sections, a verdict, JSON and JUnit forms.

Pure Python (no torch): the CLI and the gate import it to write reports.

Check statuses:

| status | meaning | verdict |
|---|---|---|
| `pass` | compared and within tolerance | passes |
| `expected` | a documented, expected difference (e.g. lengths the legacy model cannot handle) | passes |
| `skipped` | not run because the user asked (`--skip-check NAME`, `--no-training`, `--no-domain`) | passes |
| `fail` | compared and different | fails (exit 1) |
| `error` | the check could not run (an exception), with the reason | fails (exit 1) |

A check that could not run is never a pass: only an explicit opt-out records `skipped`.
What does not apply to a pair of files (no text branch, a weights-only NEW) is a note, not a check.

To add a section, the runner creates a `Section` with a new `name` and adds its `Check`s; the verdict, JSON
and JUnit forms follow without changes here (give its checks `max_abs`/`atol` to get numbers in JUnit).
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

from .checks import ERROR, FAIL, PASS, json_safe
from .checks import EXPECTED as EXPECTED  # re-exported: the checks import these from here
from .checks import OK_STATUSES as OK_STATUSES
from .checks import SKIP as SKIP
from .checks import Check as Check
from .checks import OutputDiff as OutputDiff
from .checks import Section as Section
from .junit import add_counts, check_numbers, classname, short, shown_path, testsuite
from .junit import junit_document as junit_document  # re-exported for the gate


@dataclass
class VerifyReport:
    """Everything `run_verify` established. `passed` is the verdict."""

    old: str
    new: str
    atol: float
    rtol: float
    seed: int = 0
    family: str | None = None
    old_version: str | None = None
    new_version: str | None = None
    old_class: str | None = None
    new_class: str | None = None
    device: str = "cpu"
    device_name: str | None = None
    weights_dtype: str | None = None
    compute_dtype: str | None = None
    effective_atol: float | None = None
    effective_rtol: float | None = None
    tolerance_note: str = ""
    inputs_source: str = "generated"
    sections: list[Section] = field(default_factory=list)
    outputs: dict[str, OutputDiff] = field(default_factory=dict)
    localisation: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    error_code: int | None = None
    duration_s: float = 0.0

    # ----------------------------------------------------------------- verdict
    @property
    def passed(self) -> bool:
        """The verdict: the run started, has sections, and every section passes."""
        return self.error is None and bool(self.sections) and all(s.passed for s in self.sections)

    def failed_checks(self) -> list[tuple[Section, Check]]:
        """The checks that compared and differed.

        Returns:
            (section, check) pairs in report order.
        """
        return [(s, c) for s in self.sections for c in s.checks if c.status == FAIL]

    def errored_checks(self) -> list[tuple[Section, Check]]:
        """The checks that could not run.

        Returns:
            (section, check) pairs in report order.
        """
        return [(s, c) for s in self.sections for c in s.checks if c.status == ERROR]

    @property
    def exit_code(self) -> int:
        """0 all passed; 1 a check differs or could not run; the run's own exit code (2, 3, 70) when the
        comparison as a whole could not start."""
        if self.error is not None:
            return self.error_code if self.error_code is not None else 3
        if self.failed_checks() or self.errored_checks():
            return 1
        if not self.sections:
            return 3
        return 0

    def skipped_checks(self) -> list[tuple[Section, Check]]:
        """The checks skipped on request.

        Returns:
            (section, check) pairs in report order.
        """
        return [(s, c) for s in self.sections for c in s.checks if c.status == SKIP]

    def section(self, name: str) -> Section | None:
        """A section by name.

        Args:
            name: build, weights, outputs, stored, training, domain, ...

        Returns:
            The section, or None when the run has none of that name.
        """
        return next((s for s in self.sections if s.name == name), None)

    def check(self, section: str, name: str) -> Check | None:
        """A check by section and name.

        Args:
            section: the section's name.
            name: the check's name.

        Returns:
            The first matching check, or None.
        """
        sec = self.section(section)
        return next((c for c in sec.checks if c.name == name), None) if sec else None

    def tolerance(self) -> tuple[float, float]:
        """The tolerances the comparisons used (widened for a lower-precision dtype, else as asked).

        Returns:
            (atol, rtol).
        """
        atol = self.effective_atol if self.effective_atol is not None else self.atol
        rtol = self.effective_rtol if self.effective_rtol is not None else self.rtol
        return atol, rtol

    # ------------------------------------------------------------------- forms
    def to_dict(self) -> dict[str, Any]:
        """The `verify --json` report.

        Returns:
            Everything, JSON-ready (non-finite numbers as strings).
        """
        atol, rtol = self.tolerance()
        return json_safe({
            "tool": "athelas-migrate verify",
            "passed": self.passed,
            "exit_code": self.exit_code,
            "old": self.old,
            "new": self.new,
            "family": self.family,
            "old_version": self.old_version,
            "new_version": self.new_version,
            "old_class": self.old_class,
            "new_class": self.new_class,
            "device": self.device,
            "device_name": self.device_name,
            "weights_dtype": self.weights_dtype,
            "compute_dtype": self.compute_dtype,
            "atol": self.atol,
            "rtol": self.rtol,
            "effective_atol": atol,
            "effective_rtol": rtol,
            "tolerance_note": self.tolerance_note,
            "seed": self.seed,
            "inputs": self.inputs_source,
            "outputs": {k: v.to_dict() for k, v in self.outputs.items()},
            "localisation": self.localisation,
            "notes": self.notes,
            "error": self.error,
            "duration_s": round(self.duration_s, 6),
            "sections": [s.to_dict() for s in self.sections],
        })

    def to_json(self) -> str:
        """`to_dict()` as indented JSON.

        Returns:
            The JSON text (strict: no NaN literals).
        """
        return json.dumps(self.to_dict(), indent=2, sort_keys=False, allow_nan=False)

    def write_json(self, path: str | os.PathLike[str]) -> None:
        """Write `to_json()` atomically.

        Args:
            path: the report file; its parent directories are created.
        """
        _atomic_write(path, self.to_json() + "\n")

    def junit_suites(self, prefix: str = "") -> list[ET.Element]:
        """One <testsuite> per section (plus one for a run error), each check a <testcase>.

        Suites are named `PAIR / SECTION`, PAIR being `prefix` or the two paths (relative to the working
        directory when inside it, else absolute): unique per file pair, so reports of many pairs merged by a CI
        server never collide (base names alone do: every `runs/*/last.ckpt`). A suite's time is its section's
        (setup included), not only the sum of its checks.

        Args:
            prefix: the PAIR label; empty means the two paths.

        Returns:
            The <testsuite> elements, a run error's first.
        """
        label = prefix or f"{shown_path(self.old)} -> {shown_path(self.new)}"
        suites = []
        props = {"old": self.old, "new": self.new, "family": self.family or "", "device": self.device,
                 "weights_dtype": self.weights_dtype or "", "compute_dtype": self.compute_dtype or "",
                 "atol": repr(self.tolerance()[0]), "rtol": repr(self.tolerance()[1]), "seed": str(self.seed),
                 "inputs": self.inputs_source}
        if self.error is not None:
            suite = testsuite(f"{label} / run", [], props, self.duration_s)
            case = ET.SubElement(suite, "testcase", classname=classname(self.family, "run"), name="run verify",
                                 time=f"{self.duration_s:.6f}")
            ET.SubElement(case, "error", message=short(self.error), type="CannotRun").text = self.error
            add_counts(suite)
            suites.append(suite)
        for sec in self.sections:
            suite = testsuite(f"{label} / {sec.title}", sec.checks, props, sec.duration_s)
            for c in sec.checks:
                case = ET.SubElement(suite, "testcase", classname=classname(self.family, sec.name), name=c.name,
                                     time=f"{c.duration_s:.6f}")
                numbers = check_numbers(c)
                if c.status == FAIL:
                    msg = c.detail or "values differ"
                    if self.localisation and sec.name == "outputs":
                        msg += f"; first divergent module: {self.localisation.get('module')}"
                    ET.SubElement(case, "failure", message=short(msg), type="Mismatch").text = \
                        f"{msg}\n{numbers}".strip()
                elif c.status == ERROR:
                    ET.SubElement(case, "error", message=short(c.detail), type="CheckError").text = c.detail
                elif c.status == SKIP:
                    ET.SubElement(case, "skipped", message=short(c.detail or "skipped"))
                if c.status in (PASS, EXPECTED) and (c.detail or numbers):
                    tag = "expected difference: " if c.status == EXPECTED else ""
                    ET.SubElement(case, "system-out").text = f"{tag}{c.detail}\n{numbers}".strip()
            add_counts(suite)
            suites.append(suite)
        return suites

    def to_junit(self, prefix: str = "") -> str:
        """The `verify --junit` document.

        Args:
            prefix: the PAIR label of the suite names (see `junit_suites`).

        Returns:
            The JUnit XML text.
        """
        return junit_document(self.junit_suites(prefix), name="athelas-migrate verify", seconds=self.duration_s)

    def write_junit(self, path: str | os.PathLike[str], prefix: str = "") -> None:
        """Write `to_junit(prefix)` atomically.

        Args:
            path: the report file; its parent directories are created.
            prefix: the PAIR label of the suite names.
        """
        _atomic_write(path, self.to_junit(prefix))


# ---------------------------------------------------------------------- helpers

def _atomic_write(path: str | os.PathLike[str], text: str) -> None:
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = f"{path}.partial"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)

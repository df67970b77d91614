"""JUnit XML for verify reports: the building blocks of `VerifyReport.junit_suites` and the document that
holds the suites of one or many file pairs (the gate, tools/gate.py, merges them).

Pure Python (xml.etree). To show another fact in CI, add it to the suite properties or the test case's
text in `VerifyReport.junit_suites`; the counts and times here follow the elements by themselves.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from typing import Any


def junit_document(suites: list[ET.Element], name: str, seconds: float | None = None) -> str:
    """The <testsuites> document; its time is `seconds` (the whole run's wall time: what the suites leave out,
    such as loading and migrating, counts too) when given, else the sum of the suites'.

    Args:
        suites: <testsuite> elements, of one file pair or of many (the gate merges them).
        name: the document's name attribute.
        seconds: the whole run's wall time, or None.

    Returns:
        The XML text, with totals of tests, failures, errors and skips.
    """
    root = ET.Element("testsuites", name=name)
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    t = 0.0
    for s in suites:
        root.append(s)
        for k in totals:
            totals[k] += int(s.get(k, "0"))
        t += float(s.get("time", "0"))
    for k, v in totals.items():
        root.set(k, str(v))
    root.set("time", f"{max(t, seconds) if seconds is not None else t:.6f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def shown_path(path: str) -> str:
    """A report path in a suite name: relative to the working directory when inside it, else absolute.

    Args:
        path: a checkpoint path as given.

    Returns:
        The path to show.
    """
    full = os.path.abspath(path)
    rel = os.path.relpath(full)
    return full if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel


def testsuite(name: str, checks: list[Any], props: dict[str, str], seconds: float = 0.0) -> ET.Element:
    """An empty <testsuite> with its properties; its time is the section's when longer than its checks'.

    Args:
        name: the suite name.
        checks: the section's Checks (for their durations).
        props: the properties every suite of the run carries.
        seconds: the section's own duration (setup included).

    Returns:
        The element; `add_counts` fills in its totals once its cases are added.
    """
    suite = ET.Element("testsuite", name=name, time=f"{max(seconds, sum(c.duration_s for c in checks)):.6f}")
    pe = ET.SubElement(suite, "properties")
    for k, v in props.items():
        ET.SubElement(pe, "property", name=k, value=str(v))
    return suite


def add_counts(suite: ET.Element) -> None:
    """Set a suite's tests, failures, errors and skipped from its test cases.

    Args:
        suite: a <testsuite> whose cases are complete.
    """
    cases = suite.findall("testcase")
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(sum(1 for c in cases if c.find("failure") is not None)))
    suite.set("errors", str(sum(1 for c in cases if c.find("error") is not None)))
    suite.set("skipped", str(sum(1 for c in cases if c.find("skipped") is not None)))


def classname(family: str | None, section: str) -> str:
    """A test case's class name, so CI groups results by family and section.

    Args:
        family: the detected family, or None.
        section: the section's name.

    Returns:
        `verify.FAMILY.SECTION`.
    """
    return f"verify.{family or 'unknown'}.{section}"


def check_numbers(c: Any) -> str:
    """A check's differences and tolerances on one line.

    Args:
        c: a Check (its max_abs, max_rel, atol and rtol are read).

    Returns:
        `max_abs=... max_rel=... atol=... rtol=...`, each only when known; "" when none is.
    """
    parts = []
    if c.max_abs is not None:
        parts.append(f"max_abs={_fmt(c.max_abs)}")
    if c.max_rel is not None:
        parts.append(f"max_rel={_fmt(c.max_rel)}")
    if c.atol is not None:
        parts.append(f"atol={c.atol:g} rtol={c.rtol or 0.0:g}")
    return " ".join(parts)


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else ("nan" if math.isnan(x) else f"{x:.3e}")


def short(text: str, n: int = 300) -> str:
    """A message attribute: whitespace collapsed, at most `n` characters.

    Args:
        text: the full text (it goes in the element's body).
        n: the most characters kept.

    Returns:
        The shortened text, ending in "..." when cut.
    """
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[: n - 3] + "..."

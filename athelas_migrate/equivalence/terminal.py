"""Terminal summary of a VerifyReport (rich).

Every cell and line is a `rich.text.Text`, never markup: keys, file names and exception messages
come from checkpoints, and a key such as `[/]` must print as itself."""

from __future__ import annotations

import math

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .report import ERROR, EXPECTED, FAIL, PASS, SKIP, VerifyReport

STYLE = {PASS: "green", EXPECTED: "cyan", SKIP: "dim", FAIL: "bold red", ERROR: "bold magenta"}


def _row(table: Table, *cells: object) -> None:
    table.add_row(*(c if isinstance(c, Text) else Text(str(c)) for c in cells))


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return "0" if x == 0 else f"{x:.2e}"


def _header(report: VerifyReport) -> Panel:
    atol, rtol = report.tolerance()
    lines = Text()
    lines.append("OLD ", style="bold")
    lines.append(f"{report.old}")
    if report.family:
        lines.append(f"  ({report.family} {report.old_version}, {report.old_class or 'legacy'})", style="dim")
    lines.append("\nNEW ", style="bold")
    lines.append(f"{report.new}")
    if report.new_version:
        lines.append(f"  ({report.new_version}, {report.new_class or ''})", style="dim")
    dev = report.device + (f" ({report.device_name})" if report.device_name else "")
    lines.append(f"\ndevice {dev} · weights {report.weights_dtype or '?'} · compute "
                 f"{report.compute_dtype or '?'} · atol {atol:g} · rtol {rtol:g} · seed {report.seed}")
    if report.tolerance_note and report.weights_dtype not in ("float32", "float64", None):
        lines.append(f"\n{report.tolerance_note}", style="yellow")
    lines.append(f"\ninputs: {report.inputs_source}", style="dim")
    return Panel(lines, title="athelas-migrate verify", expand=False)


def render(report: VerifyReport, console: Console | None = None, verbose: bool = False) -> None:
    """Print the summary: header, per-output differences, sections, failures, localisation, verdict.

    Args:
        report: the finished report (a run error prints the header and the error only).
        console: where to print; None means a rich Console on stdout.
        verbose: list every check, not only the failing ones and a count per section.
    """
    console = console or Console()
    console.print(_header(report))
    if report.error is not None:
        console.print(Text(f"could not verify: {report.error}", style="bold magenta"))
        return

    if report.outputs:
        t = Table(title="Outputs (legacy vs refactored, eval mode)", title_justify="left")
        for col in ("output", "batches", "max abs diff", "max rel diff", "verdict"):
            t.add_column(col, justify="right" if "diff" in col or col == "batches" else "left")
        for name, o in report.outputs.items():
            _row(t, name, str(o.batches), _num(o.max_abs), _num(o.max_rel),
                      Text("pass" if o.passed else "FAIL", style=STYLE[PASS if o.passed else FAIL]))
        console.print(t)

    # Three columns (the counts in one cell) so the summary keeps most of an 80-column terminal; section
    # names are short ids that never split.
    t = Table(title="Checks", title_justify="left")
    t.add_column("section", no_wrap=True)
    t.add_column("result", no_wrap=True)
    t.add_column("summary", ratio=1)
    for s in report.sections:
        counts = [f"{s.count(st)} {st}" for st in (PASS, EXPECTED, SKIP, FAIL, ERROR) if s.count(st)]
        worst = FAIL if s.count(FAIL) else ERROR if s.count(ERROR) else ""
        _row(t, s.name, Text(", ".join(counts) or "no checks", style=STYLE[worst] if worst else ""),
             _section_summary(s))
    console.print(t)

    if verbose:
        for s in report.sections:
            d = Table(title=Text(s.title), title_justify="left")
            for col in ("check", "status", "max abs", "max rel", "detail"):
                d.add_column(col)
            for c in s.checks:
                _row(d, c.name, Text(c.status, style=STYLE.get(c.status, "")), _num(c.max_abs),
                          _num(c.max_rel), c.detail)
            console.print(d)

    bad = report.failed_checks() + report.errored_checks()
    if bad:
        f = Table(title="Failures", title_justify="left")
        for col in ("section", "check", "status", "max abs", "detail"):
            f.add_column(col)
        for s, c in bad[:25]:
            _row(f, s.name, c.name, Text(c.status, style=STYLE[c.status]), _num(c.max_abs), c.detail)
        if len(bad) > 25:
            _row(f, "...", f"{len(bad) - 25} more", "", "", "")
        console.print(f)

    loc = report.localisation
    if loc:
        if loc.get("module") is not None:
            body = Text()
            body.append("first divergent module: ", style="bold")
            body.append(f"{loc['module']}", style="bold red")
            body.append(f" ({loc.get('type')})\nlegacy counterpart: {loc.get('old_module')} ({loc.get('old_type')})"
                        f"\nkind: {loc.get('kind')} · max abs diff {_num(loc.get('max_abs'))} · batch "
                        f"{loc.get('batch')}\n{loc.get('detail')}")
            if loc.get("also"):
                body.append(f"\nalso: {', '.join(loc['also'])}", style="dim")
        else:
            body = Text(str(loc.get("detail")))
        console.print(Panel(body, title="Localisation", expand=False, border_style="red"))

    for s in report.sections:
        for n in s.notes:
            console.print(Text(f"· {s.name}: {n}", style="dim"))
    for n in report.notes:
        console.print(Text(f"· {n}", style="dim"))

    verdict = Text()
    if report.passed:
        verdict.append("PASS", style="bold green")
        verdict.append(" the refactored model computes what the legacy model did")
        skipped = report.skipped_checks()
        if skipped:
            verdict.append(f" ({len(skipped)} check(s) skipped by request: "
                           f"{', '.join(s.name if c.name == s.name else f'{s.name}/{c.name}' for s, c in skipped)})",
                           style="yellow")
    else:
        verdict.append("FAIL" if report.failed_checks() else "ERROR", style="bold red")
        verdict.append(f" {len(report.failed_checks())} check(s) differ, {len(report.errored_checks())} could not run")
    verdict.append(f"  ({report.duration_s:.2f}s)", style="dim")
    console.print(verdict)


def _section_summary(s) -> str:
    if s.name == "domain" and s.summary.get("ranges"):
        r = s.summary["ranges"]
        parts = [f"agrees {r['agrees']}"] if "agrees" in r else []
        if "differs-expected" in r:
            parts.append(f"legacy ignores tail {r['differs-expected']}")
        if "legacy-raises" in r:
            parts.append(f"legacy raises {r['legacy-raises']}")
        for k in ("differs-unexpected", "v2-raises"):
            if k in r:
                parts.append(f"{k} {r[k]}")
        return "; ".join(parts)
    if s.name == "training":
        return ", ".join(f"{c.name} {_num(c.max_abs)}" for c in s.checks if c.max_abs is not None) or \
            "; ".join(c.detail for c in s.checks)
    worst = max((c.max_abs for c in s.checks if c.max_abs is not None and not math.isnan(c.max_abs)),
                default=None)
    return f"max abs diff {_num(worst)}" if worst is not None else (s.checks[0].detail if s.checks else "")


__all__ = ["render"]

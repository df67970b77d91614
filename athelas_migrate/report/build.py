"""Assemble a report Page for OLD -> NEW: the audit trace, NEW's provenance stamp, the charts, the commands.

Shared by `athelas-migrate report`, `verify --html` and the gate, which all hold a verify report
already (or none) and need the same page from it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shlex
from typing import Any

from .model import Page, build_page


def report_commands(old: str, new: str, overrides: dict[str, Any] | None, page: str | None = None,
                    atol: float = 1e-5, rtol: float = 0.0) -> list[str]:
    """The shell commands that migrate, verify and re-render this page (overrides as `--set`, sorted).

    Args:
        old: OLD as the page names it.
        new: NEW as the page names it.
        overrides: the hyper-parameters supplied, or None.
        page: the page's path; None leaves out the `report` command.
        atol: verify's absolute tolerance (shown only when not the default).
        rtol: verify's relative tolerance (likewise).

    Returns:
        One shell-quoted command per line.
    """
    sets = "".join(f" --set {shlex.quote(f'{k}={json.dumps(v, sort_keys=True)}')}"
                   for k, v in sorted((overrides or {}).items()))
    o, n = shlex.quote(old), shlex.quote(new)
    tol = "" if (atol, rtol) == (1e-5, 0.0) else f" --atol {atol:g} --rtol {rtol:g}"
    lines = [f"athelas-migrate ckpt {o} {n}{sets}", f"athelas-migrate verify {o} {n}{tol}{sets}"]
    if page:
        lines.append(f"athelas-migrate report {o} {n}{tol}{sets} -o {shlex.quote(page)}")
    return lines


def generated_at() -> str:
    """UTC time of rendering; SOURCE_DATE_EPOCH (reproducible builds) fixes it.

    Returns:
        ISO 8601, to the second, with a Z.
    """
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = _dt.datetime.fromtimestamp(int(epoch), _dt.UTC) if epoch and epoch.isdigit() else \
        _dt.datetime.now(_dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _stamp(new: str) -> tuple[dict[str, Any] | None, str | None]:
    from ..errors import AthelasError
    from ..io.reader import read_checkpoint

    try:
        return read_checkpoint(new).stamp, None
    except (AthelasError, OSError) as exc:
        return None, f"NEW's provenance stamp could not be read: {exc}"


def page_for(old: str, new: str, overrides: dict[str, Any] | None = None, verify: Any = None, *,
             result: Any = None, commands: list[str] | None = None, labels: tuple[str, str] | None = None) -> Page:
    """The page of OLD migrated into NEW; NEW's stamp gives the target layout and the provenance.

    Args:
        old: the source checkpoint.
        new: the migrated checkpoint (a stamp that cannot be read becomes a warning on the page).
        overrides: hyper-parameters supplied for OLD.
        verify: a VerifyReport, or None (the page says 'not verified').
        result: the MigrationResult of OLD when the caller has it (else OLD is planned again, writing nothing).
        commands: the commands the page shows; None means `report_commands` without the page.
        labels: how the page names OLD and NEW (default: the paths as given).

    Returns:
        The Page, charts included when verified.
    """
    from ..pipeline import plan_and_apply
    from .plots import page_plots

    stamp, problem = _stamp(new)
    if result is None:
        result = plan_and_apply(old, to=(stamp or {}).get("layout"), overrides=overrides)
    old_label, new_label = labels or (old, new)
    page = build_page(result, verify, old_path=old_label, new_path=new_label, stamp=stamp,
                      commands=commands if commands is not None else report_commands(old_label, new_label, overrides),
                      generated=generated_at())
    if problem:
        page.warnings.append(problem)
    if page.verify is not None:
        page.plots = page_plots(page.verify, page.modules, (page.diverging or {}).get("module"))
    return page

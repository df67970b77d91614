"""Page -> one self-contained HTML file, through a Jinja2 template shipped as package data.

Jinja2 escapes every value by default (keys and reasons come from untrusted checkpoints and rule
files), and the template keeps the markup reviewable as markup rather than as Python strings.
The CSS and the script are included inline from files beside the template; the charts are inline
SVG: the page fetches nothing when opened. To show something new, add it to `Page` (report.model) and
to templates/report.html.j2; a derived figure goes into `_counts` or `_texts`.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

from .. import __version__
from ..errors import OutputError
from .model import Page


@lru_cache(maxsize=1)
def _env() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("athelas_migrate.report", "templates"),
                             autoescape=True, trim_blocks=False, lstrip_blocks=False,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.policies["json.dumps_kwargs"] = {"sort_keys": True, "separators": (",", ":")}
    env.globals["fmt"] = format_number
    return env


def format_number(x: Any, digits: int = 3) -> str:
    """A difference as the reports print it (the HTML page here, the gate's table in tools/gate.py).

    Args:
        x: a number, None (nothing measured) or text (passed through).
        digits: decimals of the mantissa.

    Returns:
        "-" for None, "0" for exactly zero, otherwise scientific notation ("inf" and "nan" as such).
    """
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if x == 0:
        return "0"
    return f"{x:.{digits}e}"


def _counts(page: Page) -> dict[str, int]:
    old = [k for k in page.keys.values() if k.side == "old"]
    new = [k for k in page.keys.values() if k.side == "new"]
    return {"keys_old": len(old), "keys_new": len(new),
            "renamed": sum(k.status == "renamed" for k in old), "kept": sum(k.status == "kept" for k in old),
            "dropped": sum(k.status == "dropped" for k in old), "restored": sum(k.status == "restored" for k in new),
            "fanout": sum(k.status in ("split", "concat") for k in old),
            "transformed": sum(k.status == "transformed" for k in old)}


def _texts(page: Page) -> dict[str, str]:
    sections = {s["name"]: s for s in (page.verify or {}).get("sections", [])}
    dom = sections.get("domain")
    domain = "; ".join(dom["notes"]) if dom else next(
        (n for n in (page.verify or {}).get("notes", []) if "domain" in n.lower() or "length" in n.lower()), "")
    train = sections.get("training")
    training = ""
    if train:
        training = "; ".join(f"{c['name']}: {c['status']} ({c['detail']})" for c in train["checks"]
                             if c["name"] in ("loss", "gradients", "one optimizer step"))
    return {"domain_text": domain, "training_text": training}


def render_page(page: Page) -> str:
    """Render the report page.

    Args:
        page: the page's data (`report.page`).

    Returns:
        The HTML (deterministic: the same Page gives the same text).
    """
    old_keys = [k for k in page.keys.values() if k.side == "old"]
    targets: dict[str, list[str]] = {}
    for e in page.edges:
        if e.kind != "restore":
            targets.setdefault(e.source, []).append(e.target)
    return _env().get_template("report.html.j2").render(
        page=page, groups=page.groups, version=__version__, counts=_counts(page), old_keys=old_keys,
        targets=targets, edges=[[e.source, e.target, e.group, e.kind] for e in page.edges],
        modules_batch=f"batch {page.diverging['batch']}, its worst row" if (page.diverging or {}).get("batch")
        else "first generated batch, one row",
        **_texts(page))


def write_page(page: Page, path: str | os.PathLike[str]) -> int:
    """Render the page and write it atomically.

    Args:
        page: the page's data.
        path: the HTML file to write.

    Returns:
        The size written, in bytes.

    Raises:
        OutputError: the file cannot be written.
    """
    from ..io.writer import atomic_output

    data = render_page(page).encode("utf-8")
    path = os.fspath(path)
    try:
        with atomic_output(path) as fh:
            fh.write(data)
    except OSError as exc:
        raise OutputError(f"cannot write the report {path}: {exc.strerror or exc}") from exc
    return len(data)

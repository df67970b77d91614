"""What `ckpt` and `inspect` print: the plan and result of a migration, the table of what a checkpoint is.

Checkpoint-derived text (keys, reasons, paths) is printed literally through `literal`, never as rich
markup. rich is imported inside each function, so importing this module costs nothing at start-up. A
new field of `ckpt --json` goes into `result_summary` (the text view prints from it too); a new row
of `inspect` into `INSPECT_ROWS` when it is a plain value of `api.inspect`'s dict.
"""

from __future__ import annotations

import json
import os
from typing import Any

#: plain values of `api.inspect`'s dict, one row each, in this order
INSPECT_ROWS = ("family", "layout", "format", "file_bytes", "tensors", "parameters", "tensor_bytes", "dtypes",
                "epoch", "global_step", "optimizer_states", "lr_schedulers", "pickled_class")


def console() -> Any:
    """A rich console on stdout that highlights nothing (numbers in keys stay plain).

    Returns:
        A `rich.console.Console` writing to stdout.
    """
    from rich.console import Console

    return Console(highlight=False)


def literal(value: Any) -> str:
    """Checkpoint-derived text printed literally: a key like '[/]' is data, not rich markup.

    Args:
        value: anything; it is printed as `str(value)`.

    Returns:
        The text with rich markup escaped.
    """
    from rich.markup import escape

    return escape(str(value))


def result_summary(result: Any, new: str, dry_run: bool, elapsed: float) -> dict[str, Any]:
    """The JSON form of a migration result (`ckpt --json`).

    Args:
        result: the `MigrationResult` of `api.migrate`.
        new: the output path.
        dry_run: whether nothing was written.
        elapsed: seconds the migration took.

    Returns:
        A JSON-serialisable dict.
    """
    traces = result.traces
    return {
        "source": result.raw.path, "family": result.family.name, "from": result.source_version,
        "to": result.target_version, "evidence": result.detection.evidence,
        "rule_files": [rf.name for rf in result.chain],
        "renamed": sum(1 for t in traces if t.target and t.target != t.source),
        "kept": sum(1 for t in traces if t.target == t.source),
        "dropped": [{"key": t.source, "reason": t.reason} for t in traces if t.target is None],
        "restored": [c.target for c in result.created], "hparam_edits": result.hparam_notes,
        "notes": result.notes, "warnings": result.warnings, "noop": result.noop,
        "written": None if dry_run else os.path.abspath(new), "seconds": round(elapsed, 3),
    }


def render_result(result: Any, new: str, dry_run: bool, elapsed: float) -> None:
    """Print a migration's plan, its counts and every drop, restore, note and warning (`ckpt`).

    Args:
        result: the `MigrationResult` of `api.migrate`.
        new: the output path.
        dry_run: whether nothing was written.
        elapsed: seconds the migration took.
    """
    from rich.table import Table

    con = console()
    s = result_summary(result, new, dry_run, elapsed)
    con.print(f"[bold]{s['family']}[/] {s['from']} -> {s['to']}  ({literal(os.path.basename(s['source']))})")
    con.print("  detected by: " + literal("; ".join(s["evidence"])))
    if result.noop:
        what = "nothing written (dry run)" if dry_run else f"copied verbatim to {literal(new)}"
        con.print(f"[yellow]already at layout {s['to']}: no change needed; {what}[/]")
        return
    table = Table(title="plan", show_lines=False)
    for col in ("rule file", "edge"):
        table.add_column(col)
    for rf in result.chain:
        table.add_row(rf.name, f"{rf.source_version} -> {rf.target_version}")
    con.print(table)
    con.print(f"  tensors: {s['renamed']} renamed, {s['kept']} kept, {len(s['dropped'])} dropped, "
              f"{len(s['restored'])} restored")
    for d in s["dropped"]:
        con.print(f"  [dim]dropped[/] {literal(d['key'])}: {literal(d['reason'])}")
    for tag, key in (("[dim]restored[/]", "restored"), ("[dim]hparam[/]", "hparam_edits"),
                     ("[cyan]note[/]", "notes"), ("[yellow]warning[/]", "warnings")):
        for line in s[key]:
            con.print(f"  {tag} {literal(line)}")
    if dry_run:
        con.print("[yellow]dry run: nothing written[/]")
    else:
        size = os.path.getsize(new)
        con.print(f"[green]wrote[/] {literal(new)} ({size:,} bytes) in {elapsed:.2f} s")


def render_inspect(path: str, info: dict[str, Any]) -> None:
    """Print `api.inspect`'s answer as a two-column table (`inspect` without --json).

    Args:
        path: the inspected file (its name is the title).
        info: the dict `api.inspect` returned.
    """
    from rich.table import Table

    table = Table(show_header=False, title=literal(os.path.basename(path)))
    for key in INSPECT_ROWS:
        table.add_row(key, literal(info[key]))
    table.add_row("evidence", literal("\n".join(info["evidence"])))
    if info["notes"]:
        table.add_row("notes", literal("\n".join(info["notes"])))
    needs = info.get("migration_needs") or []
    table.add_row("a migration needs", literal("\n".join(f"{n['key']}: {n['why']}" for n in needs) or "nothing more"))
    hp = info["hyper_parameters"] or {}
    flat = [f"{k}: {json.dumps(v, default=str)}" for k, v in hp.items()] if isinstance(hp, dict) else [str(hp)]
    table.add_row("hyper_parameters", literal("\n".join(line[:300] for line in flat[:200])))
    console().print(table)

"""What `batch` and `merge-summaries` print: the summary table, failure lines, and the live progress bar.

Paths, errors and warnings come from the checkpoints (file names, keys): they are printed as plain
`Text`, never parsed as rich markup. A new column goes into `render_summary`'s table; a new live
figure into `progress_bar`'s columns and `BatchProgress.advance`.
"""

from __future__ import annotations

import time
from typing import Any

from .batch_summary import OK_STATUSES


def render_summary(summary: dict[str, Any], console: Any = None) -> None:
    """Print the table and the failure lines. Paths, errors and warnings come from the checkpoints (file
    names, keys): they are printed as plain `Text`, never parsed as rich markup (`[/]` in a key is just text).

    Args:
        summary: the batch summary (`batch_summary`), of one run or merged shards.
        console: a rich console to print on (default: stdout, no highlighting).
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    con = console or Console(highlight=False)
    files = summary["files"]
    table = Table(title=f"batch: {len(files)} checkpoint(s)"
                        + (f", shard {summary['shard']['index']}/{summary['shard']['count']}"
                           if summary["shard"]["count"] > 1 else ""))
    for col, just in (("result", "left"), ("family", "left"), ("layout", "left"), ("files", "right"),
                      ("MB", "right"), ("seconds", "right")):
        table.add_column(col, justify=just)
    groups: dict[tuple, list[dict]] = {}
    for r in files:
        key = (str(r["status"]), str(r.get("family") or "-"), f"{r['from']} -> {r['to']}" if r.get("from") else "-")
        groups.setdefault(key, []).append(r)
    colours = {"migrated": "green", "verified": "green", "unchanged": "cyan", "failed": "red",
               "verify_failed": "red", "skipped": "yellow"}
    for (status, fam, edge), rs in sorted(groups.items()):
        table.add_row(Text(status, style=colours.get(status, "white")), Text(fam), Text(edge), str(len(rs)),
                      f"{sum(r.get('bytes') or 0 for r in rs) / 1e6:,.1f}",
                      f"{sum(r.get('seconds') or 0 for r in rs):.2f}")
    con.print(table)

    def line(tag: str, style: str, path: str, text: str) -> None:
        con.print(Text.assemble((tag, style), f" {path}: {text}"))

    bad = [r for r in files if r["status"] not in OK_STATUSES]
    for r in bad:
        line(str(r["status"]), "red", str(r["path"]), str(r.get("error") or ""))
    for r in files:
        for note in r.get("notes") or []:
            line("note", "cyan", str(r["path"]), str(note))
    warned = [r for r in files if r.get("warnings")]
    for r in warned[:20]:
        line("warning", "yellow", str(r["path"]), str(r["warnings"][0]))
    skipped = [{"path": r["path"], "reason": r.get("reason")} for r in files if r["status"] == "skipped"]
    skipped += summary.get("skipped") or []
    for e in skipped:
        line("skipped", "yellow", str(e.get("path")), str(e.get("reason")))
    extra = []
    if "torch_imports" in summary:
        extra.append(f"torch imported {summary['torch_imports']} time(s)")
    if summary.get("workers"):
        extra.append(f"{summary['workers']} worker process(es)")
    if summary.get("missing_shards"):
        con.print(Text(f"incomplete: missing shard(s) {summary['missing_shards']} of {summary['shards']}",
                       style="yellow"))
    ok = len(files) - len(bad) - sum(1 for r in files if r["status"] == "skipped")
    excluded = f", {summary['excluded']} excluded" if summary.get("excluded") else ""
    con.print(Text(f"{ok} ok, {len(bad)} failed" + (f", {len(skipped)} skipped" if skipped else "") + excluded
                   + f", in {summary['seconds']:.2f} s" + (f" ({'; '.join(extra)})" if extra else "")))


def progress_bar(console: Any) -> Any:
    """The batch progress bar: files done, failures, throughput, time left.

    Args:
        console: the rich console to draw on.

    Returns:
        A `rich.progress.Progress`, or None when `console` is not a terminal: piped or redirected output gets
        the summary only, no bar frames.
    """
    if not console.is_terminal:
        return None
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("[bold]migrating"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("[red]{task.fields[failed]} failed"), TextColumn("{task.fields[rate]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console)


def throughput(files: int, nbytes: int, seconds: float) -> str:
    """The throughput shown on the progress bar.

    Args:
        files: files finished.
        nbytes: bytes written.
        seconds: time since the work started.

    Returns:
        `12.5 files/s, 340 MB/s` (written bytes), or "" until there is something to divide.
    """
    if files <= 0 or seconds <= 0:
        return ""
    return f"{files / seconds:.1f} files/s, {nbytes / seconds / 1e6:.1f} MB/s"


class BatchProgress:
    """The progress bar of one `batch` run, fed by `run_batch`'s `on_start` and `progress` callbacks.

    rich is imported in `start`, after the workers started: they do not inherit it, and the bar's refresh
    thread starts only after the last fork.
    """

    def __init__(self) -> None:
        self.bar: Any = None
        self.task: Any = None
        self.failed = self.done = self.nbytes = 0
        self.t0 = 0.0

    def start(self, total: int) -> None:
        """Show the bar (on a terminal only).

        Args:
            total: the number of files the run will process.
        """
        from rich.console import Console

        self.bar = progress_bar(Console(stderr=True, highlight=False))
        self.t0 = time.perf_counter()
        if self.bar is not None:
            self.bar.start()
            self.task = self.bar.add_task("migrate", total=total, failed=0, rate="")

    def advance(self, rec: dict) -> None:
        """Count one finished file.

        Args:
            rec: the file's record from the worker (`status`, `bytes`).
        """
        self.failed += rec["status"] not in OK_STATUSES
        self.done += 1
        self.nbytes += rec.get("bytes") or 0
        if self.bar is not None:
            self.bar.update(self.task, advance=1, failed=self.failed,
                            rate=throughput(self.done, self.nbytes, time.perf_counter() - self.t0))

    def stop(self) -> None:
        """Remove the bar (safe when it never started)."""
        if self.bar is not None:
            self.bar.stop()

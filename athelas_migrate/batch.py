"""`athelas-migrate batch` and `merge-summaries`: migrate (and verify) a whole tree of checkpoints.

`batch SRC DST` finds every checkpoint under SRC (recursively: .ckpt .pt .pth .bin .safetensors),
migrates each into DST at the same relative path, and prints a summary; one bad file never stops the
others, and the exit code is 1 when any failed. `--jobs N` runs N worker processes from one persistent
pool (each imports what it needs, torch included when verifying, once), `--shard K/N` takes a stable
slice of the inputs for job arrays, `--include`/`--exclude` choose inputs by glob, a file's own `NAME.json`
beside it wins over the shared `--config`/`--set` (a shared value a file has no use for is left out for it,
with a note), and `--summary-json` writes a machine-readable summary that `merge-summaries` combines across
shards. See docs/batch.md.

Only click is imported when the CLI starts; the engine is imported in the process that migrates.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import click

from .batch_plan import (  # noqa: F401
    SUFFIXES,
    check_plan,
    discover,
    output_name,
    parse_shard,
    scan,
    select,
    shard_of,
)
from .batch_worker import migrate_one, worker_imports, worker_init
from .errors import EXIT_CHECK_FAILED, EXIT_REFUSED, InputError, OutputError, UsageError

SCHEMA = "athelas-migrate/batch-summary/1"
OK_STATUSES = ("migrated", "verified", "unchanged", "skipped")  # skipped: not a checkpoint at all


# ----------------------------------------------------------------------------- running


def run_batch(src: str, dst: str, to: str | None = None, overrides: dict[str, Any] | None = None,
              fmt: str | None = None, jobs: int = 1, verify: bool = False, shard: tuple[int, int] | None = None,
              force: bool = False, progress: Any = None, on_start: Any = None,
              isolate: bool = True, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Migrate every checkpoint under `src` into `dst`; returns the summary (see docs/batch.md).

    `on_start(total)` is called once the work is about to run (worker processes already started), then
    `progress(record)` once per finished file, both in the calling process. `isolate=False` migrates in
    this process (no crash isolation; for tests that patch the engine). `include`/`exclude` are globs on the
    SRC-relative path (see batch_plan.matches); excluded files are neither migrated nor counted."""
    parent_had_torch = "torch" in sys.modules  # before anything here can import it
    t0 = time.perf_counter()
    src_abs, dst_abs = os.path.abspath(src), os.path.abspath(dst)
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {jobs}")
    if os.path.isdir(src_abs) and os.path.realpath(src_abs) == os.path.realpath(dst_abs):
        raise UsageError("DST is SRC: outputs would replace their inputs; give another directory")
    if os.path.lexists(dst_abs) and not os.path.isdir(dst_abs):
        raise OutputError(f"cannot write into DST {dst}: it exists and is not a directory")
    if verify:
        import importlib.util

        missing = [m for m in ("torch", "athelas_migrate.equivalence") if importlib.util.find_spec(m) is None]
        if missing:  # found without importing: importing torch here would make the workers inherit it
            raise UsageError(f"--verify needs the equivalence runner; not installed: {', '.join(missing)}")
    pool = None
    if isolate:
        from .batch_pool import WorkerPool, start_method

        method = start_method(parent_had_torch)
        if method == "fork":
            worker_imports()  # once here; forked workers inherit it instead of importing it each
        pool = WorkerPool(jobs, migrate_one, worker_init, (verify,), method)
    records: list[dict] = []
    try:
        found, skipped = scan(src_abs, exclude=dst_abs)
        every = select(found, include, exclude)
        skipped = [e for e in skipped if select([e["path"]], include, exclude)]
        if not every:
            why = f" ({len(found)} excluded by --include/--exclude)" if found else ""
            raise UsageError(f"no checkpoints ({' '.join(SUFFIXES)}) under {src}{why}")
        base = src_abs if os.path.isdir(src_abs) else os.path.dirname(src_abs)
        plan = check_plan(base, dst_abs, every, fmt)
        if shard is not None:
            skipped = [s for s in skipped if shard_of(s["path"], shard[1]) == shard[0]]
        tasks = [{"rel": rel, "out_rel": plan[rel], "src": os.path.join(base, rel),
                  "dst": os.path.join(dst_abs, plan[rel]), "to": to, "overrides": dict(overrides or {}),
                  "verify": verify, "force": force}
                 for rel in every if shard is None or shard_of(rel, shard[1]) == shard[0]]
        try:
            os.makedirs(dst_abs, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create DST {dst}: {exc.strerror}") from exc

        def done(rec: dict) -> None:
            records.append(rec)
            if progress:
                progress(rec)

        if on_start:
            on_start(len(tasks))
        if pool is None:
            for task in tasks:
                done(migrate_one(task))
        else:
            pool.run(tasks, done, _worker_died)
    finally:
        if pool is not None:
            pool.close()
    records.sort(key=lambda r: r["path"])
    if pool is None:
        workers, torch_pids, method = set(), {r["pid"] for r in records if r.get("torch_loaded")}, "in-process"
    else:
        workers = pool.pids | {r["pid"] for r in records if "pid" in r}
        torch_pids = pool.torch_pids
    torch_imports = len(torch_pids - {os.getpid()}) + ("torch" in sys.modules and not parent_had_torch)
    summary = _summary(src_abs, dst_abs, to, overrides, fmt, verify, shard, len(every), records,
                       time.perf_counter() - t0, jobs, len(workers), torch_imports)
    summary["options"].update(include=list(include), exclude=list(exclude))
    summary.update(skipped=skipped, excluded=len(found) - len(every), start_method=method)
    return summary


def _worker_died(task: dict, exitcode: int | None) -> dict[str, Any]:
    """The record of a file whose worker died. Its unfinished output was an unnamed O_TMPFILE, which the kernel
    frees with the process; only where O_TMPFILE is unsupported can one named `.partial` remain (docs/safety.md):
    it is never guessed at and removed here, since only its creator can prove it is one of ours."""
    from .batch_pool import death_reason

    return {"path": task["rel"], "output": task["out_rel"], "status": "failed", "seconds": 0.0,
            "error": death_reason(exitcode)}


def _summary(src: str, dst: str, to: str | None, overrides: dict | None, fmt: str | None, verify: bool,
             shard: tuple[int, int] | None, total: int, records: list[dict], seconds: float, jobs: int,
             workers: int, torch_imports: int) -> dict[str, Any]:
    from ._version import __version__

    counts: dict[str, int] = {}
    for r in records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return {
        "schema": SCHEMA,
        "tool": f"athelas-migrate {__version__}",
        "src": src,
        "dst": dst,
        "options": {"to": to, "format": fmt, "verify": verify, "overrides": dict(overrides or {})},
        "shard": {"index": shard[0], "count": shard[1]} if shard else {"index": 0, "count": 1},
        "inputs_total": total,
        "files": records,
        "counts": counts,
        "failed": sum(1 for r in records if r["status"] not in OK_STATUSES),
        "seconds": round(seconds, 3),
        "jobs": jobs,
        "workers": workers,
        "torch_imports": torch_imports,
    }


# ----------------------------------------------------------------------------- merging


def merge_summaries(summaries: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """One report from shard summaries; refuses overlapping or inconsistent shards (InputError)."""
    if not summaries:
        raise UsageError("merge-summaries needs at least one IN.json")
    first_name, first = summaries[0]
    keys = ("src", "dst", "options", "inputs_total")
    shard_count = None
    by_index: dict[int, str] = {}
    owner: dict[str, str] = {}
    files: list[dict] = []
    skipped: dict[str, dict] = {}
    for name, s in summaries:
        if not isinstance(s, dict) or s.get("schema") != SCHEMA:
            raise InputError(f"{name}: not a batch summary ({SCHEMA})")
        for k in keys:
            if s.get(k) != first.get(k):
                raise InputError(f"inconsistent shards: {name} and {first_name} differ in {k!r} "
                                 f"({json.dumps(s.get(k))[:120]} vs {json.dumps(first.get(k))[:120]})")
        sh = s.get("shard") or {}
        idx, cnt = sh.get("index"), sh.get("count")
        if not (isinstance(idx, int) and isinstance(cnt, int) and 0 <= idx < cnt):
            raise InputError(f"{name}: malformed shard {sh!r}")
        if shard_count is None:
            shard_count = cnt
        elif cnt != shard_count:
            raise InputError(f"inconsistent shards: {name} is one of {cnt} shards, {first_name} one of {shard_count}")
        if idx in by_index:
            raise InputError(f"overlapping shards: {name} and {by_index[idx]} are both shard {idx}/{cnt}")
        by_index[idx] = name
        for r in s.get("files") or []:
            path = r.get("path")
            if path in owner:
                raise InputError(f"overlapping shards: {path} is in both {owner[path]} and {name}")
            if cnt > 1 and shard_of(path, cnt) != idx:
                raise InputError(f"inconsistent shards: {path} in {name} belongs to shard {shard_of(path, cnt)}, "
                                 f"not {idx}")
            owner[path] = name
            files.append(r)
        skipped.update((e.get("path"), e) for e in s.get("skipped") or [])
    missing = sorted(set(range(shard_count or 1)) - set(by_index))
    if not missing and len(files) != first.get("inputs_total"):
        raise InputError(f"inconsistent shards: all {shard_count} shards hold {len(files)} files but SRC had "
                         f"{first.get('inputs_total')}")
    files.sort(key=lambda r: r["path"])
    counts: dict[str, int] = {}
    for r in files:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return {
        "schema": SCHEMA,
        "tool": first.get("tool"),
        "src": first.get("src"),
        "dst": first.get("dst"),
        "options": first.get("options"),
        "shard": {"index": 0, "count": 1},
        "merged_from": [{"file": n, "shard": s.get("shard")} for n, s in summaries],
        "shards": shard_count,
        "missing_shards": missing,
        "complete": not missing,
        "inputs_total": first.get("inputs_total"),
        "excluded": first.get("excluded", 0),  # counted before sharding: the same in every shard
        "files": files,
        "skipped": sorted(skipped.values(), key=lambda e: str(e.get("path"))),
        "counts": counts,
        "failed": sum(1 for r in files if r["status"] not in OK_STATUSES),
        "seconds": round(sum(float(s.get("seconds") or 0) for _, s in summaries), 3),
        "torch_imports": sum(int(s.get("torch_imports") or 0) for _, s in summaries),
    }


# ----------------------------------------------------------------------------- rendering


def _write_json(path: str, obj: dict) -> None:
    from .io.writer import atomic_output

    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"directory of {path} does not exist")
    try:
        with atomic_output(path) as fh:
            fh.write((json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc


def render_summary(summary: dict[str, Any], console: Any = None) -> None:
    """The table and the failure lines. Paths, errors and warnings come from the checkpoints (file names,
    keys): they are printed as plain `Text`, never parsed as rich markup (`[/]` in a key is just text)."""
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


# ----------------------------------------------------------------------------- progress


def progress_bar(console: Any) -> Any:
    """The batch progress bar (files done, failures, throughput, time left) on `console`, or None when it is
    not a terminal: piped or redirected output gets the summary only, no bar frames."""
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
    """`12.5 files/s, 340 MB/s` (written bytes) once there is something to divide."""
    if files <= 0 or seconds <= 0:
        return ""
    return f"{files / seconds:.1f} files/s, {nbytes / seconds / 1e6:.1f} MB/s"


# ----------------------------------------------------------------------------- commands


@click.command("batch")
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path())
@click.option("--to", "to", default=None, help="Target layout version (default: newest).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Hyper-parameter the checkpoints lack, for every file (typed like ckpt's --set).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="JSON object of hyper-parameters for every file (a file's own NAME.json wins).")
@click.option("--format", "fmt", type=click.Choice(["ckpt", "safetensors"]), default=None,
              help="Output format (default: each input's own: safetensors stays safetensors, the rest .ckpt).")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes (one persistent pool).")
@click.option("--verify", is_flag=True, help="Run the equivalence runner on every migrated file.")
@click.option("--shard", default=None, metavar="K/N",
              help="Only the inputs of shard K of N (stable: a hash of each relative path), for job arrays.")
@click.option("--summary-json", type=click.Path(dir_okay=False), default=None,
              help="Write the summary (this shard's) as JSON; combine shards with merge-summaries.")
@click.option("--force", is_flag=True, help="Replace outputs that exist (never an input).")
@click.option("--include", multiple=True, metavar="GLOB",
              help="Only inputs whose SRC-relative path (or, for a GLOB without '/', name) matches; repeatable.")
@click.option("--exclude", multiple=True, metavar="GLOB",
              help="Leave out inputs whose SRC-relative path (or name) matches, e.g. golden.pt; repeatable.")
@click.option("--bert-config", "bert_config", type=click.Path(dir_okay=False), default=None,
              help="BERT families: the transformers config.json of the text encoder(s), for every file.")
def batch_cmd(src, dst, to, sets, config_file, fmt, jobs, verify, shard, summary_json, force, include, exclude,
              bert_config) -> None:
    """Migrate every checkpoint under SRC into DST, mirroring relative paths.

    Checkpoints are files ending in .ckpt .pt .pth .bin .safetensors (recursively). A file's own config
    NAME.json beside it (model.ckpt.json) wins over the shared --config/--set. Exit code 0 when all
    migrated (or were already at the target and were copied), 1 when any failed; the others go on.
    """
    from .overrides import parse_overrides

    overrides = parse_overrides(sets, config_file, bert_config)
    state: dict[str, Any] = {"bar": None, "task": None, "failed": 0, "done": 0, "bytes": 0, "t0": 0.0}

    def on_start(total: int) -> None:
        # rich is imported here, after the workers started: they do not inherit it, and the bar's
        # refresh thread starts only after the last fork
        from rich.console import Console

        state["bar"] = progress_bar(Console(stderr=True, highlight=False))
        state["t0"] = time.perf_counter()
        if state["bar"] is not None:
            state["bar"].start()
            state["task"] = state["bar"].add_task("migrate", total=total, failed=0, rate="")

    def progress(rec: dict) -> None:
        state["failed"] += rec["status"] not in OK_STATUSES
        state["done"] += 1
        state["bytes"] += rec.get("bytes") or 0
        if state["bar"] is not None:
            state["bar"].update(state["task"], advance=1, failed=state["failed"],
                                rate=throughput(state["done"], state["bytes"], time.perf_counter() - state["t0"]))

    try:
        summary = run_batch(src, dst, to=to, overrides=overrides, fmt=fmt, jobs=jobs, verify=verify,
                            shard=parse_shard(shard), force=force, progress=progress, on_start=on_start,
                            include=include, exclude=exclude)
    finally:
        if state["bar"] is not None:
            state["bar"].stop()
    if summary_json:
        _write_json(summary_json, summary)
    render_summary(summary)
    if summary["failed"]:
        files = summary.get("files") or []
        # every input refused as an input (e.g. TSA: no exact migration) and none migrated: the batch was refused
        if files and all(f["status"] not in OK_STATUSES and f.get("exit_code") == EXIT_REFUSED for f in files):
            sys.exit(EXIT_REFUSED)
        sys.exit(EXIT_CHECK_FAILED)


@click.command("merge-summaries")
@click.argument("out", type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False))
def merge_summaries_cmd(out, inputs) -> None:
    """Merge the --summary-json files of batch shards into OUT.json.

    Refuses shards that overlap (a shard index or a file twice) or disagree (other SRC, DST, options or
    shard count). Exit code 1 when any file failed or a shard is missing.
    """
    loaded = []
    for path in inputs:
        try:
            with open(path, encoding="utf-8") as fh:
                loaded.append((path, json.load(fh)))
        except FileNotFoundError:
            raise UsageError(f"{path}: no such file") from None
        except ValueError as exc:
            raise InputError(f"{path}: not JSON ({exc})") from None
    merged = merge_summaries(loaded)
    _write_json(out, merged)
    render_summary(merged)
    if merged["failed"] or merged["missing_shards"]:
        sys.exit(EXIT_CHECK_FAILED)


__all__ = ["batch_cmd", "merge_summaries_cmd", "run_batch", "merge_summaries", "discover", "scan", "shard_of",
           "parse_shard", "output_name", "migrate_one"]

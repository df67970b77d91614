"""`athelas-migrate batch` and `merge-summaries`: migrate (and verify) a whole tree of checkpoints.

`batch SRC DST` finds every checkpoint under SRC (recursively: .ckpt .pt .pth .bin .safetensors),
migrates each into DST at the same relative path, and prints a summary; one bad file never stops the
others, and the exit code is 1 when any failed. `--jobs N` runs N worker processes from one persistent
pool (each imports what it needs, torch included when verifying, once), `--shard K/N` takes a stable
slice of the inputs for job arrays, and `--summary-json` writes a machine-readable summary that
`merge-summaries` combines across shards. See docs/batch.md.

Only click is imported when the CLI starts; the engine is imported in the process that migrates.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from typing import Any

import click

from .errors import EXIT_CHECK_FAILED, EXIT_REFUSED, InputError, UsageError

SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")
SCHEMA = "athelas-migrate/batch-summary/1"
OK_STATUSES = ("migrated", "verified", "unchanged")


# ----------------------------------------------------------------------------- inputs


def discover(src: str, exclude: str | None = None) -> list[str]:
    """Relative paths (POSIX separators, sorted) of the checkpoint files under `src` (a file gives
    itself). Hidden files (temporaries such as `.NAME.*.partial`) and the `exclude` tree are skipped;
    symbolic links to directories are not followed."""
    src = os.path.abspath(src)
    if os.path.isfile(src):
        return [os.path.basename(src)]
    if not os.path.isdir(src):
        raise UsageError(f"SRC {src} does not exist")
    exclude = os.path.realpath(exclude) if exclude else None
    found = []
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and os.path.realpath(os.path.join(root, d)) != exclude)
        for name in files:
            if name.startswith(".") or not name.lower().endswith(SUFFIXES):
                continue
            full = os.path.join(root, name)
            if os.path.isfile(full):
                found.append(os.path.relpath(full, src).replace(os.sep, "/"))
    return sorted(found)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard takes K/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= k < n:
        raise UsageError(f"--shard K/N needs 0 <= K < N, got {text!r}")
    return k, n


def shard_of(rel: str, count: int) -> int:
    """The shard of a relative path: a hash of the path alone, so adding or removing other files never
    moves a file to another shard (and the split is the same on every machine and Python version)."""
    digest = hashlib.sha256(rel.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def output_name(rel: str, fmt: str | None) -> str:
    """DST-relative output path: the same path, with the suffix the output format needs."""
    stem, ext = os.path.splitext(rel)
    if fmt == "safetensors":
        return stem + ".safetensors"
    if fmt == "ckpt" and ext.lower() == ".safetensors":
        return stem + ".ckpt"
    return rel


# ----------------------------------------------------------------------------- one file (in a worker)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 400 else line[:397] + "..."


def migrate_one(task: dict[str, Any]) -> dict[str, Any]:
    """Migrate (and verify) one file; never raises: failures come back as a record with `error`."""
    t0 = time.perf_counter()
    rec: dict[str, Any] = {"path": task["rel"], "output": task["out_rel"], "status": "failed", "error": None}
    src, dst = task["src"], task["dst"]
    try:
        from .errors import AthelasError
        from .pipeline import plan_and_apply, write_result

        try:
            result = plan_and_apply(src, to=task["to"], overrides=task["overrides"])
            os.makedirs(os.path.dirname(dst), exist_ok=True)  # only for files that will be written
            rec.update({"family": result.family.name, "from": result.source_version, "to": result.target_version,
                        "warnings": list(result.warnings)})
            same_format = dst.endswith(".safetensors") == (result.raw.kind == "safetensors")
            if result.noop and same_format:
                _copy_verbatim(src, dst, task["force"])
                rec["status"] = "unchanged"
            else:
                write_result(result, dst, force=task["force"])
                rec["status"] = "migrated"
            rec["bytes"] = os.path.getsize(dst)
            if task["verify"] and rec["status"] == "migrated":
                from .verify import run_verify

                report = run_verify(src, dst, overrides=task["overrides"])
                rec["status"] = "verified" if report.passed else "verify_failed"
                if not report.passed:
                    rec["error"] = _verify_reason(report)
        except AthelasError as exc:
            rec["status"], rec["error"], rec["exit_code"] = "failed", _one_line(exc), exc.exit_code
        except (OSError, MemoryError) as exc:
            rec["status"], rec["error"] = "failed", _one_line(exc) if str(exc) else type(exc).__name__
    except Exception as exc:  # a bug, not the file's fault: still never stops the others
        rec["status"], rec["error"] = "failed", f"internal error: {type(exc).__name__}: {_one_line(exc)}"
    rec["seconds"] = round(time.perf_counter() - t0, 4)
    rec["pid"] = os.getpid()
    rec["torch_loaded"] = "torch" in sys.modules
    return rec


def _verify_reason(report: Any) -> str:
    if getattr(report, "error", None):
        return f"verification could not run: {_one_line(Exception(report.error))}"
    try:
        failed = report.failed_checks()
        if failed:
            section, check = failed[0]
            name = f"{getattr(section, 'name', '?')}: {getattr(check, 'name', '?')}"
            if getattr(check, "detail", ""):
                name += f" ({_one_line(Exception(check.detail))[:200]})"
            return f"verification failed: {name} (and {len(failed) - 1} more)" if len(failed) > 1 \
                else f"verification failed: {name}"
    except Exception:  # pragma: no cover - report shape from another module
        pass
    return "verification failed"


def _copy_verbatim(src: str, dst: str, force: bool) -> None:
    """An input already at the target layout: copied as it is (atomically), so DST mirrors SRC fully."""
    from .errors import OutputExistsError
    from .io.writer import atomic_output

    if os.path.exists(dst) and not force:
        raise OutputExistsError(f"{dst} exists; pass --force to replace it")
    if os.path.exists(dst) and os.path.samefile(src, dst):
        raise UsageError("NEW is the same file as OLD; the input is never overwritten")
    with atomic_output(dst) as fh, open(src, "rb") as inp:
        fh.flush()
        size, off = os.fstat(inp.fileno()).st_size, 0
        while off < size:
            try:
                n = os.copy_file_range(inp.fileno(), fh.fileno(), min(size - off, 64 << 20))
            except OSError:
                n = 0
            if n <= 0:
                chunk = inp.read(1 << 24)
                if not chunk:
                    break
                fh.write(chunk)
                fh.flush()
                n = len(chunk)
            off += n


def _start_methods() -> list[str]:
    import multiprocessing

    return multiprocessing.get_all_start_methods()


def _worker_imports() -> None:
    """What every file needs: the engine and numpy (no torch on the rename path)."""
    import contextlib

    with contextlib.suppress(ImportError):
        import numpy  # noqa: F401  (class weights are read with it)

        from . import pipeline  # noqa: F401


def _worker_init(verify: bool = False) -> None:  # pragma: no cover - runs in worker processes
    """Workers ignore SIGINT (the parent handles Ctrl-C and shuts the pool down) and import what every file
    needs once, at start, while the parent is still listing the inputs."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import contextlib

    _worker_imports()
    if verify:
        with contextlib.suppress(ImportError):
            from .verify import runner  # noqa: F401  (imports torch, once per worker)


# ----------------------------------------------------------------------------- running


def run_batch(src: str, dst: str, to: str | None = None, overrides: dict[str, Any] | None = None,
              fmt: str | None = None, jobs: int = 1, verify: bool = False, shard: tuple[int, int] | None = None,
              force: bool = False, progress: Any = None, on_start: Any = None) -> dict[str, Any]:
    """Migrate every checkpoint under `src` into `dst`; returns the summary (see docs/batch.md).

    `on_start(total)` is called once the work is about to run (worker processes already started), then
    `progress(record)` once per finished file, both in the calling process."""
    t0 = time.perf_counter()
    src_abs, dst_abs = os.path.abspath(src), os.path.abspath(dst)
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {jobs}")
    if os.path.isdir(src_abs) and os.path.realpath(src_abs) == os.path.realpath(dst_abs):
        raise UsageError("DST is SRC: outputs would replace their inputs; give another directory")
    if os.path.exists(dst_abs) and not os.path.isdir(dst_abs):
        raise UsageError(f"DST {dst} exists and is not a directory")
    if verify:
        try:
            from .verify import run_verify  # noqa: F401  (checked here, imported again in the workers)
        except ImportError as exc:
            raise UsageError(f"--verify needs the equivalence runner (athelas_migrate.verify): {exc}") from exc
    parent_had_torch = "torch" in sys.modules
    if jobs > 1 and "fork" in _start_methods():
        _worker_imports()  # once here; forked workers inherit it instead of importing it each
    pool, warm = _start_pool(jobs, verify) if jobs > 1 else (None, [])
    try:
        every = discover(src_abs, exclude=dst_abs)
        if not every:
            raise UsageError(f"no checkpoints ({' '.join(SUFFIXES)}) under {src}")
        mine = [r for r in every if shard is None or shard_of(r, shard[1]) == shard[0]]
        base = src_abs if os.path.isdir(src_abs) else os.path.dirname(src_abs)
        tasks, seen, records = [], {}, []
        for rel in mine:
            out_rel = output_name(rel, fmt)
            if out_rel in seen:  # a.pt and a.safetensors with --format safetensors
                records.append({"path": rel, "output": out_rel, "status": "failed", "seconds": 0.0,
                                "error": f"output {out_rel} would also be written from {seen[out_rel]}"})
                continue
            seen[out_rel] = rel
            tasks.append({"rel": rel, "out_rel": out_rel, "src": os.path.join(base, rel),
                          "dst": os.path.join(dst_abs, out_rel), "to": to, "overrides": dict(overrides or {}),
                          "verify": verify, "force": force})
        os.makedirs(dst_abs, exist_ok=True)

        def start() -> None:
            if on_start:
                on_start(len(tasks) + len(records))
            for rec in records:
                if progress:
                    progress(rec)

        if pool is None:
            start()
            for task in tasks:
                rec = migrate_one(task)
                records.append(rec)
                if progress:
                    progress(rec)
            workers: set[int] = set()
        else:
            records += _run_pool(pool, tasks, progress, start)
            workers = {w.result()[0] for w in warm} | {r["pid"] for r in records if "pid" in r}
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    records.sort(key=lambda r: r["path"])
    torch_pids = {r["pid"] for r in records if r.get("torch_loaded")} | {p for p, t in (w.result() for w in warm) if t}
    torch_imports = len(torch_pids - {os.getpid()}) + (1 if os.getpid() in torch_pids and not parent_had_torch else 0)
    return _summary(src_abs, dst_abs, to, overrides, fmt, verify, shard, len(every), records,
                    time.perf_counter() - t0, jobs, len(workers), torch_imports)


def _start_pool(jobs: int, verify: bool) -> tuple[Any, list]:
    """One persistent pool of `jobs` processes for all files, started now (fork where available: workers
    start with only what this process imported, click; each imports the engine once, at start)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init, initargs=(verify,))
    # with fork, the first submit starts every worker, before this process starts any thread of its own
    return pool, [pool.submit(_worker_ready) for _ in range(jobs)]


def _worker_ready() -> tuple[int, bool]:
    return os.getpid(), "torch" in sys.modules


def _migrate_chunk(tasks: list[dict]) -> list[dict]:  # pragma: no cover - runs in worker processes
    return [migrate_one(t) for t in tasks]


def _run_pool(pool: Any, tasks: list[dict], progress: Any, start: Any) -> list[dict]:
    """Files go to the workers in small chunks: one round trip per chunk instead of per file (a small
    checkpoint migrates in ~13 ms, comparable to the IPC and the parent's bookkeeping per future)."""
    from concurrent.futures import as_completed

    jobs = getattr(pool, "_max_workers", 1)
    size = max(1, min(4, len(tasks) // (8 * jobs)))
    chunks = [tasks[i : i + size] for i in range(0, len(tasks), size)]
    out = []
    futures = {pool.submit(_migrate_chunk, c): c for c in chunks}
    start()
    try:
        for fut in as_completed(futures):
            try:
                recs = fut.result()
            except Exception as exc:  # the worker died (killed, out of memory): its files failed
                recs = [{"path": t["rel"], "output": t["out_rel"], "status": "failed", "seconds": 0.0,
                         "error": f"worker process failed: {type(exc).__name__}: {_one_line(exc)}"}
                        for t in futures[fut]]
            for rec in recs:
                out.append(rec)
                if progress:
                    progress(rec)
    except KeyboardInterrupt:
        for f in futures:
            f.cancel()
        raise
    return out


def _summary(src: str, dst: str, to: str | None, overrides: dict | None, fmt: str | None, verify: bool,
             shard: tuple[int, int] | None, total: int, records: list[dict], seconds: float, jobs: int,
             workers: int, torch_imports: int) -> dict[str, Any]:
    from . import __version__

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
        "files": files,
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
    with atomic_output(path) as fh:
        fh.write((json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def render_summary(summary: dict[str, Any], console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

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
        key = (r["status"], r.get("family") or "-", f"{r['from']} -> {r['to']}" if r.get("from") else "-")
        groups.setdefault(key, []).append(r)
    colours = {"migrated": "green", "verified": "green", "unchanged": "cyan", "failed": "red",
               "verify_failed": "red"}
    for (status, fam, edge), rs in sorted(groups.items()):
        table.add_row(f"[{colours.get(status, 'white')}]{status}[/]", fam, edge, str(len(rs)),
                      f"{sum(r.get('bytes') or 0 for r in rs) / 1e6:,.1f}",
                      f"{sum(r.get('seconds') or 0 for r in rs):.2f}")
    con.print(table)
    bad = [r for r in files if r["status"] not in OK_STATUSES]
    for r in bad:
        con.print(f"[red]{r['status']}[/] {r['path']}: {r.get('error') or ''}", markup=True)
    warned = [r for r in files if r.get("warnings")]
    for r in warned[:20]:
        con.print(f"[yellow]warning[/] {r['path']}: {r['warnings'][0]}")
    extra = []
    if "torch_imports" in summary:
        extra.append(f"torch imported {summary['torch_imports']} time(s)")
    if summary.get("workers"):
        extra.append(f"{summary['workers']} worker process(es)")
    if summary.get("missing_shards"):
        con.print(f"[yellow]incomplete: missing shard(s) {summary['missing_shards']} of {summary['shards']}[/]")
    ok = len(files) - len(bad)
    con.print(f"{ok} ok, {len(bad)} failed, in {summary['seconds']:.2f} s" + (f" ({'; '.join(extra)})" if extra
                                                                             else ""))


# ----------------------------------------------------------------------------- commands


@click.command("batch")
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path())
@click.option("--to", "to", default=None, help="Target layout version (default: newest).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Hyper-parameter the checkpoints lack (VALUE parsed as JSON when valid JSON).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="JSON object of hyper-parameters (like --set).")
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
def batch_cmd(src, dst, to, sets, config_file, fmt, jobs, verify, shard, summary_json, force) -> None:
    """Migrate every checkpoint under SRC into DST, mirroring relative paths.

    Checkpoints are files ending in .ckpt .pt .pth .bin .safetensors (recursively). Exit code 0 when all
    migrated (or were already at the target and were copied), 1 when any failed; the others go on.
    """
    from .overrides import parse_overrides

    overrides = parse_overrides(sets, config_file)
    state: dict[str, Any] = {"bar": None, "task": None, "failed": 0}

    def on_start(total: int) -> None:
        # rich is imported here, after the workers started: they do not inherit it, and the bar's
        # refresh thread starts only after the last fork
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        bar = state["bar"] = Progress(TextColumn("[bold]migrating"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("[red]{task.fields[failed]} failed"), TimeElapsedColumn(),
                                      TimeRemainingColumn(), console=Console(stderr=True, highlight=False))
        bar.start()
        state["task"] = bar.add_task("migrate", total=total, failed=0)

    def progress(rec: dict) -> None:
        state["failed"] += rec["status"] not in OK_STATUSES
        state["bar"].update(state["task"], advance=1, failed=state["failed"])

    try:
        summary = run_batch(src, dst, to=to, overrides=overrides, fmt=fmt, jobs=jobs, verify=verify,
                            shard=parse_shard(shard), force=force, progress=progress, on_start=on_start)
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


__all__ = ["batch_cmd", "merge_summaries_cmd", "run_batch", "merge_summaries", "discover", "shard_of",
           "parse_shard", "migrate_one"]

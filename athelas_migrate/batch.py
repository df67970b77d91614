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
from .batch_render import BatchProgress, progress_bar, render_summary, throughput
from .batch_summary import OK_STATUSES, SCHEMA, merge_summaries, summarise, write_summary
from .batch_worker import migrate_one, worker_imports, worker_init
from .cli_options import override_options
from .errors import EXIT_CHECK_FAILED, EXIT_REFUSED, InputError, OutputError, UsageError

# ----------------------------------------------------------------------------- running


def run_batch(src: str, dst: str, to: str | None = None, overrides: dict[str, Any] | None = None,
              fmt: str | None = None, jobs: int = 1, verify: bool = False, shard: tuple[int, int] | None = None,
              force: bool = False, progress: Any = None, on_start: Any = None,
              isolate: bool = True, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Migrate every checkpoint under `src` into `dst` (see docs/batch.md); one bad file never stops the others.

    Args:
        src: a directory (searched recursively) or one file.
        dst: the output directory (created), mirroring SRC's relative paths.
        to: the target layout (None: the newest).
        overrides: hyper-parameters for every file (a file's own NAME.json wins).
        fmt: "ckpt" or "safetensors" (None: each input's own).
        jobs: worker processes of the pool.
        verify: also run the equivalence runner on every migrated file.
        shard: (K, N): only the inputs of shard K of N.
        force: replace outputs that exist (never an input).
        progress: called with each file's record as it finishes, in the calling process.
        on_start: called with the number of files once the work is about to run (workers started).
        isolate: False migrates in this process (no crash isolation; for tests that patch the engine).
        include: globs on the SRC-relative path (see batch_plan.matches); only matching inputs are taken.
        exclude: globs likewise; excluded files are neither migrated nor counted.

    Returns:
        The summary (`batch_summary.summarise` plus `skipped`, `excluded`, `start_method`).

    Raises:
        UsageError: bad arguments, DST is SRC, no checkpoints selected, or --verify without the runner.
        OutputError: DST cannot be created or is not a directory.
    """
    parent_had_torch = "torch" in sys.modules  # before anything here can import it
    t0 = time.perf_counter()
    src_abs, dst_abs = os.path.abspath(src), os.path.abspath(dst)
    _check_arguments(src_abs, dst_abs, dst, jobs, verify)
    pool, method = _start_pool(jobs, verify, parent_had_torch) if isolate else (None, "in-process")
    records: list[dict] = []
    try:
        found, every, skipped = _select(src, src_abs, dst_abs, include, exclude, shard)
        tasks = _tasks(src_abs, dst_abs, every, to, overrides, fmt, verify, shard, force)
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
        workers, torch_pids = set(), {r["pid"] for r in records if r.get("torch_loaded")}
    else:
        workers, torch_pids = pool.pids | {r["pid"] for r in records if "pid" in r}, pool.torch_pids
    torch_imports = len(torch_pids - {os.getpid()}) + ("torch" in sys.modules and not parent_had_torch)
    summary = summarise(src_abs, dst_abs, to, overrides, fmt, verify, shard, len(every), records,
                        time.perf_counter() - t0, jobs, len(workers), torch_imports)
    summary["options"].update(include=list(include), exclude=list(exclude))
    summary.update(skipped=skipped, excluded=len(found) - len(every), start_method=method)
    return summary


def _check_arguments(src_abs: str, dst_abs: str, dst: str, jobs: int, verify: bool) -> None:
    """Refuse what cannot work before any worker starts."""
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


def _start_pool(jobs: int, verify: bool, parent_had_torch: bool) -> tuple[Any, str]:
    """The persistent worker pool and its start method (fork when this process has not imported torch)."""
    from .batch_pool import WorkerPool, start_method

    method = start_method(parent_had_torch)
    if method == "fork":
        worker_imports()  # once here; forked workers inherit it instead of importing it each
    return WorkerPool(jobs, migrate_one, worker_init, (verify,), method), method


def _select(src: str, src_abs: str, dst_abs: str, include: tuple[str, ...], exclude: tuple[str, ...],
            shard: tuple[int, int] | None) -> tuple[list[str], list[str], list[dict]]:
    """(every checkpoint found, those selected by the globs, the non-checkpoints of this shard)."""
    found, skipped = scan(src_abs, exclude=dst_abs)
    every = select(found, include, exclude)
    skipped = [e for e in skipped if select([e["path"]], include, exclude)]
    if not every:
        why = f" ({len(found)} excluded by --include/--exclude)" if found else ""
        raise UsageError(f"no checkpoints ({' '.join(SUFFIXES)}) under {src}{why}")
    if shard is not None:
        skipped = [s for s in skipped if shard_of(s["path"], shard[1]) == shard[0]]
    return found, every, skipped


def _tasks(src_abs: str, dst_abs: str, every: list[str], to: str | None, overrides: dict[str, Any] | None,
           fmt: str | None, verify: bool, shard: tuple[int, int] | None, force: bool) -> list[dict[str, Any]]:
    """One worker task per selected input of this shard, its output name checked against the others."""
    base = src_abs if os.path.isdir(src_abs) else os.path.dirname(src_abs)
    plan = check_plan(base, dst_abs, every, fmt)
    return [{"rel": rel, "out_rel": plan[rel], "src": os.path.join(base, rel),
             "dst": os.path.join(dst_abs, plan[rel]), "to": to, "overrides": dict(overrides or {}),
             "verify": verify, "force": force}
            for rel in every if shard is None or shard_of(rel, shard[1]) == shard[0]]


def _worker_died(task: dict, exitcode: int | None) -> dict[str, Any]:
    """The record of a file whose worker died. Its unfinished output was an unnamed O_TMPFILE, which the kernel
    frees with the process; only where O_TMPFILE is unsupported can one named `.partial` remain (docs/safety.md):
    it is never guessed at and removed here, since only its creator can prove it is one of ours."""
    from .batch_pool import death_reason

    return {"path": task["rel"], "output": task["out_rel"], "status": "failed", "seconds": 0.0,
            "error": death_reason(exitcode)}


# ----------------------------------------------------------------------------- commands


@click.command("batch")
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path())
@click.option("--to", "to", default=None, help="Target layout version (default: newest).")
@override_options
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
def batch_cmd(src, dst, to, sets, config_file, bert_config, fmt, jobs, verify, shard, summary_json, force, include,
              exclude) -> None:
    """Migrate every checkpoint under SRC into DST, mirroring relative paths.

    Checkpoints are files ending in .ckpt .pt .pth .bin .safetensors (recursively). A file's own config
    NAME.json beside it (model.ckpt.json) wins over the shared --config/--set/--bert-config, which apply to
    every file. Exit code 0 when all
    migrated (or were already at the target and were copied), 1 when any failed; the others go on.
    """
    from .overrides import parse_overrides

    overrides = parse_overrides(sets, config_file, bert_config)
    bar = BatchProgress()
    try:
        summary = run_batch(src, dst, to=to, overrides=overrides, fmt=fmt, jobs=jobs, verify=verify,
                            shard=parse_shard(shard), force=force, progress=bar.advance, on_start=bar.start,
                            include=include, exclude=exclude)
    finally:
        bar.stop()
    if summary_json:
        write_summary(summary_json, summary)
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
    write_summary(out, merged)
    render_summary(merged)
    if merged["failed"] or merged["missing_shards"]:
        sys.exit(EXIT_CHECK_FAILED)


__all__ = ["batch_cmd", "merge_summaries_cmd", "run_batch", "merge_summaries", "discover", "scan", "shard_of",
           "parse_shard", "output_name", "migrate_one", "render_summary", "progress_bar", "throughput", "SCHEMA",
           "OK_STATUSES"]

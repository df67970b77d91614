"""The batch summary document (schema `athelas-migrate/batch-summary/1`): built, merged across shards, written.

`summarise` builds one run's summary, `merge_summaries` combines the summaries of the shards of one
job array, `write_summary` writes either atomically. A new field goes into `summarise` (and, when
merging must combine it, into `merge_summaries`), and into docs/batch.md; bump SCHEMA only when an
existing field changes meaning.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .batch_plan import shard_of
from .errors import InputError, OutputError, UsageError

SCHEMA = "athelas-migrate/batch-summary/1"
OK_STATUSES = ("migrated", "verified", "unchanged", "skipped")  # skipped: not a checkpoint at all
#: what every shard of one job array must agree on
SHARED_KEYS = ("src", "dst", "options", "inputs_total")


def summarise(src: str, dst: str, to: str | None, overrides: dict | None, fmt: str | None, verify: bool,
              shard: tuple[int, int] | None, total: int, records: list[dict], seconds: float, jobs: int,
              workers: int, torch_imports: int) -> dict[str, Any]:
    """One run's summary (see docs/batch.md for the fields).

    Args:
        src: the absolute SRC.
        dst: the absolute DST.
        to: the target layout asked for (None: the newest).
        overrides: the shared hyper-parameters.
        fmt: the output format asked for (None: each input's own).
        verify: whether each file was verified.
        shard: (index, count), or None for the whole tree.
        total: the number of inputs selected (all shards).
        records: one record per file of this shard, sorted by path.
        seconds: the wall time of the run.
        jobs: the worker processes asked for.
        workers: the worker processes that ran.
        torch_imports: how many processes imported torch.

    Returns:
        The summary, JSON-serialisable.
    """
    from ._version import __version__

    return {
        "schema": SCHEMA,
        "tool": f"athelas-migrate {__version__}",
        "src": src,
        "dst": dst,
        "options": {"to": to, "format": fmt, "verify": verify, "overrides": dict(overrides or {})},
        "shard": {"index": shard[0], "count": shard[1]} if shard else {"index": 0, "count": 1},
        "inputs_total": total,
        "files": records,
        "counts": _counts(records),
        "failed": sum(1 for r in records if r["status"] not in OK_STATUSES),
        "seconds": round(seconds, 3),
        "jobs": jobs,
        "workers": workers,
        "torch_imports": torch_imports,
    }


def _counts(records: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return counts


def merge_summaries(summaries: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """One report from the summaries of the shards of one batch.

    Args:
        summaries: (file name, loaded summary) per shard, in any order; not every shard need be there.

    Returns:
        The merged summary: `complete` and `missing_shards` say whether every shard was given.

    Raises:
        UsageError: no summary given.
        InputError: a file is not a summary, or the shards overlap or disagree (SRC, DST, options, counts).
    """
    if not summaries:
        raise UsageError("merge-summaries needs at least one IN.json")
    first_name, first = summaries[0]
    shard_count = None
    by_index: dict[int, str] = {}
    owner: dict[str, str] = {}
    files: list[dict] = []
    skipped: dict[str, dict] = {}
    for name, s in summaries:
        idx, cnt = _shard(name, s, first_name, first)
        if shard_count is None:
            shard_count = cnt
        elif cnt != shard_count:
            raise InputError(f"inconsistent shards: {name} is one of {cnt} shards, {first_name} one of {shard_count}")
        if idx in by_index:
            raise InputError(f"overlapping shards: {name} and {by_index[idx]} are both shard {idx}/{cnt}")
        by_index[idx] = name
        files += _shard_files(name, s, idx, cnt, owner)
        skipped.update((e.get("path"), e) for e in s.get("skipped") or [])
    missing = sorted(set(range(shard_count or 1)) - set(by_index))
    if not missing and len(files) != first.get("inputs_total"):
        raise InputError(f"inconsistent shards: all {shard_count} shards hold {len(files)} files but SRC had "
                         f"{first.get('inputs_total')}")
    files.sort(key=lambda r: r["path"])
    return {
        "schema": SCHEMA, "tool": first.get("tool"), "src": first.get("src"), "dst": first.get("dst"),
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
        "counts": _counts(files),
        "failed": sum(1 for r in files if r["status"] not in OK_STATUSES),
        "seconds": round(sum(float(s.get("seconds") or 0) for _, s in summaries), 3),
        "torch_imports": sum(int(s.get("torch_imports") or 0) for _, s in summaries),
    }


def _shard(name: str, s: Any, first_name: str, first: dict[str, Any]) -> tuple[int, int]:
    """(index, count) of a summary that agrees with the first one; InputError otherwise."""
    if not isinstance(s, dict) or s.get("schema") != SCHEMA:
        raise InputError(f"{name}: not a batch summary ({SCHEMA})")
    for k in SHARED_KEYS:
        if s.get(k) != first.get(k):
            raise InputError(f"inconsistent shards: {name} and {first_name} differ in {k!r} "
                             f"({json.dumps(s.get(k))[:120]} vs {json.dumps(first.get(k))[:120]})")
    sh = s.get("shard") or {}
    idx, cnt = sh.get("index"), sh.get("count")
    if not (isinstance(idx, int) and isinstance(cnt, int) and 0 <= idx < cnt):
        raise InputError(f"{name}: malformed shard {sh!r}")
    return idx, cnt


def _shard_files(name: str, s: dict[str, Any], idx: int, cnt: int, owner: dict[str, str]) -> list[dict]:
    """The file records of one shard, each checked to belong to it and to no shard seen before."""
    files = []
    for r in s.get("files") or []:
        path = r.get("path")
        if path in owner:
            raise InputError(f"overlapping shards: {path} is in both {owner[path]} and {name}")
        if cnt > 1 and shard_of(path, cnt) != idx:
            raise InputError(f"inconsistent shards: {path} in {name} belongs to shard {shard_of(path, cnt)}, "
                             f"not {idx}")
        owner[path] = name
        files.append(r)
    return files


def write_summary(path: str, summary: dict[str, Any]) -> None:
    """Write a summary as JSON, atomically.

    Args:
        path: the file to write (its directory must exist).
        summary: from `summarise` or `merge_summaries`.

    Raises:
        UsageError: the directory of `path` does not exist.
        OutputError: the file cannot be written.
    """
    from .io.writer import atomic_output

    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"directory of {path} does not exist")
    try:
        with atomic_output(path) as fh:
            fh.write((json.dumps(summary, indent=2, sort_keys=False) + "\n").encode())
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc

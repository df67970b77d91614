"""The plan of a `batch` run, made before anything is written: inputs, skipped entries, output paths.

The plan is checked as a whole so that no output can land on an input of the same run (an ancestor DST,
a symbolic link or hard link into SRC) and no two inputs share an output; such a run is refused up front
(exit 2) instead of discovering it file by file, after inputs were replaced.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import os
import stat

from .errors import UsageError

SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")
MAX_LISTED = 10


def scan(src: str, exclude: str | None = None) -> tuple[list[str], list[dict[str, str]]]:
    """(inputs, skipped) under `src`: relative POSIX paths of the checkpoint files (sorted; a file gives
    itself), and `{"path", "reason"}` for every entry named like a checkpoint that is not a readable regular
    file (symbolic link loop, dangling link, FIFO, directory) or a directory that cannot be listed.

    Hidden entries (temporaries such as `.NAME.*.partial`) and the `exclude` tree are left out silently;
    symbolic links to directories are not followed (and reported)."""
    src = os.path.abspath(src)
    if os.path.isfile(src):
        return [os.path.basename(src)], []
    if not os.path.isdir(src):
        raise UsageError(f"SRC {src} does not exist")
    exclude = os.path.realpath(exclude) if exclude else None
    found: list[str] = []
    skipped: list[dict[str, str]] = []

    def rel(path: str) -> str:
        return os.path.relpath(path, src).replace(os.sep, "/")

    def unlistable(err: OSError) -> None:
        skipped.append({"path": rel(err.filename or src), "reason": f"directory cannot be listed: {err.strerror}"})

    for root, dirs, files in os.walk(src, onerror=unlistable):
        keep = []
        for d in sorted(dirs):
            full = os.path.join(root, d)
            if d.startswith(".") or os.path.realpath(full) == exclude:
                continue
            if os.path.islink(full):
                skipped.append({"path": rel(full), "reason": "symbolic link to a directory (not followed)"})
                continue
            if d.lower().endswith(SUFFIXES):
                skipped.append({"path": rel(full), "reason": "a directory, not a checkpoint file (searched inside)"})
            keep.append(d)
        dirs[:] = keep
        for name in files:
            if name.startswith(".") or not name.lower().endswith(SUFFIXES):
                continue
            full = os.path.join(root, name)
            reason = _not_a_file(full)
            if reason:
                skipped.append({"path": rel(full), "reason": reason})
            else:
                found.append(rel(full))
    return sorted(found), sorted(skipped, key=lambda s: s["path"])


def _not_a_file(path: str) -> str | None:
    """Why `path` (which os.walk listed as a non-directory) is not a checkpoint file, or None."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        if exc.errno == errno.ENOENT and os.path.islink(path):
            return f"dangling symbolic link (to {os.readlink(path)})"
        return f"cannot be read: {exc.strerror}"
    if stat.S_ISREG(st.st_mode):
        return None
    kind = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
            stat.S_IFBLK: "a block device", stat.S_IFDIR: "a directory"}.get(stat.S_IFMT(st.st_mode), "special")
    return f"{kind}, not a regular file"


def matches(rel: str, pattern: str) -> bool:
    """`pattern` (fnmatch: `*` also crosses `/`) against the SRC-relative POSIX path; a pattern without `/`
    also matches the base name alone, so `--exclude golden.pt` excludes one at any depth."""
    if fnmatch.fnmatchcase(rel, pattern):
        return True
    return "/" not in pattern and fnmatch.fnmatchcase(rel.rpartition("/")[2], pattern)


def select(paths: list[str], include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> list[str]:
    """The paths that match an `include` pattern (all when there is none) and no `exclude` pattern."""
    return [p for p in paths if (not include or any(matches(p, g) for g in include))
            and not any(matches(p, g) for g in exclude)]


def sidecar_of(path: str) -> str:
    """The per-file config beside a checkpoint: `model.ckpt` -> `model.ckpt.json`."""
    return path + ".json"


def discover(src: str, exclude: str | None = None) -> list[str]:
    """Relative paths (POSIX separators, sorted) of the checkpoint files under `src` (see `scan`)."""
    return scan(src, exclude)[0]


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


def _resolved(path: str) -> str:
    """`path` with its directories resolved (symbolic links, `..`) but the last component kept: the name
    a rename into that directory replaces."""
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def check_plan(base: str, dst: str, inputs: list[str], fmt: str | None) -> dict[str, str]:
    """`{input rel: output rel}` for every input of the run (all shards, so each shard decides alike);
    UsageError when an output would be an input (by resolved path, by a symbolic link to it, or by
    device and inode: a hard link) or two inputs would write one output."""
    by_path: dict[str, str] = {}
    by_inode: dict[tuple[int, int], str] = {}
    for rel in inputs:
        path = os.path.join(base, rel)
        by_path[os.path.realpath(path)] = rel
        by_path[_resolved(path)] = rel
        try:
            st = os.stat(path)
            by_inode[(st.st_dev, st.st_ino)] = rel
        except OSError:
            pass  # vanished since the scan: it fails when migrated
    plan: dict[str, str] = {}
    writers: dict[str, str] = {}
    problems: list[str] = []
    for rel in inputs:
        out_rel = output_name(rel, fmt)
        out = os.path.join(dst, out_rel)
        hit = by_path.get(_resolved(out)) or by_path.get(os.path.realpath(out))
        if hit is None:
            try:
                st = os.stat(out)
                hit = by_inode.get((st.st_dev, st.st_ino))
            except OSError:
                pass
        if hit is not None:
            problems.append(f"output {out} would replace input {os.path.join(base, hit)}")
        key = _resolved(out)
        if key in writers:
            problems.append(f"inputs {writers[key]} and {rel} would both write {out}")
        writers[key] = rel
        plan[rel] = out_rel
    if problems:
        more = f" (and {len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
        raise UsageError(f"refused, nothing written: {len(problems)} output(s) collide with this run's inputs "
                         f"or each other (choose a DST apart from SRC): {'; '.join(problems[:MAX_LISTED])}{more}")
    return plan


__all__ = ["SUFFIXES", "scan", "discover", "matches", "select", "sidecar_of", "parse_shard", "shard_of", "output_name",
           "check_plan"]

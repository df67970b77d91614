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
    """The checkpoint files under `src`, and the entries named like one that cannot be migrated.

    Hidden entries (temporaries such as `.NAME.*.partial`) and the `exclude` tree are left out silently;
    symbolic links to directories are not followed (and reported).

    Args:
        src: a directory, or a single file (which gives itself).
        exclude: a directory to leave out (the run's DST when it lies inside SRC).

    Returns:
        (inputs, skipped): the relative POSIX paths of the checkpoint files (sorted), and `{"path", "reason"}`
        for every entry that is not a readable regular file (symbolic link loop, dangling link, FIFO,
        directory) or a directory that cannot be listed.

    Raises:
        UsageError: `src` does not exist.
    """
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
    """Whether a glob matches a path; a pattern without `/` also matches the base name alone, so
    `--exclude golden.pt` excludes one at any depth.

    Args:
        rel: the SRC-relative POSIX path.
        pattern: an fnmatch pattern (`*` also crosses `/`).

    Returns:
        True when it matches.
    """
    if fnmatch.fnmatchcase(rel, pattern):
        return True
    return "/" not in pattern and fnmatch.fnmatchcase(rel.rpartition("/")[2], pattern)


def select(paths: list[str], include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> list[str]:
    """Filter paths by `--include`/`--exclude` globs (see `matches`).

    Args:
        paths: SRC-relative POSIX paths.
        include: keep only paths matching one of these (all when empty).
        exclude: drop paths matching one of these.

    Returns:
        The kept paths, in their order.
    """
    return [p for p in paths if (not include or any(matches(p, g) for g in include))
            and not any(matches(p, g) for g in exclude)]


def sidecar_of(path: str) -> str:
    """Where the per-file config of a checkpoint lies.

    Args:
        path: the checkpoint path.

    Returns:
        The sidecar path: `model.ckpt` -> `model.ckpt.json`.
    """
    return path + ".json"


def discover(src: str, exclude: str | None = None) -> list[str]:
    """The checkpoint files under `src`, without the skipped entries (see `scan`).

    Args:
        src: a directory, or a single file.
        exclude: a directory to leave out.

    Returns:
        Relative paths (POSIX separators, sorted).
    """
    return scan(src, exclude)[0]


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """Parse `--shard K/N`.

    Args:
        text: the option's value, or None when it was not given.

    Returns:
        (K, N), or None for no sharding.

    Raises:
        UsageError: not two integers, or K outside 0..N-1.
    """
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
    """The shard a file belongs to: a hash of the path alone, so adding or removing other files never
    moves a file to another shard (and the split is the same on every machine and Python version).

    Args:
        rel: the SRC-relative POSIX path.
        count: the number of shards.

    Returns:
        The shard index, 0 <= index < count.
    """
    digest = hashlib.sha256(rel.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def output_name(rel: str, fmt: str | None) -> str:
    """Where an input's output goes: the same relative path, with the suffix the output format needs.

    Args:
        rel: the SRC-relative path of the input.
        fmt: the `--format` ("safetensors", "ckpt"), or None to keep the input's format.

    Returns:
        The DST-relative output path.
    """
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
    """Plan every output of the run and refuse it when outputs collide with inputs or with each other.

    Args:
        base: the SRC directory the input paths are relative to.
        dst: the DST directory.
        inputs: every input of the run (all shards, so each shard decides alike).
        fmt: the `--format`, or None (see `output_name`).

    Returns:
        `{input rel: output rel}`.

    Raises:
        UsageError: an output would be an input (by resolved path, by a symbolic link to it, or by device and
            inode: a hard link), or two inputs would write one output.
    """
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

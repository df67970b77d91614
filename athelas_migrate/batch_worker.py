"""One file of a `batch` run, as a worker process runs it: migrate (and verify), and never raise.

Only the standard library is imported at module load; the engine is imported by `worker_init` (or was
imported by the parent before forking), so a spawned worker starts as light as possible.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from .batch_plan import sidecar_of

TEST_KILL_ENV = "ATHELAS_MIGRATE_TEST_KILL"


def one_line(exc: BaseException) -> str:
    """The first line of an error, capped, for a file's record and the summary table.

    Args:
        exc: any exception; only its message's first line is kept.

    Returns:
        Its first line (or its type name when it has no text), at most 400 characters.
    """
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 400 else line[:397] + "..."


def migrate_one(task: dict[str, Any]) -> dict[str, Any]:
    """Migrate (and verify) one file; never raises: failures come back as a record with `error`.

    Args:
        task: the file's task from `batch` (`src`, `dst`, `rel`, `out_rel`, `to`, `overrides`, `force`,
            `verify`).

    Returns:
        The file's record: `path`, `output`, `status`, `error`, and what is known (`family`, `bytes`, ...).
    """
    t0 = time.perf_counter()
    rec: dict[str, Any] = {"path": task["rel"], "output": task["out_rel"], "status": "failed", "error": None}
    src, dst = task["src"], task["dst"]
    try:
        from .errors import AthelasError, MissingInformationError, NotACheckpointError
        from .pipeline import write_result

        try:
            overrides, shared, sidecar = file_overrides(task)
            if sidecar:
                rec["config"] = os.path.basename(sidecar)
            result, ignored = _migrate(src, task["to"], overrides, shared)
            if ignored:
                rec["notes"] = ignored
            _make_parent(dst)  # only for files that will be written
            _test_kill_hook(task)
            rec.update({"family": result.family.name, "from": result.source_version, "to": result.target_version,
                        "warnings": list(result.warnings)})
            same_format = dst.endswith(".safetensors") == (result.raw.kind == "safetensors")
            if result.noop and same_format:
                copy_verbatim(src, dst, task["force"])
                rec["status"] = "unchanged"
            else:
                write_result(result, dst, force=task["force"])
                rec["status"] = "migrated"
            rec["bytes"] = os.path.getsize(dst)
            if task["verify"] and rec["status"] == "migrated":
                from .equivalence import run_verify

                report = run_verify(src, dst, overrides=overrides)
                rec["status"] = "verified" if report.passed else "verify_failed"
                if not report.passed:
                    rec["error"] = _verify_reason(report)
        except NotACheckpointError as exc:  # a golden-output file or the like: nothing to migrate
            rec["status"], rec["reason"] = "skipped", one_line(exc).removeprefix(f"{src}: ")
        except MissingInformationError as exc:  # every missing value, as the single-file refusal names them
            rec["status"], rec["exit_code"] = "failed", exc.exit_code
            rec["needs"] = [{"key": n.key, "why": n.why, "example": n.example} for n in exc.needs]
            keys = ", ".join(n["key"] for n in rec["needs"])
            rec["error"] = (f"needs {keys}: the file cannot tell (put them in {os.path.basename(src)}.json beside "
                            f"it, or pass them to every file with --set/--config)") if keys else one_line(exc)
        except AthelasError as exc:
            rec["status"], rec["error"], rec["exit_code"] = "failed", one_line(exc), exc.exit_code
        except (OSError, MemoryError) as exc:
            rec["status"], rec["error"] = "failed", one_line(exc) if str(exc) else type(exc).__name__
    except Exception as exc:  # a bug, not the file's fault: still never stops the others
        rec["status"], rec["error"] = "failed", f"internal error: {type(exc).__name__}: {one_line(exc)}"
    rec["seconds"] = round(time.perf_counter() - t0, 4)
    rec["pid"] = os.getpid()
    rec["torch_loaded"] = "torch" in sys.modules
    return rec


def _make_parent(dst: str) -> None:
    from .errors import OutputError

    try:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {os.path.dirname(dst)}: {exc.strerror}") from exc


def file_overrides(task: dict[str, Any]) -> tuple[dict[str, Any], set[str], str | None]:
    """The overrides for one file: shared ones, and its sidecar's.

    Precedence: the shared `--config` < the shared `--set` (merged into `task["overrides"]` by the command) <
    the file's own sidecar `NAME.json` (specific beats shared). A sidecar that is unreadable, not a JSON object
    or holds a value of the wrong type fails this file only (the error propagates to `migrate_one`).

    Args:
        task: the file's task (`src`, `overrides`).

    Returns:
        (overrides for this file, the keys among them that are shared, the sidecar path or None).
    """
    shared = dict(task["overrides"])
    side = sidecar_of(task["src"])
    if not os.path.isfile(side):
        return shared, set(shared), None
    from .config_keys import check_type
    from .overrides import read_json_object

    own = read_json_object(side, "sidecar config")
    for key, value in own.items():
        check_type(key, value, f"sidecar config {os.path.basename(side)}")
    return {**shared, **own}, set(shared) - set(own), side


def _migrate(src: str, to: str | None, overrides: dict[str, Any], shared: set[str]) -> tuple[Any, list[str]]:
    """plan_and_apply, leaving out a shared value the file has no use for (NotApplicableError for a key that
    came from the shared --set/--config only), with a note; a value the sidecar gave stays an error."""
    from .errors import NotApplicableError
    from .pipeline import plan_and_apply

    ignored: list[str] = []
    while True:
        try:
            return plan_and_apply(src, to=to, overrides=overrides), ignored
        except NotApplicableError as exc:
            if exc.key not in shared or exc.key not in overrides:
                raise
            del overrides[exc.key]  # `overrides` is this file's own copy (the verification uses it too)
            ignored.append(f"shared {exc.key} not used for this file: {one_line(exc)}")


def _test_kill_hook(task: dict[str, Any]) -> None:
    """Test-only: `ATHELAS_MIGRATE_TEST_KILL=REL[:SIGNAL]` makes the worker migrating REL kill itself with
    SIGNAL (default SIGKILL) while its temporary output exists, as the OOM killer would mid-write."""
    spec = os.environ.get(TEST_KILL_ENV)
    if not spec:
        return
    rel, _, sig = spec.rpartition(":") if spec.rpartition(":")[2].isdigit() else (spec, "", "9")
    if rel != task["rel"]:
        return
    from .io.writer import atomic_output

    with atomic_output(task["dst"]) as fh:
        fh.write(b"partial")
        fh.flush()
        os.kill(os.getpid(), int(sig))


def _verify_reason(report: Any) -> str:
    if getattr(report, "error", None):
        return f"verification could not run: {one_line(Exception(report.error))}"
    try:
        failed = report.failed_checks()
        if failed:
            section, check = failed[0]
            name = f"{getattr(section, 'name', '?')}: {getattr(check, 'name', '?')}"
            if getattr(check, "detail", ""):
                name += f" ({one_line(Exception(check.detail))[:200]})"
            return f"verification failed: {name} (and {len(failed) - 1} more)" if len(failed) > 1 \
                else f"verification failed: {name}"
    except Exception:  # pragma: no cover - report shape from another module
        pass
    return "verification failed"


def copy_verbatim(src: str, dst: str, force: bool) -> None:
    """Copy an input already at the target layout as it is (atomically), so DST mirrors SRC fully; a source
    that changes during the copy is refused (see pipeline.copy_verbatim).

    Args:
        src: the input checkpoint, already at the target layout.
        dst: the output path (its parent exists).
        force: replace an existing output.
    """
    from .outputs import prepare_output
    from .pipeline import copy_verbatim as copy

    prepare_output(dst, force, inputs=(src,))
    copy(src, dst)


def worker_imports() -> None:
    """What every file needs: the engine and numpy (no torch on the rename path)."""
    import contextlib

    with contextlib.suppress(ImportError):
        import numpy  # noqa: F401  (class weights are read with it)

        from . import pipeline  # noqa: F401


def worker_init(verify: bool = False) -> None:  # pragma: no cover - runs in worker processes
    """Prepare a worker: ignore SIGINT (the parent handles Ctrl-C and stops them) and import what every file
    needs once, at start, while the parent is still planning.

    Args:
        verify: also import the equivalence runner (and torch), for `batch --verify`.
    """
    import contextlib
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker_imports()
    if verify:
        with contextlib.suppress(ImportError):
            from .equivalence import runner  # noqa: F401  (imports torch, once per worker)


__all__ = ["migrate_one", "copy_verbatim", "worker_init", "worker_imports", "one_line", "TEST_KILL_ENV"]

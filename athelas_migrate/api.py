"""The Python API: what `athelas-migrate` commands do, importable without the CLI.

To add a command, add a function here that calls the engine (pipeline, equivalence, ...) and returns a result
object; the CLI command then only parses options, calls it and prints the result. Keep heavy imports (torch,
Lightning) inside the functions that need them, so that importing the API stays cheap.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from .errors import UsageError
from .materialise import build_v2_model
from .outputs import write_result
from .pipeline import MigrationResult, plan_and_apply


def migrate(src: str | os.PathLike[str], dst: str | os.PathLike[str] | None = None, to: str | None = None,
            overrides: dict[str, Any] | None = None, force: bool = False, dry_run: bool = False) -> MigrationResult:
    """Migrate `src` to layout `to` (default: newest) and write `dst` atomically unless `dry_run`.

    A checkpoint already at the target has nothing to change (`result.noop`): `dst` is then a verbatim copy
    of `src` (a `.safetensors` `dst` is written from its tensors), so success always means `dst` exists.

    Args:
        src: the checkpoint to migrate; never modified.
        dst: where to write the result (`.safetensors` or a Lightning `.ckpt`); may be None only with `dry_run`.
        to: target layout version; None means the family's newest (an older one is a rollback).
        overrides: hyper-parameters the checkpoint lacks or that replace its own (`--set`, `--config`).
        force: replace an existing `dst`.
        dry_run: plan and apply in memory only; write nothing.

    Returns:
        The MigrationResult: plan, key traces, warnings and the migrated checkpoint.

    Raises:
        UsageError: `dst` is missing without `dry_run` (and the engine's refusals, all AthelasError).
    """
    if dst is None and not dry_run:
        raise UsageError("migrate() needs a destination unless dry_run=True")
    result = plan_and_apply(os.fspath(src), to=to, overrides=overrides)
    if not dry_run:
        write_result(result, os.fspath(dst), force=force)
    return result


def audit(src: str | os.PathLike[str], to: str | None = None, overrides: dict[str, Any] | None = None):
    """The rename report of migrating `src`, without writing anything.

    Args:
        src: the checkpoint to audit.
        to: target layout version; None means the newest.
        overrides: hyper-parameters supplied as for `migrate`.

    Returns:
        The AuditReport: every source key, the rule that handled it, target key and value digests.
    """
    from .audit_report import build_audit

    return build_audit(plan_and_apply(os.fspath(src), to=to, overrides=overrides))


def inspect(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What a checkpoint is: family, layout version and evidence, sizes, hyper-parameters, optimizer state.

    Reads with the restricted reader only; tensors are not loaded, so it is cheap on large files.

    Args:
        path: a torch zip, legacy torch or safetensors checkpoint.

    Returns:
        A JSON-ready dict (the `inspect --json` output), including what a migration would still need.
    """
    from .families import detect
    from .io.reader import read_checkpoint

    raw = read_checkpoint(os.fspath(path))
    det = detect(raw)
    top = raw.top
    return {
        "path": raw.path,
        "format": raw.kind,
        "file_bytes": raw.size,
        "family": det.family,
        "layout": det.version,
        "evidence": det.evidence,
        "notes": det.notes,
        "tensors": len(raw.state_dict),
        "parameters": sum(t.numel for t in raw.state_dict.values()),
        "tensor_bytes": sum(t.nbytes for t in raw.state_dict.values()),
        "dtypes": sorted(raw.dtypes),
        "hyper_parameters": _describe(raw.hyper_parameters),
        "optimizer_states": len(top.get("optimizer_states") or []),
        "lr_schedulers": len(top.get("lr_schedulers") or []),
        "epoch": top.get("epoch"),
        "global_step": top.get("global_step"),
        "stamp": raw.stamp,
        "pickled_class": raw.module_classpath,
        "migration_needs": _migration_needs(raw, det),
    }


def _migration_needs(raw: Any, det: Any) -> list[dict[str, str]]:
    """What a migration of this file would ask for: the same list `ckpt` refuses with (empty: nothing)."""
    from .errors import AthelasError, MissingInformationError
    from .families import get_family

    try:
        get_family(det.family).configure(raw, det.version, {})
    except MissingInformationError as exc:
        return [{"key": n.key, "why": n.why} for n in exc.needs] or [{"key": "?", "why": str(exc)}]
    except AthelasError as exc:  # no migration at all (e.g. TSA): say why instead of a list
        return [{"key": "(no migration)", "why": str(exc).split("\n")[0]}]
    return []


def _describe(hp: Any) -> Any:
    from .io.tensor_ref import TensorRef

    if isinstance(hp, TensorRef):
        return f"<tensor {hp.dtype} {list(hp.shape)}>"
    if isinstance(hp, dict):
        return {k: _describe(v) for k, v in hp.items()}
    return hp


def load_model(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> Any:
    """A refactored LightningModule in eval mode from any supported checkpoint (legacy ones migrate in memory).

    A legacy file triggers a DeprecationWarning that says how to migrate it for good.

    Args:
        path: the checkpoint, at any known layout version.
        overrides: hyper-parameters the checkpoint lacks.

    Returns:
        The refactored model with the checkpoint's weights loaded.
    """
    result = plan_and_apply(os.fspath(path), overrides=overrides)  # to the family's newest layout
    if result.source_version != result.target_version:
        warnings.warn(f"{os.fspath(path)} is a {result.source_version} checkpoint, migrated in memory; "
                      f"run `athelas-migrate ckpt {os.fspath(path)} NEW.ckpt` to migrate the file for good",
                      DeprecationWarning, stacklevel=2)
    return build_v2_model(result)


def verify(old: str | os.PathLike[str], new: str | os.PathLike[str], atol: float = 1e-5, rtol: float = 0.0,
           **kwargs: Any) -> Any:
    """Equivalence runner: the legacy model of `old` and the refactored model of `new` compute the same.

    Args:
        old: the legacy checkpoint.
        new: its migrated counterpart.
        atol: absolute tolerance of every numeric comparison.
        rtol: relative tolerance of every numeric comparison.
        **kwargs: passed to `athelas_migrate.equivalence.run_verify` (inputs, skip, reports, device, ...).

    Returns:
        The VerifyReport; `report.passed` says whether every check agreed.
    """
    from .equivalence import run_verify

    return run_verify(os.fspath(old), os.fspath(new), atol=atol, rtol=rtol, **kwargs)

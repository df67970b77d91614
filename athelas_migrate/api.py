"""The Python API: what `athelas-migrate` commands do, importable without the CLI."""

from __future__ import annotations

import os
import warnings
from typing import Any

from .errors import UsageError
from .pipeline import MigrationResult, plan_and_apply, write_result


def migrate(src: str | os.PathLike[str], dst: str | os.PathLike[str] | None = None, to: str | None = None,
            overrides: dict[str, Any] | None = None, force: bool = False, dry_run: bool = False) -> MigrationResult:
    """Migrate `src` to layout `to` (default: newest) and write `dst` atomically unless `dry_run`.

    Returns the MigrationResult (plan, key traces, warnings, the checkpoint written).
    A checkpoint already at the target has nothing to change (`result.noop`): `dst` is then a verbatim copy
    of `src` (a `.safetensors` `dst` is written from its tensors), so success always means `dst` exists.
    """
    if dst is None and not dry_run:
        raise UsageError("migrate() needs a destination unless dry_run=True")
    result = plan_and_apply(os.fspath(src), to=to, overrides=overrides)
    if not dry_run:
        write_result(result, os.fspath(dst), force=force)
    return result


def audit(src: str | os.PathLike[str], to: str | None = None, overrides: dict[str, Any] | None = None):
    """The rename report of migrating `src`, without writing anything."""
    from .audit_report import build_audit

    return build_audit(plan_and_apply(os.fspath(src), to=to, overrides=overrides))


def inspect(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What a checkpoint is: family, layout version and evidence, sizes, hyper-parameters, optimizer state."""
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
    from .errors import MissingInformationError
    from .families import get_family

    try:
        get_family(det.family).configure(raw, det.version, {})
    except MissingInformationError as exc:
        return [{"key": n.key, "why": n.why} for n in exc.needs] or [{"key": "?", "why": str(exc)}]
    return []


def _describe(hp: Any) -> Any:
    from .io.tensor_ref import TensorRef

    if isinstance(hp, TensorRef):
        return f"<tensor {hp.dtype} {list(hp.shape)}>"
    if isinstance(hp, dict):
        return {k: _describe(v) for k, v in hp.items()}
    return hp


def build_v2_model(result: MigrationResult) -> Any:
    """Instantiate the refactored class of `result` and load its state strictly, memory-mapped.

    Tensors are assigned from the file (memory-mapped copy-on-write), so the weights are
    never read into a second copy; the fresh model is built without initial values (the strict
    load replaces every one), so its tensors are never written and cost no memory.
    """
    import torch

    from .equivalence.memory import skip_init
    from .families.base import load_class

    cls = load_class(result.family.v2_class)
    state = {k: t.to_torch(copy=False) for k, t in result.state.items()}
    with skip_init():
        model = cls(**result.hyper_parameters)
    model.load_state_dict(state, strict=True, assign=True)
    if any(p.dtype in (torch.float16, torch.bfloat16) for p in model.parameters()):
        model = model.float()  # CPU kernels need float32; the values are the fp16-rounded weights
    return model.eval()


def load_model(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> Any:
    """A refactored LightningModule in eval mode from any supported checkpoint (legacy ones migrate in memory)."""
    result = plan_and_apply(os.fspath(path), to="v2", overrides=overrides)
    if result.source_version != "v2":
        warnings.warn(f"{os.fspath(path)} is a {result.source_version} checkpoint, migrated in memory; "
                      f"run `athelas-migrate ckpt {os.fspath(path)} NEW.ckpt` to migrate the file for good",
                      DeprecationWarning, stacklevel=2)
    return build_v2_model(result)


def verify(old: str | os.PathLike[str], new: str | os.PathLike[str], atol: float = 1e-5, rtol: float = 0.0,
           **kwargs: Any) -> Any:
    """Equivalence runner: see athelas_migrate.equivalence."""
    from .equivalence import run_verify

    return run_verify(os.fspath(old), os.fspath(new), atol=atol, rtol=rtol, **kwargs)

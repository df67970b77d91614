"""The pair verify compares, before any model exists: both files read, OLD's legacy config, the rename map.

The OLD side never goes through the migration rules: its config is the family's canonical config of OLD
(plus the user's overrides, falling back to NEW's hyper-parameters for what OLD does not state). The
rename map (OLD's keys through the rules) only pairs parameters, gradients, optimizer buffers and modules.

Nothing here is family-specific: a new family needs a `Family` (families/) and a `VerifyAdapter`
(adapters.py). A new reduced-precision weight dtype gets its tolerance floor in `DTYPE_TOLERANCE`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import UsageError
from ..families import detect, get_family
from ..io.reader import read_checkpoint
from ..io.tensor_ref import TensorRef
from .adapters import CannotVerifyError, Context, VerifyAdapter, get_adapter, known_families
from .report import VerifyReport

#: floors of (atol, rtol) for weights stored in reduced precision (their unit roundoff, about)
DTYPE_TOLERANCE = {"float16": (1e-3, 1e-3), "bfloat16": (1e-2, 1e-2)}
#: hyper-parameters that size OLD's tensors: never taken from NEW (OLD's own tensors decide them)
SHAPE_KEYS = {"vocab_size", "embed_size", "input_tab_dim"}


@dataclass
class Pair:
    """What the later steps need: the family's adapter, the context, the rename map and the tolerances."""

    adapter: VerifyAdapter
    ctx: Context
    map_result: Any  # pipeline.MigrationResult of OLD through the rules (pairing only)
    atol: float
    rtol: float


def open_pair(report: VerifyReport, old: str, new: str, overrides: dict[str, Any], dev: torch.device) -> Pair:
    """Read OLD and NEW and resolve everything the models are built from; fills in the report's header.

    Args:
        report: receives the family, versions, dtypes, tolerances and notes.
        old: the legacy checkpoint.
        new: its migration (any layout of the same family; migrated in memory when not the latest).
        overrides: the user's hyper-parameters (`--set`, `--config`, `--bert-config`).
        dev: the device the models will run on.

    Returns:
        The pair, its context without models yet.

    Raises:
        UsageError: OLD is already at the latest layout, or OLD and NEW are of different families.
        CannotVerifyError: no adapter for the family, or OLD's legacy config cannot be resolved.
        AthelasError: either file is refused by the reader or the migration engine.
    """
    from ..pipeline import plan_and_apply

    raw_old = read_checkpoint(old)
    det = detect(raw_old)
    fam = get_family(det.family)
    report.family, report.old_version = fam.name, det.version
    adapter = get_adapter(fam.name)
    if adapter is None:
        raise CannotVerifyError(f"no equivalence adapter for family {fam.name} (adapters: "
                                f"{', '.join(known_families())}); see docs/verify.md")
    if det.version == fam.latest:
        raise UsageError(f"OLD ({old}) is already a {fam.latest} checkpoint; verify compares a legacy "
                         "checkpoint (OLD) with its migration (NEW)")
    new_result = _read_new(report, new, fam, overrides)
    config_old, eff = _legacy_config(report, fam, det, raw_old, new_result.raw, overrides)
    map_result = plan_and_apply(old, to=fam.latest, overrides=eff, raw=raw_old)
    rename = {tr.source: tr.target for tr in map_result.traces if tr.target and ", " not in tr.target}
    ops = {tr.source: list(tr.ops) for tr in map_result.traces}
    report.notes.append("rename map (pairing only) from " + (", ".join(rf.name for rf in map_result.chain)
                                                             or "no rules"))
    compute_dtype, atol, rtol = _tolerances(report, raw_old, new_result.raw)
    ctx = Context(old, new, raw_old, new_result.raw, fam, det.version, new_result.source_version, config_old,
                  dict(new_result.config), rename, ops, dev, compute_dtype, report.seed, new_result=new_result)
    return Pair(adapter, ctx, map_result, atol, rtol)


def _read_new(report: VerifyReport, new: str, fam: Any, overrides: dict[str, Any]) -> Any:
    """NEW planned to the family's latest layout (the refactored model is built from NEW alone)."""
    from ..pipeline import plan_and_apply

    new_result = plan_and_apply(new, to=fam.latest, overrides=overrides)
    if new_result.family.name != fam.name:
        raise UsageError(f"OLD is a {fam.name} checkpoint but NEW is a {new_result.family.name} checkpoint")
    report.new_version = new_result.source_version
    if new_result.source_version != fam.latest:
        report.notes.append(f"NEW is a {new_result.source_version} checkpoint: migrated in memory to "
                            f"{fam.latest} for the comparison")
    return new_result


def _legacy_config(report: VerifyReport, fam: Any, det: Any, raw_old: Any, raw_new: Any,
                   overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """OLD's canonical config and the effective overrides (the user's over NEW's values OLD lacks)."""
    fallback = {k: v for k, v in _stated(raw_new.hyper_parameters).items()
                if k not in _stated(raw_old.hyper_parameters) and k not in SHAPE_KEYS}
    eff = {**fallback, **overrides}
    try:
        config_old = fam.configure(raw_old, det.version, dict(eff))
    except UsageError as exc:
        if not fallback:
            raise
        raise CannotVerifyError(f"{exc} (values missing from OLD are taken from NEW's hyper-parameters: "
                                "are OLD and NEW the same model?)") from exc
    report.notes += [f"OLD: {n}" for n in det.notes + list(config_old.pop("_notes", []))]
    taken = sorted(k for k in fallback if k not in overrides)
    if taken:
        report.notes.append(f"taken from NEW's hyper-parameters (OLD does not state them): {', '.join(taken)}")
    if not config_old.get("label_name"):
        config_old["label_name"] = "label"
        report.notes.append("label_name is stated by neither file; 'label' is used (only labelled inputs "
                            "files need it)")
    return config_old, eff


def _tolerances(report: VerifyReport, raw_old: Any, raw_new: Any) -> tuple[torch.dtype, float, float]:
    """The compute dtype and the effective (atol, rtol): the user's, raised to the floor of reduced precision."""
    wdt = _weights_dtype(raw_old)
    compute_dtype = torch.float64 if wdt == "float64" else torch.float32
    report.weights_dtype, report.compute_dtype = wdt, str(compute_dtype).removeprefix("torch.")
    atol, rtol = report.atol, report.rtol
    if wdt in DTYPE_TOLERANCE:
        fa, fr = DTYPE_TOLERANCE[wdt]
        atol, rtol = max(atol, fa), max(rtol, fr)
        report.tolerance_note = (f"{wdt} weights: both models run in float32 with the {wdt}-rounded weights; "
                                 f"compared at atol={atol:g}, rtol={rtol:g} (floor for {wdt})")
    else:
        report.tolerance_note = f"{wdt} weights, computed in {report.compute_dtype}: atol={atol:g}, rtol={rtol:g}"
    report.effective_atol, report.effective_rtol = atol, rtol
    new_wdt = _weights_dtype(raw_new)
    if new_wdt != wdt:
        report.notes.append(f"NEW stores {new_wdt} weights, OLD {wdt}")
    return compute_dtype, atol, rtol


def _stated(hp: Any) -> dict[str, Any]:
    """The hyper-parameters a checkpoint states (a nested `config` flattened; tensors left out)."""
    if not isinstance(hp, dict):
        return {}
    out = {}
    if isinstance(hp.get("config"), dict):
        out.update(hp["config"])
    for k, v in hp.items():
        if k != "config":
            out[k] = v
    return {k: v for k, v in out.items() if not isinstance(v, TensorRef) and not hasattr(v, "shape")}


def _weights_dtype(raw: Any) -> str:
    """The widest-rounding float dtype among the checkpoint's tensors (float32 when it has none)."""
    floats = [d for d in raw.dtypes if d.startswith(("float", "bfloat"))]
    for d in ("float16", "bfloat16", "float32", "float64"):
        if d in floats:
            return d
    return "float32"

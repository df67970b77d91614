"""The migration pipeline: load -> detect -> plan -> apply -> validate -> build output.

Everything here is pure with respect to the input file: nothing is written until
`write_result`, and then atomically. Tensors stay lazy references throughout, so a
rename-only chain never decodes or copies a tensor in Python.

`plan_and_apply` runs the steps in order: read (io.reader), detect the family and version (families),
resolve its config, `check_state` the source, plan the rule chain (rules.graph), apply each rule file's state
and hyper-parameter rules (rules.apply) while `_trace` records every key's path, `check_state` the result,
then `_build_checkpoint` assembles the output (hyper-parameters, optimizer state renumbered, stamp with
provenance). To add a step, add it to `plan_and_apply` where its inputs exist: a check of the source after the
first `check_state`, a per-edge step inside the chain loop, a check of the result before `_build_checkpoint`;
record what it finds in the MigrationResult (`notes`, `warnings`, or a new field) so that audit and report
show it, and refuse with an AthelasError subclass. Family-specific behaviour belongs in the Family, not here.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ._version import __version__
from .errors import MalformedSourceError, UsageError, ValidationError
from .families import Detection, Expected, Family, detect, get_family
from .families.base import refuse_marked
from .io.reader import STAMP_KEY, RawCheckpoint, read_checkpoint
from .io.tensor_ref import FLOAT_DTYPES, TensorRef
from .io.values import check_hparam_types
from .optimizer_state import remap_optimizer_states
from .outputs import copy_verbatim as copy_verbatim  # re-exported: callers import it from here
from .outputs import write_result as write_result  # likewise
from .rules.apply import KeyEvent, apply_hparam_rules, apply_state_rules
from .rules.graph import head, plan_path
from .rules.schema import RuleFile
from .scan import FULL_CHECKS_ENV, VALUE_SCAN_LIMIT, full_checks, nonfinite_tensors, source_digests
from .scan import file_sha256 as file_sha256  # re-exported: callers import these from here
from .scan import structural_sha256 as structural_sha256


@dataclass
class KeyTrace:
    """The life of one source key through the chain."""

    source: str
    target: str | None
    rules: list[str] = field(default_factory=list)
    ops: list[str] = field(default_factory=list)
    reason: str = ""


@dataclass
class MigrationResult:
    """Everything one migration established, before anything is written (`write_result` writes it)."""

    raw: RawCheckpoint
    detection: Detection
    family: Family
    source_version: str
    target_version: str
    chain: list[RuleFile]
    config: dict[str, Any]
    state: OrderedDict[str, TensorRef]
    traces: list[KeyTrace]
    created: list[KeyTrace]
    hparam_notes: list[str]
    notes: list[str]
    warnings: list[str]
    checkpoint: dict[str, Any] = field(default_factory=dict)
    hyper_parameters: dict[str, Any] = field(default_factory=dict)
    noop: bool = False
    optimizer_moves: list[tuple[int, int]] = field(default_factory=list)  # saved parameter ids renumbered (old, new)
    hparams_before: dict[str, Any] = field(default_factory=dict)  # rule -> value before it (for rollback)

    @property
    def stamp(self) -> dict[str, Any]:
        """The layout stamp of the output checkpoint (layout, family, provenance)."""
        return self.checkpoint.get(STAMP_KEY, {})


def check_state(state: dict[str, TensorRef], family: Family, config: dict, version: str, where: str,
                error: type[Exception] = ValidationError) -> Expected:
    """Refuse a state dict that is not exactly the family's layout: missing, extra, shape, dtype.

    Args:
        state: the state dict to check.
        family: its family.
        config: the resolved config the layout depends on.
        version: the layout version it must be.
        where: the file or step, for the message.
        error: the refusal's class (MalformedSourceError for a source, ValidationError for a result).

    Returns:
        The family's Expected layout (parameter order included).

    Raises:
        ValidationError: (or `error`) the state differs from the layout; every kind of difference is named.
    """
    exp = family.expected(config, version)
    missing = [k for k in exp.shapes if k not in state]
    extra = [k for k in state if k not in exp.shapes]
    wrong = [f"{k} {list(state[k].shape)} (expected {list(s)})" for k, s in exp.shapes.items()
             if k in state and tuple(state[k].shape) != tuple(s)]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:10])}")
    if extra:
        problems.append(f"unexpected keys: {', '.join(extra[:10])}")
    if wrong:
        problems.append(f"wrong shapes: {', '.join(wrong[:10])}")
    int_keys = getattr(exp, "int_keys", set())
    float_types = {t.dtype for k, t in state.items() if k not in int_keys}
    bad = [f"{k} ({t.dtype})" for k, t in state.items() if k not in int_keys and t.dtype not in FLOAT_DTYPES]
    if bad:
        problems.append(f"non-floating tensors where weights belong: {', '.join(bad[:10])}")
    elif len(float_types) > 1:
        problems.append(f"mixed dtypes {sorted(float_types)} in one model")
    if problems:
        raise error(f"{where}: not an exact {family.name} {version} layout: " + "; ".join(problems))
    return exp


def check_latest(fam: Family) -> None:
    """A family's declared newest layout must be the head of its rule graph (else `ckpt` without `--to` would
    stop short of, or past, the newest rules).

    Args:
        fam: a registered family, held to the rule files loaded for its name.

    Raises:
        VersionGraphError: they differ.
    """
    newest = head(fam.name)
    if newest is not None and newest != fam.latest:
        from .errors import VersionGraphError

        raise VersionGraphError(f"{fam.name}: the family says its newest layout is {fam.latest} but its rule files "
                                f"end at {newest}", fam.name, (fam.latest, newest))


def plan_and_apply(src: str, to: str | None = None, overrides: dict[str, Any] | None = None,
                   raw: RawCheckpoint | None = None) -> MigrationResult:
    """Migrate a checkpoint in memory: every step of the module docstring, nothing written.

    Args:
        src: the checkpoint's path.
        to: the target layout; None means the family's newest (an older one is a rollback).
        overrides: hyper-parameters the file lacks or that replace its own.
        raw: the file already read (saves a second read), or None.

    Returns:
        The MigrationResult, its `checkpoint` ready for `write_result`.

    Raises:
        UsageError: an override has a forbidden value or type (and the refusals of reading, detection, config,
            planning and validation: InputError, RuleError, ValidationError subclasses).
    """
    raw = raw or read_checkpoint(src)
    det = detect(raw)
    fam = get_family(det.family)
    overrides = dict(overrides or {})
    refuse_marked(overrides)
    check_hparam_types(overrides, "", "--set/--config", UsageError)
    config = fam.configure(raw, det.version, overrides)
    notes = list(det.notes) + list(config.pop("_notes", []))
    src_layout = check_state(raw.state_dict, fam, config, det.version, raw.path, error=MalformedSourceError)
    check_latest(fam)
    target = to or fam.latest
    warnings = []
    scan = full_checks() or sum(t.nbytes for t in raw.state_dict.values()) <= VALUE_SCAN_LIMIT
    if scan:  # every source tensor; past the limit only the values tensor operations produce (below)
        bad = nonfinite_tensors(raw.state_dict)
        if bad:
            warnings.append(f"NaN or Inf values in: {', '.join(bad[:10])} (migrated unchanged)")
    else:
        notes.append(f"NaN/Inf scan skipped: {sum(t.nbytes for t in raw.state_dict.values()) / 2**20:.0f} MiB of "
                     f"tensors is over {VALUE_SCAN_LIMIT >> 20} MiB (set {FULL_CHECKS_ENV}=1 to scan them)")
    chain = plan_path(fam.name, det.version, target)
    state = OrderedDict(raw.state_dict)
    traces = {k: KeyTrace(k, k) for k in state}
    origin = {k: k for k in state}
    created: list[KeyTrace] = []
    hparam_notes: list[str] = []
    recorded, hparams_before = recorded_hparams(raw.stamp), {}
    for rf in chain:
        res = apply_state_rules(rf, state, config)
        warnings += res.warnings
        new_origin: dict[str, str] = {}
        for ev in res.events:
            _trace(ev, origin, new_origin, traces, created)
        origin, state = new_origin, res.state
        hparam_notes += apply_hparam_rules(rf.hparams, config, recorded, hparams_before)
    config.update({k: v for k, v in overrides.items() if k != "bert_config"})  # families keep that one apart
    bad = nonfinite_tensors(state, changed_only=True)
    if bad:
        warnings.append(f"NaN or Inf values produced by tensor operations in: {', '.join(bad[:10])}")
    dst_layout = check_state(state, fam, config, target, f"result of {det.version}->{target}")
    state = OrderedDict((k, state[k]) for k in dst_layout.shapes)
    result = MigrationResult(raw, det, fam, det.version, target, chain, config, state, list(traces.values()),
                             created, hparam_notes, notes, warnings, noop=not chain)
    result.hparams_before = hparams_before
    _build_checkpoint(result, src_layout.parameters, dst_layout.parameters)
    return result


def recorded_hparams(stamp: Any) -> dict[str, Any]:
    """Hyper-parameter values recorded before each forward `set`/`drop` (provenance `hparams_before`), over the
    whole provenance chain of the stamp; the most recent migration wins. A rollback restores them.

    Args:
        stamp: the source's layout stamp (anything else gives an empty result).

    Returns:
        Rule id -> the value before it.
    """
    chain, prov = [], stamp.get("provenance") if isinstance(stamp, dict) else None
    while isinstance(prov, dict) and len(chain) < 1000:
        chain.append(prov)
        prov = prov.get("previous")
    out: dict[str, Any] = {}
    for p in reversed(chain):
        if isinstance(p.get("hparams_before"), dict):
            out.update(p["hparams_before"])
    return out


def _trace(ev: KeyEvent, origin: dict, new_origin: dict, traces: dict, created: list) -> None:
    if ev.op in ("restore", "create"):  # a key made from an anchor (restore) or from nothing (create)
        created.append(KeyTrace(ev.sources[0] if ev.sources else "", ev.targets[0], [ev.rule], [ev.op], ev.reason))
        new_origin[ev.targets[0]] = None
        return
    for s in ev.sources:
        o = origin.get(s)
        tr = traces.get(o) if o is not None else None
        if tr is None:
            continue
        tr.rules.append(ev.rule)
        tr.ops.append(ev.op)
        if ev.op == "drop":
            tr.target, tr.reason = None, ev.reason
        else:
            tr.target = ev.targets[0] if len(ev.targets) == 1 else ", ".join(ev.targets)
    for t in ev.targets:
        if len(ev.sources) == 1:
            new_origin[t] = origin.get(ev.sources[0])


def _param_rename(result: MigrationResult) -> dict[str, str]:
    return {tr.source: tr.target for tr in result.traces if tr.target}


def _build_checkpoint(result: MigrationResult, src_params: list[str], dst_params: list[str]) -> None:
    fam, raw, cfg = result.family, result.raw, result.config
    hp = fam.render_hparams(cfg, result.target_version, result.state)
    unknown = cfg.get("_unknown")
    if unknown and result.target_version == fam.latest:  # never a default presented as fact (see families)
        values = hp["config"] if isinstance(hp.get("config"), dict) else hp
        values.update({k: None for k in unknown})
        values["unknown"] = dict(unknown)
    result.hyper_parameters = hp
    top: dict[str, Any] = dict(raw.top) if raw.kind == "lightning" else {}
    top["state_dict"] = result.state
    top["hyper_parameters"] = hp
    if "pytorch-lightning_version" not in top:
        top["pytorch-lightning_version"] = _lightning_version()
    if raw.kind != "lightning":
        top.setdefault("epoch", 0)
        top.setdefault("global_step", 0)
    if top.get("optimizer_states"):
        first = top["optimizer_states"][0]
        n = len(first.get("param_groups", [])) if isinstance(first, dict) else 1
        src_groups = fam.optimizer_groups(cfg, result.source_version, src_params, n)
        dst_groups = fam.optimizer_groups(cfg, result.target_version, dst_params, n)
        rename = _param_rename(result)
        top["optimizer_states"] = remap_optimizer_states(top["optimizer_states"], src_groups, dst_groups, rename)
        dst_index = {name: j for j, name in enumerate(x for g in dst_groups for x in g)}
        src_order = [x for g in src_groups for x in g]
        result.optimizer_moves = [(i, dst_index[rename[name]]) for i, name in enumerate(src_order)
                                  if name in rename and dst_index.get(rename[name], i) != i]
    top[STAMP_KEY] = {"layout": result.target_version, "family": fam.name, "provenance": _provenance(result)}
    hparams_name = getattr(fam, "hparams_name", {}).get(result.target_version)
    if hparams_name:  # the v2 model saved `save_hyperparameters(config)`: Lightning passes them as `config=`
        top["hparams_name"] = hparams_name
    if result.target_version in getattr(fam, "bare_versions", ()):
        top = OrderedDict(result.state)  # that generation's files are bare `state_dict()`s: nothing else
    result.checkpoint = top


def _lightning_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lightning")
    except PackageNotFoundError:  # pragma: no cover
        return "2.0.0"


def _provenance(result: MigrationResult) -> dict[str, Any]:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = _dt.datetime.fromtimestamp(int(epoch), _dt.UTC) if epoch else _dt.datetime.now(_dt.UTC)
    previous = (result.raw.stamp or {}).get("provenance")
    return {
        "source_file": os.path.basename(result.raw.path),
        **source_digests(result.raw, VALUE_SCAN_LIMIT),  # this module's limit, the one callers adjust
        "source_layout": result.source_version,
        "rules": [{"file": rf.name, "edge": f"{rf.source_version}->{rf.target_version}", "sha256": rf.digest}
                  for rf in result.chain],
        "tool": f"athelas-migrate {__version__}",
        "created": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        **({"hparams_before": result.hparams_before} if result.hparams_before else {}),
        **({"previous": previous} if previous else {}),
    }

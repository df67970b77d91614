"""Applying one rule file to a state dict: strict, one rule per key, every target produced once."""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ..errors import NotInvertibleError, RuleError
from ..io.tensor_ref import TensorRef
from .schema import HparamRule, RuleFile, StateRule


@dataclass
class KeyEvent:
    """What one rule did to one key: the audit's unit."""

    rule: str  # "<file>#<id>"
    op: str
    sources: list[str]
    targets: list[str]
    reason: str = ""


@dataclass
class EdgeResult:
    state: OrderedDict[str, TensorRef]
    events: list[KeyEvent] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _list(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


def apply_state_rules(rf: RuleFile, state: OrderedDict[str, TensorRef],
                      config: dict[str, Any] | None = None) -> EdgeResult:
    """Map every key through exactly one rule; refuse unmatched, ambiguous and colliding keys."""
    active = [r for r in rf.rules if r.op not in ("restore", "create")]
    unmatched, ambiguous = [], []
    owner: dict[str, StateRule] = {}
    for key in state:
        hits = [r for r in active if r.matches(key)]
        if not hits:
            unmatched.append(key)
        elif len(hits) > 1:
            ambiguous.append(f"{key} ({', '.join(r.id for r in hits)})")
        else:
            owner[key] = hits[0]
    if unmatched:
        raise RuleError(f"{rf.name}: keys matched by no rule: {_list(unmatched)}")
    if ambiguous:
        raise RuleError(f"{rf.name}: keys matched by more than one rule: {_list(ambiguous)}")

    produced: OrderedDict[str, TensorRef] = OrderedDict()
    events: list[KeyEvent] = []
    collisions: list[str] = []

    def emit(target: str, tensor: TensorRef) -> None:
        if target in produced:
            collisions.append(target)
        produced[target] = tensor

    warnings: list[str] = []
    concat_groups: dict[tuple[str, tuple], dict[int, str]] = {}
    for key, tensor in state.items():
        rule = owner[key]
        if rule.op == "drop":
            if "check_fill" in rule.params:
                warnings += _check_constant(rule, key, tensor)
            events.append(KeyEvent(rule.source, "drop", [key], [], rule.reason))
            continue
        if rule.op == "concat":
            idx = next(i for i, p in enumerate(rule.match) if p.fullmatch(key))
            m = rule.match[idx].fullmatch(key)
            concat_groups.setdefault((rule.id, m.groups()), {})[idx] = key
            continue
        m = rule.match[0].fullmatch(key)
        targets = [m.expand(t) for t in rule.to]
        if rule.op == "rename":
            emit(targets[0], tensor)
        elif rule.op == "split":
            for t, part in zip(targets, _split(tensor, rule.params)):
                emit(t, part)
        elif rule.op in ("widen_head", "narrow_head"):
            out, note = _head_op(rule, key, tensor)
            emit(targets[0], out)
            warnings += [note] if note else []
        else:
            emit(targets[0], _tensor_op(rule, tensor))
        events.append(KeyEvent(rule.source, rule.op, [key], targets))
    for (rid, _groups), parts in concat_groups.items():
        rule = next(r for r in active if r.id == rid)
        if len(parts) != len(rule.match):
            missing = [p.pattern for i, p in enumerate(rule.match) if i not in parts]
            raise RuleError(f"{rule.source}: concat is missing parts matching {missing}")
        keys = [parts[i] for i in range(len(rule.match))]
        target = rule.match[0].fullmatch(keys[0]).expand(rule.to[0])
        emit(target, _concat([state[k] for k in keys], rule.params))
        events.append(KeyEvent(rule.source, "concat", keys, [target]))
    if collisions:
        raise RuleError(f"{rf.name}: target keys produced more than once: {_list(sorted(set(collisions)))}")

    for rule in rf.rules:
        if rule.op == "restore" and _restore_applies(rule, config):
            _restore(rule, produced, events, config)
        elif rule.op == "create":
            _create(rule, rule.to[0], rule.params, produced, events, config)
    for rule in active:
        if rule.op == "drop" and rule.restore is not None:
            warnings += _check_restorable(rule, state, produced, config)
    return EdgeResult(produced, events, warnings)


def _shape(shape: list, config: dict[str, Any] | None, where: str) -> list[int]:
    """A rule's shape: ints, or names of config keys whose (int) values are the sizes."""
    out = []
    for d in shape:
        if isinstance(d, str):
            v = (config or {}).get(d)
            if not isinstance(v, int) or isinstance(v, bool):
                raise RuleError(f"{where}: shape entry {d!r} needs an integer config value (got {v!r})")
            d = v
        out.append(int(d))
    return out


def _float_dtype(produced: OrderedDict[str, TensorRef]) -> str:
    from ..io.tensor_ref import FLOAT_DTYPES

    return next((t.dtype for t in produced.values() if t.dtype in FLOAT_DTYPES), "float32")


def _create(rule: StateRule, key: str, params: dict[str, Any], produced: OrderedDict[str, TensorRef],
            events: list[KeyEvent], config: dict[str, Any] | None, op: str = "create") -> None:
    """Add a constant tensor (`fill` everywhere) under `key`, in the model's floating dtype unless stated."""

    if key in produced:
        raise RuleError(f"{rule.source}: {op}d key {key} already exists")
    shape = _shape(params["shape"], config, rule.source)
    dtype = params.get("dtype") or _float_dtype(produced)
    try:
        produced[key] = TensorRef.full(shape, params["fill"], dtype)
    except ValueError as exc:
        raise RuleError(f"{rule.source}: {exc}") from exc
    events.append(KeyEvent(rule.source, op, [], [key], rule.reason))


def _check_constant(rule: StateRule, key: str, tensor: TensorRef) -> list[str]:
    """The inverse of `create` drops a key the forward edge made; say so when it no longer holds the constant."""
    fill = rule.params["check_fill"]
    if tensor.numel and tensor.holds_constant(fill):
        return []
    values = tensor.to_torch().flatten()[:6].tolist()
    return [f"{rule.source}: {key} no longer holds the constant {fill} that the forward edge created "
            f"(values {values}); the older layout has no place for it, so it is dropped"]


def _head_op(rule: StateRule, key: str, tensor: TensorRef) -> tuple[TensorRef, str]:
    """widen_head: `[1, ...]` -> `[0 ; w]` (logit 0 is exactly 0, so softmax[:, 1] = sigmoid(z)), a byte copy;
    narrow_head: `[2, ...]` -> `w1 - w0` (the same decision function, `sigmoid(z1 - z0)`, with one logit)."""
    if rule.op == "widen_head":
        if not tensor.shape or tensor.shape[0] != 1:
            raise RuleError(f"{rule.source}: widen_head needs a one-row head, {key} is {list(tensor.shape)}")
        zero_row = bytes(tensor.nbytes)  # +0.0 is all zero bits in every float format
        return TensorRef.from_bytes(zero_row + bytes(tensor.raw_bytes()), tensor.dtype,
                                    (2, *tensor.shape[1:]), tensor.is_parameter), ""

    t = tensor.to_torch()
    if t.dim() == 0 or t.shape[0] != 2:
        raise RuleError(f"{rule.source}: narrow_head needs a two-row head, {key} is {list(t.shape)}")
    note = ""
    if bool((t[0] != 0).any()):
        note = (f"{rule.source}: row 0 of {key} is not zero (trained after the migration): the one-row head is "
                "w1 - w0, the same function (sigmoid(z1 - z0) = softmax[:, 1], up to float rounding), "
                "not a copy of the file it was migrated from")
    return TensorRef.from_torch((t[1:] - t[:1]).contiguous(), tensor.is_parameter), note


def _restore_applies(rule: StateRule, config: dict[str, Any] | None) -> bool:
    """A restore with `when = "key"` runs only if the config says the dropped keys existed."""
    when = rule.restore.get("when")
    return not when or bool((config or {}).get(when))


def _restore_targets(rule: StateRule, keys: list[str]) -> list[tuple[str, str]]:
    if "anchor" not in rule.restore:
        return []
    anchor = re.compile(rule.restore["anchor"])
    out = []
    for k in keys:
        m = anchor.fullmatch(k)
        if m:
            out.append((k, m.expand(rule.restore["key"])))
    return out


def _restore(rule: StateRule, produced: OrderedDict[str, TensorRef], events: list[KeyEvent],
             config: dict[str, Any] | None = None) -> None:
    """Recreate keys a forward drop removed, as its `restore` clause says."""
    if rule.restore.get("value") == "fill":
        _create(rule, rule.restore["key"], rule.restore, produced, events, config, op="restore")
        return
    for anchor_key, target in _restore_targets(rule, list(produced)):
        if target in produced:
            raise RuleError(f"{rule.source}: restored key {target} already exists")
        produced[target] = _restored_value(rule, produced[anchor_key])
        events.append(KeyEvent(rule.source, "restore", [anchor_key], [target], rule.reason))


def _restored_value(rule: StateRule, anchor: TensorRef) -> TensorRef:
    if rule.restore.get("value", "copy") == "copy":
        return anchor
    import torch

    n = anchor.shape[int(rule.restore.get("dim", 0))]
    shape = [n if s == -1 else s for s in rule.restore.get("shape", [-1])]
    t = torch.arange(n, dtype=getattr(torch, rule.restore.get("dtype", "int64"))).reshape(shape)
    return TensorRef.from_torch(t)


def _check_restorable(rule: StateRule, before: OrderedDict[str, TensorRef], after: OrderedDict,
                      config: dict[str, Any] | None = None) -> list[str]:
    """A drop claims its values can be rebuilt on rollback; check that claim on this checkpoint."""
    dropped = {k for k in before if rule.matches(k)}
    warnings = []
    if rule.restore.get("value") == "fill":
        key, fill = rule.restore["key"], rule.restore["fill"]
        t = before.get(key)
        if t is not None and not t.holds_constant(fill):
            if rule.restore.get("strict"):
                from ..errors import ValidationError

                raise ValidationError(f"{rule.source}: {key} is not the constant {fill} that rollback restores; "
                                      "dropping it would lose information, so nothing is written")
            warnings.append(f"{rule.source}: dropped {key} ({rule.reason}) holds values a rollback cannot "
                            f"rebuild: rollback writes {fill} everywhere")
        dropped.discard(key)
    inverse_space = OrderedDict((k, v) for k, v in before.items() if k not in dropped)
    for anchor_key, target in _restore_targets(rule, list(inverse_space)):
        if target in dropped:
            expected = _restored_value(rule, before[anchor_key])
            got = before[target]
            if expected.digest() != got.digest():
                if rule.restore.get("strict"):
                    from ..errors import ValidationError

                    raise ValidationError(
                        f"{rule.source}: {target} is not what the target layout assumes (the value rebuilt from "
                        f"{anchor_key}); dropping it would change what the model computes, so nothing is written")
                warnings.append(f"{rule.source}: dropped {target} differs from what rollback restores "
                                f"(from {anchor_key}); a rollback will not reproduce it bitwise")
            dropped.discard(target)
    for k in sorted(dropped):
        warnings.append(f"{rule.source}: dropped {k} has no restore anchor; rollback cannot rebuild it")
    return warnings


def _tensor_op(rule: StateRule, tensor: TensorRef) -> TensorRef:
    import torch

    t = tensor.to_torch()
    if rule.op == "transpose":
        out = t.transpose(*rule.params["dims"]).contiguous()
    elif rule.op == "reshape":
        out = t.reshape(rule.params["shape"])
    elif rule.op == "cast":
        out = t.to(getattr(torch, rule.params["dtype"]))
    else:  # pragma: no cover - schema forbids
        raise RuleError(f"{rule.source}: unsupported op {rule.op}")
    return TensorRef.from_torch(out, tensor.is_parameter)


def _split(tensor: TensorRef, params: dict[str, Any]) -> list[TensorRef]:
    t = tensor.to_torch()
    if sum(params["sizes"]) != t.shape[params["dim"]]:
        raise RuleError(f"split sizes {params['sizes']} do not add up to dim {params['dim']} of shape {list(t.shape)}")
    return [TensorRef.from_torch(p.contiguous()) for p in t.split(params["sizes"], dim=params["dim"])]


def _concat(parts: list[TensorRef], params: dict[str, Any]) -> TensorRef:
    import torch

    return TensorRef.from_torch(torch.cat([p.to_torch() for p in parts], dim=params["dim"]))


def apply_hparam_rules(rules: list[HparamRule], config: dict[str, Any], recorded: dict[str, Any] | None = None,
                       record: dict[str, Any] | None = None) -> list[str]:
    """Edit the canonical config in place; returns one line per change for the report.

    `record` (filled): per forward `set`/`drop` rule, the key's value before it ran (or its absence), for the
    output's stamp. `recorded`: such records from the source's stamp, which `restore` (the inverse) puts back
    exactly; nothing is lost silently, a rollback that cannot restore a value refuses."""
    notes = []
    for r in rules:
        if r.op in ("set", "drop") and record is not None:
            before = {"key": r.key, "present": r.key in config}
            if r.key in config and _plain(config[r.key]):
                before["value"] = config[r.key]
            if not before["present"] or "value" in before:
                record[r.source] = before
        if r.op == "set":
            if r.if_missing and r.key in config:
                continue
            value = _template(r, config) if isinstance(r.value, str) and "{" in r.value else r.value
            if not r.has_value:
                continue
            if config.get(r.key) != value:
                notes.append(f"{r.source}: set {r.key} = {value!r}")
            config[r.key] = value
        elif r.op == "rename":
            if r.key in config:
                config[r.to] = config.pop(r.key)
                notes.append(f"{r.source}: rename {r.key} -> {r.to}")
        elif r.op == "restore":
            notes += _restore_hparam(r, config, (recorded or {}).get(r.forward))
        elif r.key in config:
            config.pop(r.key)
            notes.append(f"{r.source}: drop {r.key} ({r.reason})")
    return notes


def _restore_hparam(r: HparamRule, config: dict[str, Any], rec: dict[str, Any] | None) -> list[str]:
    """Undo a forward `set`/`drop`: the stamp's record first, else what the rule file states."""
    if rec is not None and rec.get("key") == r.key:
        if rec.get("present"):
            config[r.key] = rec["value"]
            return [f"{r.source}: restore {r.key} = {rec['value']!r} (recorded in the stamp)"]
        if r.key in config:
            config.pop(r.key)
            return [f"{r.source}: remove {r.key} (absent before {r.forward}, recorded in the stamp)"]
        return []
    was_set = not r.reason  # a drop always states its reason
    if was_set and r.has_previous:
        config[r.key] = r.previous
        return [f"{r.source}: restore {r.key} = {r.previous!r} (the rule file's previous value)"]
    if was_set and r.if_missing:  # the set only ever added the key
        if r.key in config:
            config.pop(r.key)
            return [f"{r.source}: remove {r.key} (added by {r.forward})"]
        return []
    if not was_set and r.has_value:
        config.setdefault(r.key, r.value)
        return [f"{r.source}: restore {r.key} = {r.value!r} (the rule file's value)"]
    raise NotInvertibleError(f"{r.forward}: the value of hyper-parameter {r.key!r} before this edge is recorded "
                             "neither in the checkpoint's stamp nor in the rule file ('previous'); rolling back "
                             "would lose it")


def _plain(value: Any) -> bool:
    """JSON-representable (the stamp is also written as JSON into safetensors metadata)."""
    import json

    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _template(rule: HparamRule, config: dict[str, Any]) -> str:
    """A `value = "{key}_suffix"` template filled from the config: plain `{name}` fields only (no attribute,
    index, conversion or format spec), each naming a hyper-parameter the config has; RuleError otherwise."""
    import string

    out = []
    try:
        fields = list(string.Formatter().parse(rule.value))
    except ValueError as exc:
        raise RuleError(f"{rule.source}: malformed template {rule.value!r} ({exc})") from None
    for literal, name, spec, conversion in fields:
        out.append(literal)
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise RuleError(f"{rule.source}: template {rule.value!r}: only plain {{name}} fields are allowed, "
                            f"not {{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}")
        if name not in config:
            raise RuleError(f"{rule.source}: template {rule.value!r} needs hyper-parameter {name!r}, which neither "
                            "the checkpoint nor --set gives")
        out.append(str(config[name]))
    return "".join(out)

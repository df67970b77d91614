"""`drop` (keys the target no longer has) and `restore`, its inverse, which rebuilds them on rollback.

A drop's optional `restore` clause states how: copied or `arange`d from an anchor key the target keeps, or a
constant (`value = "fill"`). On the way forward the engine checks that claim on the checkpoint (`check`)."""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import replace

from ...errors import NotInvertibleError, RuleError, ValidationError
from ...io.tensor_ref import TensorRef
from .base import ApplyContext, KeyEvent, StateOp, StateRule, state_op
from .create import add_constant, check_constant
from .fields import check_template, compile_pattern, dtype_name, int_list, is_shape, require, tensor_misfit
from .keyed import MatchOp

_RESTORE_FIELDS = frozenset({"anchor", "key", "value", "dim", "shape", "dtype", "when", "strict", "fill"})
_RESTORE_TYPES = {"anchor": str, "key": str, "dim": int, "when": str, "strict": bool}


def _parse_restore(restore: dict, where: str) -> None:
    value = restore.get("value", "copy")
    if value == "fill":
        fill = restore.get("fill")
        if "key" not in restore or not isinstance(fill, int | float) or isinstance(fill, bool) or \
                not is_shape(restore.get("shape")):
            raise RuleError(f"{where}: restore with value = \"fill\" needs 'key', a number 'fill' and "
                            "'shape' (ints or config keys)", rule=where)
    elif not {"anchor", "key"} <= set(restore) or value not in ("copy", "arange"):
        raise RuleError(f"{where}: restore needs 'anchor' (regex), 'key' (template) and "
                        "'value' = \"copy\" or \"arange\"", rule=where)
    else:
        check_template(compile_pattern(restore["anchor"], where), require(restore, "key", f"{where}: restore"), where)
    extra = set(restore) - _RESTORE_FIELDS
    if extra:
        raise RuleError(f"{where}: unknown restore fields {sorted(extra)}", rule=where)
    for key, kind in _RESTORE_TYPES.items():
        if key in restore:
            require(restore, key, f"{where}: restore", kind)
    if "dtype" in restore:
        dtype_name(restore["dtype"], f"{where}: restore")
    if value != "fill" and "shape" in restore:
        int_list(restore, "shape", f"{where}: restore")


def _restore_targets(rule: StateRule, keys: list[str]) -> list[tuple[str, str]]:
    """(anchor key, key to rebuild) for every key the restore's anchor matches."""
    if "anchor" not in rule.restore:
        return []
    anchor = re.compile(rule.restore["anchor"])
    out = []
    for k in keys:
        m = anchor.fullmatch(k)
        if m:
            out.append((k, m.expand(rule.restore["key"])))
    return out


def _restored_value(rule: StateRule, anchor: TensorRef) -> TensorRef:
    if rule.restore.get("value", "copy") == "copy":
        return anchor
    import torch

    try:
        n = anchor.shape[int(rule.restore.get("dim", 0))]
        shape = [n if s == -1 else s for s in rule.restore.get("shape", [-1])]
        t = torch.arange(n, dtype=getattr(torch, rule.restore.get("dtype", "int64"))).reshape(shape)
    except (RuntimeError, IndexError) as exc:
        raise tensor_misfit(rule.source, "restore", rule.restore["anchor"], anchor.shape, exc) from exc
    return TensorRef.from_torch(t)


def _strict_refusal(rule: StateRule, message: str) -> None:
    if rule.restore.get("strict"):
        raise ValidationError(message)


def _check_restorable(rule: StateRule, before: OrderedDict[str, TensorRef]) -> list[str]:
    """A drop claims its values can be rebuilt on rollback; check that claim on this checkpoint."""
    dropped = {k for k in before if rule.matches(k)}
    warnings = []
    if rule.restore.get("value") == "fill":
        key, fill = rule.restore["key"], rule.restore["fill"]
        t = before.get(key)
        if t is not None and not t.holds_constant(fill):
            _strict_refusal(rule, f"{rule.source}: {key} is not the constant {fill} that rollback restores; "
                                  "dropping it would lose information, so nothing is written")
            warnings.append(f"{rule.source}: dropped {key} ({rule.reason}) holds values a rollback cannot "
                            f"rebuild: rollback writes {fill} everywhere")
        dropped.discard(key)
    inverse_space = OrderedDict((k, v) for k, v in before.items() if k not in dropped)
    for anchor_key, target in _restore_targets(rule, list(inverse_space)):
        if target in dropped:
            expected = _restored_value(rule, before[anchor_key])
            if expected.digest() != before[target].digest():
                _strict_refusal(rule, f"{rule.source}: {target} is not what the target layout assumes (the value "
                                      f"rebuilt from {anchor_key}); dropping it would change what the model "
                                      "computes, so nothing is written")
                warnings.append(f"{rule.source}: dropped {target} differs from what rollback restores "
                                f"(from {anchor_key}); a rollback will not reproduce it bitwise")
            dropped.discard(target)
    for k in sorted(dropped):
        warnings.append(f"{rule.source}: dropped {k} has no restore anchor; rollback cannot rebuild it")
    return warnings


@state_op
class Drop(MatchOp):
    """`drop`: `match`, `reason`, optional `restore = {anchor, key, value = "copy" | "arange" | "fill", ...}`."""

    name = "drop"
    fields = frozenset({"id", "op", "match", "reason", "restore"})

    @classmethod
    def parse_fields(cls, rule: StateRule, r: dict, where: str) -> None:
        rule.reason = require(r, "reason", where)
        if "restore" in r:
            rule.restore = require(r, "restore", where, dict)
            _parse_restore(rule.restore, where)

    @classmethod
    def apply_key(cls, rule: StateRule, key: str, tensor: TensorRef, ctx: ApplyContext) -> None:
        if "check_fill" in rule.params:
            ctx.warnings += check_constant(rule, key, tensor)
        ctx.events.append(KeyEvent(rule.source, "drop", [key], [], rule.reason))

    @classmethod
    def check(cls, rule: StateRule, ctx: ApplyContext) -> None:
        if rule.restore is not None:
            ctx.warnings += _check_restorable(rule, ctx.state)

    @classmethod
    def inverse(cls, rule: StateRule) -> StateRule:
        if rule.restore is None:
            raise NotInvertibleError(f"{rule.source}: drops keys ({rule.reason}) and states no way to restore them")
        return replace(rule, op="restore", source=f"{rule.source} (inverse)")


@state_op
class Restore(StateOp):
    """The inverse of a drop with `restore`: recreates the dropped keys after every key is mapped."""

    name = "restore"
    in_files = False
    claims_keys = False
    one_way = "a restore exists only on the way back (the inverse of a drop)"

    @classmethod
    def add_keys(cls, rule: StateRule, ctx: ApplyContext) -> None:
        when = rule.restore.get("when")  # `when = "key"`: only if the config says the dropped keys existed
        if when and not bool((ctx.config or {}).get(when)):
            return
        if rule.restore.get("value") == "fill":
            add_constant(rule, rule.restore["key"], rule.restore, ctx, op="restore")
            return
        for anchor_key, target in _restore_targets(rule, list(ctx.produced)):
            if target in ctx.produced:
                raise RuleError(f"{rule.source}: restored key {target} already exists", rule=rule.source)
            ctx.produced[target] = _restored_value(rule, ctx.produced[anchor_key])
            ctx.events.append(KeyEvent(rule.source, "restore", [anchor_key], [target], rule.reason))


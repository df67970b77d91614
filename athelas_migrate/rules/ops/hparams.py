"""Hyper-parameter ops: set, rename, drop, and restore (the inverse of set and drop).

A `set` or `drop` records the value it replaces in the output's stamp (`records`), and rollback restores
exactly that; without a record it uses the rule file's `previous` / `value`, or drops a key an `if_missing` set
added, or refuses."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ...errors import NotInvertibleError, RuleError
from .base import HparamOp, HparamRule, hparam_op
from .fields import require


def _template(rule: HparamRule, config: dict[str, Any]) -> str:
    """A `value = "{key}_suffix"` template filled from the config: plain `{name}` fields only (no attribute,
    index, conversion or format spec), each naming a hyper-parameter the config has; RuleError otherwise."""
    import string

    out = []
    try:
        fields = list(string.Formatter().parse(rule.value))
    except ValueError as exc:
        raise RuleError(f"{rule.source}: malformed template {rule.value!r} ({exc})", rule=rule.source) from None
    for literal, name, spec, conversion in fields:
        out.append(literal)
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise RuleError(f"{rule.source}: template {rule.value!r}: only plain {{name}} fields are allowed, "
                            f"not {{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}",
                                rule=rule.source)
        if name not in config:
            raise RuleError(f"{rule.source}: template {rule.value!r} needs hyper-parameter {name!r}, which neither "
                            "the checkpoint nor --set gives", rule=rule.source)
        out.append(str(config[name]))
    return "".join(out)


class _Recorded(HparamOp):
    """An op whose previous value the stamp records; its inverse (`restore`) puts that value back."""

    records = True

    @classmethod
    def inverse(cls, rule: HparamRule) -> HparamRule:
        return replace(rule, op="restore", forward=rule.source, source=f"{rule.source} (inverse)")


@hparam_op
class SetHparam(_Recorded):
    """`set`: `key`, `value` (may use `{other_key}` templates), `if_missing`, optional `previous`."""

    name = "set"
    fields = HparamOp.fields | {"value", "if_missing", "previous"}

    @classmethod
    def parse_fields(cls, rule: HparamRule, r: dict, where: str) -> None:
        if "value" not in r:
            raise RuleError(f"{where}: missing field 'value'", rule=where)
        if "if_missing" in r:
            rule.if_missing = require(r, "if_missing", where, bool)
        rule.value, rule.has_value = r["value"], True
        if "previous" in r:
            rule.previous, rule.has_previous = r["previous"], True

    @classmethod
    def apply(cls, rule: HparamRule, config: dict[str, Any], recorded: dict[str, Any] | None) -> list[str]:
        if rule.if_missing and rule.key in config:
            return []
        value = _template(rule, config) if isinstance(rule.value, str) and "{" in rule.value else rule.value
        if not rule.has_value:
            return []
        notes = [f"{rule.source}: set {rule.key} = {value!r}"] if config.get(rule.key) != value else []
        config[rule.key] = value
        return notes

    @classmethod
    def rollback(cls, rule: HparamRule) -> str:
        if rule.has_previous:
            return f"{rule.key}: the recorded previous value, else {rule.previous!r} (rule file)"
        if rule.if_missing:
            return f"{rule.key}: the recorded previous value, else removed (the set only adds a missing key)"
        return super().rollback(rule)


@hparam_op
class RenameHparam(HparamOp):
    """`rename`: `key`, `to`."""

    name = "rename"
    fields = HparamOp.fields | {"to"}

    @classmethod
    def parse_fields(cls, rule: HparamRule, r: dict, where: str) -> None:
        rule.to = require(r, "to", where)

    @classmethod
    def apply(cls, rule: HparamRule, config: dict[str, Any], recorded: dict[str, Any] | None) -> list[str]:
        if rule.key not in config:
            return []
        config[rule.to] = config.pop(rule.key)
        return [f"{rule.source}: rename {rule.key} -> {rule.to}"]

    @classmethod
    def inverse(cls, rule: HparamRule) -> HparamRule:
        return replace(rule, key=rule.to, to=rule.key, source=f"{rule.source} (inverse)")

    @classmethod
    def rollback(cls, rule: HparamRule) -> str:
        return f"{rule.to} renamed back to {rule.key}"


@hparam_op
class DropHparam(_Recorded):
    """`drop`: `key`, `reason`, optional `value` restored on rollback."""

    name = "drop"
    fields = HparamOp.fields | {"reason", "value"}

    @classmethod
    def parse_fields(cls, rule: HparamRule, r: dict, where: str) -> None:
        rule.reason = require(r, "reason", where)
        if "value" in r:
            rule.value, rule.has_value = r["value"], True

    @classmethod
    def apply(cls, rule: HparamRule, config: dict[str, Any], recorded: dict[str, Any] | None) -> list[str]:
        if rule.key not in config:
            return []
        config.pop(rule.key)
        return [f"{rule.source}: drop {rule.key} ({rule.reason})"]

    @classmethod
    def rollback(cls, rule: HparamRule) -> str:
        if rule.has_value:
            return f"{rule.key}: the recorded value, else {rule.value!r} (rule file)"
        return super().rollback(rule)


@hparam_op
class RestoreHparam(HparamOp):
    """Undo a forward `set`/`drop`: the stamp's record first, else what the rule file states."""

    name = "restore"
    in_files = False
    one_way = "a restore exists only on the way back (the inverse of a set or drop)"

    @classmethod
    def apply(cls, rule: HparamRule, config: dict[str, Any], recorded: dict[str, Any] | None) -> list[str]:
        rec = recorded
        if rec is not None and rec.get("key") == rule.key:
            if rec.get("present"):
                config[rule.key] = rec["value"]
                return [f"{rule.source}: restore {rule.key} = {rec['value']!r} (recorded in the stamp)"]
            if rule.key in config:
                config.pop(rule.key)
                return [f"{rule.source}: remove {rule.key} (absent before {rule.forward}, recorded in the stamp)"]
            return []
        was_set = not rule.reason  # a drop always states its reason
        if was_set and rule.has_previous:
            config[rule.key] = rule.previous
            return [f"{rule.source}: restore {rule.key} = {rule.previous!r} (the rule file's previous value)"]
        if was_set and rule.if_missing:  # the set only ever added the key
            if rule.key in config:
                config.pop(rule.key)
                return [f"{rule.source}: remove {rule.key} (added by {rule.forward})"]
            return []
        if not was_set and rule.has_value:
            config.setdefault(rule.key, rule.value)
            return [f"{rule.source}: restore {rule.key} = {rule.value!r} (the rule file's value)"]
        raise NotInvertibleError(f"{rule.forward}: the value of hyper-parameter {rule.key!r} before this edge is "
                                 "recorded neither in the checkpoint's stamp nor in the rule file ('previous'); "
                                 "rolling back would lose it")

"""Field readers shared by the ops' parsers and appliers: one message per kind of malformed field.

Add a reader here when a second op needs it; an op's own fields stay in the op's module."""

from __future__ import annotations

import re
from typing import Any

from ...errors import RuleError

CASTABLE = frozenset({"float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8",
                      "bool"})


def require(d: dict, key: str, where: str, kind: type | tuple = str) -> Any:
    """The value of a required field, of the stated type.

    Args:
        d: the TOML table (a rule, or the file's top level).
        key: the field's name.
        where: the rule's address for the message (`<file>#<id>`).
        kind: the accepted type(s).

    Returns:
        The field's value.

    Raises:
        RuleError: the field is missing or has another type.
    """
    if key not in d:
        raise RuleError(f"{where}: missing field {key!r}", rule=where)
    if not isinstance(d[key], kind):
        raise RuleError(f"{where}: field {key!r} must be {getattr(kind, '__name__', kind)}", rule=where)
    return d[key]


def check_fields(r: dict, allowed: frozenset[str], where: str) -> None:
    """Refuse a field the op does not take (a typo, or another op's field it would silently ignore).

    Args:
        r: the rule's table.
        allowed: the field names the op takes.
        where: the rule's address for the message.

    Raises:
        RuleError: naming the unknown fields.
    """
    if set(r) - allowed:
        raise RuleError(f"{where}: unknown fields {sorted(set(r) - allowed)}", rule=where)


def str_list(r: dict, key: str) -> list[str] | None:
    """A field that is one string or a list of strings, as a list (rule files may write either form).

    Args:
        r: the rule's table.
        key: the field's name.

    Returns:
        The strings (empty when the field is absent), or None when the field has any other type, so the caller
        can word its own refusal.
    """
    value = r.get(key, [])
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def int_list(r: dict, key: str, where: str) -> list[int]:
    """A required list of integers (a shape, split sizes).

    Args:
        r: the rule's table.
        key: the field's name.
        where: the rule's address for the message.

    Returns:
        The list.

    Raises:
        RuleError: the field is missing, not a list, or holds something other than integers.
    """
    value = require(r, key, where, list)
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise RuleError(f"{where}: {key!r} must be a list of integers", rule=where)
    return value


def dtype_name(value: Any, where: str) -> str:
    """A dtype a rule may name (`CASTABLE`: the casts the tool can do without a loss it cannot report).

    Args:
        value: the field's value.
        where: the rule's address for the message.

    Returns:
        The dtype's name.

    Raises:
        RuleError: any other value.
    """
    if not isinstance(value, str) or value not in CASTABLE:
        raise RuleError(f"{where}: unknown dtype {value!r}", rule=where)
    return value


def compile_pattern(pattern: str, where: str) -> re.Pattern[str]:
    """A rule's regex, compiled.

    Args:
        pattern: the regex text.
        where: the rule's address for the message.

    Returns:
        The compiled pattern.

    Raises:
        RuleError: the regex does not compile.
    """
    if not isinstance(pattern, str):
        raise RuleError(f"{where}: a regex must be a string, not {pattern!r}", rule=where)
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise RuleError(f"{where}: invalid regex {pattern!r}: {exc}", rule=where) from exc


def check_template(pattern: re.Pattern[str], template: str, where: str) -> None:
    """Refuse a target template that names a group `pattern` lacks, or has a bad escape (before any key is mapped).

    Args:
        pattern: the rule's compiled regex.
        template: a target template (`re.sub` syntax).
        where: the rule's address for the message.

    Raises:
        RuleError: the template cannot be expanded by matches of `pattern`.
    """
    try:
        pattern.sub(template, "")
    except (re.error, IndexError) as exc:
        raise RuleError(f"{where}: invalid target template {template!r} for {pattern.pattern!r}: {exc}",
                        rule=where) from None


def tensor_misfit(rule_source: str, op: str, key: str, shape: Any, exc: Exception) -> RuleError:
    """The refusal for a tensor an op's params do not fit (a shape, a dim): the rule is wrong for this file.

    Args:
        rule_source: the rule's address (`<file>#<id>`).
        op: the op's name.
        key: the source key.
        shape: the tensor's shape.
        exc: what torch (or the op) raised.

    Returns:
        The error, for the caller to raise (`raise tensor_misfit(...) from exc`).
    """
    return RuleError(f"{rule_source}: {op} does not fit {key} (shape {list(shape)}): {exc}")


def is_shape(shape: Any) -> bool:
    """Whether `shape` is a list of ints or config-key names (a shape resolved per checkpoint).

    Args:
        shape: a rule field's value.

    Returns:
        True for a well-formed shape (bools are refused though they are ints).
    """
    return isinstance(shape, list) and all(isinstance(d, int | str) and not isinstance(d, bool) for d in shape)


def resolve_shape(shape: list, config: dict[str, Any] | None, where: str) -> list[int]:
    """A rule's shape with config-key names replaced by their (int) values in the checkpoint's config.

    Args:
        shape: ints or config-key names.
        config: the canonical config of the checkpoint being migrated.
        where: the rule's address for the message.

    Returns:
        The shape as ints.

    Raises:
        RuleError: a named key is missing from the config or not an int.
    """
    out = []
    for d in shape:
        if isinstance(d, str):
            v = (config or {}).get(d)
            if not isinstance(v, int) or isinstance(v, bool):
                raise RuleError(f"{where}: shape entry {d!r} needs an integer config value (got {v!r})", rule=where)
            d = v
        out.append(int(d))
    return out

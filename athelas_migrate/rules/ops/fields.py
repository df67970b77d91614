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
        raise RuleError(f"{where}: missing field {key!r}")
    if not isinstance(d[key], kind):
        raise RuleError(f"{where}: field {key!r} must be {getattr(kind, '__name__', kind)}")
    return d[key]


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
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise RuleError(f"{where}: invalid regex {pattern!r}: {exc}") from exc


def is_shape(shape: Any) -> bool:
    """Whether `shape` is a list of ints or config-key names (a shape resolved per checkpoint)."""
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
                raise RuleError(f"{where}: shape entry {d!r} needs an integer config value (got {v!r})")
            d = v
        out.append(int(d))
    return out

"""`--set KEY=VALUE` and `--config FILE.json`: hyper-parameters supplied on the command line.

Pure Python (no torch), shared by the commands that accept overrides.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from .errors import UsageError

__all__ = ["parse_overrides", "parse_value", "read_json_object"]


def parse_value(text: str) -> Any:
    """A `--set` value: parsed as JSON when it is valid JSON (numbers, true/false/null, lists, objects,
    quoted strings), else taken as the literal string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def read_json_object(path: str | os.PathLike[str], option: str) -> dict[str, Any]:
    """The JSON object in the file an option names (`--config`, `--bert-config`); UsageError otherwise."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise UsageError(f"{option} {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{option} {path}: cannot be read ({exc})") from None
    except ValueError as exc:
        raise UsageError(f"{option} {path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{option} {path}: must hold a JSON object, not a {type(data).__name__}")
    return data


def parse_overrides(sets: Iterable[str] = (), config_file: str | os.PathLike[str] | None = None,
                    bert_config_file: str | os.PathLike[str] | None = None,
                    allow_unknown: bool | None = None) -> dict[str, Any]:
    """Overrides from `--config FILE` (a JSON object) and `--set KEY=VALUE` items (which win over the file);
    `--bert-config FILE` (a transformers config.json) becomes `overrides["bert_config"]`.

    `--set` values are parsed for their key's type (`config_keys.parse_typed`); an unknown `--set` key is a
    usage error unless `allow_unknown` (default: the CLI's `--allow-unknown-keys`). A `--config` file may
    hold other keys (an original training config does), but the known ones must have their types.

    Raises UsageError for a malformed item, an unreadable or non-object file, a value of the wrong type, and
    for the same key given twice with different values ("conflicting --set values for KEY").
    """
    from .config_keys import check_type, parse_typed

    if allow_unknown is None:
        allow_unknown = _allow_unknown_from_cli()
    result: dict[str, Any] = {}
    if config_file is not None:
        result.update(read_json_object(config_file, "--config"))
        for key, value in result.items():
            check_type(key, value, f"--config {os.fspath(config_file)}")
    given: dict[str, Any] = {}
    for item in sets or ():
        key, sep, text = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        value = parse_typed(key, text, allow_unknown)
        if key in given and not _same(given[key], value):
            raise UsageError(f"conflicting --set values for {key}")
        given[key] = value
    result.update(given)
    if bert_config_file is not None:
        result["bert_config"] = read_json_object(bert_config_file, "--bert-config")
    return result


def _allow_unknown_from_cli() -> bool:
    """The root command's `--allow-unknown-keys` when called from the CLI (False from the API)."""
    try:
        import click
    except ImportError:  # pragma: no cover
        return False
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().params.get("allow_unknown_keys"))


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b

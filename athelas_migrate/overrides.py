"""`--set KEY=VALUE` and `--config FILE.json`: hyper-parameters supplied on the command line.

Pure Python (no torch), shared by the commands that accept overrides.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable
from typing import Any

from .errors import UsageError

__all__ = ["OPTION_FILE_LIMIT", "parse_overrides", "read_json_object", "read_option_file"]


OPTION_FILE_LIMIT = 16 << 20  # bytes: an option file is a small JSON document, never a device or a pipe


def read_option_file(path: str | os.PathLike[str], option: str, limit: int = OPTION_FILE_LIMIT) -> bytes:
    """The bytes of the regular file an option names, at most `limit` of them.

    Opened non-blocking and checked with fstat, so `/dev/zero` cannot eat memory and a FIFO cannot block the
    tool forever.

    Args:
        path: the file the option names.
        option: the option's name, for the message (`--config`).
        limit: the most bytes accepted.

    Returns:
        The file's bytes.

    Raises:
        UsageError: the file is missing, unreadable, not a regular file, or over `limit` (exit 2).
    """
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UsageError(f"{option} {path}: no such file") from None
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot be read ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{option} {path}: not a regular file")
        if st.st_size > limit:
            raise UsageError(f"{option} {path}: {st.st_size:,} bytes is over the {limit >> 20} MiB limit of "
                             "an option file")
        try:
            data = fh.read(limit + 1)
        except OSError as exc:
            raise UsageError(f"{option} {path}: cannot be read ({exc.strerror or exc})") from None
    if len(data) > limit:  # grew while we read it
        raise UsageError(f"{option} {path}: over the {limit >> 20} MiB limit of an option file")
    return data


def read_json_object(path: str | os.PathLike[str], option: str) -> dict[str, Any]:
    """The JSON object in the file an option names (`--config`, `--bert-config`).

    Args:
        path: the file the option names.
        option: the option's name, for the message.

    Returns:
        The object.

    Raises:
        UsageError: the file cannot be read (see `read_option_file`), is not UTF-8 JSON, or holds no object.
    """
    path = os.fspath(path)
    data = read_option_file(path, option)
    try:
        obj = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UsageError(f"{option} {path}: cannot be read ({exc})") from None
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"{option} {path}: not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(obj, dict):
        raise UsageError(f"{option} {path}: must hold a JSON object, not a {type(obj).__name__}")
    return obj


def parse_overrides(sets: Iterable[str] = (), config_file: str | os.PathLike[str] | None = None,
                    bert_config_file: str | os.PathLike[str] | None = None,
                    allow_unknown: bool | None = None) -> dict[str, Any]:
    """Overrides from `--config FILE` (a JSON object) and `--set KEY=VALUE` items (which win over the file);
    `--bert-config FILE` (a transformers config.json) becomes `overrides["bert_config"]`.

    `--set` values are parsed for their key's type (`config_keys.parse_typed`); an unknown `--set` key is a
    usage error unless `allow_unknown` (default: the CLI's `--allow-unknown-keys`). A `--config` file may
    hold other keys (an original training config does), but the known ones must have their types.

    Args:
        sets: `KEY=VALUE` items.
        config_file: a JSON object of hyper-parameters, or None.
        bert_config_file: a transformers `config.json`, or None.
        allow_unknown: accept `--set` keys the tool does not know; None follows the CLI flag.

    Returns:
        Key -> value.

    Raises:
        UsageError: a malformed item, an unreadable or non-object file, a value of the wrong type, or the same
            key given twice with different values ("conflicting --set values for KEY").
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

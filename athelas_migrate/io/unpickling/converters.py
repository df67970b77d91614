"""Reviewed converters: the harmless classes real Lightning checkpoints pickle, rebuilt as plain values.

Each converter takes the arguments the pickle's REDUCE passes to the class and returns a plain value
(str for paths and devices, set, OrderedDict, ...) after checking them, so neither the class nor anything
it imports runs. To allow a new class: write a converter that accepts only what pickle writes for it
(never an argument that makes it allocate or look anything up) and add it to `CONVERTERS`; the work of a
call is charged to the load's budget by `records.SealedCallable`.
"""

from __future__ import annotations

import ntpath
import posixpath
from collections import OrderedDict
from typing import Any

from ...errors import InputError
from .limits import MAX_TEXT, charge, refuse
from .records import Stub

_ENCODINGS = ("latin1", "latin-1", "utf-8", "utf8")


def _texts(parts: tuple) -> list[str]:
    texts = [p if isinstance(p, str) else str(p) for p in parts if isinstance(p, str | int)]
    if len(texts) != len(parts) or sum(map(len, texts)) > MAX_TEXT:
        raise InputError("malformed checkpoint: a path or device is not a short sequence of strings")
    return texts


def _path(*parts: Any) -> str:
    return posixpath.join(*_texts(parts)) if parts else "."


def _win_path(*parts: Any) -> str:
    return ntpath.join(*_texts(parts)) if parts else "."


def _device(*parts: Any) -> str:
    return ":".join(_texts(parts))


def _size(*args: Any) -> tuple:
    return tuple(args[0]) if args else ()


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in _ENCODINGS:
        raise InputError(f"refused: unexpected text encoding {encoding!r:.40} in pickle")
    return text.encode(encoding)


def _bytearray(*args: Any) -> bytearray:
    """Only what pickle writes (bytes, or text plus encoding): never `bytearray(n)`, which allocates n bytes."""
    if not args:
        return bytearray()
    if isinstance(args[0], bytes | bytearray) and len(args) == 1:
        return bytearray(args[0])
    if isinstance(args[0], str) and len(args) == 2 and args[1] in _ENCODINGS:
        return bytearray(args[0], args[1])
    raise InputError("malformed checkpoint: unexpected bytearray arguments")


def _complex(*args: Any) -> complex:
    if len(args) > 2 or not all(isinstance(a, int | float) for a in args):
        raise InputError("malformed checkpoint: unexpected complex arguments")
    return complex(*args)


def _set(*args: Any) -> set:
    return set(*args)


def _frozenset(*args: Any) -> frozenset:
    return frozenset(*args)


def _ordered_dict(*args: Any) -> OrderedDict:
    if args and not isinstance(args[0], list | tuple | dict):
        raise InputError("malformed checkpoint: unexpected OrderedDict arguments")
    return OrderedDict(*args[:1])


def _reconstructor(cls: Any, base: Any, state: Any = None) -> Any:
    """Protocol 0/1 objects: `copyreg._reconstructor(cls, base, state)`; state is a dict base's contents."""
    if isinstance(cls, type) and issubclass(cls, Stub):
        obj = cls()
        if isinstance(state, dict):
            charge(len(state))
            obj.items.update(state)
        return obj
    raise refuse(f"copyreg._reconstructor({getattr(cls, 'classpath', None) or repr(cls)[:60]})")


_PATHS = {f"pathlib{m}.{c}" for m in ("", "._local") for c in ("Path", "PosixPath", "PurePosixPath")}
_WIN_PATHS = {f"pathlib{m}.{c}" for m in ("", "._local") for c in ("WindowsPath", "PureWindowsPath")}

#: class path -> converter, for `allowlist`.
CONVERTERS: dict[str, Any] = {
    "collections.OrderedDict": _ordered_dict,
    "builtins.set": _set,
    "builtins.frozenset": _frozenset,
    "builtins.complex": _complex,
    "builtins.bytearray": _bytearray,
    "_codecs.encode": _codecs_encode,
    "copyreg._reconstructor": _reconstructor,
    "torch.Size": _size,
    "torch.device": _device,
    **{p: _path for p in _PATHS},
    **{p: _win_path for p in _WIN_PATHS},
}

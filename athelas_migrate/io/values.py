"""Validation of a checkpoint's untrusted non-tensor values, once, right after loading.

The unpickler keeps shared references shared (linear time), but everything downstream that renders,
hashes or converts values to JSON expands them: `L=[0]; 30 x L=[L,L]` is 60 bytes of pickle and 2^31
values once expanded. So before any of that runs, one memoized walk measures what an expansion would
cost (values, string characters, nesting depth) and refuses past documented limits; then a schema pass
checks the top-level structure the pipeline relies on. Every refusal is an InputError (exit 3) that
names the path inside the checkpoint, e.g. `hyper_parameters.config.x[3]`. A new top-level key to check
is one entry of `_TOP_LEVEL`; a typed hyper-parameter is declared in config_keys, not here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import InputError
from .safe_unpickle import Stub
from .tensor_ref import TensorRef

__all__ = ["MAX_DEPTH", "MAX_INT_DIGITS", "MAX_STRING_CHARS", "MAX_VALUES", "check_bounded", "check_hparam_types",
           "hparam_kinds", "validate_checkpoint", "value_path"]

MAX_VALUES = 1_000_000  # values (container, key or scalar) after expanding shared references
MAX_STRING_CHARS = 64 << 20  # characters of str/bytes after expanding shared references
MAX_DEPTH = 100  # nesting levels
MAX_INT_DIGITS = 4300  # decimal digits of one int: Python's own int<->str limit (JSON, repr, torch.load)
_INT_LIMIT = 10**MAX_INT_DIGITS

_CONTAINERS = (dict, list, tuple, set, frozenset, Stub)


def value_path(parent: str, key: Any) -> str:
    """The printed path of a child value, for messages.

    Args:
        parent: the parent's path ("" at the top).
        key: the child's key or index.

    Returns:
        `parent.key` for identifier-like string keys, else `parent[key!r]`; list indexes as `parent[3]`.
    """
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{parent}[{key}]"
    if isinstance(key, str) and (key.isidentifier() or not parent):
        return f"{parent}.{key}" if parent else key
    return f"{parent}[{repr(key)[:60]}]"


def _children(obj: Any, path: str) -> list[tuple[Any, str]]:
    if isinstance(obj, dict):
        out = []
        for k, v in obj.items():
            out.append((k, f"{path} (a key)"))
            out.append((v, value_path(path, k)))
        return out
    if isinstance(obj, list | tuple):
        return [(v, f"{path}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, set | frozenset):
        return [(v, f"{path} (a set item)") for v in obj]
    # a Stub: what the pickle gave it
    return [(obj.args, f"{path}.<args>"), (obj.state, f"{path}.__dict__"), (obj.items, f"{path}.<items>"),
            (obj.list, f"{path}.<list>")]


def _leaf(obj: Any, path: str, where: str) -> tuple[int, int]:
    """(values, characters) of a scalar; refuses an int too long to print or parse back."""
    if isinstance(obj, str | bytes | bytearray):
        return 1, len(obj)
    if isinstance(obj, int) and not isinstance(obj, bool) and obj.bit_length() > 14000 and abs(obj) >= _INT_LIMIT:
        raise InputError(f"{where}: {path}: an integer of more than {MAX_INT_DIGITS} digits is refused (it could "
                         "not be printed, converted to JSON, or read back by torch.load)")
    return 1, 0


def check_bounded(root: Any, path: str = "", where: str = "checkpoint") -> tuple[int, int]:
    """Refuse `root` if expanding its shared references would exceed MAX_VALUES values, MAX_STRING_CHARS
    characters or MAX_DEPTH levels, or if it refers to itself. Linear in the number of distinct objects.

    Args:
        root: the value to measure (a container graph from the unpickler, shared references kept).
        path: its printed path.
        where: names the file in messages.

    Returns:
        (values, characters) of the expansion.

    Raises:
        InputError: over a bound, or self-referencing; the message names the smallest subtree that is over.
    """
    memo: dict[int, tuple[int, int, int]] = {}  # id -> (values, chars, height) of a distinct container
    active: set[int] = set()
    # frames: [obj, path, depth, children, next child index, values, chars, height]
    stack: list[list[Any]] = []

    def enter(obj: Any, p: str, depth: int) -> tuple[int, int, int] | None:
        """The cost of `obj` if known now (a scalar or a container already measured), else push it."""
        if not isinstance(obj, _CONTAINERS):
            n, c = _leaf(obj, p, where)
            return n, c, 0
        known = memo.get(id(obj))
        if known is not None:
            if depth + known[2] > MAX_DEPTH:
                raise InputError(f"{where}: {p}: nested more than {MAX_DEPTH} levels deep")
            return known
        if id(obj) in active:
            raise InputError(f"{where}: {p or 'the checkpoint'}: a value that contains itself")
        if depth >= MAX_DEPTH:
            raise InputError(f"{where}: {p or 'the checkpoint'}: nested more than {MAX_DEPTH} levels deep")
        active.add(id(obj))
        stack.append([obj, p, depth, _children(obj, p), 0, 1, 0, 0])
        return None

    result = enter(root, path, 0)
    while stack:
        frame = stack[-1]
        obj, p, depth, children, i = frame[:5]
        if i < len(children):
            frame[4] = i + 1
            child, cp = children[i]
            got = enter(child, cp, depth + 1)
            if got is not None:
                _add(frame, got)
            continue
        stack.pop()
        active.discard(id(obj))
        cost = (frame[5], frame[6], frame[7])
        name = p or "the checkpoint"
        if cost[0] > MAX_VALUES:
            raise InputError(f"{where}: {name}: expands to more than {MAX_VALUES:,} values (shared references "
                             "repeated); refused")
        if cost[1] > MAX_STRING_CHARS:
            raise InputError(f"{where}: {name}: expands to more than {MAX_STRING_CHARS >> 20} MiB of strings "
                             "(shared references repeated); refused")
        memo[id(obj)] = cost
        if stack:
            _add(stack[-1], cost)
        else:
            result = cost
    assert result is not None
    return result[0], result[1]


def _add(frame: list[Any], cost: tuple[int, int, int]) -> None:
    frame[5] += cost[0]
    frame[6] += cost[1]
    frame[7] = max(frame[7], cost[2] + 1)


# ---- the schema of a checkpoint's top level ------------------------------------------------------------------

def _refuse(where: str, path: str, what: str, value: Any) -> InputError:
    return InputError(f"{where}: {path}: {what}, not {_kind(value)}")


def _kind(value: Any) -> str:
    if isinstance(value, Stub):
        return f"a pickled {value.classpath} object"
    if isinstance(value, TensorRef):
        return "a tensor"
    text, name = repr(value), type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name} ({text[:40]}{'...' if len(text) > 40 else ''})"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_hparams(value: Any, path: str, where: str) -> None:
    """Hyper-parameters: mappings with string keys all the way down, plain values and tensors, no objects."""
    stack, seen = [(value, path)], set()
    while stack:
        cur, p = stack.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, Stub):
            raise InputError(f"{where}: {p}: {_kind(cur)} is not a hyper-parameter value (only numbers, strings, "
                             "lists, mappings and tensors are)")
        if isinstance(cur, dict):
            bad = next((k for k in cur if not isinstance(k, str)), None)
            if bad is not None:
                raise InputError(f"{where}: {p}: hyper-parameter names must be strings, not {_kind(bad)}")
            stack.extend((v, value_path(p, k)) for k, v in cur.items())
        elif isinstance(cur, list | tuple | set | frozenset):
            stack.extend((v, f"{p}[{i}]") for i, v in enumerate(cur))


def _check_optimizer_states(value: Any, where: str) -> None:
    if not isinstance(value, list | tuple):
        raise _refuse(where, "optimizer_states", "must be a list of optimizer state dicts", value)
    for n, st in enumerate(value):
        p = f"optimizer_states[{n}]"
        if not isinstance(st, dict):
            raise _refuse(where, p, "must be an optimizer state dict", st)
        state = st.get("state", {})
        if not isinstance(state, dict):
            raise _refuse(where, f"{p}.state", "must be a dict of parameter id -> state", state)
        for pid, entry in state.items():
            if not _is_int(pid):
                raise _refuse(where, f"{p}.state", "keys must be parameter ids (ints)", pid)
            if not isinstance(entry, dict):
                raise _refuse(where, f"{p}.state[{pid}]", "must be a dict", entry)
        groups = st.get("param_groups")
        if not isinstance(groups, list | tuple):
            raise _refuse(where, f"{p}.param_groups", "must be a list of parameter groups", groups)
        for g, group in enumerate(groups):
            gp = f"{p}.param_groups[{g}]"
            if not isinstance(group, dict):
                raise _refuse(where, gp, "must be a dict", group)
            params = group.get("params")
            if not isinstance(params, list | tuple) or not all(_is_int(i) for i in params):
                raise _refuse(where, f"{gp}.params", "must be a list of parameter ids (ints)", params)


def _check_stamp(value: Any, where: str, key: str) -> None:
    if not isinstance(value, dict):
        raise _refuse(where, key, "the layout stamp must be a dict", value)
    for field in ("family", "layout"):
        if field in value and not isinstance(value[field], str):
            raise _refuse(where, f"{key}.{field}", "must be a string", value[field])
    if "provenance" in value and not isinstance(value["provenance"], dict):
        raise _refuse(where, f"{key}.provenance", "must be a dict", value["provenance"])
    _check_hparams(value, key, where)


def _check_counter(value: Any, where: str, key: str) -> None:
    if not _is_int(value) or value < 0:
        raise _refuse(where, key, "must be a non-negative int", value)


def _check_dict(value: Any, where: str, key: str) -> None:
    if not isinstance(value, dict):
        raise _refuse(where, key, "must be a dict", value)


def _check_list_of_dicts(value: Any, where: str, key: str) -> None:
    if not isinstance(value, list | tuple):
        raise _refuse(where, key, "must be a list of dicts", value)
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise _refuse(where, f"{key}[{i}]", "must be a dict", item)


def _check_str(value: Any, where: str, key: str) -> None:
    if not isinstance(value, str):
        raise _refuse(where, key, "must be a string", value)


def _check_optional_str(value: Any, where: str, key: str) -> None:
    if value is not None:
        _check_str(value, where, key)


# ---- hyper-parameters the families read, typed like their legacy defaults ------------------------------------

def _ints(v: Any) -> bool:
    return isinstance(v, list | tuple) and all(_is_int(x) for x in v)


_KINDS: dict[str, tuple[str, Any]] = {
    "boolean": ("a boolean", lambda v: isinstance(v, int)),
    "int": ("an int", lambda v: isinstance(v, int)),
    "number": ("a number", lambda v: isinstance(v, int | float)),
    "string": ("a string", lambda v: isinstance(v, str)),
    "ints": ("a list of ints", _ints),
    "numbers": ("a list of numbers", lambda v: hasattr(v, "shape") or (
        isinstance(v, list | tuple) and all(isinstance(x, int | float) and not isinstance(x, bool) for x in v))),
    "strings": ("a list of strings", lambda v: isinstance(v, list | tuple) and all(isinstance(x, str) for x in v)),
    "mapping": ("a mapping", lambda v: isinstance(v, dict)),
    "list": ("a list", lambda v: isinstance(v, list | tuple)),
}


def hparam_kinds() -> dict[str, str]:
    """The typed key table that `--set` uses too (config_keys).

    Returns:
        Hyper-parameter name -> kind (a key of `_KINDS`).
    """
    from ..config_keys import file_kinds

    return file_kinds()


def check_hparam_types(hp: Mapping[str, Any], path: str, where: str, error: type[Exception] = InputError) -> None:
    """Refuse a known hyper-parameter whose value has the wrong type (None means "not given" and passes), so
    family code never trips on it. Also checks a nested `config` mapping.

    Args:
        hp: the hyper-parameters.
        path: their printed path.
        where: names the file in messages.
        error: the error class to raise (InputError for a file; callers checking user input pass their own).

    Raises:
        InputError: (or `error`) a known key with a value of the wrong type.
    """
    kinds = hparam_kinds()
    for key, value in hp.items():
        kind = kinds.get(key)
        if kind is None or value is None:
            continue
        what, test = _KINDS[kind]
        if not test(value):
            raise error(f"{where}: {value_path(path, key)}: must be {what}, not {_kind(value)}")
        if key == "config":
            check_hparam_types(value, value_path(path, key), where, error)


# What each known top-level key of a Lightning checkpoint must hold (absent is fine). Data, not code paths.
_TOP_LEVEL = {
    "epoch": _check_counter,
    "global_step": _check_counter,
    "pytorch-lightning_version": _check_str,
    "loops": _check_dict,
    "callbacks": _check_dict,
    "optimizer_states": lambda v, where, key: _check_optimizer_states(v, where),
    "lr_schedulers": _check_list_of_dicts,
    "hparams_name": _check_optional_str,
    "hyper_parameters": lambda v, where, key: (_check_dict(v, where, key), _check_hparams(v, key, where),
                                               check_hparam_types(v, key, where)),
    "athelas_migrate": _check_stamp,
}


def validate_checkpoint(raw: Any) -> None:
    """Bounded expansion of every non-tensor value, then the schema of the top level; InputError (exit 3) naming
    the path of the first offending value.

    Args:
        raw: the io.reader.RawCheckpoint just read.
    """
    where = raw.path
    if raw.kind == "lightning":
        check_bounded(raw.top, "", where)
        for key, check in _TOP_LEVEL.items():
            if key in raw.top:
                check(raw.top[key], where, key)
        return
    # other kinds: only the hyper-parameters and the stamp are read as values (pickled-module `_hparams`,
    # safetensors metadata)
    values = {"hyper_parameters": raw.hyper_parameters, "athelas_migrate": raw.stamp}
    check_bounded(values, "", where)
    if isinstance(raw.hyper_parameters, Mapping):
        _check_hparams(raw.hyper_parameters, "hyper_parameters", where)
        check_hparam_types(raw.hyper_parameters, "hyper_parameters", where)
    if raw.stamp is not None:
        _check_stamp(raw.stamp, where, "athelas_migrate")

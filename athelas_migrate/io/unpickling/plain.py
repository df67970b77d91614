"""The loaded records, converted into plain Python values and TensorRefs, each checked where it sits.

The pickle VM leaves a graph of containers, records and stubs; `to_plain` walks it once, memoized by
identity (shared references stay shared, linear time on DAGs), refusing reference cycles, nesting deeper
than MAX_DEPTH and anything not allowlisted, with the key path where it sits. Tensor views are checked
against their storages here, once the whole pickle is known. A new stub kind (see `allowlist`) needs a
branch in `_Converter._stub`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from ...errors import InputError, UnsafeCheckpointError
from ..tensor_ref import StorageRef, TensorRef
from .limits import MAX_BROADCAST, MAX_DEPTH
from .numpy_values import numpy_value
from .records import PARAMETER_TYPE, TENSOR_TYPE, Base, DtypeName, SealedCallable, StorageRec, Stub, TensorRec


def to_plain(obj: Any, path: str) -> Any:
    """Replace the records of a loaded pickle by plain values.

    Whole-module stubs (`class_paths`) are accepted only when the root itself is one: a pickled legacy model.

    Args:
        obj: the root the pickle VM returned.
        path: the name of the root in messages (`<root>`).

    Returns:
        Plain values (dict, OrderedDict, list, tuple, set, scalars), TensorRefs, StorageRefs and module stubs.

    Raises:
        UnsafeCheckpointError: a value that is not allowlisted, naming its key path.
        InputError: a reference cycle, nesting deeper than MAX_DEPTH, or a tensor view outside its storage.
    """
    root_is_module = isinstance(obj, Stub) and obj.kind == "module"
    return _Converter(root_is_module).convert(obj, path, 0)


# Key paths are built lazily, as (parent, step) chains, and rendered only for a message.
class _Raw(str):
    """A path step rendered as is (`.__dict__`), not as `[key]`."""


def _render(path: Any) -> str:
    steps = []
    while isinstance(path, tuple):
        path, step = path
        steps.append(step)
    out = [str(path)]
    for step in reversed(steps):
        if isinstance(step, _Raw):
            out.append(step)
        else:
            r = repr(step)
            out.append(f"[{r if len(r) <= 60 else r[:57] + '...'}]")
    text = "".join(out)
    return text if len(text) <= 400 else text[:200] + " ... " + text[-195:]


_DICT_STEP, _SET_STEP = _Raw(".__dict__"), _Raw("{}")
_ATOMIC = frozenset({str, int, float, bool, bytes, complex, bytearray, type(None), TensorRef, StorageRef})


class _Converter:
    """One conversion: memoized by identity (shared stays shared, linear time), cycles refused."""

    def __init__(self, allow_modules: bool) -> None:
        self.allow_modules = allow_modules
        self.done: dict[int, Any] = {}
        self.active: set[int] = set()
        self.keep: list[Any] = []  # keeps converted inputs alive so their ids stay unique

    def convert(self, obj: Any, path: Any, depth: int) -> Any:
        t = type(obj)
        if t in _ATOMIC:
            return obj
        if t is DtypeName:
            return str(obj)
        if t is StorageRec:
            return obj.ref
        oid = id(obj)
        done = self.done.get(oid, self)
        if done is not self:
            return done
        if oid in self.active:
            raise InputError(f"malformed checkpoint: a reference cycle at {_render(path)}")
        if depth > MAX_DEPTH:
            raise InputError(f"not a checkpoint: the pickle nests deeper than {MAX_DEPTH} levels (at "
                             f"{_render(path)[:80]}...)")
        self.active.add(oid)
        try:
            out = self._convert(t, obj, path, depth + 1)
        finally:
            self.active.discard(oid)
        self.done[oid] = out
        self.keep.append(obj)
        return out

    def _convert(self, t: type, obj: Any, path: Any, depth: int) -> Any:
        convert = self.convert
        if t is TensorRec:
            return _tensor(obj, path)
        if t is dict or t is OrderedDict:
            out = OrderedDict() if t is OrderedDict else {}
            for k, v in (OrderedDict.items(obj) if t is OrderedDict else dict.items(obj)):
                out[convert(k, path, depth)] = convert(v, (path, k), depth)
            return out
        if t is list or t is tuple:
            items = [convert(v, (path, i), depth) for i, v in enumerate(obj)]
            return items if t is list else tuple(items)
        if t is set or t is frozenset:  # frozenset becomes set: torch's weights_only loader knows only set
            return {convert(v, (path, _SET_STEP), depth) for v in obj}
        if isinstance(obj, Stub):
            return self._stub(obj, path, depth)
        if isinstance(obj, type) and issubclass(obj, Stub):
            raise UnsafeCheckpointError(obj.classpath, _render(path))
        if t is SealedCallable or t is Base:
            raise UnsafeCheckpointError(obj.classpath, _render(path))
        if obj is TENSOR_TYPE or obj is PARAMETER_TYPE:
            raise UnsafeCheckpointError("torch.Tensor (the class itself)", _render(path))
        raise UnsafeCheckpointError(f"{t.__module__}.{t.__qualname__}", _render(path))

    def _stub(self, obj: Stub, path: Any, depth: int) -> Any:
        if obj.kind == "attrdict":
            merged = dict(obj.items)
            if isinstance(obj.state, dict):
                merged.update(obj.state)
            return self.convert(merged, path, depth)
        if obj.kind == "namespace":
            state = obj.state if isinstance(obj.state, dict) else {}
            return self.convert(dict(state), path, depth)
        if obj.kind == "numpy":
            return numpy_value(obj, _render(path))
        if obj.kind == "module":
            if not self.allow_modules:
                raise UnsafeCheckpointError(obj.classpath, _render(path))
            obj.state = self.convert(obj.state, (path, _DICT_STEP), depth)
            return obj
        raise UnsafeCheckpointError(obj.classpath, _render(path))  # pragma: no cover - every kind is handled


def _tensor(rec: TensorRec, path: Any) -> TensorRef:
    """A TensorRef, once its view is known to lie inside its storage."""
    shape, stride, offset, ref = rec.shape, rec.stride, rec.offset, rec.storage
    if offset < 0 or (shape and (min(shape) < 0 or min(stride) < 0)):
        raise InputError(f"corrupted checkpoint: the tensor at {_render(path)} has a negative size, stride or offset")
    numel = 1
    for s in shape:
        numel *= s
    if numel:
        last = offset + sum((n - 1) * s for n, s in zip(shape, stride))
        if last >= ref.numel:
            raise InputError(f"corrupted checkpoint: the tensor at {_render(path)} lies outside its storage")
        if numel > ref.numel and numel > MAX_BROADCAST:
            raise InputError(f"corrupted checkpoint: the tensor at {_render(path)} repeats its storage "
                             "implausibly often")
    return TensorRef(ref, offset, shape, stride, rec.requires_grad, rec.is_parameter)

"""Writes an object graph holding TensorRefs as torch's `data.pkl`, without importing torch.

The pure-Python pickler lets us emit torch's globals (`torch._utils._rebuild_tensor_v2`,
`torch.FloatStorage`) by name, so a rename-only migration never imports torch.
Output is deterministic: storages are numbered in order of first appearance.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from typing import Any

from .tensor_ref import DTYPES, StorageRef, TensorRef


class GlobalRef:
    """A module-level name written as a GLOBAL opcode."""

    _cache: dict[tuple[str, str], GlobalRef] = {}

    def __new__(cls, module: str, name: str) -> GlobalRef:
        key = (module, name)
        if key not in cls._cache:
            obj = object.__new__(cls)
            obj.module, obj.name = module, name
            cls._cache[key] = obj
        return cls._cache[key]

    def __call__(self, *args: Any) -> Any:  # pickle requires reduce functions to be callable
        raise TypeError(f"{self.module}.{self.name} is a name to write, not to call")


_REBUILD_TENSOR = GlobalRef("torch._utils", "_rebuild_tensor_v2")
_REBUILD_PARAMETER = GlobalRef("torch._utils", "_rebuild_parameter")
_ORDERED_DICT = GlobalRef("collections", "OrderedDict")


class _TorchPickler(pickle._Pickler):  # type: ignore[misc, name-defined]
    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, fh: io.BytesIO):
        super().__init__(fh, protocol=2)
        self.storages: list[StorageRef] = []
        self._keys: dict[int, str] = {}

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, StorageRef):
            key = self._keys.get(id(obj))
            if key is None:
                key = self._keys[id(obj)] = str(len(self.storages))
                self.storages.append(obj)
            return ("storage", GlobalRef("torch", DTYPES[obj.dtype][1]), key, "cpu", obj.numel)
        return None

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, TensorRef):
            args = (obj.storage, obj.offset, tuple(obj.shape), tuple(obj.stride), obj.requires_grad,
                    _EmptyOrderedDict())
            if obj.is_parameter:
                plain = TensorRef(obj.storage, obj.offset, obj.shape, obj.stride, False)
                return (_REBUILD_PARAMETER, (plain, obj.requires_grad, _EmptyOrderedDict()))
            return (_REBUILD_TENSOR, args)
        if isinstance(obj, _EmptyOrderedDict):
            return (_ORDERED_DICT, ())
        if isinstance(obj, OrderedDict) and type(obj) is OrderedDict:
            return (_ORDERED_DICT, (), None, None, iter(obj.items()))
        return NotImplemented

    def save_globalref(self, obj: GlobalRef) -> None:
        self.write(pickle.GLOBAL + obj.module.encode() + b"\n" + obj.name.encode() + b"\n")
        self.memoize(obj)

    dispatch[GlobalRef] = save_globalref


class _EmptyOrderedDict:
    """Stands for the empty `backward_hooks` OrderedDict torch writes beside each tensor."""


def dumps(obj: Any) -> tuple[bytes, list[StorageRef]]:
    """Pickle `obj` the way torch.save does; returns the bytes and the storages in key order."""
    buf = io.BytesIO()
    pickler = _TorchPickler(buf)
    pickler.dump(obj)
    return buf.getvalue(), pickler.storages

"""Writes an object graph holding TensorRefs as torch's `data.pkl`, without importing torch.

torch's pickles name its globals (`torch._utils._rebuild_tensor_v2`, `torch.FloatStorage`).
The C pickler writes a global only if it can import the module and find the very object
there, so when torch is not loaded the names are served, for the duration of one dump, by
stand-in modules (removed afterwards, and never installed over a real module); when torch
is loaded its real objects are used. Either way the bytes are the same, and a rename-only
migration never imports torch. Output is deterministic: storages are numbered in order of
first appearance.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import sys
import threading
import types
from collections import OrderedDict
from collections.abc import Iterator
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


    def __reduce_ex__(self, protocol: int) -> str:  # written as GLOBAL module\nname
        return self.name


_REBUILD_TENSOR = GlobalRef("torch._utils", "_rebuild_tensor_v2")
_REBUILD_PARAMETER = GlobalRef("torch._utils", "_rebuild_parameter")
_STORAGES = {dtype: GlobalRef("torch", info[1]) for dtype, info in DTYPES.items()}
for _ref in GlobalRef._cache.values():
    _ref.__module__ = _ref.module  # where the C pickler looks the name up
_LOCK = threading.Lock()


@contextlib.contextmanager
def _torch_names() -> Iterator[dict[GlobalRef, Any]]:
    """Map each GlobalRef to what the pickler should write: the real torch object when torch is loaded,
    else the GlobalRef itself, served by a stand-in module present only during the dump."""
    with _LOCK:
        added: list[str] = []
        emit: dict[GlobalRef, Any] = {}
        for ref in GlobalRef._cache.values():
            if ref.module in sys.modules and ref.module not in added:
                emit[ref] = getattr(sys.modules[ref.module], ref.name)
                continue
            if ref.module not in sys.modules:
                sys.modules[ref.module] = types.ModuleType(ref.module)
                added.append(ref.module)
            setattr(sys.modules[ref.module], ref.name, ref)
            emit[ref] = ref
        try:
            yield emit
        finally:
            for name in added:
                sys.modules.pop(name, None)


class _TorchPickler(pickle.Pickler):
    def __init__(self, fh: io.BytesIO, emit: dict[GlobalRef, Any]):
        super().__init__(fh, protocol=2)
        self.storages: list[StorageRef] = []
        self._keys: dict[int, str] = {}
        self._emit = emit

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, StorageRef):
            key = self._keys.get(id(obj))
            if key is None:
                key = self._keys[id(obj)] = str(len(self.storages))
                self.storages.append(obj)
            return ("storage", self._emit[_STORAGES[obj.dtype]], key, "cpu", obj.numel)
        return None

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, TensorRef):
            if obj.is_parameter:
                plain = TensorRef(obj.storage, obj.offset, obj.shape, obj.stride, False)
                return (self._emit[_REBUILD_PARAMETER], (plain, obj.requires_grad, OrderedDict()))
            return (self._emit[_REBUILD_TENSOR], (obj.storage, obj.offset, tuple(obj.shape), tuple(obj.stride),
                                                  obj.requires_grad, OrderedDict()))
        return NotImplemented


def dumps(obj: Any) -> tuple[bytes, list[StorageRef]]:
    """Pickle `obj` the way torch.save does; returns the bytes and the storages in key order."""
    buf = io.BytesIO()
    with _torch_names() as emit:
        pickler = _TorchPickler(buf, emit)
        pickler.dump(obj)
    return buf.getvalue(), pickler.storages

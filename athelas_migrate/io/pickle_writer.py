"""Writes an object graph holding TensorRefs as torch's `data.pkl`, without importing torch.

torch's pickles name its globals (`torch._utils._rebuild_tensor_v2`, `torch.FloatStorage`).
The C pickler writes a global only if it can import the module and find the very object
there. Stand-in `torch` modules in `sys.modules` would be seen by every other thread (an
`import torch` elsewhere would get the stand-in), so instead each torch name is written under
a placeholder name of this module (`_GLOBAL_<i>`, importable, never `torch`), and the
placeholder's GLOBAL opcode is then replaced by torch's. Protocol 2 GLOBAL opcodes are
newline-terminated text with no length or frame around them, so the swap is exact; it is done
only when each placeholder occurs exactly once (as its opcode); a pickle whose data happens to
contain a placeholder's bytes is written by the pure-Python pickler instead, which writes the
torch names directly (same bytes, slower). Output is deterministic: storages are numbered in
order of first appearance.

Before pickling, the graph is checked for values `torch.load(weights_only=True)` cannot read
back (see `check_writable`), so the tool never publishes a checkpoint it cannot load.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from typing import Any

from ..errors import InputError
from .tensor_ref import DTYPES, StorageRef, TensorRef

# torch's weights_only unpickler reads ints in pickle's LONG1 form only (at most 255 bytes, two's complement):
# |x| < 2**2039, which every int of at most 613 decimal digits satisfies.
INT_LIMIT = 2**2039
INT_DIGITS = 613


class GlobalRef:
    """A module-level torch name, written as a GLOBAL opcode (via its placeholder in this module)."""

    _cache: dict[tuple[str, str], GlobalRef] = {}

    def __new__(cls, module: str, name: str) -> GlobalRef:
        key = (module, name)
        if key not in cls._cache:
            obj = object.__new__(cls)
            obj.module, obj.name = module, name
            obj.placeholder = f"_GLOBAL_{len(cls._cache)}"
            obj.__module__ = __name__  # where the C pickler looks the placeholder up
            globals()[obj.placeholder] = obj
            cls._cache[key] = obj
        return cls._cache[key]

    def __call__(self, *args: Any) -> Any:  # pickle requires reduce functions to be callable
        raise TypeError(f"{self.module}.{self.name} is a name to write, not to call")

    def __reduce_ex__(self, protocol: int) -> str:  # written as GLOBAL <this module>\n<placeholder>
        return self.placeholder

    def opcode(self, placeholder: bool) -> bytes:
        """The GLOBAL opcode naming this reference.

        Args:
            placeholder: name the unique placeholder in this module (swapped for the real name afterwards).

        Returns:
            The opcode bytes.
        """
        module, name = (__name__, self.placeholder) if placeholder else (self.module, self.name)
        return pickle.GLOBAL + f"{module}\n{name}\n".encode()


_REBUILD_TENSOR = GlobalRef("torch._utils", "_rebuild_tensor_v2")
_REBUILD_PARAMETER = GlobalRef("torch._utils", "_rebuild_parameter")
_STORAGES = {dtype: GlobalRef("torch", info[1]) for dtype, info in DTYPES.items()}


class _Reductions:
    """torch's reductions of TensorRef and StorageRef, shared by the C and the pure-Python pickler."""

    def _setup(self) -> None:
        self.storages: list[StorageRef] = []
        self.globals_written: list[GlobalRef] = []
        self._keys: dict[int, str] = {}

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, StorageRef):
            key = self._keys.get(id(obj))
            if key is None:
                key = self._keys[id(obj)] = str(len(self.storages))
                self.storages.append(obj)
            return ("storage", _STORAGES[obj.dtype], key, "cpu", obj.numel)
        return None

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, TensorRef):
            if obj.is_parameter:
                plain = TensorRef(obj.storage, obj.offset, obj.shape, obj.stride, False)
                return (_REBUILD_PARAMETER, (plain, obj.requires_grad, OrderedDict()))
            return (_REBUILD_TENSOR, (obj.storage, obj.offset, tuple(obj.shape), tuple(obj.stride),
                                      obj.requires_grad, OrderedDict()))
        if isinstance(obj, GlobalRef):  # called once per global: later uses are memo references
            self.globals_written.append(obj)
        return NotImplemented


class _TorchPickler(_Reductions, pickle.Pickler):
    def __init__(self, fh: io.BytesIO):
        super().__init__(fh, protocol=2)
        self._setup()


class _PyTorchPickler(_Reductions, pickle._Pickler):
    """The pure-Python pickler, writing torch's names directly: the fallback when a placeholder's bytes
    also occur in the data."""

    def __init__(self, fh: io.BytesIO):
        super().__init__(fh, protocol=2)
        self._setup()

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if not isinstance(obj, GlobalRef):
            return super().save_global(obj, name)
        self.write(obj.opcode(placeholder=False))
        self.memoize(obj)


def dumps(obj: Any) -> tuple[bytes, list[StorageRef]]:
    """Pickle `obj` the way torch.save does.

    Args:
        obj: plain values and TensorRefs (checked by `check_writable` first).

    Returns:
        (the pickle bytes, the storages in key order).
    """
    check_writable(obj)
    buf = io.BytesIO()
    pickler = _TorchPickler(buf)
    pickler.dump(obj)
    data = buf.getvalue()
    swaps = [(ref.opcode(placeholder=True), ref.opcode(placeholder=False)) for ref in pickler.globals_written]
    if data.count(f"{__name__}\n".encode()) == len(swaps) and all(data.count(p) == 1 for p, _ in swaps):
        for placeholder, real in swaps:
            data = data.replace(placeholder, real)
        return data, pickler.storages
    buf = io.BytesIO()
    pickler = _PyTorchPickler(buf)
    pickler.dump(obj)
    return buf.getvalue(), pickler.storages


def check_writable(obj: Any) -> None:
    """Refuse (InputError naming the key path) what `torch.load(weights_only=True)` could not read back:
    ints beyond pickle's LONG1 form, tensor views whose size, stride or offset overflow int64 or leave their
    storage (also for tensors with no elements). Paths are built only for the value refused.

    Args:
        obj: the object graph to be written.

    Raises:
        InputError: a value that could not be read back, naming its key path.
    """
    seen: set[int] = set()
    stack: list[tuple[Any, Any]] = [(obj, None)]  # (value, (parent link, step)): a path as a linked list
    while stack:
        value, link = stack.pop()
        kind = type(value)
        if kind is int:
            if not -INT_LIMIT < value < INT_LIMIT:
                raise InputError(f"{_path(link)}: an integer of {_digits(value)} digits cannot be written "
                                 f"(torch.load reads at most {INT_DIGITS} digits)")
            continue
        if kind in _LEAVES or value is None or id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, TensorRef):
            problem = value.geometry_problem()
            if problem:
                raise InputError(f"{_path(link)}: tensor cannot be written so that torch.load reads it back: "
                                 f"{problem}")
        elif isinstance(value, dict):
            for key, item in value.items():
                stack.append((key, (link, " (a key)")))
                stack.append((item, (link, key)))
        elif isinstance(value, (list, tuple)):
            stack.extend((item, (link, i)) for i, item in enumerate(value))
        elif isinstance(value, (set, frozenset)):
            stack.extend((item, (link, " (a set element)")) for item in value)


_LEAVES = (str, float, bool, bytes, complex, StorageRef)


def _path(link: Any) -> str:
    steps = []
    while link is not None:
        link, step = link
        steps.append(step if isinstance(step, str) and step.startswith(" (") else f"[{step!r}]")
    return ("<root>" + "".join(reversed(steps)))[:300]


def _digits(value: int) -> int:
    """Decimal digits of `value`, without str() (refused beyond 4300 digits by default)."""
    digits = int((abs(value).bit_length() - 1) * 0.30102999566398) + 1
    return digits + (abs(value) >= 10**digits)

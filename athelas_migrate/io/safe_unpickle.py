"""A pickle reader that never calls foreign code.

`find_class` never returns a callable from outside this module: torch's tensor
rebuild functions become constructors of lazy TensorRefs, a short reviewed
allowlist of harmless classes becomes converters to plain values, whole legacy
modules become inert `Stub` records, and every other global becomes a
`RefusedStub` that the caller reports with the key path where it sat. So a
malicious pickle can at most build inert records; it cannot run anything.
"""

from __future__ import annotations

import io
import ntpath
import pickle
import posixpath
import re
from collections import OrderedDict
from typing import Any

from ..errors import InputError, UnsafeCheckpointError
from .tensor_ref import STORAGE_CLASS_TO_DTYPE, StorageRef, TensorRef


class Stub:
    """An inert record of an object of an allowlisted class: args, state, items. Never constructed."""

    classpath = "?"
    kind = "module"

    def __new__(cls, *args: Any, **kwargs: Any) -> Stub:
        obj = object.__new__(cls)
        obj.args, obj.state, obj.items, obj.list = args, None, {}, []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE calls cls(*args): record only
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.list.append(value)

    def extend(self, values: Any) -> None:
        self.list.extend(values)

    def __repr__(self) -> str:
        return f"<{self.kind} {self.classpath}>"


class RefusedStub(Stub):
    kind = "refused"


_STUB_CLASSES: dict[tuple[str, str], type] = {}


def _stub_class(classpath: str, kind: str) -> type:
    key = (classpath, kind)
    if key not in _STUB_CLASSES:
        base = RefusedStub if kind == "refused" else Stub
        _STUB_CLASSES[key] = type(classpath.rsplit(".", 1)[-1], (base,), {"classpath": classpath, "kind": kind})
    return _STUB_CLASSES[key]


class DtypeName(str):
    """A torch dtype or storage class named in the pickle (`torch.float32`, `torch.FloatStorage`)."""


# --- torch's rebuild functions, reimplemented as TensorRef constructors -------------------------


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None) -> TensorRef:
    if not isinstance(storage, StorageRef):
        raise InputError("malformed checkpoint: a tensor does not reference a storage record")
    return TensorRef(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride),
                     bool(requires_grad))


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None) -> TensorRef:
    return _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None) -> TensorRef:
    if not isinstance(data, TensorRef):
        raise InputError("malformed checkpoint: a parameter does not wrap a tensor")
    data.requires_grad = bool(requires_grad)
    data.is_parameter = True
    return data


def _rebuild_from_type_v2(func, new_type, args, state) -> Any:
    if new_type not in (_TENSOR_TYPE, _PARAMETER_TYPE):
        return _stub_class(f"tensor subclass {new_type!r}", "refused")()
    out = func(*args)
    if new_type is _PARAMETER_TYPE and isinstance(out, TensorRef):
        out.is_parameter = True
    return out


_TENSOR_TYPE = object()
_PARAMETER_TYPE = object()

# --- reviewed converters for classes real Lightning checkpoints contain ----------------------------


def _path(*parts: Any) -> str:
    return posixpath.join(*[str(p) for p in parts]) if parts else "."


def _win_path(*parts: Any) -> str:
    return ntpath.join(*[str(p) for p in parts]) if parts else "."


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    if encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise InputError(f"refused: unexpected text encoding {encoding!r} in pickle")
    return text.encode(encoding)


_NUMPY_CODE = re.compile(r"^[<>=|]?[biufc?]\d{0,2}$")


def _numpy_dtype(stub: Stub) -> Any:
    import numpy as np

    code = stub.args[0] if stub.args else None
    if not isinstance(code, str) or not _NUMPY_CODE.match(code):
        raise UnsafeCheckpointError(f"numpy.dtype({code!r})", "?")
    dt = np.dtype(code)
    order = stub.state[1] if isinstance(stub.state, tuple) and len(stub.state) > 1 else "="
    return dt.newbyteorder(order) if order in "<>" else dt


def _numpy_scalar(dtype_stub: Any, data: Any = None) -> Any:
    import numpy as np

    if not isinstance(dtype_stub, Stub) or not isinstance(data, bytes | bytearray):
        raise UnsafeCheckpointError("numpy scalar of a non-numeric dtype", "?")
    return np.frombuffer(bytes(data), dtype=_numpy_dtype(dtype_stub))[0].item()


_MODULE_PREFIXES = ("torch.nn.modules.", "athelas.models.")
# Inert Lightning/torch internals that a pickled LightningModule's __dict__ holds.
_MODULE_INTERNALS = {
    "torch.nn.parameter.Parameter",
    "lightning.pytorch.core.module.LightningModule",
    "torch._C._nn",
}
_ATTRIBUTE_DICTS = {
    "lightning.fabric.utilities.data.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
    "pytorch_lightning.utilities.parsing.AttributeDict",
    "lightning.pytorch.utilities.parsing.AttributeDict",
}
_PATHS = {f"pathlib{m}.{c}" for m in ("", "._local") for c in ("Path", "PosixPath", "PurePosixPath")}
_WIN_PATHS = {f"pathlib{m}.{c}" for m in ("", "._local") for c in ("WindowsPath", "PureWindowsPath")}

_FUNCTIONS: dict[str, Any] = {
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "torch._tensor.Tensor": _TENSOR_TYPE,
    "torch.Tensor": _TENSOR_TYPE,
    "torch.nn.parameter.Parameter": _PARAMETER_TYPE,
    "collections.OrderedDict": OrderedDict,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.complex": complex,
    "builtins.slice": slice,
    "builtins.bytearray": bytearray,
    "__builtin__.set": set,
    "_codecs.encode": _codecs_encode,
    "torch.Size": lambda *a: tuple(a[0]) if a else (),
    "torch.device": lambda *a: ":".join(str(x) for x in a),
    "numpy.core.multiarray.scalar": _numpy_scalar,
    "numpy._core.multiarray.scalar": _numpy_scalar,
    **{p: _path for p in _PATHS},
    **{p: _win_path for p in _WIN_PATHS},
}
_TORCH_DTYPES = {
    "float32", "float", "float64", "double", "float16", "half", "bfloat16", "int64", "long", "int32",
    "int", "int16", "short", "int8", "uint8", "bool", "complex64", "complex128",
}


def resolve_global(module: str, name: str, allow_modules: bool) -> Any:
    """What the pickle's GLOBAL `module.name` becomes: a converter, a marker or an inert stub."""
    classpath = f"{module}.{name}"
    if classpath in _FUNCTIONS:
        return _FUNCTIONS[classpath]
    if module == "torch" and name in STORAGE_CLASS_TO_DTYPE:
        return DtypeName(STORAGE_CLASS_TO_DTYPE[name])
    if module in ("torch", "torch.storage") and name == "UntypedStorage":
        return DtypeName("uint8")
    if module == "torch" and name in _TORCH_DTYPES:
        return DtypeName(f"torch.{name}")
    if classpath in _ATTRIBUTE_DICTS:
        return _stub_class(classpath, "attrdict")
    if classpath == "argparse.Namespace":
        return _stub_class(classpath, "namespace")
    if classpath in ("numpy.dtype", "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
                     "numpy.ndarray") or (module == "numpy.dtypes" and name.endswith("DType")):
        return _stub_class(classpath, "numpy")
    if classpath == "copyreg._reconstructor":
        return _reconstructor
    if classpath.startswith(_MODULE_PREFIXES) or classpath in _MODULE_INTERNALS:
        return _stub_class(classpath, "module")
    return _stub_class(classpath, "refused")


def _reconstructor(cls: Any, base: Any, state: Any = None) -> Any:
    if isinstance(cls, type) and issubclass(cls, Stub):
        return cls()
    return _stub_class(f"copyreg._reconstructor({cls!r})", "refused")()


class SafeUnpickler(pickle.Unpickler):
    """Unpickler over a torch zip archive's `data.pkl`; storages resolve through `storage_for`."""

    def __init__(self, data: bytes, storage_for: Any, allow_modules: bool = True):
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self._storage_for = storage_for
        self._allow_modules = allow_modules

    def find_class(self, module: str, name: str) -> Any:
        return resolve_global(module, name, self._allow_modules)

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise InputError(f"malformed checkpoint: unexpected persistent id {pid!r:.80}")
        _, dtype, key, _location, numel = pid
        if not isinstance(dtype, DtypeName) or dtype.startswith("torch."):
            raise InputError(f"malformed checkpoint: unknown storage type {dtype!r:.80}")
        return self._storage_for(str(key), str(dtype), int(numel))


def unpickle(data: bytes, storage_for: Any) -> Any:
    """Load a pickle safely and convert every record into plain Python values and TensorRefs.

    Raises UnsafeCheckpointError naming the class and key path of the first refused global.
    """
    try:
        raw = SafeUnpickler(data, storage_for).load()
    except (InputError, UnsafeCheckpointError):
        raise
    except RecursionError as exc:
        raise InputError("not a checkpoint: the pickle nests too deeply") from exc
    except Exception as exc:  # any malformed pickle: EOF, bad opcodes, wrong arities
        raise InputError(f"not a readable checkpoint: corrupted pickle ({type(exc).__name__}: {exc})"[:300]) from exc
    return to_plain(raw, "<root>", allow_modules=isinstance(raw, Stub) and raw.kind == "module")


def to_plain(obj: Any, path: str, allow_modules: bool) -> Any:
    """Replace converter stubs by plain values; refuse anything not allowlisted, naming where it sits."""
    if isinstance(obj, TensorRef | str | int | float | bool | bytes | type(None) | StorageRef):
        return obj
    if isinstance(obj, DtypeName):
        return str(obj)
    if isinstance(obj, dict):
        out = OrderedDict() if isinstance(obj, OrderedDict) else {}
        for k, v in obj.items():
            out[to_plain(k, path, allow_modules)] = to_plain(v, f"{path}[{k!r}]", allow_modules)
        return out
    if isinstance(obj, list | tuple | set | frozenset):
        items = [to_plain(v, f"{path}[{i}]", allow_modules) for i, v in enumerate(obj)]
        return type(obj)(items) if not isinstance(obj, list) else items
    if isinstance(obj, complex | slice | bytearray):
        return obj
    if isinstance(obj, Stub):
        if obj.kind == "refused":
            raise UnsafeCheckpointError(obj.classpath, path)
        if obj.kind == "attrdict":
            merged = dict(obj.items)
            if isinstance(obj.state, dict):
                merged.update(obj.state)
            return to_plain(merged, path, allow_modules)
        if obj.kind == "namespace":
            state = obj.state if isinstance(obj.state, dict) else {}
            return to_plain(dict(state), path, allow_modules)
        if obj.kind == "numpy":
            return _numpy_value(obj, path)
        if obj.kind == "module":
            if not allow_modules:
                raise UnsafeCheckpointError(obj.classpath, path)
            obj.state = to_plain(obj.state, f"{path}.__dict__", allow_modules)
            return obj
    raise UnsafeCheckpointError(type(obj).__name__, path)


def _numpy_value(stub: Stub, path: str) -> Any:
    import numpy as np

    if stub.classpath.endswith("_reconstruct"):
        state = stub.state
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], Stub)):
            raise UnsafeCheckpointError("numpy.ndarray (malformed)", path)
        _, shape, dtype_stub, fortran, raw = state
        if not isinstance(raw, bytes | bytearray):
            raise UnsafeCheckpointError("numpy.ndarray of Python objects", path)
        arr = np.frombuffer(bytes(raw), dtype=_numpy_dtype(dtype_stub))
        return arr.reshape(shape, order="F" if fortran else "C").tolist()
    return str(_numpy_dtype(stub))

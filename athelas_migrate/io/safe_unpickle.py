"""A pickle reader that never calls foreign code.

`find_class` never returns a callable from outside this module: torch's tensor
rebuild functions become constructors of lazy tensor records, a short reviewed
allowlist of harmless classes becomes converters to plain values, the reviewed
class paths of whole legacy modules become inert `Stub` records, and every other
global is refused at the opcode that names it (`UnsafeCheckpointError`), wherever
its result would have gone: a global that is popped, kept only in the memo or
hidden in an object's `__dict__` is refused like one in the final object graph.
Copyreg extension codes (EXT1/2/4), which would bypass `find_class` through
copyreg's process-wide cache, are refused before loading.

Beyond "no foreign code", the reader also refuses to be abused by the pickle
machinery itself (see docs/safety.md):

- every object `find_class` or `persistent_load` hands to the pickle VM is
  immutable to it (`BUILD` on a converter, a storage or a tensor record fails), so
  a pickle cannot re-point a storage at another file or patch a converter;
- memo indexes, memo entries and MARK nesting are bounded by a pre-scan (`LONG_BINPUT
  0x7fffffff` would make the C unpickler allocate and clear a 16 GiB memo table);
- the work the converters and stubs do is charged to a budget proportional to the
  pickle's size (memo references make "billion laughs" expansions cheap to write);
- the conversion to plain values keeps shared references shared (linear time on
  DAGs), refuses reference cycles and nesting deeper than `MAX_DEPTH`.
"""

from __future__ import annotations

import _compat_pickle
import contextvars
import functools
import io
import ntpath
import operator
import pickle
import pickletools
import posixpath
import re
from collections import OrderedDict
from typing import Any, NamedTuple

from ..errors import AthelasError, InputError, UnsafeCheckpointError
from .tensor_ref import DTYPES, STORAGE_CLASS_TO_DTYPE, StorageRef, TensorRef

MAX_DEPTH = 100  # nesting of containers/records; real checkpoints stay below 30
MAX_NDIM = 64
MAX_TEXT = 1 << 16  # a path or device string longer than this is not a path
MAX_ARRAY = 1 << 24  # numpy arrays inside hyper-parameters, in elements
MAX_BROADCAST = 1 << 24  # elements a stride-0 (expanded) view may show beyond its storage
MAX_MEMO = 1 << 22  # memo entries; a 7B-parameter state dict uses about 10 per tensor
_BUDGET_PER_BYTE = 16
_BUDGET_BASE = 1 << 20


class _LoadContext:
    def __init__(self, size: int, stream: io.BytesIO | None = None) -> None:
        self.budget = _BUDGET_PER_BYTE * size + _BUDGET_BASE
        self.stream = stream

    def where(self) -> str:
        """Where the pickle VM is, for a refusal that happens before any key path exists."""
        return f"byte {self.stream.tell()} of its pickle" if self.stream is not None else "its pickle"


def _refuse(classpath: str) -> UnsafeCheckpointError:
    ctx = _CTX.get()
    return UnsafeCheckpointError(classpath, ctx.where() if ctx is not None else "its pickle")


_CTX: contextvars.ContextVar[_LoadContext | None] = contextvars.ContextVar("athelas_unpickle", default=None)


def _charge(n: int) -> None:
    ctx = _CTX.get()
    if ctx is not None:
        ctx.budget -= n
        if ctx.budget < 0:
            raise InputError("refused: the pickle expands far beyond its own size (a memory bomb?)")


_SIZED = frozenset({str, bytes, bytearray, list, tuple, dict, set, frozenset, OrderedDict})


def _cost(args: tuple) -> int:
    """Work a call may do: its arguments, and the length of each container among them (a memo'd list
    passed a million times costs a million copies)."""
    n = 1 + len(args)
    for a in args:
        if type(a) in _SIZED:
            n += len(a)
    return n


class Stub:
    """An inert record of an object of an allowlisted class: args, state, items. Never constructed."""

    classpath = "?"
    kind = "module"

    def __new__(cls, *args: Any, **kwargs: Any) -> Stub:
        _charge(_cost(args))
        obj = object.__new__(cls)
        obj.args, obj.state, obj.items, obj.list = args, None, {}, []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE calls cls(*args): record only
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        _charge(1)
        self.items[key] = value

    def append(self, value: Any) -> None:
        _charge(1)
        self.list.append(value)

    def extend(self, values: Any) -> None:
        values = list(values)
        _charge(1 + len(values))
        self.list.extend(values)

    def __repr__(self) -> str:
        return f"<{self.kind} {self.classpath}>"


@functools.lru_cache(maxsize=256)  # keys are allowlisted class paths only; the bound is a second line
def _stub_class(classpath: str, kind: str) -> type:
    return type(classpath.rsplit(".", 1)[-1], (Stub,), {"classpath": classpath, "kind": kind})


class DtypeName(str):
    """A torch dtype or storage class named in the pickle (`torch.float32`, `torch.FloatStorage`)."""

    __slots__ = ()  # no __dict__: BUILD cannot shadow its methods


class _Sealed:
    """Base of what the pickle VM may hold but must not modify: BUILD (`__setstate__`) is refused."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise InputError("refused: the pickle tries to modify an internal object of the reader (BUILD)")


class _Callable(_Sealed):
    """An allowlisted converter as the pickle sees it: callable, immutable, its work charged to the budget."""

    __slots__ = ("classpath", "_fn")

    def __init__(self, classpath: str, fn: Any) -> None:
        object.__setattr__(self, "classpath", classpath)
        object.__setattr__(self, "_fn", fn)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(name)

    def __call__(self, *args: Any) -> Any:
        _charge(_cost(args))
        return self._fn(*args)

    def __repr__(self) -> str:
        return f"<converter {self.classpath}>"


class _StorageRec(NamedTuple):
    """A storage as the pickle VM sees it (a tuple: no __dict__, so BUILD cannot re-point it)."""

    ref: StorageRef


class _TensorRec(NamedTuple):
    """A tensor as the pickle VM sees it; becomes a TensorRef once the whole pickle is checked."""

    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    requires_grad: bool
    is_parameter: bool


_TENSOR_TYPE = object()
_PARAMETER_TYPE = object()


# --- torch's rebuild functions, reimplemented as tensor-record constructors ---------------------


def _ints(seq: Any, what: str) -> tuple[int, ...]:
    if not isinstance(seq, tuple | list) or len(seq) > MAX_NDIM:
        raise InputError(f"malformed checkpoint: a tensor {what} is not a tuple of at most {MAX_NDIM} integers")
    try:
        return tuple(map(operator.index, seq))
    except TypeError:
        raise InputError(f"malformed checkpoint: a tensor {what} holds a non-integer") from None


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None) -> _TensorRec:
    if not isinstance(storage, _StorageRec):
        raise InputError("malformed checkpoint: a tensor does not reference a storage record")
    shape, strides = _ints(size, "size"), _ints(stride, "stride")
    if len(shape) != len(strides):
        raise InputError("malformed checkpoint: a tensor's size and stride differ in length")
    return _TensorRec(storage.ref, operator.index(storage_offset), shape, strides, bool(requires_grad), False)


_DTYPE_ALIASES = {"float": "float32", "double": "float64", "half": "float16", "long": "int64", "int": "int32",
                  "short": "int16"}


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None) -> _TensorRec:
    """torch writes v3 for dtypes without a legacy storage class: the storage is untyped (numel in bytes)."""
    rec = _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata)
    name = str(dtype).removeprefix("torch.") if isinstance(dtype, DtypeName) else None
    name = _DTYPE_ALIASES.get(name, name)
    if name not in DTYPES:
        what = getattr(dtype, "classpath", dtype)
        raise InputError(f"unsupported tensor dtype {what!s:.60} (supported: {', '.join(sorted(DTYPES))})")
    ref = rec.storage
    if ref.dtype != name:
        item = DTYPES[name][0]
        if ref.nbytes % item:
            raise InputError(f"malformed checkpoint: an untyped storage does not hold whole {name} elements")
        ref = StorageRef(dtype=name, numel=ref.nbytes // item, path=ref.path, offset=ref.offset, key=ref.key,
                         crc32=ref.crc32, data=ref.data, record=ref.record)
    return rec._replace(storage=ref)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None) -> _TensorRec:
    if not isinstance(data, _TensorRec):
        raise InputError("malformed checkpoint: a parameter does not wrap a tensor")
    return data._replace(requires_grad=bool(requires_grad), is_parameter=True)


def _rebuild_from_type_v2(func, new_type, args, state) -> Any:
    if new_type not in (_TENSOR_TYPE, _PARAMETER_TYPE):
        name = getattr(new_type, "classpath", None) or f"{new_type!r:.60}"
        raise _refuse(f"tensor subclass {name}")
    if not isinstance(func, _Callable) or not isinstance(args, tuple):
        raise InputError("malformed checkpoint: a tensor is rebuilt by an unexpected function")
    out = func(*args)
    if not isinstance(out, _TensorRec):
        raise InputError("malformed checkpoint: a tensor is rebuilt as something else")
    return out._replace(is_parameter=out.is_parameter or new_type is _PARAMETER_TYPE)


# --- reviewed converters for classes real Lightning checkpoints contain ----------------------------


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
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise InputError(f"refused: unexpected text encoding {encoding!r:.40} in pickle")
    return text.encode(encoding)


def _bytearray(*args: Any) -> bytearray:
    """Only what pickle writes (bytes, or text plus encoding): never `bytearray(n)`, which allocates n bytes."""
    if not args:
        return bytearray()
    if isinstance(args[0], bytes | bytearray) and len(args) == 1:
        return bytearray(args[0])
    if isinstance(args[0], str) and len(args) == 2 and args[1] in ("latin1", "latin-1", "utf-8", "utf8"):
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


_NUMPY_CODE = re.compile(r"^[<>=|]?[biufc?]\d{0,2}$")


def _numpy_dtype(stub: Any, path: str | None = None) -> Any:
    """A numeric numpy dtype from its stub; object, string and structured dtypes are refused."""
    import numpy as np

    code = stub.args[0] if isinstance(stub, Stub) and stub.kind == "numpy" and stub.args else None
    if not isinstance(code, str) or not _NUMPY_CODE.match(code):
        if path is None:  # while loading: the key path is not known yet
            raise InputError(f"refused: a numpy value of dtype {code!r:.40} (only numeric dtypes are accepted)")
        raise UnsafeCheckpointError(f"numpy.dtype({code!r:.40})", path)
    dt = np.dtype(code)
    order = stub.state[1] if isinstance(stub.state, tuple) and len(stub.state) > 1 else "="
    if order in ("<", ">"):
        return dt.newbyteorder(order)
    return dt


def _numpy_scalar(dtype_stub: Any, data: Any = None) -> Any:
    import numpy as np

    if not isinstance(dtype_stub, Stub) or not isinstance(data, bytes | bytearray):
        raise InputError("malformed checkpoint: a numpy scalar without a dtype and bytes")
    dt = _numpy_dtype(dtype_stub)
    if len(data) != dt.itemsize:
        raise InputError("malformed checkpoint: a numpy scalar has the wrong number of bytes")
    return np.frombuffer(bytes(data), dtype=dt)[0].item()


def modern_name(module: str, name: str) -> tuple[str, str]:
    """What pickle's own find_class does for protocols < 3 (torch.save writes protocol 2, in which
    Python 3 writes Python 2 names: `__builtin__.set`, `copy_reg._reconstructor`, `commands.Popen`)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def classify(module: str, name: str) -> str:
    """How the reader treats the global `module.name`: 'converter', 'dtype', 'tensor-type', or the stub
    kind ('module', 'attrdict', 'namespace', 'numpy'), or 'refused'."""
    try:
        obj = resolve_global(*modern_name(module, name))
    except UnsafeCheckpointError:
        return "refused"
    if isinstance(obj, _Callable):
        return "converter"
    if isinstance(obj, DtypeName):
        return "dtype"
    return getattr(obj, "kind", "tensor-type")


class _Base(_Sealed):
    """`builtins.object` / `builtins.dict` as the `base` argument of `copyreg._reconstructor`: a name,
    not callable; anywhere else in the graph it is refused like any class."""

    __slots__ = ("classpath",)

    def __init__(self, classpath: str) -> None:
        object.__setattr__(self, "classpath", classpath)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(name)


_BASES = {c: _Base(c) for c in ("builtins.object", "builtins.dict")}


def _reconstructor(cls: Any, base: Any, state: Any = None) -> Any:
    """Protocol 0/1 objects: `copyreg._reconstructor(cls, base, state)`; state is a dict base's contents."""
    if isinstance(cls, type) and issubclass(cls, Stub):
        obj = cls()
        if isinstance(state, dict):
            _charge(len(state))
            obj.items.update(state)
        return obj
    raise _refuse(f"copyreg._reconstructor({getattr(cls, 'classpath', None) or repr(cls)[:60]})")


# Whole pickled legacy modules (`torch.save(model)`): the historical class paths of the legacy families
# (`legacy.all_class_paths()`, checked by tests/test_unpickle_safety.py) and the torch layers they are built
# from. An explicit list, not a prefix, so a pickle cannot make the reader mint stub classes for names it
# chooses. Each becomes an inert `Stub` record (never imported, never instantiated). A pickled
# LightningModule's __dict__ holds nothing else but plain values, tensors, OrderedDicts, a set, a
# torch.device or dtype and AttributeDicts (`_hparams`), which have converters of their own.
_HISTORICAL_MODULES = frozenset({
    "athelas.models.lightning.pl_text_cnn.TextCNN",
    "athelas.models.lightning.pl_tab_ae.TabularEmbeddingModule",
    "athelas.models.lightning.pl_tab_ae.TabAE",
    "athelas.models.lightning.pl_multimodal_cnn.MultimodalCNN",
    "athelas.models.lightning.text.pl_text_cnn.TextCNN",
    "athelas.models.lightning.tabular.pl_tab_ae.TabularEmbeddingModule",
    "athelas.models.lightning.tabular.pl_tab_ae.TabAE",
    "athelas.models.lightning.bimodal.pl_bimodal_cnn.BimodalCNN",
    "athelas.models.lightning.text.pl_bert.TextBertBase",
    "athelas.models.lightning.bimodal.pl_bimodal_cross_attn.BimodalBertCrossAttn",
    "athelas.models.lightning.bimodal.pl_bimodal_gate_fusion.BimodalBertGateFusion",
    "athelas.models.lightning.bimodal.pl_bimodal_moe.BimodalBertMoE",
    "athelas.models.lightning.trimodal.pl_trimodal_cross_attn.TrimodalCrossAttentionBert",
})
_TORCH_LAYERS = {
    "linear": ("Linear", "Identity", "Bilinear"),
    "conv": ("Conv1d", "Conv2d"),
    "sparse": ("Embedding", "EmbeddingBag"),
    "normalization": ("LayerNorm",),
    "batchnorm": ("BatchNorm1d", "BatchNorm2d"),
    "dropout": ("Dropout",),
    "activation": ("ReLU", "GELU", "Tanh", "Sigmoid", "Softmax", "LeakyReLU", "ELU"),
    "pooling": ("MaxPool1d", "MaxPool2d", "AvgPool1d", "AdaptiveMaxPool1d", "AdaptiveAvgPool1d"),
    "flatten": ("Flatten",),
    "container": ("Sequential", "ModuleList", "ModuleDict", "ParameterList", "ParameterDict"),
    "loss": ("CrossEntropyLoss", "BCEWithLogitsLoss", "BCELoss", "MSELoss", "NLLLoss"),
}
_MODULE_CLASSES = _HISTORICAL_MODULES | {f"torch.nn.modules.{m}.{c}" for m, cs in _TORCH_LAYERS.items() for c in cs}
_NUMPY_STUBS = frozenset({"numpy.dtype", "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
                          "numpy.ndarray"})
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
    "collections.OrderedDict": _ordered_dict,
    "builtins.set": _set,
    "builtins.frozenset": _frozenset,
    "builtins.complex": _complex,
    "builtins.bytearray": _bytearray,
    "_codecs.encode": _codecs_encode,
    "copyreg._reconstructor": _reconstructor,
    "torch.Size": _size,
    "torch.device": _device,
    "numpy.core.multiarray.scalar": _numpy_scalar,
    "numpy._core.multiarray.scalar": _numpy_scalar,
    **{p: _path for p in _PATHS},
    **{p: _win_path for p in _WIN_PATHS},
}
_CALLABLES: dict[str, Any] = {k: _Callable(k, v) for k, v in _FUNCTIONS.items()}
_CALLABLES.update({"torch._tensor.Tensor": _TENSOR_TYPE, "torch.Tensor": _TENSOR_TYPE,
                   "torch.nn.parameter.Parameter": _PARAMETER_TYPE})
_TORCH_DTYPES = {
    "float32", "float", "float64", "double", "float16", "half", "bfloat16", "int64", "long", "int32",
    "int", "int16", "short", "int8", "uint8", "bool", "complex64", "complex128",
    # dtypes the reader does not decode: named (inert strings) so `_rebuild_tensor_v3` can say so clearly
    "uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
    "complex32", "chalf", "cfloat", "cdouble",
}


def resolve_global(module: str, name: str) -> Any:
    """What the pickle's GLOBAL `module.name` becomes: a sealed converter, a marker or an inert stub class
    of an allowlisted class; anything else raises UnsafeCheckpointError here, before the VM can use it."""
    classpath = f"{module}.{name}"
    if classpath in _CALLABLES:
        return _CALLABLES[classpath]
    if module == "torch" and name in STORAGE_CLASS_TO_DTYPE:
        return DtypeName(STORAGE_CLASS_TO_DTYPE[name])
    if module in ("torch", "torch.storage") and name == "UntypedStorage":
        return DtypeName("uint8")
    if module == "torch" and name in _TORCH_DTYPES:
        return DtypeName(f"torch.{name}")
    if classpath in _BASES:
        return _BASES[classpath]
    if classpath in _ATTRIBUTE_DICTS:
        return _stub_class(classpath, "attrdict")
    if classpath == "argparse.Namespace":
        return _stub_class(classpath, "namespace")
    if classpath in _NUMPY_STUBS or (module == "numpy.dtypes" and name.endswith("DType") and name.isalnum()
                                     and len(name) <= 32):
        return _stub_class(classpath, "numpy")
    if classpath in _MODULE_CLASSES:
        return _stub_class(classpath, "module")
    raise _refuse(classpath[:200])


def _opcode_table() -> list[int | None]:
    """Argument length per opcode byte: >= 0 fixed; -2/-3/-4/-5 counted (1, 4 signed, 4, 8 bytes);
    -1 one line, -6 two lines (GLOBAL, INST)."""
    table: list[int | None] = [None] * 256
    for op in pickletools.opcodes:
        n = op.arg.n if op.arg is not None else 0
        table[ord(op.code)] = -6 if op.name in ("GLOBAL", "INST") else n
    return table


_OPCODES = _opcode_table()
_LONG_BINPUT, _PUT, _STOP, _MARK = ord("r"), ord("p"), ord("."), ord("(")
_MEMO_OPS = frozenset(b"pqr\x94")  # PUT, BINPUT, LONG_BINPUT, MEMOIZE
_MARK_OPS = frozenset(b"tldeu\x90\x91io1")  # what consumes a MARK: TUPLE ... POP_MARK
_EXT_OPS = frozenset(b"\x82\x83\x84")  # EXT1/2/4: copyreg's extension cache answers without find_class
_WATCHED = _MEMO_OPS | _MARK_OPS | _EXT_OPS | {_MARK}


def _line_end(data: Any, i: int) -> int:
    j = data.find(b"\n", i)
    if j < 0:
        raise ValueError("a text argument without its newline")
    return j


def _prescan(data: Any, start: int = 0) -> int:
    """Walk the opcodes without executing them: refuse copyreg extension codes, memo indexes no real
    pickle uses (the C unpickler grows its memo table to twice the index and clears it: `LONG_BINPUT
    0xffffffff` is a 64 GiB allocation), more than MAX_MEMO memo entries and MARKs nested deeper than
    MAX_DEPTH. Returns the offset just past STOP. `data` is bytes or an mmap (pickles inside a larger
    file). A tight loop rather than `pickletools.genops`, which is 3x slower."""
    table, end, i, ops, memo, marks = _OPCODES, len(data), start, 0, 0, 0
    from_bytes = int.from_bytes
    try:
        while i < end:
            op = data[i]
            i += 1
            ops += 1
            n = table[op]
            if n is None:
                raise ValueError(f"unknown opcode {op:#04x} at byte {i - 1}")
            if op in _WATCHED:
                if op == _MARK:
                    marks += 1
                    if marks > MAX_DEPTH:
                        raise InputError(f"not a checkpoint: the pickle nests deeper than {MAX_DEPTH} levels")
                elif op in _MARK_OPS:
                    marks -= 1
                elif op in _MEMO_OPS:
                    memo += 1
                    if memo > MAX_MEMO:
                        raise InputError(f"refused: the pickle has more than {MAX_MEMO} memo entries")
                else:
                    raise UnsafeCheckpointError(f"copyreg extension code (opcode {op:#04x})",
                                                f"byte {i - 1} of its pickle")
            if n >= 0:
                if op == _LONG_BINPUT and from_bytes(data[i : i + 4], "little") > ops:
                    raise InputError(f"malformed checkpoint: pickle memo index "
                                     f"{from_bytes(data[i : i + 4], 'little')} out of range")
                i += n
            elif n == -2:
                i += 1 + data[i]
            elif n in (-3, -4):
                length = from_bytes(data[i : i + 4], "little", signed=n == -3)
                if length < 0:
                    raise ValueError("negative length")
                i += 4 + length
            elif n == -5:
                i += 8 + from_bytes(data[i : i + 8], "little")
            else:
                j = _line_end(data, i)
                if op == _PUT and not 0 <= int(data[i:j]) <= ops:
                    raise InputError(f"malformed checkpoint: pickle memo index {data[i:j][:20]!r} out of range")
                if n == -6:
                    j = _line_end(data, j + 1)
                i = j + 1
            if op == _STOP:
                return i
        raise ValueError("the pickle ends without STOP")
    except AthelasError:
        raise
    except (ValueError, IndexError) as exc:  # truncated argument, unknown opcode
        raise InputError(f"not a readable checkpoint: corrupted pickle ({exc})"[:300]) from exc


class SafeUnpickler(pickle.Unpickler):
    """Unpickler over a torch zip archive's `data.pkl`; storages resolve through `storage_for`."""

    def __init__(self, stream: io.BytesIO, storage_for: Any, legacy: bool = False):
        super().__init__(stream, encoding="utf-8")
        self._storage_for = storage_for
        self._legacy = legacy

    def find_class(self, module: str, name: str) -> Any:
        """GLOBAL, STACK_GLOBAL, INST and OBJ all come here: refuse anything off the allowlist at once."""
        return resolve_global(*modern_name(str(module), str(name)))

    def persistent_load(self, pid: Any) -> Any:
        """Only torch storages: ('storage', type, key, location, numel), plus a view field (always None
        in practice) in the legacy pre-zip format. PERSID's text ids and anything else are refused."""
        if self._legacy and isinstance(pid, tuple) and len(pid) == 4 and pid[0] == "module":
            # the pre-zip format names each module class once this way (with its source, ignored)
            if isinstance(pid[1], type) and issubclass(pid[1], Stub) and pid[1].kind == "module":
                return pid[1]
            raise InputError(f"malformed checkpoint: unexpected module record {pid[1]!r:.80}")
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise InputError(f"malformed checkpoint: unexpected persistent id {pid!r:.80}")
        if len(pid) == 6 and pid[5] is not None:
            raise InputError("unsupported checkpoint: a legacy storage view (torch < 0.4); re-save it with a "
                             "newer torch in a trusted environment")
        _, dtype, key, _location, numel = pid[:5]
        if not isinstance(dtype, DtypeName) or dtype.startswith("torch."):
            raise InputError(f"malformed checkpoint: unknown storage type {dtype!r:.80}")
        if not isinstance(key, str | int) or not isinstance(numel, int) or numel < 0:
            raise InputError(f"malformed checkpoint: bad storage record {pid!r:.80}")
        ref = self._storage_for(str(key), str(dtype), numel)
        return ref if isinstance(ref, _StorageRec) else _StorageRec(ref)


def unpickle(data: bytes, storage_for: Any, legacy: bool = False) -> Any:
    """Load a pickle safely and convert every record into plain Python values and TensorRefs.

    Raises UnsafeCheckpointError naming the first refused global (and where it was: a byte offset of
    the pickle, or a key path for module records outside a pickled module), and InputError (one line)
    for anything malformed.
    """
    _prescan(data)
    stream = io.BytesIO(data)
    ctx = _LoadContext(len(data), stream)
    token = _CTX.set(ctx)
    try:
        raw = SafeUnpickler(stream, storage_for, legacy).load()
    except AthelasError:
        raise
    except RecursionError as exc:
        raise InputError("not a checkpoint: the pickle nests too deeply") from exc
    except MemoryError as exc:
        raise InputError("refused: the pickle needs more memory than its size justifies") from exc
    except Exception as exc:  # any malformed pickle: EOF, bad opcodes, wrong arities
        raise InputError(f"not a readable checkpoint: corrupted pickle ({type(exc).__name__}: {exc})"[:300]) from exc
    finally:
        _CTX.reset(token)
    allow = isinstance(raw, Stub) and raw.kind == "module"
    try:
        out = to_plain(raw, "<root>", allow_modules=allow)
    except AthelasError:
        raise
    except RecursionError as exc:
        raise InputError("not a checkpoint: the pickle nests too deeply") from exc
    except (ValueError, TypeError, OverflowError, IndexError, KeyError, AttributeError) as exc:
        raise InputError(f"malformed checkpoint: {type(exc).__name__}: {exc}"[:300]) from exc
    return out


def to_plain(obj: Any, path: str, allow_modules: bool) -> Any:
    """Replace converter stubs by plain values; refuse anything not allowlisted, naming where it sits."""
    return _Converter(allow_modules).convert(obj, path, 0)


# Key paths are built lazily, as (parent, step) chains, and rendered only for a message.
class _Raw(str):
    """A path step rendered as is (`.__dict__`), not as `[key]`."""


def render(path: Any) -> str:
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
        if t is _StorageRec:
            return obj.ref
        oid = id(obj)
        done = self.done.get(oid, self)
        if done is not self:
            return done
        if oid in self.active:
            raise InputError(f"malformed checkpoint: a reference cycle at {render(path)}")
        if depth > MAX_DEPTH:
            raise InputError(f"not a checkpoint: the pickle nests deeper than {MAX_DEPTH} levels (at "
                             f"{render(path)[:80]}...)")
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
        if t is _TensorRec:
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
            raise UnsafeCheckpointError(obj.classpath, render(path))
        if t is _Callable or t is _Base:
            raise UnsafeCheckpointError(obj.classpath, render(path))
        if obj is _TENSOR_TYPE or obj is _PARAMETER_TYPE:
            raise UnsafeCheckpointError("torch.Tensor (the class itself)", render(path))
        raise UnsafeCheckpointError(f"{t.__module__}.{t.__qualname__}", render(path))

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
            return _numpy_value(obj, render(path))
        if obj.kind == "module":
            if not self.allow_modules:
                raise UnsafeCheckpointError(obj.classpath, render(path))
            obj.state = self.convert(obj.state, (path, _DICT_STEP), depth)
            return obj
        raise UnsafeCheckpointError(obj.classpath, render(path))  # pragma: no cover - every kind is handled


def _tensor(rec: _TensorRec, path: Any) -> TensorRef:
    """A TensorRef, once its view is known to lie inside its storage."""
    shape, stride, offset, ref = rec.shape, rec.stride, rec.offset, rec.storage
    if offset < 0 or (shape and (min(shape) < 0 or min(stride) < 0)):
        raise InputError(f"corrupted checkpoint: the tensor at {render(path)} has a negative size, stride or offset")
    numel = 1
    for s in shape:
        numel *= s
    if numel:
        last = offset + sum((n - 1) * s for n, s in zip(shape, stride))
        if last >= ref.numel:
            raise InputError(f"corrupted checkpoint: the tensor at {render(path)} lies outside its storage")
        if numel > ref.numel and numel > MAX_BROADCAST:
            raise InputError(f"corrupted checkpoint: the tensor at {render(path)} repeats its storage "
                             "implausibly often")
    return TensorRef(ref, offset, shape, stride, rec.requires_grad, rec.is_parameter)


def _numpy_value(stub: Stub, path: str) -> Any:
    import numpy as np

    if stub.classpath.endswith("_reconstruct"):
        state = stub.state
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], Stub)):
            raise UnsafeCheckpointError("numpy.ndarray (malformed)", path)
        _, shape, dtype_stub, fortran, raw = state
        if not isinstance(raw, bytes | bytearray):
            raise UnsafeCheckpointError("numpy.ndarray of Python objects", path)
        dt = _numpy_dtype(dtype_stub, path)
        shape = _ints(shape, "numpy array shape")
        if len(raw) // max(dt.itemsize, 1) > MAX_ARRAY:
            raise InputError(f"refused: the numpy array at {path} is too large for a hyper-parameter")
        arr = np.frombuffer(bytes(raw), dtype=dt)
        return arr.reshape(shape, order="F" if fortran else "C").tolist()
    if stub.classpath.endswith(".ndarray"):
        raise UnsafeCheckpointError("numpy.ndarray (constructed directly)", path)
    return str(_numpy_dtype(stub, path))

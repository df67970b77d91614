"""Lazy tensors: where a tensor's bytes are, not the bytes themselves.

A rename never needs tensor values, so the reader describes every tensor by
its storage record (file, offset, length) plus view geometry, and the writer
copies those records verbatim. Values are only decoded (with torch) when a
rule applies an arithmetic operation or a caller asks for them. A new dtype is one row of `DTYPES`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from .chunks import _CRC32 as _CRC32  # re-exported: bench reads which CRC-32 is in use
from .chunks import crc32 as crc32  # re-exported; `verify` reads it here, so tests can replace it
from .chunks import file_storage, identity
from .chunks import mapped as _mapped  # also re-exported under this name for bench
from .chunks import read_chunks as read_chunks  # re-exported

# torch dtype name -> (itemsize, legacy typed-storage class name, safetensors code)
DTYPES: dict[str, tuple[int, str, str]] = {
    "float32": (4, "FloatStorage", "F32"),
    "float64": (8, "DoubleStorage", "F64"),
    "float16": (2, "HalfStorage", "F16"),
    "bfloat16": (2, "BFloat16Storage", "BF16"),
    "int64": (8, "LongStorage", "I64"),
    "int32": (4, "IntStorage", "I32"),
    "int16": (2, "ShortStorage", "I16"),
    "int8": (1, "CharStorage", "I8"),
    "uint8": (1, "ByteStorage", "U8"),
    "bool": (1, "BoolStorage", "BOOL"),
    "complex64": (8, "ComplexFloatStorage", "C64"),
    "complex128": (16, "ComplexDoubleStorage", "C128"),
}
INT64 = 2**63  # sizes, strides and offsets are int64 in torch
STORAGE_CLASS_TO_DTYPE = {v[1]: k for k, v in DTYPES.items()}
SAFETENSORS_TO_DTYPE = {v[2]: k for k, v in DTYPES.items()}
FLOAT_DTYPES = {"float32", "float64", "float16", "bfloat16"}


@dataclass(eq=False)
class StorageRef:
    """One storage: either a byte range of a source file or bytes held in memory."""

    dtype: str
    numel: int
    path: str | None = None  # source file
    offset: int = 0  # absolute byte offset of the data in `path`
    key: str | None = None  # record key in the source archive (".../data/<key>")
    crc32: int | None = None  # CRC of the source zip record, reusable when copied verbatim
    data: bytes | None = None  # in-memory bytes (results of tensor operations)
    record: tuple[int, int] | None = None  # (size, CRC32) of the whole source zip record, checked before use

    @property
    def nbytes(self) -> int:
        """The storage's size in bytes."""
        return self.numel * DTYPES[self.dtype][0]

    def read(self) -> bytes | memoryview:
        """The raw bytes, CRC-checked on first use.

        Returns:
            The bytes (a memory-mapped view for file-backed storages).
        """
        if self.data is not None:
            return self.data
        assert self.path is not None
        self.verify()
        return _mapped(self.path)[self.offset : self.offset + self.nbytes]

    def read_bytes(self) -> bytes:
        """The raw bytes as a copy, read with pread rather than a memory map, for the write path: a source
        truncated meanwhile is an InputError there, never a SIGBUS. CRC-checked like `read`.

        Returns:
            A copy of the bytes.
        """
        if self.data is not None:
            return bytes(self.data)
        assert self.path is not None
        self.verify()
        out = bytearray()
        for chunk in read_chunks(self.path, self.offset, self.nbytes, f"storage record {self.key!r}"):
            out += chunk
        return bytes(out)

    def verify(self) -> None:
        """Check the source record's CRC32 once per process, so corrupted tensor bytes are never
        decoded or copied into an output (torch itself does not check them). Reads with pread, not a memory
        map: this runs while the writer copies, and a source truncated meanwhile must be an error, not SIGBUS.

        Raises:
            InputError: the bytes fail the CRC check (or cannot be read).
        """
        if self.data is not None or self.path is None or self.record is None:
            return
        size, crc = self.record
        key = (self.path, identity(self.path), self.offset, size, crc)
        if key in _VERIFIED:
            return
        from ..errors import InputError

        value = 0
        for chunk in read_chunks(self.path, self.offset, size, f"storage record {self.key!r}"):
            value = crc32(chunk, value)
        if value != crc:
            raise InputError(f"{self.path}: corrupted checkpoint: storage record {self.key!r} fails its CRC "
                             "check (the tensor bytes were changed after torch wrote them)")
        _VERIFIED.add(key)


_VERIFIED: set[tuple] = set()  # (path, identity, offset, size, crc) of records whose CRC matched


_STRUCT = {"float32": "<f", "float64": "<d", "float16": "<e", "int64": "<q", "int32": "<i", "int16": "<h",
           "int8": "<b", "uint8": "<B", "bool": "<?"}


def _encode_scalar(value: float | int | bool, dtype: str) -> bytes:
    """One little-endian element of `dtype` holding `value`."""
    import struct

    if dtype == "bfloat16":  # the upper half of the float32, rounded to nearest even
        bits = struct.unpack("<I", struct.pack("<f", float(value)))[0]
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 if (bits & 0x7F800000) != 0x7F800000 else bits >> 16
        return struct.pack("<H", bits & 0xFFFF)
    if dtype not in _STRUCT:
        raise ValueError(f"cannot encode a {dtype} constant")
    if dtype not in FLOAT_DTYPES and dtype != "bool" and value != int(value):
        raise ValueError(f"{value!r} is not a {dtype}")
    try:
        return struct.pack(_STRUCT[dtype], value if dtype in FLOAT_DTYPES or dtype == "bool" else int(value))
    except (struct.error, OverflowError) as exc:
        raise ValueError(f"{value!r} does not fit a {dtype}: {exc}") from exc


@dataclass(eq=False)
class TensorRef:
    """A tensor view on a StorageRef, as torch's `_rebuild_tensor_v2` describes it."""

    storage: StorageRef
    offset: int  # in elements
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    requires_grad: bool = False
    is_parameter: bool = False
    _digest: str | None = field(default=None, repr=False)

    @property
    def dtype(self) -> str:
        """The torch dtype name, e.g. "float32"."""
        return self.storage.dtype

    @property
    def numel(self) -> int:
        """The number of elements of the view."""
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        """The view's size in bytes."""
        return self.numel * DTYPES[self.dtype][0]

    def is_contiguous(self) -> bool:
        """Whether the view is row-major contiguous (size-1 dimensions may have any stride).

        Returns:
            True when it is.
        """
        expected = 1
        for size, stride in zip(reversed(self.shape), reversed(self.stride)):
            if size != 1 and stride != expected:
                return False
            expected *= size
        return True

    def geometry_problem(self) -> str | None:
        """Why torch could not rebuild this view from a checkpoint (None when it can): sizes, strides and
        offset must be int64-sized and non-negative, and the view must lie inside its storage, even with no
        elements (torch refuses or overflows otherwise, and then the whole file fails to load).

        Returns:
            One line naming the geometry and its problem, or None.
        """
        shape, stride, offset, available = self.shape, self.stride, self.offset, self.storage.numel
        item = DTYPES[self.dtype][0] if self.dtype in DTYPES else 0
        problem = None if item and len(shape) == len(stride) else "unsupported dtype or rank mismatch"
        numel, last = 1, 0
        for size, step in zip(shape, stride):
            if type(size) is not int or type(step) is not int or not (0 <= size < INT64 and 0 <= step < INT64):
                problem = "each must be a non-negative 64-bit integer"
                break
            numel *= size
            last += (size - 1) * step
        if problem is None:
            if type(offset) is not int or type(available) is not int or not (0 <= offset < INT64 and 0 <= available):
                problem = "each must be a non-negative 64-bit integer"
            elif available * item >= INT64 or numel * item >= INT64:
                problem = "more than 2**63 bytes"
            elif offset + (last + 1 if numel else 0) > available:
                problem = f"addresses elements past the end of its storage of {available}"
        if problem is None:
            return None
        return f"dtype {self.dtype}, size {list(shape)}, stride {list(stride)}, offset {offset}"[:240] + f": {problem}"

    def byte_range(self) -> tuple[int, int] | None:
        """Where the view's bytes lie in its storage.

        Returns:
            (start, end) when the view is one contiguous run of bytes, else None.
        """
        if not self.is_contiguous():
            return None
        item = DTYPES[self.dtype][0]
        return self.offset * item, (self.offset + self.numel) * item

    def raw_bytes(self) -> bytes | memoryview:
        """The view's values in row-major order (decoded via torch only if strided).

        Returns:
            The bytes (a view of the storage when contiguous).
        """
        if self.numel == 0:  # whatever its strides say, an empty view has no bytes (and needs no torch)
            return b""
        span = self.byte_range()
        if span is not None:
            return self.storage.read()[span[0] : span[1]]
        return self.to_torch().contiguous().numpy().tobytes()  # pragma: no cover - rare

    def holds_constant(self, fill: float | int | bool) -> bool:
        """Whether every element equals `fill` (as `(t == fill).all()`, so true when empty), decided by numpy:
        checking a constant is part of migrating, which never imports torch.

        Args:
            fill: the constant, compared as numpy compares it with the dtype.

        Returns:
            True when every element equals it.
        """
        import numpy as np

        if self.numel == 0:
            return True
        raw = self.raw_bytes()
        if self.dtype == "bfloat16":  # numpy has no bfloat16: it is the upper half of a float32
            values = (np.frombuffer(raw, dtype="<u2").astype("<u4") << 16).view("<f4")
        else:
            values = np.frombuffer(raw, dtype=np.dtype(self.dtype).newbyteorder("<"))
        return bool((values == fill).all())

    def digest(self) -> str:
        """A fingerprint of the tensor (computed once).

        Returns:
            The hex sha256 of dtype, shape and values: equal digests prove equal tensors.
        """
        if self._digest is None:
            h = hashlib.sha256(f"{self.dtype}{list(self.shape)}".encode())
            h.update(self.raw_bytes())
            self._digest = h.hexdigest()
        return self._digest

    def to_torch(self, copy: bool = True) -> Any:
        """Decode into a torch tensor. `copy=False` maps the file copy-on-write instead of reading it:
        no anonymous memory until something writes to the tensor.

        Args:
            copy: return an independent copy (False: a view of the mapped file or bytes).

        Returns:
            The torch tensor.
        """
        import torch

        dtype = getattr(torch, self.dtype)
        if self.storage.data is not None:
            buf = torch.frombuffer(bytearray(self.storage.data), dtype=torch.uint8) if self.storage.data else \
                torch.empty(0, dtype=torch.uint8)
            base = 0
        else:
            self.storage.verify()
            buf = file_storage(self.storage.path)
            base = self.storage.offset
        item = DTYPES[self.dtype][0]
        flat = buf[base : base + self.storage.nbytes]
        if self.storage.nbytes == 0 or base % item:
            flat = flat.clone()  # unaligned record (not written by torch): copy to realign
        typed = flat.view(dtype)  # as_strided offsets count from the start of the underlying storage
        out = torch.as_strided(typed, self.shape, self.stride, typed.storage_offset() + self.offset)
        return out.clone() if copy else out

    @classmethod
    def from_bytes(cls, data: bytes, dtype: str, shape: tuple[int, ...] | list[int],
                   is_parameter: bool = False) -> TensorRef:
        """A contiguous tensor of `shape` whose row-major values are `data`: what rules that only move bytes
        (a zero row, a constant) build, so that they need no torch.

        Args:
            data: the values' bytes, little-endian.
            dtype: the torch dtype name.
            shape: the tensor's shape.
            is_parameter: whether it is an `nn.Parameter` in the checkpoint.

        Returns:
            The tensor.
        """
        shape = tuple(int(d) for d in shape)
        stride, acc = [], 1
        for size in reversed(shape):
            stride.append(acc)
            acc *= size
        if len(data) != acc * DTYPES[dtype][0]:
            raise ValueError(f"{len(data)} bytes do not hold a {dtype} tensor of shape {list(shape)}")
        return cls(StorageRef(dtype=dtype, numel=acc, data=bytes(data)), 0, shape, tuple(reversed(stride)),
                   False, is_parameter)

    @classmethod
    def full(cls, shape: tuple[int, ...] | list[int], fill: float | int | bool, dtype: str) -> TensorRef:
        """`torch.full(shape, fill, dtype=dtype)` without torch (floats rounded to nearest even, as torch does).

        Args:
            shape: the tensor's shape.
            fill: the value of every element.
            dtype: the torch dtype name.

        Returns:
            The tensor.

        Raises:
            ValueError: `fill` is not exactly representable in an integer `dtype`, or `dtype` is complex.
        """
        numel = 1
        for d in shape:
            numel *= int(d)
        return cls.from_bytes(_encode_scalar(fill, dtype) * numel, dtype, shape)

    @classmethod
    def from_torch(cls, tensor: Any, is_parameter: bool = False) -> TensorRef:
        """Wrap a torch tensor's values as an in-memory storage.

        Args:
            tensor: any torch tensor (copied to the CPU, row-major).
            is_parameter: whether it is an `nn.Parameter` in the checkpoint.

        Returns:
            The tensor.
        """
        import torch

        t = tensor.detach().contiguous().cpu()
        dtype = str(t.dtype).removeprefix("torch.")
        flat = t.reshape(-1)
        if flat.numel() and flat.stride(0) != 1:  # a 1-element slice keeps its parent's stride
            flat = torch.empty(flat.shape, dtype=flat.dtype).copy_(flat)
        data = flat.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        storage = StorageRef(dtype=dtype, numel=t.numel(), data=data)
        stride, acc = [], 1  # row-major strides of the bytes just written (t's own may differ on size-1 dims)
        for size in reversed(t.shape):
            stride.append(acc)
            acc *= size
        return cls(storage, 0, tuple(t.shape), tuple(reversed(stride)), bool(tensor.requires_grad), is_parameter)

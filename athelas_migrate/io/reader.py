"""Reading any supported checkpoint file into plain values and lazy tensors, safely.

Supported: torch zip checkpoints (Lightning `.ckpt`, bare `torch.save(state_dict)`,
whole pickled legacy modules) and `.safetensors`. Every refusal is an InputError
with a one-line message; no byte of the file is executed.
"""

from __future__ import annotations

import json
import os
import stat
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from .safe_unpickle import Stub, unpickle
from .tensor_ref import SAFETENSORS_TO_DTYPE, StorageRef, TensorRef
from .zip_archive import Record, read_member, read_records

STAMP_KEY = "athelas_migrate"


@dataclass
class RawCheckpoint:
    """What a file holds, before any interpretation of family or layout."""

    path: str
    size: int
    kind: str  # "lightning" | "state_dict" | "pickled_module" | "safetensors"
    state_dict: OrderedDict[str, TensorRef]
    top: dict[str, Any] = field(default_factory=dict)  # the whole top-level dict (lightning)
    hyper_parameters: dict[str, Any] | None = None
    module_classpath: str | None = None  # pickled modules: the class that was pickled
    module_classes: dict[str, str] = field(default_factory=dict)  # submodule name -> classpath
    stamp: dict[str, Any] | None = None
    prefix: str = "archive"

    @property
    def dtypes(self) -> set[str]:
        return {t.dtype for t in self.state_dict.values()}


def _check_path(path: str) -> int:
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file") from exc
    except PermissionError as exc:
        raise InputError(f"{path}: permission denied") from exc
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path}: is a directory, not a checkpoint file")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied")
    if st.st_size == 0:
        raise InputError(f"{path}: empty file")
    return st.st_size


def read_checkpoint(path: str | os.PathLike[str]) -> RawCheckpoint:
    """Read `path` safely; tensors come back as lazy TensorRefs into the file."""
    path = os.path.abspath(os.fspath(path))
    size = _check_path(path)
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head[:4] == b"PK\x03\x04":
        return _read_zip(path, size)
    if len(head) >= 9 and head[8:9] == b"{":
        return _read_safetensors(path, size)
    if head[:1] == b"\x80" and len(head) > 1 and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise InputError(f"{path}: legacy (pre-zip) torch serialization is not supported; re-save it with "
                         "torch>=1.6 (torch.save with the default zip format) in a trusted environment")
    kind = "text" if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "binary data"
    raise InputError(f"{path}: not a checkpoint (looks like {kind}; expected a torch zip archive or safetensors)")


def _read_zip(path: str, size: int) -> RawCheckpoint:
    records = read_records(path, size)
    pkl_names = [n for n in records if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkl_names) != 1:
        raise InputError(f"{path}: a zip archive but not a torch checkpoint (no single data.pkl)")
    prefix = pkl_names[0].split("/", 1)[0]
    byteorder = records.get(f"{prefix}/byteorder")
    if byteorder is not None and read_member(path, byteorder).strip() not in (b"little", b""):
        raise InputError(f"{path}: big-endian checkpoints are not supported")
    storages: dict[str, StorageRef] = {}

    def storage_for(key: str, dtype: str, numel: int) -> StorageRef:
        ref = storages.get(key)
        if ref is None:
            rec: Record | None = records.get(f"{prefix}/data/{key}")
            if rec is None:
                raise InputError(f"{path}: corrupted checkpoint: storage record {key!r} is missing")
            ref = StorageRef(dtype=dtype, numel=numel, path=path, offset=rec.offset, key=key, crc32=rec.crc32)
            if ref.nbytes > rec.size:
                raise InputError(f"{path}: corrupted checkpoint: storage {key!r} is shorter than its tensor")
            if ref.nbytes != rec.size:
                ref.crc32 = None  # not the whole record: cannot reuse its CRC
            storages[key] = ref
        return ref

    obj = unpickle(read_member(path, records[pkl_names[0]]), storage_for)
    _check_views(obj, path)
    raw = _interpret(obj, path, size)
    raw.prefix = prefix
    return raw


def _check_views(obj: Any, path: str) -> None:
    """Every tensor view must lie inside its storage (a crafted file could point elsewhere)."""
    stack = [obj]
    while stack:
        cur = stack.pop()
        if isinstance(cur, TensorRef):
            if any(s < 0 for s in cur.shape) or any(s < 0 for s in cur.stride) or cur.offset < 0:
                raise InputError(f"{path}: corrupted checkpoint: a tensor has a negative size or stride")
            if cur.numel:
                last = cur.offset + sum((n - 1) * s for n, s in zip(cur.shape, cur.stride))
                if last >= cur.storage.numel:
                    raise InputError(f"{path}: corrupted checkpoint: a tensor view lies outside its storage")
        elif isinstance(cur, dict):
            stack.extend(cur.values())
        elif isinstance(cur, list | tuple):
            stack.extend(cur)
        elif isinstance(cur, Stub) and cur.state is not None:
            stack.append(cur.state)


def _interpret(obj: Any, path: str, size: int) -> RawCheckpoint:
    if isinstance(obj, Stub):
        return _from_module(obj, path, size)
    if not isinstance(obj, dict):
        raise InputError(f"{path}: not a checkpoint: the file holds a {type(obj).__name__}, not a dict")
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        sd = obj["state_dict"]
        _require_tensors(sd, path)
        hp = obj.get("hyper_parameters")
        return RawCheckpoint(path, size, "lightning", OrderedDict(sd), top=obj,
                             hyper_parameters=hp if isinstance(hp, dict) else None,
                             stamp=obj.get(STAMP_KEY) if isinstance(obj.get(STAMP_KEY), dict) else None)
    if obj and all(isinstance(v, TensorRef) for v in obj.values()):
        return RawCheckpoint(path, size, "state_dict", OrderedDict(obj))
    raise InputError(f"{path}: not a checkpoint: a dict without 'state_dict' whose values are not all tensors")


def _require_tensors(sd: dict, path: str) -> None:
    bad = [k for k, v in sd.items() if not isinstance(v, TensorRef)]
    if bad:
        raise InputError(f"{path}: state_dict entries that are not tensors: {', '.join(map(str, bad[:5]))}")


def _from_module(root: Stub, path: str, size: int) -> RawCheckpoint:
    """A whole pickled module: collect its state dict the way `Module.state_dict()` orders it."""
    sd: OrderedDict[str, TensorRef] = OrderedDict()
    classes: dict[str, str] = {}

    def walk(mod: Stub, prefix: str) -> None:
        state = mod.state if isinstance(mod.state, dict) else {}
        classes[prefix.rstrip(".")] = mod.classpath
        non_persistent = state.get("_non_persistent_buffers_set") or set()
        for name, t in (state.get("_parameters") or {}).items():
            if isinstance(t, TensorRef):
                sd[prefix + name] = t
        for name, t in (state.get("_buffers") or {}).items():
            if isinstance(t, TensorRef) and name not in non_persistent:
                sd[prefix + name] = t
        for name, child in (state.get("_modules") or {}).items():
            if isinstance(child, Stub):
                walk(child, f"{prefix}{name}.")

    walk(root, "")
    state = root.state if isinstance(root.state, dict) else {}
    hp = state.get("_hparams")
    return RawCheckpoint(path, size, "pickled_module", sd, hyper_parameters=dict(hp) if isinstance(hp, dict) else None,
                         module_classpath=root.classpath, module_classes=classes)


def _read_safetensors(path: str, size: int) -> RawCheckpoint:
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > min(size - 8, 100 << 20):
            raise InputError(f"{path}: truncated or corrupted safetensors file (header length {n})")
        try:
            header = json.loads(fh.read(n))
        except ValueError as exc:
            raise InputError(f"{path}: corrupted safetensors header ({exc})") from exc
    if not isinstance(header, dict):
        raise InputError(f"{path}: corrupted safetensors header")
    meta = header.pop("__metadata__", None) or {}
    base = 8 + n
    sd: OrderedDict[str, TensorRef] = OrderedDict()
    entries = []
    for name, info in header.items():
        try:
            dtype = SAFETENSORS_TO_DTYPE[info["dtype"]]
            shape = tuple(int(s) for s in info["shape"])
            start, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{path}: corrupted safetensors entry {name!r}") from exc
        entries.append((start, name, dtype, shape, end))
    for start, name, dtype, shape, end in sorted(entries):
        numel = 1
        for s in shape:
            numel *= s
        ref = StorageRef(dtype=dtype, numel=numel, path=path, offset=base + start)
        if end - start != ref.nbytes or base + end > size or start < 0:
            raise InputError(f"{path}: truncated or corrupted safetensors data for {name!r}")
        stride, acc = [], 1
        for s in reversed(shape):
            stride.append(acc)
            acc *= s
        sd[name] = TensorRef(ref, 0, shape, tuple(reversed(stride)))
    order = meta.get("athelas_migrate.key_order")
    if order:
        try:
            keys = json.loads(order)
            if sorted(keys) == sorted(sd):
                sd = OrderedDict((k, sd[k]) for k in keys)
        except ValueError:
            pass
    stamp = hp = None
    try:
        stamp = json.loads(meta[STAMP_KEY]) if STAMP_KEY in meta else None
        hp = json.loads(meta["hyper_parameters"]) if "hyper_parameters" in meta else None
    except ValueError as exc:
        raise InputError(f"{path}: corrupted safetensors metadata ({exc})") from exc
    return RawCheckpoint(path, size, "safetensors", sd, hyper_parameters=hp, stamp=stamp)

"""Reading any supported checkpoint file into plain values and lazy tensors, safely.

Supported: torch zip checkpoints (Lightning `.ckpt`, bare `torch.save(state_dict)`,
whole pickled legacy modules), the same in the legacy pre-zip torch format
(io/legacy_format.py) and `.safetensors`. Every refusal is an InputError
with a one-line message; no byte of the file is executed. A new format is one more test of the file's
first bytes in `_read_unvalidated`, dispatching to a reader that returns a `RawCheckpoint`.
"""

from __future__ import annotations

import json
import operator
import os
import stat
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError, NotACheckpointError
from .legacy_format import looks_legacy, looks_tar, read_legacy
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
    format: str = "zip"  # "zip" | "legacy" (pre-zip torch serialization) | "safetensors"

    @property
    def dtypes(self) -> set[str]:
        """The dtype names of the state dict's tensors."""
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


_MAGIC = [
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"), (b"\x1f\x8b", "gzip data"), (b"\x7fELF", "an executable"),
    (b"\x89HDF", "an HDF5 file"), (b"\x93NUMPY", "a numpy .npy file"), (b"BZh", "bzip2 data"),
    (b"\xfd7zXZ", "xz data"), (b"7z\xbc\xaf", "a 7-zip archive"),
]


def read_checkpoint(path: str | os.PathLike[str]) -> RawCheckpoint:
    """Read `path` safely; tensors come back as lazy TensorRefs into the file. Every non-tensor value is
    validated once here (bounded expansion, typed top level: io/values.py) before anything renders or uses it.

    Args:
        path: a torch zip checkpoint, a legacy-format (pre-zip) one, or safetensors.

    Returns:
        The checkpoint, unpickled without running any code from it.

    Raises:
        InputError: (raised by the helpers) the file is unreadable, not a checkpoint, malformed, or holds
            values outside the schema.
    """
    from .values import validate_checkpoint

    raw = _read_unvalidated(path)
    validate_checkpoint(raw)
    return raw


def _read_unvalidated(path: str | os.PathLike[str]) -> RawCheckpoint:
    path = os.path.abspath(os.fspath(path))
    size = _check_path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except PermissionError as exc:
        raise InputError(f"{path}: permission denied") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    try:
        if head[:4] == b"PK\x03\x04":
            return _read_zip(path, size)
        if len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < 1 << 32:
            return _read_safetensors(path, size)
        if looks_legacy(head):
            raw = _interpret(read_legacy(path, size), path, size)
            raw.format = "legacy"
            return raw
    except InputError as exc:
        if not str(exc).startswith(path):
            exc.args = (f"{path}: {exc}",)
        raise
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if head[:1] == b"\x80" and len(head) > 1 and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise InputError(f"{path}: not a checkpoint: a bare pickle (neither a torch zip archive nor the legacy "
                         "torch format, whose first pickle is torch's magic number)")
    if looks_tar(head):
        raise InputError(f"{path}: the tar-based torch format (torch < 0.4) is not supported (torch.load("
                         "weights_only=True) cannot read it either); re-save it with a newer torch in a trusted "
                         "environment")
    if head[:4] in (b"PK\x05\x06", b"PK\x01\x02"):
        raise InputError(f"{path}: truncated or corrupted checkpoint archive (no local file header at the start)")
    kind = next((what for magic, what in _MAGIC if head.startswith(magic)), None)
    if kind is None:
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
                raise InputError(f"{path}: corrupted checkpoint: storage record {key[:40]!r} is missing")
            ref = StorageRef(dtype=dtype, numel=numel, path=path, offset=rec.offset, key=key, crc32=rec.crc32,
                             record=(rec.size, rec.crc32))
            if ref.nbytes > rec.size:
                raise InputError(f"{path}: corrupted checkpoint: storage {key!r} is shorter than its tensor")
            if ref.nbytes != rec.size:
                ref.crc32 = None  # not the whole record: cannot reuse its CRC
            storages[key] = ref
        elif ref.dtype != dtype or ref.numel != numel:
            raise InputError(f"{path}: corrupted checkpoint: storage {key[:40]!r} is declared twice with different "
                             "types or sizes")
        return ref

    obj = unpickle(read_member(path, records[pkl_names[0]]), storage_for)  # checks every tensor view
    raw = _interpret(obj, path, size)
    raw.prefix = prefix
    return raw


def _interpret(obj: Any, path: str, size: int) -> RawCheckpoint:
    if isinstance(obj, Stub):
        return _from_module(obj, path, size)
    if not isinstance(obj, dict):
        kind = "tensor" if isinstance(obj, TensorRef) else type(obj).__name__
        raise NotACheckpointError(f"{path}: not a checkpoint: the file holds a {kind}, not a dict")
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        sd = obj["state_dict"]
        _require_tensors(sd, path)
        hp = obj.get("hyper_parameters")
        return RawCheckpoint(path, size, "lightning", OrderedDict(sd), top=obj,
                             hyper_parameters=hp if isinstance(hp, dict) else None,
                             stamp=obj.get(STAMP_KEY) if isinstance(obj.get(STAMP_KEY), dict) else None)
    if obj and all(isinstance(v, TensorRef) for v in obj.values()):
        _require_tensors(obj, path)
        return RawCheckpoint(path, size, "state_dict", OrderedDict(obj))
    raise NotACheckpointError(f"{path}: not a checkpoint: a dict without 'state_dict' whose values are not all tensors")


def _require_tensors(sd: dict, path: str) -> None:
    bad = [k for k, v in sd.items() if not isinstance(v, TensorRef)]
    if bad:
        raise InputError(f"{path}: state_dict entries that are not tensors: {', '.join(str(b)[:60] for b in bad[:5])}")
    _check_keys(sd, path)


def _check_keys(sd: dict, path: str) -> None:
    """Keys must be printable strings: they end up in messages on users' terminals (no escape sequences)."""
    keys = [k for k in sd if not isinstance(k, str)]
    if keys:
        raise InputError(f"{path}: state_dict keys that are not strings: {', '.join(repr(k)[:60] for k in keys[:5])}")
    keys = [k for k in sd if not k.isprintable()]
    if keys:
        raise InputError(f"{path}: state_dict keys with control characters: "
                         f"{', '.join(repr(k)[:60] for k in keys[:5])}")


def _from_module(root: Stub, path: str, size: int) -> RawCheckpoint:
    """A whole pickled module: collect its state dict the way `Module.state_dict()` orders it."""
    sd: OrderedDict[str, TensorRef] = OrderedDict()
    classes: dict[str, str] = {}
    seen: set[int] = set()

    def table(state: dict, name: str) -> dict:
        value = state.get(name)
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise InputError(f"{path}: not a torch module: its {name} is not a dict keyed by names")
        return value

    def walk(mod: Stub, prefix: str, depth: int) -> None:
        if id(mod) in seen or depth > 64:
            raise InputError(f"{path}: not a torch module tree: submodule {prefix.rstrip('.')!r} repeats or nests "
                             "too deeply")
        seen.add(id(mod))
        state = mod.state if isinstance(mod.state, dict) else {}
        classes[prefix.rstrip(".")] = mod.classpath
        non_persistent = state.get("_non_persistent_buffers_set") or set()
        if not isinstance(non_persistent, set | list | tuple | dict):
            raise InputError(f"{path}: not a torch module: malformed _non_persistent_buffers_set")
        for name, t in table(state, "_parameters").items():
            if isinstance(t, TensorRef):
                sd[prefix + name] = t
        for name, t in table(state, "_buffers").items():
            if isinstance(t, TensorRef) and name not in non_persistent:
                sd[prefix + name] = t
        for name, child in table(state, "_modules").items():
            if isinstance(child, Stub):
                walk(child, f"{prefix}{name}.", depth + 1)

    walk(root, "", 0)
    _check_keys(sd, path)
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
        except (ValueError, RecursionError) as exc:
            raise InputError(f"{path}: corrupted safetensors header ({str(exc)[:100]})") from exc
    if not isinstance(header, dict):
        raise InputError(f"{path}: corrupted safetensors header")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise InputError(f"{path}: corrupted safetensors metadata (not a map of strings)")
    base = 8 + n
    sd: OrderedDict[str, TensorRef] = OrderedDict()
    entries = []
    for name, info in header.items():
        if isinstance(info, dict) and isinstance(info.get("dtype"), str) and info["dtype"] not in SAFETENSORS_TO_DTYPE:
            raise InputError(f"{path}: unsupported safetensors dtype {info['dtype'][:20]!r} for {name[:80]!r}")
        try:
            dtype = SAFETENSORS_TO_DTYPE[info["dtype"]]
            if not isinstance(info["shape"], list) or len(info["shape"]) > 64:
                raise TypeError("shape")
            shape = tuple(operator.index(s) for s in info["shape"])
            start, end = (operator.index(x) for x in info["data_offsets"])
            if any(s < 0 for s in shape):
                raise ValueError("negative size")
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{path}: corrupted safetensors entry {name[:80]!r}") from exc
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
    _check_keys(sd, path)
    order = meta.get("athelas_migrate.key_order")
    if order:
        try:
            keys = json.loads(order)
            if isinstance(keys, list) and all(isinstance(k, str) for k in keys) and sorted(keys) == sorted(sd):
                sd = OrderedDict((k, sd[k]) for k in keys)
        except (ValueError, RecursionError):
            pass
    stamp = hp = None
    try:
        stamp = json.loads(meta[STAMP_KEY]) if STAMP_KEY in meta else None
        hp = json.loads(meta["hyper_parameters"]) if "hyper_parameters" in meta else None
    except (ValueError, RecursionError) as exc:
        raise InputError(f"{path}: corrupted safetensors metadata ({str(exc)[:100]})") from exc
    if not isinstance(stamp, dict | None) or not isinstance(hp, dict | None):
        raise InputError(f"{path}: corrupted safetensors metadata (stamp or hyper-parameters are not objects)")
    return RawCheckpoint(path, size, "safetensors", sd, hyper_parameters=hp, stamp=stamp, format="safetensors")

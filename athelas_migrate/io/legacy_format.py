"""The legacy (pre-zip) torch serialization, read with the restricted unpickler.

What ``torch.save(..., _use_new_zipfile_serialization=False)`` (and every torch < 1.6)
writes, documented in torch's ``serialization.py`` (``_legacy_save``): five pickles in
a row -- the magic number, the protocol version (1001), a ``sys_info`` dict, the object
pickle whose storages are persistent ids ``('storage', StorageType, key, location,
numel, view_metadata)``, the sorted list of storage keys -- then, for each key in that
order, an 8-byte little-endian element count and the storage's raw bytes.
``torch.load(weights_only=True)`` reads it; so does this module, without executing
anything, and the storages stay lazy references (file, offset) like the zip reader's,
so migrating such a file to the zip format copies the tensor bytes.

The older tar format (torch < 0.4) is refused with a clear message, as
``torch.load(weights_only=True)`` refuses it.
"""

from __future__ import annotations

import mmap
from typing import Any

from ..errors import AthelasError, InputError
from .safe_unpickle import prescan, unpickle
from .tensor_ref import DTYPES, StorageRef

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001


def looks_legacy(head: bytes) -> bool:
    """Whether a file is in the legacy (pre-zip) torch format.

    Args:
        head: the file's first bytes (at least 14).

    Returns:
        True for a pickle (protocol 2..5) whose first value is the legacy magic number (LONG1, 10 bytes).
    """
    return head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05") and \
        head[2:4] == b"\x8a\x0a" and int.from_bytes(head[4:14], "little") == MAGIC_NUMBER


def looks_tar(head: bytes) -> bool:
    """Whether a file is a POSIX tar archive, the torch < 0.4 format (refused, with its own message).

    Args:
        head: the file's first bytes (at least 262).

    Returns:
        True when 'ustar' sits at offset 257.
    """
    return head[257:262] == b"ustar"


def _no_storage(key: str, dtype: str, numel: int) -> Any:
    raise InputError("corrupted checkpoint: a storage outside the object pickle of a legacy-format file")


def _small_pickle(mm: Any, start: int, what: str) -> tuple[Any, int]:
    end = prescan(mm, start)
    return unpickle(mm[start:end], _no_storage), end


def read_legacy(path: str, size: int) -> Any:
    """The object a legacy-format file holds.

    Args:
        path: the file (`looks_legacy` is true for it).
        size: its size in bytes.

    Returns:
        Plain values and TensorRefs into the file.

    Raises:
        InputError: a truncated or corrupted file.
    """
    with open(path, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ)
    try:
        return _read(mm, path, size)
    except AthelasError:
        raise
    except (ValueError, IndexError, OverflowError) as exc:  # truncated: a slice or a count past the end
        raise InputError(f"truncated or corrupted legacy-format checkpoint ({exc})"[:300]) from exc
    finally:
        mm.close()


def _read(mm: Any, path: str, size: int) -> Any:
    magic, pos = _small_pickle(mm, 0, "magic number")
    version, pos = _small_pickle(mm, pos, "protocol version")
    if magic != MAGIC_NUMBER or version != PROTOCOL_VERSION:
        raise InputError(f"not a readable checkpoint: legacy torch format with an unknown magic number or "
                         f"protocol version ({str(version)[:20]})")
    sys_info, pos = _small_pickle(mm, pos, "sys_info")
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise InputError("big-endian (or unmarked) legacy-format checkpoints are not supported")
    storages: dict[str, StorageRef] = {}

    def storage_for(key: str, dtype: str, numel: int) -> StorageRef:
        ref = storages.get(key)
        if ref is None:  # the offset is known once the key list after this pickle is read
            ref = storages[key] = StorageRef(dtype=dtype, numel=numel, path=path, offset=-1, key=key)
        elif ref.dtype != dtype or ref.numel != numel:
            raise InputError(f"corrupted checkpoint: storage {key[:40]!r} is declared twice with different "
                             "types or sizes")
        return ref

    end = prescan(mm, pos)
    obj = unpickle(mm[pos:end], storage_for, legacy=True)
    keys, pos = _small_pickle(mm, end, "storage keys")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or len(set(keys)) != len(keys):
        raise InputError("corrupted checkpoint: the storage key list of a legacy-format file is malformed")
    if set(keys) != set(storages):
        raise InputError("corrupted checkpoint: the storage key list does not match the storages the object "
                         "pickle names")
    for key in keys:
        ref = storages[key]
        if pos + 8 > size:
            raise InputError(f"truncated checkpoint: storage {key[:40]!r} is missing")
        count = int.from_bytes(mm[pos : pos + 8], "little", signed=True)
        if count != ref.numel:
            raise InputError(f"corrupted checkpoint: storage {key[:40]!r} holds {count} elements, the object "
                             f"pickle says {ref.numel}")
        ref.offset = pos + 8
        pos = ref.offset + ref.numel * DTYPES[ref.dtype][0]
        if pos > size:
            raise InputError(f"truncated checkpoint: storage {key[:40]!r} ends past the end of the file")
    if pos != size:
        raise InputError(f"corrupted checkpoint: {size - pos} unexpected bytes after the last storage")
    return obj

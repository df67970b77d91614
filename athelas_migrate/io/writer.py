"""Atomic writing of `.ckpt` and `.safetensors` outputs.

Everything goes to a temporary file in the destination directory, is flushed
and fsynced, then renamed over the destination: readers see the old file or
the complete new one, never a partial write; a failure leaves nothing behind.

A process killed outright (SIGKILL, power loss) cannot clean up: it leaves its
temporary file, named `.<NAME>.<HOST>.<PID>.<RANDOM>.partial` beside NEW (and never
NEW itself). The next write to the same NEW removes such leftovers of processes on
this host that no longer exist (`clean_stale_partials`); files of live processes and
of other hosts (a shared file system) are left alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import socket
from collections.abc import Iterator
from typing import Any

from .pickle_writer import dumps
from .tensor_ref import DTYPES, TensorRef
from .zip_archive import Member, write_members

PARTIAL_SUFFIX = ".partial"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:64] or "host"


def partial_name(dst: str) -> str:
    """The temporary file atomic_output writes for `dst` (recognisable: host, PID, random token)."""
    dst = os.path.abspath(dst)
    return os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.{_host()}.{os.getpid()}."
                                              f"{secrets.token_hex(4)}{PARTIAL_SUFFIX}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_partials(dst: str) -> list[str]:
    """Remove temporary files of earlier writes to `dst` whose process (on this host) is gone."""
    dst = os.path.abspath(dst)
    directory, base = os.path.split(dst)
    pattern = re.compile(rf"^\.{re.escape(base)}\.{re.escape(_host())}\.(\d+)\.[0-9a-f]+{re.escape(PARTIAL_SUFFIX)}$")
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        m = pattern.match(name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))
                removed.append(name)
    return removed


@contextlib.contextmanager
def atomic_output(dst: str) -> Iterator[Any]:
    """Yield a binary file handle; on success it replaces `dst` atomically, on failure it vanishes."""
    dst = os.path.abspath(dst)
    directory = os.path.dirname(dst)
    clean_stale_partials(dst)
    tmp = partial_name(dst)
    fh = os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb")
    try:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()
        os.replace(tmp, dst)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        fh.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_torch_zip(dst: str, obj: Any, prefix: str = "archive") -> None:
    """Write `obj` (plain values and TensorRefs) as a torch zip checkpoint that `torch.load` reads.

    File-backed storages are copied verbatim from their source; the output is deterministic.
    """
    pkl, storages = dumps(obj)
    members = [
        Member(f"{prefix}/data.pkl", pkl),
        Member(f"{prefix}/.format_version", b"1"),
        Member(f"{prefix}/.storage_alignment", b"64"),
        Member(f"{prefix}/byteorder", b"little"),
    ]
    digest = hashlib.sha256(pkl)
    checks = []
    for key, st in enumerate(storages):
        name = f"{prefix}/data/{key}"
        if st.data is not None:
            members.append(Member(name, data=bytes(st.data)))
        elif st.crc32 is not None:
            checks.append(st)  # never publish corrupted bytes under their original CRC: checked during the copy
            members.append(Member(name, src_path=st.path, src_offset=st.offset, size=st.nbytes, crc32=st.crc32))
        else:
            members.append(Member(name, data=bytes(st.read())))
        digest.update(f"{key}:{st.crc32 if st.crc32 is not None else members[-1].crc32}".encode())
    members.append(Member(f"{prefix}/version", b"3\n"))
    members.append(Member(f"{prefix}/.data/serialization_id", str(int(digest.hexdigest(), 16))[:40].encode()))
    with atomic_output(dst) as fh, _verifying(checks) as verified:
        write_members(fh, members)
        verified()  # raises for a corrupted source record; the temporary file is then removed


@contextlib.contextmanager
def _verifying(storages: list) -> Iterator[Any]:
    """CRC-check source records in a thread while the main thread copies them (the CRC code releases the
    GIL), so a rename costs max(copy, check) rather than their sum. Yields `wait()`, which returns when
    all passed and raises the first failure; the output must not be published before it returns."""
    if not storages:
        yield lambda: None
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="athelas-crc") as pool:
        future = pool.submit(lambda: [st.verify() for st in storages])
        yield future.result


def write_safetensors(dst: str, tensors: dict[str, TensorRef], metadata: dict[str, str]) -> None:
    """Write safetensors: a JSON header, then each tensor's bytes (copied from the source where possible)."""
    from .zip_archive import ZipWriter

    header: dict[str, Any] = {}
    offset = 0
    for name, t in tensors.items():
        header[name] = {"dtype": DTYPES[t.dtype][2], "shape": list(t.shape),
                        "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    meta = dict(metadata)
    meta["athelas_migrate.key_order"] = json.dumps(list(tensors))
    header["__metadata__"] = meta
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((-len(raw)) % 8)
    copied = {id(t.storage): t.storage for t in tensors.values()
              if t.storage.data is None and t.byte_range() is not None}
    with atomic_output(dst) as fh, _verifying(list(copied.values())) as verified:
        fh.write(len(raw).to_bytes(8, "little") + raw)
        copier = ZipWriter(fh)
        copier.pos = fh.tell()
        for t in tensors.values():
            span = t.byte_range()
            if t.storage.data is None and span is not None:
                from .zip_archive import Member as _M

                # CRC-checked by `_verifying` while this copies
                copier._copy(_M("", src_path=t.storage.path, src_offset=t.storage.offset + span[0], size=t.nbytes))
            else:
                data = bytes(t.raw_bytes())
                fh.write(data)
                copier.pos += len(data)
        for fd in copier._src.values():
            os.close(fd)
        verified()  # raises for a corrupted source record; the temporary file is then removed

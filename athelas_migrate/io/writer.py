"""Atomic writing of `.ckpt` and `.safetensors` outputs.

Readers see the old NEW or the complete new one, never a partial write, and no ending leaves a
temporary file behind. The output is written to an anonymous file in NEW's directory (Linux
`O_TMPFILE`): it has no name until it is complete, so a crash, a signal or even SIGKILL leaves
nothing, and no name can be mistaken for someone else's file. To publish it, it is fsynced, linked
under a fresh random name beside NEW (`linkat`) and renamed over NEW, and the directory is fsynced.

Where `O_TMPFILE` is unsupported (some file systems, non-Linux), a named temporary file
`.<NEW>.<random>.partial` is created with `O_EXCL` and removed on every ending this process
survives; only SIGKILL or power loss can leave it. The tool never deletes a file it did not create
in this process: there is no clean-up of "stale" files guessed from names or PIDs (that once deleted
an input named like one, and a live writer's file in another PID namespace).

SIGTERM, SIGHUP, SIGQUIT and SIGINT during a write become an `Interrupted` exception (main thread
only, and only where the signal had its default handler), so the clean-up runs; the CLI then exits
with 128 + the signal number. OSErrors of the output side become `OutputError` (exit 4).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import secrets
import signal
import threading
from collections.abc import Iterator
from typing import Any

from ..errors import OutputError
from .pickle_writer import dumps
from .tensor_ref import DTYPES, TensorRef
from .zip_archive import Member, ZipWriter, output_error, write_members

PARTIAL_SUFFIX = ".partial"
NAME_MAX = 255  # bytes per file name on Linux file systems
CAUGHT_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP", "SIGQUIT", "SIGINT") if hasattr(signal, n))
_NO_TMPFILE = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL}  # how kernels and file systems say "no O_TMPFILE"


class Interrupted(KeyboardInterrupt):
    """A termination signal arrived during a write; the partial output has been removed."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum


def temp_name(dst: str) -> str:
    """A fresh temporary name beside `dst`, within NAME_MAX (a long NEW name is shortened).

    Args:
        dst: the output path.

    Returns:
        The base name `.<NEW>.<random>.partial`.
    """
    token = f".{secrets.token_hex(16)}{PARTIAL_SUFFIX}"
    base = os.fsencode(os.path.basename(dst))[: NAME_MAX - 1 - len(token)]
    return "." + base.decode("utf-8", "ignore") + token


class OutputFile(io.BufferedWriter):
    """The handle `atomic_output` yields: an OSError while writing it is the output's fault (OutputError)."""

    dst = ""

    def write(self, data: Any) -> int:
        """`BufferedWriter.write`, raising OutputError for a failed write.

        Args:
            data: bytes-like.

        Returns:
            The number of bytes written.
        """
        try:
            return super().write(data)
        except OSError as exc:
            raise output_error(self.dst, exc) from exc

    def flush(self) -> None:
        """`BufferedWriter.flush`, raising OutputError for a failed write."""
        try:
            super().flush()
        except OSError as exc:
            raise output_error(self.dst, exc) from exc

    def seek(self, pos: int, whence: int = 0) -> int:
        """`BufferedWriter.seek`, raising OutputError for a failed flush.

        Args:
            pos: the offset, relative to `whence`.
            whence: as for `os.lseek`.

        Returns:
            The new absolute position.
        """
        try:
            return super().seek(pos, whence)
        except OSError as exc:
            raise output_error(self.dst, exc) from exc


def _anonymous_supported() -> bool:
    return hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")


class _Pending:
    """One output being written: an anonymous file, or (fallback) a named temporary this process created."""

    def __init__(self, dst: str):
        self.dst = dst
        self.name: str | None = None  # a directory entry this process created and must remove on failure
        self.fh: OutputFile | None = None
        self.dir_fd: int | None = None

    def open(self) -> OutputFile:
        try:
            self.dir_fd = os.open(os.path.dirname(self.dst), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise output_error(self.dst, exc) from exc
        self.fh = OutputFile(self._raw(self._create()))
        self.fh.dst = self.dst
        return self.fh

    @staticmethod
    def _raw(fd: int) -> io.FileIO:  # a seam for tests that simulate a full disk
        return io.FileIO(fd, "wb")

    def _create(self) -> int:
        if _anonymous_supported():
            try:
                return os.open(".", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o666, dir_fd=self.dir_fd)
            except OSError as exc:
                if exc.errno not in _NO_TMPFILE:
                    raise output_error(self.dst, exc) from exc
        name = temp_name(self.dst)
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666, dir_fd=self.dir_fd)
        except OSError as exc:
            raise output_error(self.dst, exc) from exc
        self.name = name
        return fd

    def sync(self) -> None:
        """Flush and fsync the data (the long part: still interruptible)."""
        assert self.fh is not None
        try:
            self.fh.flush()
            os.fsync(self.fh.fileno())
        except OSError as exc:
            raise output_error(self.dst, exc) from exc

    def publish(self) -> None:
        """Give the file a name if it has none, rename it over NEW, fsync the directory."""
        assert self.fh is not None
        try:
            if self.name is None:
                name = temp_name(self.dst)
                os.link(f"/proc/self/fd/{self.fh.fileno()}", name, dst_dir_fd=self.dir_fd, follow_symlinks=True)
                self.name = name
            os.replace(self.name, os.path.basename(self.dst), src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
            self.name = None
            os.fsync(self.dir_fd)
        except OSError as exc:
            raise output_error(self.dst, exc) from exc

    def abort(self, error: BaseException) -> None:
        """Drop the output. Errors closing a failed file are not news (ENOSPC again): `error` is what is raised."""
        if self.fh is not None:
            try:
                self.fh.close()
            except (OSError, OutputError):
                pass  # the same failure again (ENOSPC on the final flush); the descriptor is closed regardless
        if self.name is not None:
            try:
                os.unlink(self.name, dir_fd=self.dir_fd)
            except FileNotFoundError:
                pass
            except OSError as exc:
                error.add_note(f"could not remove the temporary file {self.name}: {exc.strerror}")
            self.name = None

    def close(self) -> None:
        if self.fh is not None and not self.fh.closed:
            self.fh.close()
        if self.dir_fd is not None:
            os.close(self.dir_fd)
            self.dir_fd = None


class _SignalGuard:
    """Turns termination signals into `Interrupted` while a write is open. Outside the guarded body (while
    the file is created or removed) a signal is only recorded and raised once that step is over, so it can
    neither be lost nor interrupt a clean-up halfway."""

    def __init__(self) -> None:
        self.deferred: int | None = None
        self.armed = False
        self.previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if not self.armed:
            self.deferred = self.deferred or signum
            return
        raise Interrupted(signum)

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python runs handlers in the main thread only
        for sig in CAUGHT_SIGNALS:
            old = signal.getsignal(sig)
            if old in (signal.SIG_DFL, signal.default_int_handler):  # ignored and custom handlers stay as they are
                self.previous[sig] = signal.signal(sig, self._handler)

    def arm(self) -> None:
        self.armed = True
        if self.deferred is not None:
            raise Interrupted(self.deferred)

    def disarm(self) -> None:
        self.armed = False

    def restore(self) -> None:
        for sig, old in self.previous.items():
            signal.signal(sig, old)
        self.previous.clear()


@contextlib.contextmanager
def atomic_output(dst: str) -> Iterator[OutputFile]:
    """Write an output atomically: on success it replaces `dst`, on any failure (or signal) it vanishes.

    Args:
        dst: the output path.

    Yields:
        The binary file handle to write.
    """
    out, guard = _Pending(os.path.abspath(dst)), _SignalGuard()
    guard.install()
    try:
        try:
            fh = out.open()
            guard.arm()
            yield fh
            out.sync()
            guard.disarm()  # from here a signal waits until NEW is published (then reaches the restored handler)
            out.publish()
        except BaseException as exc:
            guard.disarm()
            out.abort(exc)
            if guard.deferred is not None and not isinstance(exc, Interrupted):
                raise Interrupted(guard.deferred) from exc
            raise
        finally:
            out.close()
    finally:
        guard.restore()
    if guard.deferred is not None:  # arrived after NEW was published: deliver it to the restored handler
        signal.raise_signal(guard.deferred)


def write_torch_zip(dst: str, obj: Any, prefix: str = "archive") -> None:
    """Write `obj` (plain values and TensorRefs) as a torch zip checkpoint that `torch.load` reads.

    File-backed storages are copied verbatim from their source; the output is deterministic.

    Args:
        dst: the output path (written atomically).
        obj: the checkpoint's object graph.
        prefix: the archive's top folder name ("archive", as torch.save writes it; torch.load accepts any).
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
            members.append(Member(name, data=st.read_bytes()))  # pread, not mmap: no SIGBUS
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
    """Write safetensors: a JSON header, then each tensor's bytes (copied from the source where possible).

    Args:
        dst: the output path (written atomically).
        tensors: name -> tensor, in the order to write them (recorded in the metadata).
        metadata: the header's `__metadata__` strings.
    """
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
    with atomic_output(dst) as fh, _verifying(list(copied.values())) as verified, ZipWriter(fh) as copier:
        fh.write(len(raw).to_bytes(8, "little") + raw)
        copier.pos = fh.tell()
        for t in tensors.values():
            span = t.byte_range()
            if t.storage.data is None and span is not None:
                # CRC-checked by `_verifying` while this copies
                copier._copy(Member("", src_path=t.storage.path, src_offset=t.storage.offset + span[0], size=t.nbytes))
            else:
                data = bytes(t.raw_bytes())
                fh.write(data)
                copier.pos += len(data)
        verified()  # raises for a corrupted source record; the temporary file is then removed

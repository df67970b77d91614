"""Reading and writing torch's zip checkpoint format without decoding tensors.

A torch `.ckpt` is a zip of stored (uncompressed) records: `<prefix>/data.pkl`
(the object graph) and one `<prefix>/data/<key>` record per storage. Reading
gives the offset of every storage's bytes; writing emits a fresh pickle and
copies each storage's bytes from the source file with `copy_file_range`
(kernel-side, no Python buffers), reusing the CRC32 of the source record, so
the cost of a rename is the cost of copying the file. On a file system that shares extents between
files (XFS with reflink, btrfs), the block-aligned interior of each big record is cloned instead
(`FICLONERANGE`): the output then costs O(metadata) and shares the source's blocks. Big records are
placed at the source's offset within a 4 KiB block either way, so both paths write the same bytes.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import InputError, OutputError

ALIGNMENT = 64  # torch aligns storage data to 64 bytes (mmap loading relies on it)
# Copy speed (measured on ext4, 1 GB record): data placed at the same offset within a 4 KiB page as in the
# source copies whole pages (0.36 s vs 0.52 s); calls of at most 64 MiB avoid a slow single huge call; and
# starting writeback after each chunk overlaps the disk write with the copy, so the final fsync is short.
PAGE = 4096
PAGE_MATCH_MIN = 1 << 20  # records at least this large get the page-matching padding (< 4 KiB each)
COPY_CHUNK = 64 << 20
FICLONERANGE = 0x4020940D  # _IOW(0x94, 13, struct file_clone_range), linux/fs.h
_CLONE_ARGS = struct.Struct("<qQQQ")  # s64 src_fd, u64 src_offset, u64 src_length, u64 dest_offset
_LOCAL = struct.Struct("<IHHHHHIIIHH")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_EOCD = struct.Struct("<IHHHHIIH")
_EOCD64 = struct.Struct("<IQHHIIQQQQ")
_LOCATOR64 = struct.Struct("<IIQI")
_MAX32 = 0xFFFFFFFF


@dataclass
class Record:
    """One zip member: name, absolute data offset and size in the source file, CRC32."""

    name: str
    offset: int
    size: int
    crc32: int


def read_records(path: str, size: int) -> dict[str, Record]:
    """The members of a torch zip archive with their data offsets.

    Args:
        path: the checkpoint file (a zip archive).
        size: its size in bytes (records must end within it).

    Returns:
        Member name -> its record.

    Raises:
        InputError: a truncated or crafted file (compressed members, duplicate names, inconsistent sizes,
            records past the end of the file).
    """
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            records = {}
            with open(path, "rb") as fh:
                for info in infos:
                    if info.compress_type != zipfile.ZIP_STORED:
                        raise InputError(f"not a torch checkpoint: member {info.filename[:80]!r} is compressed")
                    if info.filename in records:
                        raise InputError(f"corrupted checkpoint archive: member {info.filename[:80]!r} appears twice")
                    if info.compress_size != info.file_size or not 0 <= info.header_offset < size:
                        raise InputError(f"corrupted checkpoint archive: member {info.filename[:80]!r} has "
                                         "inconsistent sizes or offsets")
                    fh.seek(info.header_offset)
                    header = fh.read(30)
                    if len(header) < 30 or header[:4] != b"PK\x03\x04":
                        raise InputError("truncated or corrupted checkpoint archive (bad local header)")
                    name_len, extra_len = struct.unpack("<HH", header[26:30])
                    offset = info.header_offset + 30 + name_len + extra_len
                    if offset + info.file_size > size:
                        raise InputError(f"truncated checkpoint: record {info.filename[:80]!r} ends past the file end")
                    records[info.filename] = Record(info.filename, offset, info.file_size, info.CRC)
    except zipfile.BadZipFile as exc:
        raise InputError(f"truncated or corrupted checkpoint archive ({exc})") from exc
    except (zipfile.LargeZipFile, NotImplementedError, ValueError, EOFError, struct.error, OverflowError,
            OSError) as exc:
        # UnicodeDecodeError (a member name flagged UTF-8 that is not) is a ValueError
        raise InputError(f"truncated or corrupted checkpoint archive ({type(exc).__name__}: {exc})"[:300]) from exc
    return records


def read_member(path: str, record: Record) -> bytes:
    """A small member's bytes, CRC-checked.

    Args:
        path: the checkpoint file (a zip archive).
        record: the member's record (`read_records`).

    Returns:
        The bytes.

    Raises:
        InputError: the bytes are short or fail the CRC check.
    """
    with open(path, "rb") as fh:
        fh.seek(record.offset)
        data = fh.read(record.size)
    if len(data) != record.size or zlib.crc32(data) != record.crc32:
        raise InputError(f"corrupted checkpoint: record {record.name!r} fails its CRC check")
    return data


@dataclass
class Member:
    """A member to write: in-memory bytes, or a byte range of a source file (copied verbatim)."""

    name: str
    data: bytes | None = None
    src_path: str | None = None
    src_offset: int = 0
    size: int = 0
    crc32: int | None = None

    def __post_init__(self) -> None:
        if self.data is not None:
            self.size = len(self.data)
            self.crc32 = zlib.crc32(self.data)


class ZipWriter:
    """Writes stored members with 64-byte aligned data, zip64 when needed, deterministic bytes."""

    def __init__(self, fh) -> None:
        self.fh = fh
        self.pos = 0
        self.central: list[tuple[str, int, int, int]] = []  # name, crc, size, header offset
        self._src: dict[str, int] = {}
        self._unshared: set[str] = set()  # sources this destination cannot share blocks with (tried once)

    def _write(self, data: bytes) -> None:
        self.fh.write(data)
        self.pos += len(data)

    def add(self, member: Member) -> None:
        """Write one member (local header, then its bytes, copied or cloned from the source when it has one).

        Args:
            member: the member; big file-backed ones land at the source's offset within a page.
        """
        name = member.name.encode("utf-8")
        zip64 = member.size >= _MAX32
        extra = struct.pack("<HHQQ", 1, 16, member.size, member.size) if zip64 else b""
        base = self.pos + 30 + len(name) + len(extra)
        align, target = ALIGNMENT, 0
        if member.data is None and member.size >= PAGE_MATCH_MIN and member.src_offset % ALIGNMENT == 0:
            align, target = PAGE, member.src_offset % PAGE  # a multiple of 64: still 64-aligned
        if base % align != target:
            pad = (target - (base + 4)) % align
            extra += b"FB" + struct.pack("<H", pad) + b"Z" * pad
        size32 = _MAX32 if zip64 else member.size
        header_offset = self.pos
        self._write(_LOCAL.pack(0x04034B50, 45 if zip64 else 20, 0x800, 0, 0, 0x21, member.crc32,
                                size32, size32, len(name), len(extra)) + name + extra)
        if member.data is not None:
            self._write(member.data)
        else:
            self._copy(member)
        self.central.append((member.name, member.crc32, member.size, header_offset))

    def _copy(self, member: Member) -> None:
        self.fh.flush()
        src_fd = self._src.get(member.src_path)
        if src_fd is None:
            try:
                src_fd = self._src[member.src_path] = os.open(member.src_path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise InputError(f"{member.src_path}: cannot read the source: {exc.strerror}") from exc
            _advise(src_fd, 0, 0, "POSIX_FADV_SEQUENTIAL")
        dst_fd = self.fh.fileno()
        os.lseek(dst_fd, self.pos, os.SEEK_SET)
        what, dst = f"{member.src_path}: record {member.name!r}", getattr(self.fh, "dst", "")
        if member.size >= PAGE_MATCH_MIN and member.src_path not in self._unshared:
            if copy_shared(src_fd, dst_fd, member.src_offset, member.size, what, dst) is None:
                self._unshared.add(member.src_path)
        else:
            copy_range(src_fd, dst_fd, member.src_offset, member.size, what, dst)
        self.pos += member.size
        self.fh.seek(self.pos)

    def close_sources(self) -> None:
        """Close every source descriptor opened for copying; called on success and on failure alike."""
        while self._src:
            os.close(self._src.popitem()[1])

    def __enter__(self) -> ZipWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_sources()

    def close(self) -> None:
        """Write the central directory and the end records (zip64 where needed), and close the sources."""
        cd_start = self.pos
        for name, crc, size, offset in self.central:
            raw = name.encode("utf-8")
            fields = []
            if size >= _MAX32:
                fields += [size, size]
            if offset >= _MAX32:
                fields.append(offset)
            extra = struct.pack("<HH", 1, 8 * len(fields)) + struct.pack(f"<{len(fields)}Q", *fields) if fields else b""
            self._write(_CENTRAL.pack(0x02014B50, 45 if fields else 20, 45 if fields else 20, 0x800, 0, 0, 0x21, crc,
                                      min(size, _MAX32), min(size, _MAX32), len(raw), len(extra), 0, 0, 0, 0,
                                      min(offset, _MAX32)) + raw + extra)
        cd_size = self.pos - cd_start
        count = len(self.central)
        if count >= 0xFFFF or cd_start >= _MAX32 or cd_size >= _MAX32:
            eocd64 = self.pos
            self._write(_EOCD64.pack(0x06064B50, 44, 45, 45, 0, 0, count, count, cd_size, cd_start))
            self._write(_LOCATOR64.pack(0x07064B50, 0, eocd64, 1))
        self._write(_EOCD.pack(0x06054B50, 0, 0, min(count, 0xFFFF), min(count, 0xFFFF), min(cd_size, _MAX32),
                               min(cd_start, _MAX32), 0))
        self.close_sources()


def _advise(fd: int, offset: int, length: int, advice: str) -> None:
    """posix_fadvise where the platform has it; a hint only (DONTNEED on dirty pages starts their writeback
    and drops nothing that is not yet on disk)."""
    fadvise, value = getattr(os, "posix_fadvise", None), getattr(os, advice, None)
    if fadvise is not None and value is not None:
        try:
            fadvise(fd, offset, length, value)
        except OSError:
            pass


def write_members(fh, members: Iterable[Member]) -> None:
    """Write a whole archive.

    Args:
        fh: the open output file, positioned at its start.
        members: the members, in archive order.
    """
    with ZipWriter(fh) as writer:
        for m in members:
            writer.add(m)
        writer.close()


def output_error(dst: str, exc: OSError) -> OutputError:
    """The one wording of 'cannot write the output' (exit 4).

    Args:
        dst: the output path the message names.
        exc: the system's error.

    Returns:
        The error to raise, naming the destination and the system's reason.
    """
    return OutputError(f"{dst}: cannot write the output: {exc.strerror or exc}")


def clone_range(src_fd: int, dst_fd: int, src_off: int, size: int, dst_off: int) -> None:
    """Make `size` bytes at `dst_off` of `dst_fd` share the blocks of `src_fd` at `src_off` (FICLONERANGE:
    offsets and size block-aligned). A seam for tests.

    Args:
        src_fd: the source descriptor.
        dst_fd: the destination descriptor.
        src_off: where the range starts in the source.
        size: how many bytes.
        dst_off: where they go in the destination.

    Raises:
        OSError: the file systems cannot share the blocks.
    """
    fcntl.ioctl(dst_fd, FICLONERANGE, _CLONE_ARGS.pack(src_fd, src_off, size, dst_off))


def copy_shared(src_fd: int, dst_fd: int, src_off: int, size: int, what: str, dst: str = "") -> int | None:
    """`copy_range`, but the block-aligned interior of the range is cloned where the destination's file
    system shares extents with the source (needs the same offset modulo the block size on both sides, which
    the zip writer's page-matching padding gives). Only the unaligned edges are copied. The same bytes land in
    the output either way.

    Args:
        src_fd: the source descriptor.
        dst_fd: the destination descriptor, positioned where the bytes go.
        src_off: where the range starts in the source.
        size: how many bytes.
        what: names the range in error messages.
        dst: the destination path, for error messages.

    Returns:
        The bytes shared, or None where cloning was refused (another file system, no reflink support): the
        caller then copies the next records without trying again.

    Raises:
        OutputError: the destination is out of space (as `copy_range`, which raises InputError too).
    """
    dst_pos = os.lseek(dst_fd, 0, os.SEEK_CUR)
    try:
        block = os.fstatvfs(dst_fd).f_bsize
    except OSError:
        block = 0
    if block <= 0 or block & (block - 1) or (src_off - dst_pos) % block:
        copy_range(src_fd, dst_fd, src_off, size, what, dst)
        return 0
    start, end = -(-src_off // block) * block, (src_off + size) // block * block
    if end <= start:
        copy_range(src_fd, dst_fd, src_off, size, what, dst)
        return 0
    try:  # the interior first: where this is refused, the record is copied exactly as without cloning
        clone_range(src_fd, dst_fd, start, end - start, dst_pos + start - src_off)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise output_error(dst, exc) from exc
        # not supported here (EOPNOTSUPP, EXDEV, EINVAL, ENOTTY...) or a source shorter than the record:
        # the plain copy says which (a short source is an InputError there)
        copy_range(src_fd, dst_fd, src_off, size, what, dst)
        return None
    copy_range(src_fd, dst_fd, src_off, start - src_off, what, dst)  # the head, up to a block boundary
    os.lseek(dst_fd, dst_pos + end - src_off, os.SEEK_SET)
    copy_range(src_fd, dst_fd, end, src_off + size - end, what, dst)  # the tail
    return end - start


def copy_range(src_fd: int, dst_fd: int, src_off: int, size: int, what: str, dst: str = "") -> None:
    """Copy exactly `size` bytes from `src_off` of `src_fd` to the current position of `dst_fd`, kernel-side
    where possible. Never via mmap (a source truncated meanwhile would kill the process with SIGBUS): a source
    that ends early is an InputError naming `what`, never a short output; a failed read is the input's fault
    (InputError), a failed write the output's (OutputError).

    Args:
        src_fd: the source descriptor.
        dst_fd: the destination descriptor, positioned where the bytes go.
        src_off: where the range starts in the source.
        size: how many bytes.
        what: names the range in error messages.
        dst: the destination path, for error messages.

    Raises:
        InputError: the source cannot be read or ends early.
        OutputError: the destination cannot be written.
    """
    remaining, dst_pos = size, os.lseek(dst_fd, 0, os.SEEK_CUR)
    while remaining:
        try:
            n = os.copy_file_range(src_fd, dst_fd, min(remaining, COPY_CHUNK), src_off)
        except OSError:
            n = 0  # unsupported here, or a real error: the plain read and write below report which side
        if n > 0 and size >= COPY_CHUNK:
            _advise(dst_fd, dst_pos, n, "POSIX_FADV_DONTNEED")  # starts writeback of this chunk now
        if n <= 0:  # no copy_file_range, or the source ended: a bounded buffer says which
            try:
                chunk = os.pread(src_fd, min(remaining, 1 << 24), src_off)
            except OSError as exc:
                raise InputError(f"{what}: cannot read the source: {exc.strerror}") from exc
            if not chunk:
                raise InputError(f"{what}: the source ended {remaining} bytes early (truncated while being "
                                 "copied?)")
            try:
                n = os.write(dst_fd, chunk)
            except OSError as exc:
                raise output_error(dst, exc) from exc
        remaining -= n
        src_off += n
        dst_pos += n

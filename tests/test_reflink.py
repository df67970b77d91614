"""Big records share their blocks with the source on reflink file systems (issue 14, part 2).

The writer clones the block-aligned interior of each big record (FICLONERANGE) and copies only the
edges. Without root, the clone is simulated through the `clone_range` seam (ranges, fallback, errors);
as root with `mkfs.xfs`, a real XFS image with reflink is loop-mounted in tmp_path and the output's
extents are read back with FIEMAP.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest
import torch

from athelas_migrate.errors import OutputError
from athelas_migrate.io import zip_archive

ROOT = Path(__file__).resolve().parents[1]
SETS = ["--set", "tab_field_list=ttm_conc_count,net_conc_amt,days_since_first_txn", "--set", "label_name=label"]
EMBEDDING = "text_subnetwork.embeddings.weight"


# ----------------------------------------------------------------------------- the clone seam, any machine


def _members(src: Path, payloads: list[bytes], offsets: list[int]) -> list[zip_archive.Member]:
    members = [zip_archive.Member("a/data.pkl", b"x" * 100)]
    for i, (p, off) in enumerate(zip(payloads, offsets)):
        members.append(zip_archive.Member(f"a/data/{i}", src_path=str(src), src_offset=off, size=len(p),
                                          crc32=zlib.crc32(p)))
    return members + [zip_archive.Member("a/version", b"3\n")]


def _source(tmp_path: Path) -> tuple[Path, list[bytes], list[int]]:
    """A file holding two big payloads at 64-aligned offsets that are not 4 KiB-aligned (as torch writes)."""
    payloads = [os.urandom((3 << 20) + 100), os.urandom((2 << 20) + 4000)]
    src, offsets = tmp_path / "src.bin", []
    with open(src, "wb") as fh:
        for p in payloads:
            fh.write(b"\0" * (64 + (-fh.tell()) % 64))
            offsets.append(fh.tell())
            fh.write(p)
    assert all(o % 4096 for o in offsets)
    return src, payloads, offsets


def _write(tmp_path: Path, name: str, members: list[zip_archive.Member]) -> bytes:
    with open(tmp_path / name, "wb") as fh:
        zip_archive.write_members(fh, members)
    return (tmp_path / name).read_bytes()


def _refuse(*args):
    raise OSError(errno.EOPNOTSUPP, "Operation not supported")


def test_clone_covers_the_aligned_interior_and_writes_the_plain_bytes(tmp_path, monkeypatch):
    src, payloads, offsets = _source(tmp_path)
    monkeypatch.setattr(zip_archive, "clone_range", _refuse)  # tmp_path may itself be XFS or btrfs
    plain = _write(tmp_path, "plain.zip", _members(src, payloads, offsets))
    calls = []

    def fake_clone(src_fd, dst_fd, src_off, size, dst_off):  # what FICLONERANGE makes the file hold
        calls.append((src_off, size, dst_off))
        os.pwrite(dst_fd, os.pread(src_fd, size, src_off), dst_off)

    monkeypatch.setattr(zip_archive, "clone_range", fake_clone)
    assert _write(tmp_path, "cloned.zip", _members(src, payloads, offsets)) == plain
    assert len(calls) == len(payloads)
    for (src_off, size, dst_off), p, off in zip(calls, payloads, offsets):
        assert src_off % 4096 == dst_off % 4096 == size % 4096 == 0
        assert off <= src_off and src_off + size <= off + len(p) and size >= len(p) - 2 * 4096
    with zipfile.ZipFile(tmp_path / "cloned.zip") as z:
        assert z.testzip() is None and [z.read(f"a/data/{i}") for i in range(2)] == payloads


def test_a_refused_clone_is_tried_once_per_source_and_copies_the_same_bytes(tmp_path, monkeypatch):
    src, payloads, offsets = _source(tmp_path)
    calls = []

    def refuse(*args):
        calls.append(args)
        _refuse()

    monkeypatch.setattr(zip_archive, "clone_range", refuse)
    _write(tmp_path, "refused.zip", _members(src, payloads, offsets))
    with zipfile.ZipFile(tmp_path / "refused.zip") as z:
        assert z.testzip() is None and [z.read(f"a/data/{i}") for i in range(2)] == payloads
    assert len(calls) == 1  # the second record goes straight to the plain copy


def test_a_full_disk_while_cloning_is_an_output_error(tmp_path, monkeypatch):
    src, payloads, offsets = _source(tmp_path)

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zip_archive, "clone_range", full)
    with pytest.raises(OutputError, match="No space left"):
        _write(tmp_path, "full.zip", _members(src, payloads, offsets))


# ----------------------------------------------------------------------------- a real XFS with reflink (root)


FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC, FIEMAP_EXTENT_LAST, FIEMAP_EXTENT_SHARED = 0x1, 0x1, 0x2000
_FIEMAP = struct.Struct("<QQIIII")  # fm_start, fm_length, fm_flags, fm_mapped_extents, fm_extent_count, reserved
_EXTENT = struct.Struct("<QQQ16xI12x")  # fe_logical, fe_physical, fe_length, reserved, fe_flags, reserved


def extents(path: Path) -> list[tuple[int, int, bool]]:
    """(logical offset, length, shared) of every extent of `path`, read with the FIEMAP ioctl."""
    out, start, count = [], 0, 256
    with open(path, "rb") as fh:
        while True:
            buf = bytearray(_FIEMAP.pack(start, (1 << 64) - 1 - start, FIEMAP_FLAG_SYNC, 0, count, 0))
            buf += bytes(_EXTENT.size * count)
            fcntl.ioctl(fh.fileno(), FS_IOC_FIEMAP, buf, True)
            mapped = _FIEMAP.unpack_from(buf)[3]
            if not mapped:
                return out
            for i in range(mapped):
                logical, _, length, flags = _EXTENT.unpack_from(buf, _FIEMAP.size + i * _EXTENT.size)
                out.append((logical, length, bool(flags & FIEMAP_EXTENT_SHARED)))
                if flags & FIEMAP_EXTENT_LAST:
                    return out
            start = out[-1][0] + out[-1][1]


@pytest.fixture
def xfs(tmp_path):
    """A loop-mounted XFS with reflink in tmp_path (root and xfsprogs needed; CI installs them)."""
    if os.geteuid() != 0:
        pytest.skip("loop-mounting an XFS image needs root")
    if shutil.which("mkfs.xfs") is None or shutil.which("mount") is None:
        pytest.skip("mkfs.xfs not installed (Debian: apt-get install xfsprogs)")
    img, mnt = tmp_path / "xfs.img", tmp_path / "mnt"
    with open(img, "wb") as fh:
        fh.truncate(512 << 20)  # sparse; XFS wants at least 300 MB
    mnt.mkdir()
    made = subprocess.run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", str(img)], capture_output=True, text=True)
    if made.returncode:
        pytest.skip(f"mkfs.xfs -m reflink=1 failed: {made.stderr.strip()[:200]}")
    mounted = subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot loop-mount an XFS image here: {mounted.stderr.strip()[:200]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def _checkpoint(path: Path) -> None:
    """The v1 BimodalCNN fixture with a 19 MB embedding: a rename-only migration with one big record."""
    ckpt = torch.load(ROOT / "fixtures" / "bimodal_cnn_v1.ckpt", weights_only=True)
    ckpt["state_dict"][EMBEDDING] = torch.randn(300_000, 16, generator=torch.Generator().manual_seed(0))
    torch.save(ckpt, path)


def _migrate(src: Path, dst: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")
    return subprocess.run([sys.executable, "-m", "athelas_migrate", "-q", "ckpt", str(src), str(dst), *SETS],
                          capture_output=True, text=True, env=env)


def test_rename_only_migration_on_xfs_shares_the_tensor_blocks(xfs, tmp_path):
    src = xfs / "src.ckpt"
    _checkpoint(src)
    r = _migrate(src, xfs / "out.ckpt")
    assert r.returncode == 0, r.stderr
    (tmp_path / "plain").mkdir()
    assert _migrate(src, tmp_path / "plain" / "out.ckpt").returncode == 0  # another file system: copied
    out = (xfs / "out.ckpt").read_bytes()
    assert out == (tmp_path / "plain" / "out.ckpt").read_bytes()  # same padding, so the plain path's bytes
    ext = extents(xfs / "out.ckpt")
    shared = sum(n for _, n, s in ext if s)
    unshared = sum(n for _, n, s in ext if not s)
    assert shared >= 300_000 * 16 * 4 - 2 * 4096, ext
    assert unshared <= 0.02 * len(out), ext
    new = torch.load(xfs / "out.ckpt", weights_only=True)
    old = torch.load(src, weights_only=True)
    assert torch.equal(new["state_dict"]["text_encoder.embeddings.weight"], old["state_dict"][EMBEDDING])


def test_a_corrupted_source_is_refused_on_xfs_too(xfs):
    src = xfs / "src.ckpt"
    _checkpoint(src)
    rec = zip_archive.read_records(str(src), os.path.getsize(src))
    big = max(rec.values(), key=lambda r: r.size)
    with open(src, "r+b") as fh:  # a flipped byte inside the cloned interior: only the CRC check can see it
        fh.seek(big.offset + big.size // 2)
        b = fh.read(1)
        fh.seek(big.offset + big.size // 2)
        fh.write(bytes([b[0] ^ 0xFF]))
    r = _migrate(src, xfs / "out.ckpt")
    assert r.returncode == 3 and "CRC" in r.stderr, r.stderr
    assert sorted(os.listdir(xfs)) == ["src.ckpt"]

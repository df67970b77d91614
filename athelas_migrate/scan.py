"""Reading every source byte on purpose: the provenance digests and the NaN/Inf scan of tensor values.

The pipeline calls these; they cost about a file read each, so they run by default only up to
`VALUE_SCAN_LIMIT` bytes, and past it only with ATHELAS_MIGRATE_FULL_CHECKS=1 (`full_checks`). To add a
check of values, write it here as a function of the state dict (reading `TensorRef.raw_bytes`, never torch),
call it from `pipeline.plan_and_apply` under the same limit, and report what it finds as a warning.
"""

from __future__ import annotations

import hashlib
import os

from .io.reader import RawCheckpoint
from .io.tensor_ref import TensorRef
from .io.zip_archive import read_member, read_records

FULL_CHECKS_ENV = "ATHELAS_MIGRATE_FULL_CHECKS"
# Checkpoints up to this many tensor bytes get a NaN/Inf scan by default (it reads every value, about
# as costly as copying them); larger ones only with ATHELAS_MIGRATE_FULL_CHECKS=1, so a rename of a
# multi-GB checkpoint stays at the cost of a file copy.
VALUE_SCAN_LIMIT = 256 << 20


def full_checks() -> bool:
    """`ATHELAS_MIGRATE_FULL_CHECKS=1`: also read every source byte (a full-file sha256 in the provenance and
    a NaN/Inf scan of every floating tensor). Off by default: a rename then costs about a file copy.

    Returns:
        Whether the variable is set to a true value.
    """
    return os.environ.get(FULL_CHECKS_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def file_sha256(path: str) -> str:
    """sha256 of the whole file (reads every byte: about 0.8 s per GB here, twice a `cp` of it).

    Args:
        path: any file; read in 16 MiB chunks.

    Returns:
        The hex digest.
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def structural_sha256(path: str) -> str:
    """sha256 of a torch zip checkpoint's structure, without reading the tensor bytes: every record's name,
    size and CRC32 (central-directory order) plus the full bytes of data.pkl (the object graph: every
    non-tensor value). Equal digests mean the same values up to a CRC32 collision: accidental corruption
    changes it, a deliberate forgery of a tensor record's CRC would not (use the full sha256 for that).
    The writer checks each copied record against this CRC, so the digest describes the bytes it copied.

    Args:
        path: a torch zip checkpoint.

    Returns:
        The hex digest.
    """
    records = read_records(path, os.path.getsize(path))
    h = hashlib.sha256(b"athelas-migrate structural digest v1\n")
    for rec in records.values():
        h.update(f"{rec.name}\0{rec.size}\0{rec.crc32:08x}\n".encode())
        if rec.name.endswith("/data.pkl") and rec.name.count("/") == 1:
            h.update(read_member(path, rec))
    return h.hexdigest()


def source_digests(raw: RawCheckpoint, limit: int = VALUE_SCAN_LIMIT) -> dict[str, str]:
    """The provenance digests of the source: structural for torch zips (cheap), plus the full-file sha256
    for files up to `limit` bytes, with ATHELAS_MIGRATE_FULL_CHECKS=1, or for safetensors (which has no
    per-record CRCs).

    Args:
        raw: the source as read.
        limit: the largest file that gets the full sha256 by default (the pipeline passes its
            `VALUE_SCAN_LIMIT`).

    Returns:
        `source_structural_sha256` and/or `source_sha256` -> hex digest.
    """
    out = {}
    zipped = raw.kind != "safetensors" and raw.format == "zip"  # legacy-format files have no CRCs either
    if zipped:
        out["source_structural_sha256"] = structural_sha256(raw.path)
    if not zipped or full_checks() or raw.size <= limit:
        out["source_sha256"] = file_sha256(raw.path)
    return out



def nonfinite_tensors(state: dict[str, TensorRef], changed_only: bool = False) -> list[str]:
    """Names of floating tensors holding NaN or Inf, scanned in chunks with numpy.

    `changed_only`: only tensors whose values a tensor operation produced (in-memory storages). The
    others are copied verbatim from the source, so they hold exactly what the source held; scanning them
    reads every byte of the file (about 0.1 s per GB, a third of a `cp`), which a rename should not pay.

    Args:
        state: name -> TensorRef; values are read as bytes, never decoded into torch.
        changed_only: see above.

    Returns:
        The names, in state order.
    """
    bad = []
    for name, t in state.items():
        if t.dtype not in ("float32", "float64", "float16") or not t.numel:
            continue
        if changed_only and t.storage.data is None:
            continue
        import numpy as np

        arr = np.frombuffer(t.raw_bytes(), dtype=np.dtype(t.dtype))
        step = 1 << 22
        if not all(np.isfinite(arr[i : i + step]).all() for i in range(0, arr.size, step)):
            bad.append(name)
    return bad

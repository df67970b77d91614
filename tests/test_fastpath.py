"""The fast path (storage records copied verbatim, no torch) writes what the general path writes.

General path: every tensor decoded with `to_torch()` and re-wrapped in memory with
`TensorRef.from_torch` before writing (what a torch.load/torch.save re-encoding does). Both outputs
must hold the same checkpoint content for every fixture; and a rename-only migration must really
take the fast path: no torch import, no decoding, storage records copied with their source CRCs.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from athelas_migrate import api
from athelas_migrate.errors import InputError
from athelas_migrate.io import zip_archive
from athelas_migrate.io.tensor_ref import TensorRef
from athelas_migrate.pipeline import plan_and_apply, structural_sha256, write_result

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures"


def _entries():
    out = []
    for e in json.loads((FIX / "manifest.json").read_text()):
        out.append((e["file"], dict(e["overrides"])))
    fusion = FIX / "fusion_manifest.json"
    if fusion.exists():
        for e in json.loads(fusion.read_text()):
            ov = dict(e["overrides"])
            if "bert_config" in e:
                ov["bert_config"] = e["bert_config"]
            out.append((e["file"], ov))
    return out


ENTRIES = _entries()
V1_OVERRIDES = {"tab_field_list": ["ttm_conc_count", "net_conc_amt", "days_since_first_txn"], "label_name": "label"}


def _materialise(obj, memo):
    """The general path: every TensorRef decoded with torch and re-wrapped as in-memory bytes."""
    if isinstance(obj, TensorRef):
        if id(obj) not in memo:
            memo[id(obj)] = TensorRef.from_torch(obj.to_torch(), obj.is_parameter)
        return memo[id(obj)]
    if isinstance(obj, OrderedDict):
        return OrderedDict((k, _materialise(v, memo)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _materialise(v, memo) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_materialise(v, memo) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialise(v, memo) for v in obj)
    return obj


def _assert_same(a, b, path="ckpt"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), path
        assert a.dtype == b.dtype and a.shape == b.shape and a.requires_grad == b.requires_grad, path
        assert torch.equal(a, b) or (a.isnan() == b.isnan()).all() and torch.equal(a.nan_to_num(), b.nan_to_num()), path
        return
    assert type(a) is type(b), (path, type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


@pytest.mark.parametrize("name,overrides", ENTRIES, ids=[e[0] for e in ENTRIES])
def test_fast_and_general_paths_write_the_same_checkpoint(tmp_path, monkeypatch, name, overrides):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    fast = plan_and_apply(str(FIX / name), overrides=overrides)
    write_result(fast, str(tmp_path / "fast.ckpt"))
    general = plan_and_apply(str(FIX / name), overrides=overrides)
    memo: dict = {}
    general.checkpoint = _materialise(general.checkpoint, memo)
    general.state = general.checkpoint["state_dict"]
    write_result(general, str(tmp_path / "general.ckpt"))
    a = torch.load(tmp_path / "fast.ckpt", weights_only=True)
    b = torch.load(tmp_path / "general.ckpt", weights_only=True)
    _assert_same(a, b)
    assert memo, "the general path decoded no tensor"
    # and the same as a plain torch.load of the source, key by key
    src = torch.load(FIX / name, weights_only=True)
    src_sd = src.get("state_dict", src) if isinstance(src, dict) else None
    if src_sd is not None and all(isinstance(v, torch.Tensor) for v in src_sd.values()):
        for tr in fast.traces:
            if tr.target and tr.ops and set(tr.ops) <= {"rename"}:
                assert torch.equal(a["state_dict"][tr.target], src_sd[tr.source]), tr.source


def test_rename_only_migration_does_not_import_torch(tmp_path):
    code = ("import sys, json; from athelas_migrate.api import migrate; "
            f"r = migrate({str(FIX / 'bimodal_cnn_v1.ckpt')!r}, {str(tmp_path / 'o.ckpt')!r}, "
            f"overrides={V1_OVERRIDES!r}); "
            "print(json.dumps({'torch': 'torch' in sys.modules, 'lightning': 'lightning' in sys.modules, "
            "'numpy': 'numpy' in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    mods = json.loads(out.stdout.strip().splitlines()[-1])
    assert not mods["torch"] and not mods["lightning"], mods
    assert (tmp_path / "o.ckpt").exists()


def test_storage_records_are_copied_not_reencoded(tmp_path, monkeypatch):
    """Every tensor record of the output is a verbatim copy (src_path member, source CRC); nothing decoded."""
    def boom(self, *a, **k):
        raise AssertionError("a rename decoded a tensor")

    monkeypatch.setattr(TensorRef, "to_torch", boom)
    members = []
    real = zip_archive.ZipWriter.add

    def spy(self, member):
        members.append(member)
        return real(self, member)

    monkeypatch.setattr(zip_archive.ZipWriter, "add", spy)
    src = FIX / "bimodal_cnn_v1.ckpt"
    api.migrate(src, tmp_path / "o.ckpt", overrides=V1_OVERRIDES)
    data = [m for m in members if "/data/" in m.name]
    assert data and all(m.data is None and m.src_path == str(src) for m in data)
    src_crcs = {i.CRC for i in zipfile.ZipFile(src).infolist() if "/data/" in i.filename}
    out = zipfile.ZipFile(tmp_path / "o.ckpt")
    assert out.testzip() is None
    assert {i.CRC for i in out.infolist() if "/data/" in i.filename} <= src_crcs


def test_large_records_keep_their_page_offset(tmp_path):
    """Records of 1 MiB or more are placed at the source's offset within a 4 KiB page (a faster copy)."""
    src = tmp_path / "src.bin"
    payload = os.urandom(3 << 20)
    with open(src, "wb") as fh:
        fh.write(b"\0" * 4160 + payload)  # data at 4160 = 64 mod 4096
    import zlib

    members = [zip_archive.Member("a/data.pkl", b"x" * 100),
               zip_archive.Member("a/data/0", src_path=str(src), src_offset=4160, size=len(payload),
                                  crc32=zlib.crc32(payload)),
               zip_archive.Member("a/data/1", b"y" * 10)]
    with open(tmp_path / "out.zip", "wb") as fh:
        zip_archive.write_members(fh, members)
    recs = zip_archive.read_records(str(tmp_path / "out.zip"), os.path.getsize(tmp_path / "out.zip"))
    assert recs["a/data/0"].offset % 4096 == 4160 % 4096
    assert all(r.offset % 64 == 0 for r in recs.values())
    with zipfile.ZipFile(tmp_path / "out.zip") as z:
        assert z.testzip() is None and z.read("a/data/0") == payload


def test_output_is_deterministic_and_only_the_time_varies(tmp_path, monkeypatch):
    src = FIX / "bimodal_cnn_v1.ckpt"
    for i, epoch in enumerate(("1700000000", "1700000000", "1800000000")):
        monkeypatch.setenv("SOURCE_DATE_EPOCH", epoch)
        api.migrate(src, tmp_path / f"{i}.ckpt", overrides=V1_OVERRIDES)
    blobs = [(tmp_path / f"{i}.ckpt").read_bytes() for i in range(3)]
    assert blobs[0] == blobs[1]
    assert blobs[0] != blobs[2]
    a, c = (torch.load(tmp_path / f"{i}.ckpt", weights_only=True) for i in (0, 2))
    assert a["athelas_migrate"]["provenance"].pop("created") != c["athelas_migrate"]["provenance"].pop("created")
    _assert_same(a, c)


def test_provenance_digests(tmp_path, monkeypatch):
    src = FIX / "bimodal_cnn_v1.ckpt"
    monkeypatch.delenv("ATHELAS_MIGRATE_FULL_CHECKS", raising=False)
    prov = api.migrate(src, tmp_path / "a.ckpt", overrides=V1_OVERRIDES).checkpoint["athelas_migrate"]["provenance"]
    assert prov["source_structural_sha256"] == structural_sha256(str(src))
    assert prov["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()  # small file: full digest too
    from athelas_migrate import pipeline

    monkeypatch.setattr(pipeline, "VALUE_SCAN_LIMIT", 0)  # as for a file over the limit
    prov = api.migrate(src, tmp_path / "big.ckpt", overrides=V1_OVERRIDES).checkpoint["athelas_migrate"]["provenance"]
    assert "source_sha256" not in prov
    monkeypatch.setenv("ATHELAS_MIGRATE_FULL_CHECKS", "1")
    prov = api.migrate(src, tmp_path / "b.ckpt", overrides=V1_OVERRIDES).checkpoint["athelas_migrate"]["provenance"]
    assert prov["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert prov["source_structural_sha256"] == structural_sha256(str(src))


def test_structural_digest_sees_a_changed_tensor(tmp_path):
    sd = torch.load(FIX / "bimodal_cnn_v1_state_dict.pt", weights_only=True)
    torch.save(sd, tmp_path / "a.pt")
    sd["final_merge_network.1.bias"] = sd["final_merge_network.1.bias"] + 1
    torch.save(sd, tmp_path / "b.pt")
    assert structural_sha256(str(tmp_path / "a.pt")) != structural_sha256(str(tmp_path / "b.pt"))


def test_nan_scan_default_and_full(tmp_path, monkeypatch):
    from athelas_migrate import pipeline

    ckpt = torch.load(FIX / "bimodal_cnn_v1.ckpt", weights_only=True)
    ckpt["state_dict"]["final_merge_network.1.bias"][0] = float("nan")
    torch.save(ckpt, tmp_path / "nan.ckpt")
    monkeypatch.delenv("ATHELAS_MIGRATE_FULL_CHECKS", raising=False)
    r = api.migrate(tmp_path / "nan.ckpt", tmp_path / "a.ckpt", overrides=V1_OVERRIDES)
    assert any("NaN" in w and "final_merge_network.1.bias" in w for w in r.warnings)  # small: scanned
    monkeypatch.setattr(pipeline, "VALUE_SCAN_LIMIT", 0)  # as for a checkpoint over the limit
    r = api.migrate(tmp_path / "nan.ckpt", tmp_path / "b.ckpt", overrides=V1_OVERRIDES)
    assert not any("NaN" in w for w in r.warnings)  # renames copy values verbatim: nothing read
    assert any("NaN/Inf scan skipped" in n for n in r.notes)
    monkeypatch.setenv("ATHELAS_MIGRATE_FULL_CHECKS", "1")
    r = api.migrate(tmp_path / "nan.ckpt", tmp_path / "c.ckpt", overrides=V1_OVERRIDES)
    assert any("NaN" in w and "final_merge_network.1.bias" in w for w in r.warnings)


@pytest.mark.parametrize("out", ["out.ckpt", "out.safetensors"])
def test_corrupted_record_fails_during_the_copy_and_leaves_nothing(tmp_path, out):
    src = tmp_path / "bad.ckpt"
    src.write_bytes((FIX / "bimodal_cnn_v1.ckpt").read_bytes())
    recs = zip_archive.read_records(str(src), os.path.getsize(src))
    big = max((r for n, r in recs.items() if "/data/" in n), key=lambda r: r.size)
    with open(src, "r+b") as fh:
        fh.seek(big.offset + big.size // 2)
        b = fh.read(1)
        fh.seek(big.offset + big.size // 2)
        fh.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(InputError, match="CRC"):
        api.migrate(src, tmp_path / out, overrides=V1_OVERRIDES)
    assert sorted(os.listdir(tmp_path)) == ["bad.ckpt"]

"""`athelas-migrate batch` and `merge-summaries`: discovery, failures, jobs, shards, summaries, exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from athelas_migrate import batch
from athelas_migrate.cli import main

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures"
SETS = ["--set", 'tab_field_list=["ttm_conc_count","net_conc_amt","days_since_first_txn"]', "--set",
        "label_name=label"]


def _tree(root: Path, n: int = 6, bad: bool = True) -> Path:
    src = root / "src"
    for i in range(n):
        d = src / f"run{i % 3}" / ("sub" if i % 2 else "")
        d.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(FIX / "bimodal_cnn_v1.ckpt", d / f"c{i}.{'pt' if i == 5 else 'ckpt'}")
    if bad:
        (src / "run0" / "broken.ckpt").write_bytes(b"PK\x03\x04 this is not a zip")
    (src / "notes.txt").write_text("not a checkpoint")
    (src / ".c0.ckpt.host.1.ab.partial").write_bytes(b"temporary")
    return src


def _run(args, **kw):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, **kw)


def test_discover_is_recursive_sorted_and_skips_others(tmp_path):
    src = _tree(tmp_path)
    (src / "out").mkdir()
    shutil.copyfile(FIX / "tab_ae_v1.ckpt", src / "out" / "x.ckpt")
    found = batch.discover(str(src), exclude=str(src / "out"))
    assert found == sorted(found) and len(found) == 7
    assert "run0/broken.ckpt" in found and "run2/sub/c5.pt" in found
    assert not any(f.endswith(".txt") or "/." in f or f.startswith(".") or f.startswith("out/") for f in found)


def test_bad_file_is_listed_and_the_others_are_migrated(tmp_path):
    src = _tree(tmp_path)
    res = _run(["batch", src, tmp_path / "dst", *SETS, "--summary-json", tmp_path / "s.json"])
    assert res.exit_code == 1, res.output
    assert "run0/broken.ckpt" in res.output and "6 ok, 1 failed" in res.output
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["counts"] == {"migrated": 6, "failed": 1} and s["failed"] == 1 and s["inputs_total"] == 7
    bad = [f for f in s["files"] if f["status"] == "failed"]
    assert bad[0]["path"] == "run0/broken.ckpt" and "\n" not in bad[0]["error"]
    assert (tmp_path / "dst" / "run2" / "sub" / "c5.pt").exists()
    assert not (tmp_path / "dst" / "run0" / "broken.ckpt").exists()
    assert s["torch_imports"] == 0  # a rename-only batch never imports torch


def test_all_good_exit_zero_existing_outputs_need_force(tmp_path):
    src = _tree(tmp_path, n=3, bad=False)
    dst = tmp_path / "dst"
    assert _run(["batch", src, dst, *SETS]).exit_code == 0
    again = _run(["batch", src, dst, *SETS])
    assert again.exit_code == 1 and "--force" in again.output
    assert _run(["batch", src, dst, *SETS, "--force"]).exit_code == 0


def test_jobs_two_uses_a_pool_and_gives_the_same_outputs(tmp_path):
    src = _tree(tmp_path)
    one = _run(["batch", src, tmp_path / "d1", *SETS, "--summary-json", tmp_path / "1.json"])
    two = _run(["batch", src, tmp_path / "d2", *SETS, "--jobs", "2", "--summary-json", tmp_path / "2.json"])
    assert one.exit_code == two.exit_code == 1
    s1, s2 = (json.loads((tmp_path / f"{i}.json").read_text()) for i in (1, 2))
    assert s2["workers"] == 2 and len({f["pid"] for f in s2["files"] if "pid" in f}) >= 1
    assert [(f["path"], f["status"]) for f in s1["files"]] == [(f["path"], f["status"]) for f in s2["files"]]
    for f in s1["files"]:
        if f["status"] == "migrated":
            assert (tmp_path / "d1" / f["output"]).read_bytes() != b""
            assert (tmp_path / "d1" / f["output"]).stat().st_size == (tmp_path / "d2" / f["output"]).stat().st_size


def test_shards_partition_and_merge(tmp_path):
    src = _tree(tmp_path, n=9)
    paths = []
    for k in range(3):
        res = _run(["batch", src, tmp_path / "dst", *SETS, "--shard", f"{k}/3", "--summary-json",
                    tmp_path / f"s{k}.json"])
        assert res.exit_code in (0, 1), res.output
        paths.append([f["path"] for f in json.loads((tmp_path / f"s{k}.json").read_text())["files"]])
    flat = [p for ps in paths for p in ps]
    assert sorted(flat) == batch.discover(str(src)) and len(set(flat)) == len(flat)  # a partition
    out = tmp_path / "merged.json"
    res = _run(["merge-summaries", out, *(tmp_path / f"s{k}.json" for k in range(3))])
    assert res.exit_code == 1  # the broken file failed in its shard
    merged = json.loads(out.read_text())
    assert merged["complete"] and merged["counts"] == {"migrated": 9, "failed": 1}
    assert [f["path"] for f in merged["files"]] == batch.discover(str(src))
    # overlapping: the same shard twice
    res = _run(["merge-summaries", tmp_path / "m2.json", tmp_path / "s0.json", tmp_path / "s0.json"])
    assert res.exit_code == 3 and "overlapping" in res.output
    # missing shard: merged, flagged, exit 1
    res = _run(["merge-summaries", tmp_path / "m3.json", tmp_path / "s0.json", tmp_path / "s1.json"])
    assert res.exit_code == 1 and json.loads((tmp_path / "m3.json").read_text())["missing_shards"] == [2]
    # inconsistent: other options
    s2 = json.loads((tmp_path / "s2.json").read_text())
    s2["options"]["to"] = "v1"
    (tmp_path / "s2b.json").write_text(json.dumps(s2))
    res = _run(["merge-summaries", tmp_path / "m4.json", tmp_path / "s0.json", tmp_path / "s1.json",
                tmp_path / "s2b.json"])
    assert res.exit_code == 3 and "inconsistent" in res.output


def test_shard_assignment_is_stable_when_files_are_added():
    before = [f"runs/{i}/model.ckpt" for i in range(50)]
    after = before + [f"new/{i}.ckpt" for i in range(50)]
    assign = {p: batch.shard_of(p, 4) for p in before}
    assert all(batch.shard_of(p, 4) == assign[p] for p in after if p in assign)
    assert set(assign.values()) == {0, 1, 2, 3}


@pytest.mark.parametrize("bad", ["3/3", "-1/2", "1", "a/b", "0/0"])
def test_bad_shard_is_a_usage_error(tmp_path, bad):
    src = _tree(tmp_path, n=1, bad=False)
    res = _run(["batch", src, tmp_path / "dst", "--shard", bad])
    assert res.exit_code == 2, res.output


def test_safetensors_format_and_already_migrated_inputs(tmp_path):
    src = _tree(tmp_path, n=2, bad=False)
    res = _run(["batch", src, tmp_path / "v2", *SETS])
    assert res.exit_code == 0, res.output
    res = _run(["batch", tmp_path / "v2", tmp_path / "again", "--summary-json", tmp_path / "a.json"])
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "a.json").read_text())
    assert s["counts"] == {"unchanged": 2}
    for f in s["files"]:  # already at the target: copied verbatim
        assert (tmp_path / "again" / f["output"]).read_bytes() == (tmp_path / "v2" / f["path"]).read_bytes()
    res = _run(["batch", src, tmp_path / "st", *SETS, "--format", "safetensors"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "st").rglob("*")) == ["c0.safetensors", "c1.safetensors", "run0",
                                                                    "run1", "sub"]


def test_verify_failures_are_reported(tmp_path, monkeypatch):
    import athelas_migrate.equivalence as verify_pkg

    class Report:
        passed = False
        error = None

        def failed_checks(self):
            class S:
                name = "outputs"

            class C:
                name = "logits"
                detail = "max |diff| 1.0 > 1e-05"

            return [(S(), C())]

    monkeypatch.setattr(verify_pkg, "run_verify", lambda *a, **k: Report(), raising=False)
    src = _tree(tmp_path, n=2, bad=False)
    summary = batch.run_batch(str(src), str(tmp_path / "dst"), overrides=json.loads(
        '{"tab_field_list": ["ttm_conc_count","net_conc_amt","days_since_first_txn"], "label_name": "label"}'),
        verify=True, isolate=False)  # in this process: the patched runner is what runs
    assert summary["counts"] == {"verify_failed": 2} and summary["failed"] == 2
    assert all("outputs: logits" in f["error"] for f in summary["files"])


def test_usage_errors(tmp_path):
    assert _run(["batch", tmp_path / "nowhere", tmp_path / "dst"]).exit_code == 2
    (tmp_path / "empty").mkdir()
    assert _run(["batch", tmp_path / "empty", tmp_path / "dst"]).exit_code == 2
    src = _tree(tmp_path, n=1, bad=False)
    assert _run(["batch", src, src]).exit_code == 2

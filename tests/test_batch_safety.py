"""`batch`: nothing lost, nothing run. Outputs never land on inputs, a crashed worker fails only its file,
skipped entries are reported, checkpoint-derived text is printed literally, torch is never forked."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from athelas_migrate import batch
from athelas_migrate.batch_worker import TEST_KILL_ENV, copy_verbatim
from athelas_migrate.cli import main
from athelas_migrate.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures"
V1 = FIX / "bimodal_cnn_v1.ckpt"
SETS = ["--set", 'tab_field_list=["ttm_conc_count","net_conc_amt","days_since_first_txn"]', "--set",
        "label_name=label"]
OVERRIDES = {"tab_field_list": ["ttm_conc_count", "net_conc_amt", "days_since_first_txn"], "label_name": "label"}


def _run(args, **kw):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, **kw)


def _cli(args, env_extra=None):
    env = {**os.environ, "COLUMNS": "300", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "athelas_migrate", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=str(ROOT))


def _copies(src: Path, names: list[str]) -> Path:
    for n in names:
        (src / n).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(V1, src / n)
    return src


def _leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob(".*")]


# ----------------------------------------------------------------------------- outputs never land on inputs


def test_dst_ancestor_of_src_that_would_replace_an_input_is_refused(tmp_path):
    src = _copies(tmp_path / "v1", ["model.ckpt", "v1/model.ckpt"])
    before = {p: p.read_bytes() for p in src.rglob("*.ckpt")}
    res = _run(["batch", src, tmp_path, *SETS, "--force"])
    assert res.exit_code == 2, res.output
    assert f"output {tmp_path / 'v1' / 'model.ckpt'} would replace input {src / 'model.ckpt'}" in res.output
    assert {p: p.read_bytes() for p in src.rglob("*.ckpt")} == before
    assert not (tmp_path / "model.ckpt").exists()  # refused before anything was written


def test_dst_ancestor_of_src_is_fine_when_no_output_lands_on_an_input(tmp_path):
    src = _copies(tmp_path / "v1", ["model.ckpt", "sub/other.ckpt"])
    res = _run(["batch", src, tmp_path, *SETS])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "model.ckpt").exists() and (tmp_path / "sub" / "other.ckpt").exists()
    assert (src / "model.ckpt").read_bytes() == V1.read_bytes()


@pytest.mark.parametrize("link", ["symlink", "hardlink", "dir-symlink"])
def test_output_that_is_a_link_to_an_input_is_refused(tmp_path, link):
    src = _copies(tmp_path / "src", ["a/c.ckpt", "b/d.ckpt"])
    dst = tmp_path / "dst"
    if link == "dir-symlink":  # DST/a is SRC/a: DST/a/c.ckpt is the input itself
        dst.mkdir()
        os.symlink(src / "a", dst / "a")
    else:
        (dst / "a").mkdir(parents=True)
        (os.symlink if link == "symlink" else os.link)(src / "a" / "c.ckpt", dst / "a" / "c.ckpt")
    res = _run(["batch", src, dst, *SETS, "--force"])
    assert res.exit_code == 2, res.output
    assert f"would replace input {src / 'a' / 'c.ckpt'}" in res.output
    assert (src / "a" / "c.ckpt").read_bytes() == V1.read_bytes()
    assert not (dst / "b").exists()


def test_two_inputs_for_one_output_are_refused(tmp_path):
    src = _copies(tmp_path / "src", ["m.ckpt", "m.pt", "other.ckpt"])
    res = _run(["batch", src, tmp_path / "dst", *SETS, "--format", "safetensors"])
    assert res.exit_code == 2, res.output
    assert f"inputs m.ckpt and m.pt would both write {tmp_path / 'dst' / 'm.safetensors'}" in res.output
    assert not (tmp_path / "dst").exists()


# ----------------------------------------------------------------------------- a crashed worker


@pytest.mark.parametrize("jobs,sig", [(2, signal.SIGKILL), (1, signal.SIGKILL), (1, signal.SIGBUS)])
def test_a_killed_worker_fails_only_its_file(tmp_path, jobs, sig):
    names = [f"r{i % 2}/c{i}.ckpt" for i in range(6)]
    src = _copies(tmp_path / "src", names)
    dst, js = tmp_path / "dst", tmp_path / "s.json"
    res = _cli(["batch", src, dst, *SETS, "--jobs", jobs, "--summary-json", js],
               {TEST_KILL_ENV: f"r1/c3.ckpt:{int(sig)}"})
    assert res.returncode == 1, res.stdout + res.stderr
    s = json.loads(js.read_text())
    assert s["counts"] == {"migrated": 5, "failed": 1}, s["files"]
    (bad,) = [f for f in s["files"] if f["status"] == "failed"]
    assert bad["path"] == "r1/c3.ckpt" and f"worker killed by signal {int(sig)}" in bad["error"]
    assert "Traceback" not in res.stderr and "r1/c3.ckpt" in res.stdout and "5 ok, 1 failed" in res.stdout
    assert not (dst / "r1" / "c3.ckpt").exists()
    assert _leftovers(dst) == []  # the dead worker's temporary output was removed
    assert all((dst / n).exists() for n in names if n != "r1/c3.ckpt")


# ----------------------------------------------------------------------------- skipped entries


def test_entries_that_are_not_checkpoint_files_are_reported_as_skipped(tmp_path):
    src = _copies(tmp_path / "src", ["ok.ckpt"])
    os.symlink("loop.ckpt", src / "loop.ckpt")
    os.symlink("nowhere.ckpt", src / "dangling.ckpt")
    os.mkfifo(src / "pipe.ckpt")
    _copies(src / "dir.ckpt", ["inner.ckpt"])
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", src / "linked")
    js = tmp_path / "s.json"
    res = _run(["batch", src, tmp_path / "dst", *SETS, "--summary-json", js], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    s = json.loads(js.read_text())
    reasons = {e["path"]: e["reason"] for e in s["skipped"]}
    assert reasons == {"loop.ckpt": "symbolic link loop", "dangling.ckpt": "dangling symbolic link (to nowhere.ckpt)",
                       "pipe.ckpt": "a FIFO, not a regular file",
                       "dir.ckpt": "a directory, not a checkpoint file (searched inside)",
                       "linked": "symbolic link to a directory (not followed)"}
    assert s["counts"] == {"migrated": 2} and s["inputs_total"] == 2  # ok.ckpt and dir.ckpt/inner.ckpt
    for path, reason in reasons.items():
        assert f"skipped {path}: {reason}" in res.output
    assert "2 ok, 0 failed, 5 skipped" in res.output


def test_skipped_entries_survive_merge_summaries(tmp_path):
    src = _copies(tmp_path / "src", [f"c{i}.ckpt" for i in range(4)])
    for i in range(4):
        os.symlink(f"gone{i}", src / f"d{i}.ckpt")
    for k in range(2):
        _run(["batch", src, tmp_path / "dst", *SETS, "--shard", f"{k}/2", "--summary-json", tmp_path / f"{k}.json"])
    shards = [json.loads((tmp_path / f"{k}.json").read_text())["skipped"] for k in range(2)]
    assert sorted(e["path"] for sh in shards for e in sh) == [f"d{i}.ckpt" for i in range(4)]
    merged = batch.merge_summaries([(str(k), json.loads((tmp_path / f"{k}.json").read_text())) for k in range(2)])
    assert [e["path"] for e in merged["skipped"]] == [f"d{i}.ckpt" for i in range(4)]


# ----------------------------------------------------------------------------- a source that changes


def _shrinking_copy(monkeypatch, victim: Path):
    real = os.copy_file_range

    def shrink_then_copy(fd_in, fd_out, count, *a):
        if os.path.exists(victim) and os.path.getsize(victim) > 100:
            os.truncate(victim, os.path.getsize(victim) // 2)
        return real(fd_in, fd_out, count, *a)

    monkeypatch.setattr(os, "copy_file_range", shrink_then_copy)


def test_copy_of_a_source_that_shrinks_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    src, dst = tmp_path / "in.ckpt", tmp_path / "out" / "in.ckpt"
    src.write_bytes(os.urandom(1 << 20))
    dst.parent.mkdir()
    _shrinking_copy(monkeypatch, src)
    with pytest.raises(InputError, match=r"changed while being copied|ended \d+ bytes early"):
        copy_verbatim(str(src), str(dst), force=False)
    assert list(dst.parent.iterdir()) == []


def test_batch_reports_a_shrinking_already_migrated_input_failed_not_unchanged(tmp_path, monkeypatch):
    v2 = tmp_path / "v2"
    assert _run(["batch", _copies(tmp_path / "src", ["a.ckpt"]), v2, *SETS]).exit_code == 0
    _shrinking_copy(monkeypatch, v2 / "a.ckpt")
    s = batch.run_batch(str(v2), str(tmp_path / "again"), isolate=False)
    assert s["counts"] == {"failed": 1}
    assert re.search(r"changed while being copied|ended \d+ bytes early", s["files"][0]["error"])
    assert not (tmp_path / "again" / "a.ckpt").exists()


# ----------------------------------------------------------------------------- literal text, output errors


def test_checkpoint_text_is_printed_literally(tmp_path):
    torch = pytest.importorskip("torch")
    src = tmp_path / "src"
    src.mkdir()
    ck = torch.load(FIX / "tab_ae_v1.ckpt", weights_only=False, map_location="cpu")
    ck["state_dict"]["x[/]y[bold]"] = torch.zeros(1)
    torch.save(ck, src / "k[bold]ey.ckpt")
    (src / "n[bold]a[red]me.ckpt").write_bytes(b"PK\x03\x04 not a zip [/]")
    res = _run(["batch", src, tmp_path / "dst"], env={"COLUMNS": "400"})
    assert res.exit_code == 3, res.output  # every input refused as an input
    assert "x[/]y[bold]" in res.output and "failed k[bold]ey.ckpt:" in res.output
    assert "failed n[bold]a[red]me.ckpt:" in res.output and "0 ok, 2 failed" in res.output


def test_dst_that_is_a_file_is_an_output_error(tmp_path):
    src = _copies(tmp_path / "src", ["a.ckpt"])
    (tmp_path / "dst").write_text("a file")
    res = _run(["batch", src, tmp_path / "dst"])
    assert res.exit_code == 4, res.output
    assert "is not a directory" in res.output and "Traceback" not in res.output and len(res.output.splitlines()) == 1


# ----------------------------------------------------------------------------- start method


def test_workers_are_not_forked_from_a_parent_holding_torch(tmp_path):
    pytest.importorskip("torch")  # this process now holds torch
    src = _copies(tmp_path / "src", ["a.ckpt"])
    s = batch.run_batch(str(src), str(tmp_path / "dst"), overrides=OVERRIDES)
    assert s["start_method"] in ("forkserver", "spawn") and s["counts"] == {"migrated": 1}


def test_verify_measures_torch_before_importing_it_and_forks_a_clean_parent(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "bad.ckpt").write_bytes(b"PK\x03\x04 not a zip")  # fails before verification: the test stays fast
    js = tmp_path / "s.json"
    res = _cli(["batch", src, tmp_path / "dst", "--verify", "--summary-json", js])
    assert res.returncode == 3, res.stdout + res.stderr  # its only input refused
    s = json.loads(js.read_text())
    assert s["counts"] == {"failed": 1}
    # the worker imported the runner (torch) once at start; the parent never did, so it could fork
    assert s["start_method"] == "fork" and s["torch_imports"] == 1


def test_a_directory_that_cannot_be_listed_is_reported(tmp_path, monkeypatch):
    src = _copies(tmp_path / "src", ["ok.ckpt", "locked/x.ckpt"])
    real = os.scandir

    def scandir(path="."):  # as root, chmod 000 does not stop listing: refuse the way the kernel would
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    found, skipped = batch.scan(str(src))
    assert found == ["ok.ckpt"]
    assert skipped == [{"path": "locked", "reason": "directory cannot be listed: Permission denied"}]

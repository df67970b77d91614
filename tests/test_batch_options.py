"""`batch` options for mixed trees: --include/--exclude, per-file sidecar configs, --bert-config, shared
values a file has no use for, the missing values listed per file, non-checkpoints skipped, the progress bar."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from athelas_migrate import batch
from athelas_migrate.batch_plan import matches, select
from athelas_migrate.cli import main
from athelas_migrate.io.reader import read_checkpoint

FIX = Path(__file__).resolve().parents[1] / "fixtures"
FIELDS = ["ttm_conc_count", "net_conc_amt", "days_since_first_txn"]
SHARED_TAB = ["--set", f"tab_field_list={json.dumps(FIELDS)}"]


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _summary(path: Path) -> dict:
    return json.loads(path.read_text())


def _by_path(summary: dict) -> dict[str, dict]:
    return {f["path"]: f for f in summary["files"]}


def _recorded(path: Path) -> dict:
    return read_checkpoint(str(path)).hyper_parameters["config"]


def _mixed(tmp_path: Path) -> Path:
    """A tree as found in practice: checkpoints with and without a tabular branch, and golden outputs."""
    src = tmp_path / "src"
    (src / "runs" / "a").mkdir(parents=True)
    shutil.copyfile(FIX / "bimodal_cnn_v1.ckpt", src / "runs" / "a" / "model.ckpt")
    shutil.copyfile(FIX / "bimodal_cnn_v1_notab.ckpt", src / "runs" / "notab.ckpt")
    shutil.copyfile(FIX / "text_cnn_v1.ckpt", src / "text.ckpt")
    shutil.copyfile(FIX / "bimodal_cnn_v1.io.pt", src / "runs" / "a" / "golden.pt")  # inputs and outputs
    return src


# ----------------------------------------------------------------------------- include / exclude


def test_glob_matching_rules():
    assert matches("runs/a/golden.pt", "golden.pt")  # no '/': the name at any depth
    assert matches("runs/a/golden.pt", "runs/*")  # '*' crosses '/'
    assert not matches("runs/a/golden.pt", "a/golden.pt")  # with '/': the whole relative path
    paths = ["a.ckpt", "runs/b.ckpt", "runs/golden.pt"]
    assert select(paths, include=("runs/*",)) == ["runs/b.ckpt", "runs/golden.pt"]
    assert select(paths, include=("runs/*",), exclude=("*.pt",)) == ["runs/b.ckpt"]
    assert select(paths) == paths


def test_exclude_leaves_golden_files_out_and_is_recorded(tmp_path):
    src = _mixed(tmp_path)
    res = _run("batch", src, tmp_path / "dst", *SHARED_TAB, "--exclude", "golden.pt",
               "--summary-json", tmp_path / "s.json")
    assert res.exit_code == 0, res.output
    s = _summary(tmp_path / "s.json")
    assert "runs/a/golden.pt" not in _by_path(s) and s["excluded"] == 1 and s["inputs_total"] == 3
    assert s["options"]["exclude"] == ["golden.pt"] and "1 excluded" in res.output
    assert not (tmp_path / "dst" / "runs" / "a" / "golden.pt").exists()


def test_include_takes_only_matching_inputs(tmp_path):
    src = _mixed(tmp_path)
    res = _run("batch", src, tmp_path / "dst", "--include", "text.ckpt", "--include", "runs/notab.ckpt",
               "--summary-json", tmp_path / "s.json")
    assert res.exit_code == 0, res.output
    assert sorted(_by_path(_summary(tmp_path / "s.json"))) == ["runs/notab.ckpt", "text.ckpt"]
    none = _run("batch", src, tmp_path / "dst2", "--include", "nothing*")
    assert none.exit_code == 2 and "excluded by --include/--exclude" in none.output


def test_shards_merge_only_with_the_same_filters(tmp_path):
    src = _mixed(tmp_path)
    for i, flt in enumerate((["--exclude", "golden.pt"], ["--exclude", "*.pt"])):
        _run("batch", src, tmp_path / "dst", *SHARED_TAB, *flt, "--shard", f"{i}/2", "--summary-json",
             tmp_path / f"{i}.json")
    res = _run("merge-summaries", tmp_path / "all.json", tmp_path / "0.json", tmp_path / "1.json")
    assert res.exit_code == 3 and "'options'" in res.output
    _run("batch", src, tmp_path / "dst", *SHARED_TAB, "--exclude", "golden.pt", "--shard", "1/2", "--summary-json",
         tmp_path / "1.json")
    res = _run("merge-summaries", tmp_path / "all.json", tmp_path / "0.json", tmp_path / "1.json")
    merged = _summary(tmp_path / "all.json")
    assert res.exit_code == 0 and merged["complete"] and merged["excluded"] == 1 and len(merged["files"]) == 3


# ----------------------------------------------------------------------------- not a checkpoint


def test_a_file_that_is_not_a_checkpoint_is_skipped_not_failed(tmp_path):
    src = _mixed(tmp_path)
    (src / "broken.ckpt").write_bytes(b"PK\x03\x04 not a zip")  # unreadable: still a failure
    res = _run("batch", src, tmp_path / "dst", *SHARED_TAB, "--summary-json", tmp_path / "s.json")
    s = _summary(tmp_path / "s.json")
    golden = _by_path(s)["runs/a/golden.pt"]
    assert golden["status"] == "skipped" and golden["reason"].startswith("not a checkpoint")
    assert _by_path(s)["broken.ckpt"]["status"] == "failed" and s["failed"] == 1
    assert "skipped runs/a/golden.pt: not a checkpoint" in " ".join(res.output.split())
    assert "3 ok, 1 failed, 1 skipped" in res.output
    (src / "broken.ckpt").unlink()
    assert _run("batch", src, tmp_path / "dst2", *SHARED_TAB).exit_code == 0


# ----------------------------------------------------------------------------- shared values, sidecars


def test_shared_value_a_file_cannot_use_is_ignored_with_a_note(tmp_path):
    src = _mixed(tmp_path)
    res = _run("batch", src, tmp_path / "dst", *SHARED_TAB, "--exclude", "golden.pt",
               "--summary-json", tmp_path / "s.json")
    assert res.exit_code == 0, res.output
    notab = _by_path(_summary(tmp_path / "s.json"))["runs/notab.ckpt"]
    assert notab["status"] == "migrated"
    assert notab["notes"] == ["shared tab_field_list not used for this file: tab_field_list is set but the "
                              "checkpoint has no tabular branch"]
    assert "note runs/notab.ckpt: shared tab_field_list not used" in " ".join(res.output.split())
    assert not _recorded(tmp_path / "dst" / "runs" / "notab.ckpt").get("tab_field_list")
    text = _by_path(_summary(tmp_path / "s.json"))["text.ckpt"]  # a family without any tabular branch
    assert text["status"] == "migrated" and "TextCNN has no tabular branch" in text["notes"][0]
    assert not _recorded(tmp_path / "dst" / "text.ckpt").get("tab_field_list")
    assert _recorded(tmp_path / "dst" / "runs" / "a" / "model.ckpt")["tab_field_list"] == FIELDS


def test_a_value_given_for_one_file_that_it_cannot_use_stays_an_error(tmp_path):
    res = _run("ckpt", FIX / "text_cnn_v1.ckpt", tmp_path / "t.ckpt", "--set", "tab_field_list=a,b")
    assert res.exit_code == 2 and "no tabular branch" in res.output and not (tmp_path / "t.ckpt").exists()


def test_a_sidecar_value_that_contradicts_the_file_stays_an_error(tmp_path):
    src = _mixed(tmp_path)
    (src / "runs" / "notab.ckpt.json").write_text(json.dumps({"tab_field_list": FIELDS}))
    _run("batch", src, tmp_path / "dst", "--exclude", "golden.pt", "--summary-json", tmp_path / "s.json")
    rec = _by_path(_summary(tmp_path / "s.json"))["runs/notab.ckpt"]
    assert rec["status"] == "failed" and "no tabular branch" in rec["error"] and rec["exit_code"] == 2


def test_sidecar_wins_over_shared_config_and_set(tmp_path):
    src = _mixed(tmp_path)
    own = ["a", "b", "c"]
    (src / "runs" / "a" / "model.ckpt.json").write_text(json.dumps({"tab_field_list": own, "label_name": "y"}))
    shared = tmp_path / "shared.json"
    shared.write_text(json.dumps({"label_name": "from_config", "text_name": "txt"}))
    res = _run("batch", src, tmp_path / "dst", "--config", shared, *SHARED_TAB, "--set", "text_name=from_set",
               "--exclude", "golden.pt", "--summary-json", tmp_path / "s.json")
    assert res.exit_code == 0, res.output
    rec = _by_path(_summary(tmp_path / "s.json"))["runs/a/model.ckpt"]
    assert rec["config"] == "model.ckpt.json"
    got = _recorded(tmp_path / "dst" / "runs" / "a" / "model.ckpt")
    assert got["tab_field_list"] == own and got["label_name"] == "y"  # sidecar > --set > --config
    assert got["text_name"] == "from_set"
    text = _recorded(tmp_path / "dst" / "text.ckpt")
    assert text["label_name"] == "from_config" and text["text_name"] == "from_set"  # no sidecar: shared


@pytest.mark.parametrize("content, message", [("{not json", "not valid JSON"), ("[1, 2]", "JSON object"),
                                              ('{"tab_field_list": "abc"}', "takes a list")])
def test_a_bad_sidecar_fails_only_its_file(tmp_path, content, message):
    src = _mixed(tmp_path)
    (src / "runs" / "a" / "model.ckpt.json").write_text(content)
    res = _run("batch", src, tmp_path / "dst", *SHARED_TAB, "--exclude", "golden.pt",
               "--summary-json", tmp_path / "s.json")
    s = _summary(tmp_path / "s.json")
    bad = _by_path(s)["runs/a/model.ckpt"]
    assert res.exit_code == 1 and bad["status"] == "failed" and message in bad["error"] and bad["exit_code"] == 2
    assert s["counts"] == {"failed": 1, "migrated": 2}


def test_first_refusal_names_every_missing_value_and_a_sidecar_with_exactly_that_succeeds(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(FIX / "bimodal_cnn_v1_state_dict.pt", src / "bare.pt")
    res = _run("batch", src, tmp_path / "dst", "--summary-json", tmp_path / "s.json")
    rec = _by_path(_summary(tmp_path / "s.json"))["bare.pt"]
    assert res.exit_code == 3 and rec["status"] == "failed" and rec["exit_code"] == 3  # all refused: 3
    keys = [n["key"] for n in rec["needs"]]
    assert set(keys) == {"text_name", "max_sen_len", "text_input_ids_key", "tab_field_list"}
    assert all(n["why"] for n in rec["needs"]) and all(k in rec["error"] for k in keys)
    assert "bare.pt.json" in rec["error"]
    truth = json.loads((FIX / "manifest.json").read_text())
    truth = next(e for e in truth if e["file"] == "bimodal_cnn_v1_state_dict.pt")["overrides"]
    (src / "bare.pt.json").write_text(json.dumps({k: truth[k] for k in keys}))
    again = _run("batch", src, tmp_path / "dst", "--summary-json", tmp_path / "s2.json")
    assert again.exit_code == 0, again.output
    got = _recorded(tmp_path / "dst" / "bare.pt")
    assert all(got[k] == truth[k] for k in keys)


def test_bert_config_is_passed_to_every_file(tmp_path, monkeypatch):
    seen = {}

    def fake_run_batch(src, dst, **kw):
        seen.update(kw["overrides"])
        return {"files": [], "failed": 0, "shard": {"index": 0, "count": 1}, "seconds": 0.0}

    monkeypatch.setattr(batch, "run_batch", fake_run_batch)
    bert = tmp_path / "bert.json"
    bert.write_text(json.dumps({"num_attention_heads": 2, "hidden_size": 32}))
    res = _run("batch", tmp_path, tmp_path / "dst", "--bert-config", bert, "--set", "label_name=label")
    assert res.exit_code == 0, res.output
    assert seen == {"bert_config": {"num_attention_heads": 2, "hidden_size": 32}, "label_name": "label"}
    assert _run("batch", tmp_path, tmp_path / "dst", "--bert-config", tmp_path / "nope.json").exit_code == 2


# ----------------------------------------------------------------------------- progress


def test_no_progress_bar_when_piped_and_lines_fit_80_columns(tmp_path):
    src = _mixed(tmp_path)
    res = CliRunner().invoke(main, [str(a) for a in ("batch", src, tmp_path / "dst", *SHARED_TAB)],
                             env={"COLUMNS": "80"}, catch_exceptions=False)
    assert res.exit_code == 0
    assert "migrating" not in res.stderr and "━" not in res.stderr
    assert "note runs/notab.ckpt" in res.stdout and "skipped runs/a/golden.pt" in res.stdout
    assert max(len(line) for line in res.stdout.splitlines()) <= 80


def test_progress_bar_on_a_terminal_shows_throughput():
    from rich.console import Console

    assert batch.progress_bar(Console(file=io.StringIO(), force_terminal=False)) is None
    out = io.StringIO()
    bar = batch.progress_bar(Console(file=out, force_terminal=True, width=120))
    task = bar.add_task("migrate", total=4, failed=1, rate=batch.throughput(2, 30_000_000, 4.0))
    bar.update(task, advance=2)
    bar.console.print(bar.make_tasks_table(bar.tasks))
    text = out.getvalue()
    assert "2/4" in text and "1 failed" in text and "0.5 files/s, 7.5 MB/s" in text
    assert batch.throughput(0, 0, 0.0) == ""

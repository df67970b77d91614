"""Issue 11 ("nothing lost, nothing run"): verify's output and exit codes, checks that cannot run, hyper-parameter
rollback, layout stamps, loading a file with the wrong class, commands whose import fails, process-wide state
of `train()`, and the `athelas_migrate.verify` API name."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from rich.console import Console

from athelas_migrate import api
from athelas_migrate.cli import main
from athelas_migrate.equivalence import Check, Section, VerifyReport, render, run_verify
from athelas_migrate.equivalence.cli import verify_cmd
from athelas_migrate.errors import InputError, NotInvertibleError, UsageError
from athelas_migrate.io.reader import read_checkpoint
from athelas_migrate.rules.apply import apply_hparam_rules
from athelas_migrate.rules.inverse import invert_hparam_rule
from athelas_migrate.rules.schema import HparamRule

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures"
CNN = json.loads((FIX / "manifest.json").read_text())
FUSION = json.loads((FIX / "fusion_manifest.json").read_text())
TEXT = FIX / "text_cnn_v1.ckpt"


def _overrides(entry: dict) -> dict:
    return {**entry.get("overrides", {}), **({"bert_config": entry["bert_config"]} if "bert_config" in entry else {})}


@pytest.fixture(scope="module")
def text_v2(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("v2") / "text_cnn_v2.ckpt"
    api.migrate(TEXT, dst)
    return dst


# ------------------------------------------------------------- 11: literal output, one error boundary


def test_verify_prints_a_key_with_markup_literally(tmp_path):
    bad = tmp_path / "odd.ckpt"
    torch.save({"state_dict": {"a[/]b": torch.zeros(2), "[bold]x": torch.zeros(1)}}, bad)
    res = CliRunner().invoke(main, ["verify", str(bad), str(bad)])
    assert res.exit_code == 3, res.output
    assert "a[/]b" in res.output and "[bold]x" in res.output and "Traceback" not in res.output


def test_verify_prints_a_path_with_markup_literally(tmp_path, text_v2):
    odd = tmp_path / "a[" / "]b"  # the path contains '[/]'
    odd.mkdir(parents=True)
    old = odd / "old[bold].ckpt"
    old.write_bytes(TEXT.read_bytes())
    res = CliRunner().invoke(main, ["verify", str(old), str(text_v2), "-q", "--no-training", "--no-domain",
                                    "--json-report", str(odd / "r.json")])
    assert res.exit_code == 0, res.output
    assert f"PASS {old} -> {text_v2}" in res.output and f"JSON report written to {odd / 'r.json'}" in res.output


def test_terminal_report_shows_checkpoint_text_literally():
    report = VerifyReport(old="o[/]ld.ckpt", new="[red]new.ckpt", atol=1e-5, rtol=0.0, family="TextCNN")
    sec = Section("weights", "Weights [/]")
    sec.add(Check("key [/] x", "fail", "text_encoder.[bold]w[/] differs", 1.0, 1.0))
    sec.notes.append("note [/]")
    report.sections.append(sec)
    buf = io.StringIO()
    render(report, Console(file=buf, width=400, color_system=None), verbose=True)
    out = buf.getvalue()
    for text in ("o[/]ld.ckpt", "[red]new.ckpt", "key [/] x", "text_encoder.[bold]w[/] differs", "note [/]"):
        assert text in out, text


@pytest.mark.parametrize("standalone", [False, True])
def test_internal_error_in_verify_exits_70(monkeypatch, text_v2, standalone):
    import athelas_migrate.equivalence.runner as runner

    def boom(*a, **k):
        raise RuntimeError("boom [/]")

    monkeypatch.setattr(runner, "_verify", boom)
    args = [str(TEXT), str(text_v2)]
    res = CliRunner().invoke(verify_cmd, args) if standalone else CliRunner().invoke(main, ["verify", *args])
    assert res.exit_code == 70, res.output
    assert "internal error: RuntimeError: boom [/]" in res.output and "Traceback" not in res.output


# ------------------------------------------------------------- 12: a check that could not run is no pass


def _break_optimizer(monkeypatch):
    from athelas_migrate.models.text_cnn import TextCNN

    def configure_optimizers(self):
        raise RuntimeError("no optimizer today")

    monkeypatch.setattr(TextCNN, "configure_optimizers", configure_optimizers)


def test_configure_optimizers_error_fails_verify(monkeypatch, tmp_path, text_v2):
    _break_optimizer(monkeypatch)
    js, xml = tmp_path / "r.json", tmp_path / "r.xml"
    report = run_verify(TEXT, text_v2, domain=False, json_path=js, junit_path=xml)
    check = report.check("training", "optimizer")
    assert check.status == "error" and "no optimizer today" in check.detail and "refactored" in check.detail
    assert not report.passed and report.exit_code == 1
    data = json.loads(js.read_text())
    assert data["passed"] is False and data["exit_code"] == 1
    assert [c["status"] for s in data["sections"] if s["name"] == "training" for c in s["checks"]
            if c["name"] == "optimizer"] == ["error"]
    assert ET.parse(xml).getroot().get("errors") == "1"
    res = CliRunner().invoke(main, ["verify", str(TEXT), str(text_v2), "--no-domain"])
    assert res.exit_code == 1 and "no optimizer today" in res.output


def test_explicit_opt_out_is_recorded_as_skipped(monkeypatch, tmp_path, text_v2):
    _break_optimizer(monkeypatch)
    js, xml = tmp_path / "r.json", tmp_path / "r.xml"
    report = run_verify(TEXT, text_v2, skip=["optimizer", "domain"], json_path=js, junit_path=xml)
    assert report.passed and report.exit_code == 0
    assert report.check("training", "optimizer").status == "skipped"
    assert report.check("domain", "domain").status == "skipped"
    statuses = {(s["name"], c["name"]): c["status"] for s in json.loads(js.read_text())["sections"]
                for c in s["checks"]}
    assert statuses[("training", "optimizer")] == statuses[("domain", "domain")] == "skipped"
    assert ET.parse(xml).getroot().get("skipped") == "2"
    res = CliRunner(env={"COLUMNS": "300"}).invoke(main, ["verify", str(TEXT), str(text_v2), "--skip-check",
                                                          "optimizer", "--no-domain"])
    assert res.exit_code == 0 and "skipped by request: domain, training/optimizer" in res.output, res.output
    with pytest.raises(UsageError, match="unknown check"):
        run_verify(TEXT, text_v2, skip=["outputs"])


# ------------------------------------------------------------- 13: rollback restores hyper-parameters


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if hasattr(obj, "shape"):
        return ("tensor", obj.dtype, tuple(obj.shape))
    return obj


@pytest.mark.parametrize("entry", [e for e in CNN + FUSION if e["file"].endswith(".ckpt")],
                         ids=lambda e: e["file"])
def test_round_trip_keeps_every_hyper_parameter(entry, tmp_path):
    src = FIX / entry["file"]
    api.migrate(src, tmp_path / "v2.ckpt", overrides=_overrides(entry))
    back = api.migrate(tmp_path / "v2.ckpt", tmp_path / "back.ckpt", to=entry["version"])
    assert _plain(read_checkpoint(str(tmp_path / "back.ckpt")).hyper_parameters) == \
        _plain(read_checkpoint(str(src)).hyper_parameters), back.hparam_notes


def test_v0_rollback_without_a_record_uses_the_rule_file(tmp_path):
    """A v2 file whose stamp records nothing (e.g. saved by a training run) still gets the v0 model_class."""
    api.migrate(FIX / "multimodal_cnn_v0.ckpt", tmp_path / "v2.ckpt")
    ck = torch.load(tmp_path / "v2.ckpt", weights_only=False)
    assert ck["athelas_migrate"]["provenance"]["hparams_before"]["BimodalCNN/v0-v1.toml#model-class"] == \
        {"key": "model_class", "present": True, "value": "multimodal_cnn"}
    del ck["athelas_migrate"]["provenance"]
    torch.save(ck, tmp_path / "bare.ckpt")
    api.migrate(tmp_path / "bare.ckpt", tmp_path / "v0.ckpt", to="v0")
    hp = read_checkpoint(str(tmp_path / "v0.ckpt")).hyper_parameters
    assert hp["config"]["model_class"] == "multimodal_cnn" and "text_batch_key" not in hp["config"]


def test_rollback_that_would_lose_a_value_refuses():
    rule = HparamRule("r", "set", "k", value="new", has_value=True, source="F/v1-v2.toml#r")
    record: dict = {}
    config = {"k": "old"}
    apply_hparam_rules([rule], config, record=record)
    assert config == {"k": "new"} and record == {"F/v1-v2.toml#r": {"key": "k", "present": True, "value": "old"}}
    inverse = invert_hparam_rule(rule)
    apply_hparam_rules([inverse], config, recorded=record)
    assert config == {"k": "old"}
    with pytest.raises(NotInvertibleError, match="recorded neither in the checkpoint's stamp nor in the rule"):
        apply_hparam_rules([inverse], {"k": "new"}, recorded={})


def test_history_says_how_hyper_parameters_come_back():
    res = CliRunner(env={"COLUMNS": "300"}).invoke(main, ["history", "BimodalCNN"])
    assert res.exit_code == 0, res.output
    assert "model_class: the recorded previous value, else 'multimodal_cnn'" in res.output
    assert "text_batch_key: the recorded previous value, else removed" in res.output


# ------------------------------------------------------------- 14: stamps the tool cannot trust


@pytest.mark.parametrize("stamp, message", [
    ({"layout": "v3", "family": "TextCNN"},
     "written by a newer athelas-migrate (layout v3); this version knows up to v2"),
    ({"layout": "v9", "family": "FutureNet"}, "written by a newer athelas-migrate (layout v9)"),
    ({"layout": "v2-beta", "family": "TextCNN"}, "unknown layout version 'v2-beta' (known for TextCNN: v0, v1, v2)"),
    # wrongly typed stamps are refused on load, by the value schema (io.values), before detection
    ({"layout": 2, "family": "TextCNN"}, "athelas_migrate.layout: must be a string, not an int"),
    ({"family": "TextCNN"}, "malformed"),
    ("v2", "the layout stamp must be a dict, not a str"),
])
def test_untrusted_stamps_are_refused(tmp_path, text_v2, stamp, message):
    ck = torch.load(text_v2, weights_only=False)
    ck["athelas_migrate"] = stamp
    path = tmp_path / "stamped.ckpt"
    torch.save(ck, path)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        api.migrate(path, tmp_path / "out.ckpt")
    for cmd in (["inspect", str(path)], ["ckpt", str(path), str(tmp_path / "x.ckpt")]):
        res = CliRunner().invoke(main, cmd)
        assert res.exit_code == 3 and message.split("(")[0] in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x.ckpt").exists()


# ------------------------------------------------------------- 15: the wrong class names the right one


_ONE_PER_FAMILY = {e["family"]: e for e in reversed(CNN + FUSION) if e["file"].endswith(".ckpt")}
_CLASSES = ["TextCNN", "TabAE", "BimodalCNN", "BimodalBertCrossAttn", "BimodalBertGateFusion", "BimodalBertMoE",
            "TrimodalCrossAttentionBert"]


@pytest.mark.parametrize("cls_name", _CLASSES)
def test_loading_another_family_names_the_right_class(cls_name):
    from athelas_migrate import models

    cls = getattr(models, cls_name)
    for family, entry in _ONE_PER_FAMILY.items():
        if family == cls_name:
            continue
        with pytest.raises(UsageError) as err:
            cls.load_from_checkpoint(str(FIX / entry["file"]), overrides=_overrides(entry))
        assert f"is a {family} checkpoint" in str(err.value)
        assert f"athelas_migrate.models.{family}.load_from_checkpoint" in str(err.value)


def test_loading_a_v2_file_of_another_family_names_the_right_class(text_v2):
    from athelas_migrate.models import BimodalCNN

    with pytest.raises(UsageError, match=r"TextCNN checkpoint \(layout v2\).*athelas_migrate\.models\.TextCNN"):
        BimodalCNN.load_from_checkpoint(str(text_v2))


# ------------------------------------------------------------- 16: optional commands, train(), the API name


def test_commands_whose_import_fails_stay_and_say_why():
    code = ("import sys; sys.modules['athelas_migrate.cli_models'] = None\n"
            "from athelas_migrate.cli import main\n"
            "main(sys.argv[1:])\n")
    listed = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and "train" in listed.stdout and "unavailable" in listed.stdout, listed.stdout
    ran = subprocess.run([sys.executable, "-c", code, "train", "data.csv", "--max-epochs", "1"],
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 70, ran.stderr
    assert "command 'train' is unavailable: importing athelas_migrate.cli_models failed" in ran.stderr
    assert "Traceback" not in ran.stderr


def test_train_restores_warning_filters_and_matmul_precision(tmp_path):
    from athelas_migrate.demo_data import write_demo_data
    from athelas_migrate.train import TrainOptions, train

    write_demo_data(str(tmp_path / "demo"), n_rows=60, seed=1)
    before_filters, before_precision = list(warnings.filters), torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        opts = TrainOptions(str(tmp_path / "demo" / "train.csv"), str(tmp_path / "out"), model="TextCNN",
                            config_file=str(tmp_path / "demo" / "config.json"), max_epochs=1, progress=False,
                            accelerator="cpu", devices=1, seed=0)
        train(opts)
        assert warnings.filters == before_filters
        assert torch.get_float32_matmul_precision() == "medium"
        with pytest.raises(UsageError):  # refused after the filters were set: still restored
            train(TrainOptions(**{**opts.__dict__, "accelerator": "no-such-accelerator",
                                  "out_dir": str(tmp_path / "out2")}))
        assert warnings.filters == before_filters
    finally:
        torch.set_float32_matmul_precision(before_precision)


_NAME_CHECK = """
import importlib, inspect, pkgutil, sys
import athelas_migrate, athelas_migrate.api

def every_subpackage():  # each package of athelas_migrate (none may shadow an API name), and the CLI
    for info in pkgutil.iter_modules(athelas_migrate.__path__, "athelas_migrate."):
        if info.ispkg:
            importlib.import_module(info.name)
    importlib.import_module("athelas_migrate.cli")

if sys.argv[1] == "packages-first":
    every_subpackage()
from athelas_migrate import verify
assert inspect.isfunction(verify) and verify is athelas_migrate.api.verify, verify
every_subpackage()
from athelas_migrate import verify
assert inspect.isfunction(verify) and athelas_migrate.verify is athelas_migrate.api.verify, verify
for name in ("migrate", "verify", "audit", "inspect", "load_model"):
    assert getattr(athelas_migrate, name) is getattr(athelas_migrate.api, name), name
print("ok")
"""


@pytest.mark.parametrize("order", ["api-first", "packages-first"])
def test_verify_api_name_is_always_the_function(order):
    res = subprocess.run([sys.executable, "-c", _NAME_CHECK, order], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]

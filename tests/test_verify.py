"""The equivalence runner (athelas_migrate.equivalence), its CLI, its reports and the gate script."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from athelas_migrate import api
from athelas_migrate.equivalence import VerifyReport, run_verify
from athelas_migrate.equivalence.cli import verify_cmd
from athelas_migrate.errors import UsageError
from athelas_migrate.overrides import parse_overrides

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures"
MANIFEST = json.loads((FIX / "manifest.json").read_text())
CNN = [e for e in MANIFEST if e["family"] in ("TextCNN", "TabAE", "BimodalCNN")]
BY_FILE = {e["file"]: e for e in CNN}
V1 = BY_FILE["bimodal_cnn_v1.ckpt"]
TAB = ["ttm_conc_count", "net_conc_amt", "days_since_first_txn"]


@pytest.fixture(scope="module")
def migrated(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("migrated")
    paths = {}
    for e in CNN:
        dst = out / (Path(e["file"]).stem + ".v2.ckpt")
        api.migrate(FIX / e["file"], dst, overrides=e["overrides"])
        paths[e["file"]] = dst
    return paths


def _set_args(overrides: dict) -> list[str]:
    args = []
    for k, v in overrides.items():
        args += ["--set", f"{k}={json.dumps(v)}"]
    return args


def _failures(report: VerifyReport) -> str:
    return "; ".join(f"{s.name}/{c.name}: {c.detail}" for s, c in report.failed_checks() + report.errored_checks())


# ----------------------------------------------------------------- --set parsing


def test_parse_overrides_values_and_config_file(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"label_name": "y", "max_sen_len": 30}))
    got = parse_overrides(("tab_field_list=[\"a\",\"b\"]", "text_name=dialogue", "max_sen_len=40",
                           "is_binary=true", "label_name=null", "lr=1e-3", "tokenizer=", "kernel_size=3,5"), str(cfg))
    assert got == {"label_name": None, "max_sen_len": 40, "tab_field_list": ["a", "b"], "text_name": "dialogue",
                   "is_binary": True, "lr": 1e-3, "tokenizer": "", "kernel_size": [3, 5]}
    assert parse_overrides(("lr=1", "lr=1")) == {"lr": 1}  # repeating the same value is fine
    assert parse_overrides(("flag=true",), allow_unknown=True) == {"flag": True}  # --allow-unknown-keys
    assert parse_overrides((), None) == {}


@pytest.mark.parametrize("sets, content, message", [
    (("max_sen_len=40", "max_sen_len=41"), None, "conflicting --set values for max_sen_len"),
    (("novalue",), None, "KEY=VALUE"),
    (("=3",), None, "KEY=VALUE"),
    ((), "[1, 2]", "JSON object"),
    ((), "{not json", "not valid JSON"),
])
def test_parse_overrides_refusals(tmp_path, sets, content, message):
    path = None
    if content is not None:
        path = tmp_path / "c.json"
        path.write_text(content)
    with pytest.raises(UsageError, match=message):
        parse_overrides(sets, path)
    with pytest.raises(UsageError, match="no such file"):
        parse_overrides((), tmp_path / "missing.json")


# ------------------------------------------------------------------ the runner


@pytest.mark.parametrize("entry", CNN, ids=[e["file"] for e in CNN])
def test_verify_passes_on_every_cnn_fixture(entry, migrated, tmp_path):
    jpath, xpath = tmp_path / "r.json", tmp_path / "r.xml"
    report = run_verify(FIX / entry["file"], migrated[entry["file"]], overrides=entry["overrides"],
                        reference=FIX / entry["io"], json_path=jpath, junit_path=xpath)
    assert report.passed, _failures(report)
    assert report.exit_code == 0
    names = [s.name for s in report.sections]
    assert names[:3] == ["build", "weights", "outputs"] and "stored" in names and "training" in names
    assert ("domain" in names) == (entry["family"] != "TabAE")
    for diff in report.outputs.values():
        assert diff.max_abs <= 1e-5 and diff.batches >= 4
    if entry["dtype"] == "float16":
        assert report.weights_dtype == "float16" and report.effective_atol == pytest.approx(1e-3)
        assert "float16" in report.tolerance_note
    training = {c.name: c.status for c in report.section("training").checks}
    assert training["loss"] == training["gradients"] == training["one optimizer step"] == "pass"
    if entry["kind"] == "lightning":
        assert training["optimizer state"] == "pass"

    data = json.loads(jpath.read_text())
    assert data["passed"] is True and data["family"] == entry["family"] and data["exit_code"] == 0
    assert data["outputs"] and all(o["passed"] for o in data["outputs"].values())
    root = ET.parse(xpath).getroot()
    assert root.tag == "testsuites" and root.get("failures") == "0" and root.get("errors") == "0"
    n_checks = sum(len(s.checks) for s in report.sections)
    assert len(root.findall("./testsuite/testcase")) == n_checks == int(root.get("tests"))


def test_domain_classifies_lengths_for_max_sen_len_40(migrated):
    report = run_verify(FIX / V1["file"], migrated[V1["file"]], overrides=V1["overrides"], training=False)
    dom = report.section("domain")
    assert dom.passed and dom.summary["max_sen_len"] == 40 and dom.summary["lengths"] == [30, 55]
    cats = dom.summary["categories"]
    assert cats["agrees"] == [39, 40]  # legacy pools the whole sequence: must agree
    assert cats["differs-expected"] == list(range(41, 54))  # legacy ignores the tail (spec: defined 39..53)
    assert cats["legacy-raises"] == [*range(30, 39), 54, 55]
    assert set(cats) == {"agrees", "differs-expected", "legacy-raises"}
    by_len = {c.data["length"]: c for c in dom.checks}
    assert by_len[40].status == "pass" and by_len[38].status == "expected" and by_len[45].status == "expected"
    assert any(by_len[n].data["observed_difference"] for n in range(41, 54))
    assert report.passed  # expected differences are not failures


def test_training_section_details(migrated):
    e = BY_FILE["bimodal_cnn_v1_multiclass.ckpt"]  # AdamW state, 4 classes, weighted loss
    report = run_verify(FIX / e["file"], migrated[e["file"]], overrides=e["overrides"], domain=False)
    sec = report.section("training")
    checks = {c.name: c for c in sec.checks}
    assert list(checks) == ["loss", "gradients", "optimizer", "optimizer state", "one optimizer step"]
    assert all(c.status == "pass" for c in checks.values()), _failures(report)
    assert "AdamW" in checks["optimizer"].detail and "class weights" in checks["loss"].detail
    assert len(checks["gradients"].data["tensors"]) == 21  # every parameter paired through the rename map
    # the step wrote only into private copies: the files' weights are untouched
    again = run_verify(FIX / e["file"], migrated[e["file"]], overrides=e["overrides"], domain=False,
                       training=False)
    assert again.passed and again.check("weights", "tensors").max_abs == 0


def test_inputs_file_io_pt_and_list_of_batches(migrated, tmp_path):
    report = run_verify(FIX / V1["file"], migrated[V1["file"]], overrides=V1["overrides"],
                        inputs=FIX / V1["io"], domain=False)
    assert report.passed, _failures(report)
    assert str(FIX / V1["io"]) in report.inputs_source and "stored legacy outputs" in report.inputs_source
    assert [c.name for c in report.section("outputs").checks] == ["logits [input-0]", "probabilities [input-0]"]
    assert all(c.status == "pass" for c in report.section("stored").checks)

    gen = torch.Generator().manual_seed(5)
    batches = [{"dialogue_input_ids": torch.randint(0, 60, (n, 40), generator=gen),
                **{f: torch.randn(n, generator=gen) * 100 for f in TAB},
                "label": torch.randint(0, 2, (n,), generator=gen)} for n in (1, 3)]
    # real batches of other lengths: legacy ignores the tail (48) or is undefined (60): expected, not failures
    batches += [{"dialogue_input_ids": torch.randint(0, 60, (2, n), generator=gen),
                 **{f: torch.randn(2, generator=gen) for f in TAB}} for n in (48, 60)]
    path = tmp_path / "batches.pt"
    torch.save(batches, path)
    jpath = tmp_path / "r.json"
    out = CliRunner().invoke(verify_cmd, [str(FIX / V1["file"]), str(migrated[V1["file"]]), "--inputs", str(path),
                                          "--no-domain", "--json-report", str(jpath), *_set_args(V1["overrides"])])
    assert out.exit_code == 0, out.output
    data = json.loads(jpath.read_text())
    assert data["inputs"].endswith("batches.pt: 4 batch(es)")
    outputs = {c["name"]: c for c in next(s for s in data["sections"] if s["name"] == "outputs")["checks"]}
    assert outputs["logits [input-1]"]["status"] == "pass"
    assert outputs["logits [input-2]"]["status"] == "expected" and outputs["[input-3]"]["status"] == "expected"
    train = next(s for s in data["sections"] if s["name"] == "training")
    assert "input-0" in " ".join(train["notes"]) and "generated labels" not in " ".join(train["notes"])


def test_perturbed_new_fails_with_exit_1_and_is_localised(migrated, tmp_path):
    ck = torch.load(migrated[V1["file"]], weights_only=True)
    ck["state_dict"]["fusion.fusion.1.weight"] += 1e-3
    bad = tmp_path / "perturbed.ckpt"
    torch.save(ck, bad)
    jpath, xpath = tmp_path / "r.json", tmp_path / "r.xml"
    out = CliRunner().invoke(verify_cmd, [str(FIX / V1["file"]), str(bad), "--json-report", str(jpath), "--junit",
                                          str(xpath), "--no-domain", *_set_args(V1["overrides"])])
    assert out.exit_code == 1, out.output
    assert "fusion.fusion.1" in out.output and "FAIL" in out.output
    data = json.loads(jpath.read_text())
    assert data["passed"] is False and data["exit_code"] == 1
    loc = data["localisation"]
    assert loc["module"] == "fusion.fusion.1" and loc["old_module"] == "final_merge_network.1"
    assert loc["kind"] == "computes differently" and loc["max_abs"] > 1e-5
    assert data["outputs"]["logits"]["passed"] is False
    weights = next(s for s in data["sections"] if s["name"] == "weights")["checks"][0]
    assert weights["status"] == "fail" and "fusion.fusion.1.weight" in weights["detail"]
    root = ET.parse(xpath).getroot()
    assert int(root.get("failures")) >= 2
    messages = [f.get("message") for f in root.iter("failure")]
    assert any("fusion.fusion.1" in m for m in messages)


def test_cli_exit_codes(migrated, tmp_path):
    runner = CliRunner()
    old, new = str(FIX / V1["file"]), str(migrated[V1["file"]])
    sets = _set_args(V1["overrides"])
    ok = runner.invoke(verify_cmd, [old, new, "--no-domain", "--no-training", "-q"])  # OLD's gaps filled from NEW
    assert ok.exit_code == 0, ok.output
    assert ok.output.startswith("PASS")
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    assert runner.invoke(verify_cmd, [str(tmp_path / "missing.ckpt"), new]).exit_code == 3
    assert runner.invoke(verify_cmd, [str(text), new]).exit_code == 3
    assert runner.invoke(verify_cmd, [old, new, "--inputs", str(tmp_path / "none.pt")]).exit_code == 3
    conflict = runner.invoke(verify_cmd, [old, new, "--set", "max_sen_len=40", "--set", "max_sen_len=41"])
    assert conflict.exit_code == 2 and "conflicting --set values for max_sen_len" in conflict.output
    assert runner.invoke(verify_cmd, [old, new, "--device", "tpu"]).exit_code == 2
    assert runner.invoke(verify_cmd, [old, new, "--atol", "-1"]).exit_code == 2
    assert runner.invoke(verify_cmd, [new, new, *sets]).exit_code == 2  # OLD must be a legacy checkpoint
    if not torch.cuda.is_available():
        cuda = runner.invoke(verify_cmd, [old, new, "--device", "cuda"])
        assert cuda.exit_code == 3 and "CUDA is not available" in cuda.output


def test_cli_module_does_not_import_torch():
    code = ("import sys; import athelas_migrate.equivalence.cli as c; from click.testing import CliRunner; "
            "r = CliRunner().invoke(c.verify_cmd, ['--help']); assert r.exit_code == 0, r.output; "
            "assert '--junit' in r.output and '--inputs' in r.output; "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def _gate_module():
    spec = importlib.util.spec_from_file_location("athelas_gate", ROOT / "tools" / "gate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gate_writes_reports_and_skips_unknown_families(tmp_path):
    gate = _gate_module()
    entries = [dict(BY_FILE[f], file=str(FIX / f), io=str(FIX / BY_FILE[f]["io"]))
               for f in ("text_cnn_v1.ckpt", "tab_ae_v1.ckpt")]
    entries.append({"file": "nowhere.ckpt", "family": "NoSuchFamily", "version": "v1", "overrides": {}})
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(entries))
    out = tmp_path / "gate"
    assert gate.main(["--out", str(out), "--manifest", str(manifest)]) == 0
    data = json.loads((out / "gate-report.json").read_text())
    assert data["passed"] is True and data["counts"] == {"passed": 2, "failed": 0, "error": 0, "skipped": 1}
    root = ET.parse(out / "gate-junit.xml").getroot()
    assert root.get("failures") == "0" and root.get("errors") == "0" and root.get("skipped") == "1"
    assert gate.main(["--out", str(out), "--manifest", str(tmp_path / "missing.json")]) == 2

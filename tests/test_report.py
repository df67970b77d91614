"""The HTML report page (issue 17) without a browser: what the page holds, that it fetches nothing,
is deterministic, renders a sabotaged migration's diverging module, and the commands that write it.
The browser checks are in test_report_browser.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_sabotage import FIX, V1, sabotage, transpose_square_weight  # noqa: F401 - `sabotage` is a fixture

from athelas_migrate import api
from athelas_migrate.equivalence import run_verify
from athelas_migrate.pipeline import KeyTrace, plan_and_apply
from athelas_migrate.report import build_page, page_for, render_page

ROOT = Path(__file__).resolve().parents[1]
SRC = FIX / V1["file"]
OV = V1["overrides"]
EXTERNAL = re.compile(r"""(?:src|href|action)\s*=\s*["']?(?!#)[^"'\s>]+|url\((?!#)|@import|<link\b|<iframe\b""", re.I)


@pytest.fixture(scope="module")
def migrated(tmp_path_factory):
    """(new checkpoint, its MigrationResult, its verify report with per-module differences)."""
    dst = tmp_path_factory.mktemp("report") / "bimodal.v2.ckpt"
    result = api.migrate(SRC, dst, overrides=OV)
    return dst, result, run_verify(SRC, dst, overrides=OV, modules=True)


def test_page_holds_every_key_mapping_and_check(migrated):
    dst, result, report = migrated
    page = page_for(str(SRC), str(dst), OV, report, result=result)
    old = [k for k in page.keys.values() if k.side == "old"]
    new = [k for k in page.keys.values() if k.side == "new"]
    assert len(old) == len(result.raw.state_dict) == 21 and len(new) == len(result.state) == 19
    assert len(page.edges) == 19 and {e.kind for e in page.edges} == {"rename"}
    dropped = {k.key: k for k in page.dropped}
    assert set(dropped) == {"text_subnetwork.class_weights_tensor", "text_subnetwork.loss_op.weight"}
    assert all(k.reason and k.rule.startswith("BimodalCNN/v1-v2.toml#") for k in dropped.values())
    assert all(re.fullmatch(r"BimodalCNN/v1-v2\.toml#[\w-]+", g.rule) for g in page.groups)
    assert sum(g.count for g in page.groups) == 21
    assert page.verdict == "passed" and page.diverging is None
    assert page.modules and all(m["ok"] for m in page.modules)  # verify recorded every aligned module
    assert set(page.plots) == {"outputs", "modules", "domain", "training"}
    assert page.stamp["provenance"]["source_layout"] == "v1"
    html = render_page(page)
    assert html.count('class="key ') == 40 and html.count('data-side="old"') == 21
    edges = json.loads(re.search(r'<script type="application/json" id="edges">(.*?)</script>', html).group(1))
    assert len(edges) == 19
    tooltip = 'title="text_subnetwork.embeddings.weight&#10;shape 60x16, float32&#10;sha256 '
    assert tooltip in html and "BimodalCNN/v1-v2.toml#text-embeddings-and-convs" in html


def test_page_is_self_contained_small_and_deterministic(migrated, monkeypatch):
    dst, result, report = migrated
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    first = render_page(page_for(str(SRC), str(dst), OV, report, result=result))
    second = render_page(page_for(str(SRC), str(dst), OV, report, result=result))
    assert first == second and "2023-11-14T22:13:20Z" in first
    assert not EXTERNAL.search(first), EXTERNAL.search(first)  # nothing to fetch: no src/href/url()/link
    assert first.count("<svg") == 1 + 4  # the links layer and the four charts, inline
    assert len(first.encode()) < 1 << 20


def test_training_section_records_loss_and_gradient_norms(migrated):
    _, _, report = migrated
    loss = report.check("training", "loss").data
    assert loss["legacy"] == loss["refactored"] > 0
    norms = report.check("training", "gradients").data["norms"]
    assert len(norms) == 17 and all(a == b > 0 for a, b in norms.values())


def test_rollback_page_draws_restored_keys(migrated):
    dst, _, _ = migrated
    back = plan_and_apply(str(dst), to="v1", overrides=OV)
    page = build_page(back, None, old_path=str(dst), new_path="rollback.ckpt")
    restored = [e for e in page.edges if e.kind == "restore"]
    assert {e.target for e in restored} == {"text_subnetwork.class_weights_tensor", "text_subnetwork.loss_op.weight"}
    assert {page.keys[f"new:{e.target}"].status for e in restored} == {"restored"}
    assert page.verdict == "not verified" and "Not verified" in render_page(page)


class _Ref:
    def __init__(self, shape):
        self.shape, self.dtype = shape, "float32"

    def digest(self) -> str:
        return "0" * 64


def test_split_and_concat_fan_out():
    # The shipped rules hold no split/concat, so a result is assembled by hand: qkv -> q, k, v and a, b -> ab.
    raw = SimpleNamespace(path="x.ckpt", state_dict={"qkv": _Ref([6]), "a": _Ref([2]), "b": _Ref([2])},
                          hyper_parameters={})
    result = SimpleNamespace(
        raw=raw, family=SimpleNamespace(name="Fam"), source_version="v1", target_version="v2", chain=[],
        state={"q": _Ref([2]), "k": _Ref([2]), "v": _Ref([2]), "ab": _Ref([4])}, created=[], hparam_notes=[],
        hyper_parameters={}, notes=[], warnings=[],
        traces=[KeyTrace("qkv", "q, k, v", ["F/v1-v2.toml#split"], ["split"]),
                KeyTrace("a", "ab", ["F/v1-v2.toml#cat"], ["concat"]),
                KeyTrace("b", "ab", ["F/v1-v2.toml#cat"], ["concat"])])
    page = build_page(result, None, old_path="x.ckpt", new_path="y.ckpt")
    assert [(e.source, e.target, e.kind) for e in page.edges] == [
        ("qkv", "q", "split"), ("qkv", "k", "split"), ("qkv", "v", "split"), ("a", "ab", "concat"),
        ("b", "ab", "concat")]
    assert [g.count for g in page.groups] == [1, 2]
    assert "split" in render_page(page)


def sabotaged_page(tmp_path: Path, sabotage_fixture):  # noqa: F811 - the fixture is passed in
    """Migrate with one tensor transposed by a wrong rule, verify, and build the page."""
    sabotage_fixture(transpose_square_weight)
    dst = tmp_path / "transposed.v2.ckpt"
    result = api.migrate(SRC, dst, overrides=OV)
    report = run_verify(SRC, dst, overrides=OV, domain=False)  # a failure records the modules regardless
    return page_for(str(SRC), str(dst), OV, report, result=result)


def test_sabotaged_migration_highlights_the_diverging_module(sabotage, tmp_path):  # noqa: F811
    page = sabotaged_page(tmp_path, sabotage)
    assert page.verdict == "failed"
    assert page.diverging["module"] == "text_encoder.convs.0.3"
    bad = [m for m in page.modules if not m["ok"]]
    assert bad[0]["module"] == "text_encoder.convs.0.3"
    html = render_page(page)
    assert 'id="diverging" data-module="text_encoder.convs.0.3"' in html
    assert 'class="bad diverging" data-module="text_encoder.convs.0.3"' in html  # the module table row
    assert '<details open data-path="text_encoder.convs.0.3" class="diverging">' in html  # the new tree
    assert '<details open data-path="text_subnetwork.convs.0.3" class="diverging">' in html  # the old tree
    assert "first diverging: text_encoder.convs.0.3" in page.plots["modules"]


def test_report_command_writes_the_page(cli, migrated, tmp_path):
    dst, _, _ = migrated
    out = tmp_path / "page.html"
    sets = [a for k, v in OV.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    code, stdout, _ = cli("report", SRC, dst, "-o", out, *sets)
    assert code == 0, stdout
    html = out.read_text()
    assert "athelas-migrate report" in html and f"-o {out}" in html and 'data-verdict="passed"' in html
    code, stdout, _ = cli("verify", SRC, dst, "--html", tmp_path / "v.html", "-q", *sets)
    assert code == 0 and 'data-verdict="passed"' in (tmp_path / "v.html").read_text()
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name or p.name.startswith(".")]


def test_report_command_refuses_bad_outputs(cli, migrated, tmp_path):
    dst, _, _ = migrated
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    fields = f"tab_field_list={json.dumps(OV['tab_field_list'])}"
    proc = subprocess.run([sys.executable, "-m", "athelas_migrate", "report", str(SRC), str(dst), "--no-verify",
                           "-o", str(blocker / "page.html"), "--set", fields],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.startswith("error: ") and "cannot write the output" in proc.stderr
    assert "Traceback" not in proc.stderr
    code, _, stderr = cli("report", SRC, dst, "-o", dst, "--no-verify")
    assert code == 2 and "would overwrite an input" in stderr


def test_cli_start_up_does_not_import_the_renderer():
    code = "import sys, athelas_migrate.cli; print(sorted(m for m in ('matplotlib', 'jinja2') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_gate_writes_one_page_per_fixture_next_to_its_junit(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("athelas_gate_report", ROOT / "tools" / "gate.py")
    gate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gate)
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps([dict(V1, file=str(SRC), io=str(FIX / V1["io"]))]))
    out = tmp_path / "gate"
    assert gate.main(["--out", str(out), "--manifest", str(manifest)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["bimodal_cnn_v1.html", "gate-junit.xml", "gate-report.json"]
    row = json.loads((out / "gate-report.json").read_text())["fixtures"][0]
    assert row["html"] == "bimodal_cnn_v1.html" and row["html_bytes"] == (out / row["html"]).stat().st_size
    assert 'data-verdict="passed"' in (out / row["html"]).read_text()

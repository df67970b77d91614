"""The equivalence runner on the BERT fusion families: every fixture verifies after migration, sabotaged
NEW checkpoints fail and are localised, position_ids of older transformers, the CLI's --bert-config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from athelas_migrate import api
from athelas_migrate.equivalence.cli import verify_cmd
from athelas_migrate.equivalence.runner import run_verify

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
MANIFEST = json.loads((FIXTURES / "fusion_manifest.json").read_text())
BY_FILE = {e["file"]: e for e in MANIFEST}

pytestmark = pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")


def _overrides(entry):
    return {**entry["overrides"], "bert_config": entry["bert_config"]}


@pytest.fixture(scope="module")
def migrated(tmp_path_factory):
    out = tmp_path_factory.mktemp("fusion-verify")
    paths = {}
    for e in MANIFEST:
        dst = out / (Path(e["file"]).stem + ".v2.ckpt")
        api.migrate(FIXTURES / e["file"], dst, overrides=_overrides(e))
        paths[e["file"]] = dst
    return paths


def _sabotaged(src: Path, dst: Path, key: str, scale: float = 1e-2) -> Path:
    ckpt = torch.load(src, weights_only=True)
    t = ckpt["state_dict"][key]
    ckpt["state_dict"][key] = t + scale * torch.randn(t.shape, generator=torch.Generator().manual_seed(0))
    torch.save(ckpt, dst)
    return dst


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["file"] for e in MANIFEST])
def test_every_fusion_fixture_verifies_after_migration(entry, migrated, tmp_path):
    report_path = tmp_path / "verify.json"
    report = run_verify(FIXTURES / entry["file"], migrated[entry["file"]], overrides=_overrides(entry),
                        reference=FIXTURES / entry["io"], json_path=report_path)
    assert report.passed, [(s.name, c.name, c.detail) for s, c in report.failed_checks() + report.errored_checks()]
    data = json.loads(report_path.read_text())
    assert data["passed"] and data["exit_code"] == 0 and data["family"] == entry["family"]
    assert (data["old_version"], data["new_version"]) == ("v1", "v2")
    sections = {s["name"]: s for s in data["sections"]}
    assert set(sections) == {"build", "weights", "outputs", "stored", "training"}  # no length domain for BERT
    assert data["outputs"]["logits"]["max_abs"] <= 1e-5 and data["outputs"]["probabilities"]["batches"] == 5
    checks = {c["name"]: c for c in sections["training"]["checks"]}
    assert {"loss", "gradients", "optimizer", "one optimizer step"} <= set(checks)
    assert all(c["status"] == "pass" for c in checks.values())
    if entry["kind"] == "lightning":  # the permuted AdamW state, paired buffer by buffer, and a real step
        assert checks["optimizer state"]["status"] == "pass"
        assert "lr=0.001" in checks["optimizer"]["detail"]  # saved lr 0 (end of the decay): base rate
    stored = sections["stored"]["checks"]
    assert {c["name"] for c in stored} == {"old [input-0]", "new [input-0]"}


def test_generated_inputs_cover_chunks_padding_vocabulary_and_scales(migrated):
    entry = BY_FILE["fusion_trimodal_v1.ckpt"]
    report = run_verify(FIXTURES / entry["file"], migrated[entry["file"]], training=False)  # all from NEW
    assert report.passed
    src = report.inputs_source
    for text in ("1 chunk(s)", "2 chunk(s)", "3 chunk(s)", "fully padded", "partially padded", "0..99",
                 "B=1", "1e4", "every position 0..63"):
        assert text in src, text
    assert any("taken from NEW's hyper-parameters" in n and "bert_config" in n for n in report.notes)


@pytest.mark.parametrize("fixture,key,module,old_module", [
    ("fusion_gate_v1.ckpt", "gate_fusion.gate_net.0.weight", "gate_fusion.gate_net.0", "gate_fusion.gate_net.0"),
    ("fusion_trimodal_v1.ckpt", "cross_attention.ffn_secondary.net.3.bias", "cross_attention.ffn_secondary.net.3",
     "cross_attention.ffn_secondary.3"),
    ("fusion_cross_attn_v1.ckpt", "tab_encoder.embedding.1.weight", "tab_encoder.embedding.1",
     "tab_subnetwork.embedding_layer.1"),
])
def test_perturbed_new_fails_and_is_localised(fixture, key, module, old_module, migrated, tmp_path):
    entry = BY_FILE[fixture]
    bad = _sabotaged(migrated[fixture], tmp_path / "bad.ckpt", key)
    report = run_verify(FIXTURES / fixture, bad, overrides=_overrides(entry), training=False)
    assert not report.passed and report.exit_code == 1
    loc = report.localisation
    assert (loc["module"], loc["old_module"], loc["kind"]) == (module, old_module, "computes differently")
    assert any(key in c.detail for s, c in report.failed_checks() if s.name == "weights")


def test_unpermuted_optimizer_state_is_caught(migrated, tmp_path):
    """NEW with OLD's optimizer state copied verbatim (legacy order: tab before text) must fail."""
    entry = BY_FILE["fusion_gate_v1.ckpt"]
    ckpt = torch.load(migrated[entry["file"]], weights_only=True)
    ckpt["optimizer_states"] = torch.load(FIXTURES / entry["file"], weights_only=True)["optimizer_states"]
    torch.save(ckpt, tmp_path / "unpermuted.ckpt")
    report = run_verify(FIXTURES / entry["file"], tmp_path / "unpermuted.ckpt", overrides=_overrides(entry))
    failed = {(s.name, c.name) for s, c in report.failed_checks() + report.errored_checks()}
    assert ("training", "optimizer state") in failed and report.exit_code == 1
    assert report.section("outputs").passed


@pytest.mark.parametrize("positions,passes", [("arange", True), ("rolled", False)])
def test_position_ids_of_older_transformers(positions, passes, tmp_path):
    """Saved position_ids are dropped when they are arange (verify runs the legacy side with them); others
    are refused, since the v2 BERT rebuilds arange itself."""
    entry = BY_FILE["fusion_cross_attn_v1.ckpt"]
    ckpt = torch.load(FIXTURES / entry["file"], weights_only=True)
    items = list(ckpt["state_dict"].items())
    i = [k for k, _ in items].index("text_subnetwork.bert.embeddings.word_embeddings.weight")
    n = ckpt["state_dict"]["text_subnetwork.bert.embeddings.position_embeddings.weight"].shape[0]
    pos = torch.arange(n) if positions == "arange" else torch.arange(n).roll(1)
    items.insert(i + 1, ("text_subnetwork.bert.embeddings.position_ids", pos.reshape(1, -1)))
    ckpt["state_dict"] = dict(items)
    torch.save(ckpt, tmp_path / "old.ckpt")
    if not passes:  # not arange: dropping them would change the outputs, so the (strict) rule refuses
        from athelas_migrate.errors import ValidationError

        with pytest.raises(ValidationError, match="would change what the model computes"):
            api.migrate(tmp_path / "old.ckpt", tmp_path / "new.ckpt", overrides=_overrides(entry))
        assert not (tmp_path / "new.ckpt").exists()
        return
    api.migrate(tmp_path / "old.ckpt", tmp_path / "new.ckpt", overrides=_overrides(entry))
    report = run_verify(tmp_path / "old.ckpt", tmp_path / "new.ckpt", overrides=_overrides(entry), training=False)
    assert report.passed


def test_cli_bert_config_exit_codes(migrated, tmp_path):
    entry = BY_FILE["fusion_moe_proj_v1.ckpt"]
    old, new = str(FIXTURES / entry["file"]), str(migrated[entry["file"]])
    (tmp_path / "bert.json").write_text(json.dumps(entry["bert_config"]))
    (tmp_path / "cfg.json").write_text(json.dumps(entry["overrides"]))
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "wrong.json").write_text(json.dumps({**entry["bert_config"], "num_hidden_layers": 3}))
    heads = {k: v for k, v in entry["bert_config"].items() if k != "num_attention_heads"}
    (tmp_path / "noheads.json").write_text(json.dumps(heads))
    bad = _sabotaged(migrated[entry["file"]], tmp_path / "bad.ckpt", "moe_fusion.router.0.weight")

    def run(*args):
        return CliRunner().invoke(verify_cmd, [old, *map(str, args), "--no-training"])

    ok = run(new, "--bert-config", tmp_path / "bert.json", "--config", tmp_path / "cfg.json",
             "--json-report", tmp_path / "r.json")
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "r.json").read_text())["passed"] is True
    assert run(new, "-q").exit_code == 0  # BERT config and fields from NEW's hyper-parameters
    assert run(bad, "-q", "--bert-config", tmp_path / "bert.json").exit_code == 1
    for name, code in (("list", 2), ("wrong", 2), ("missing", 2), ("noheads", 3)):
        res = run(new, "-q", "--bert-config", tmp_path / f"{name}.json")
        assert res.exit_code == code, (name, res.output)


def test_report_says_the_domain_check_does_not_apply(migrated):
    entry = BY_FILE["fusion_gate_v1.ckpt"]
    report = run_verify(FIXTURES / entry["file"], migrated[entry["file"]], overrides=_overrides(entry),
                        training=False)
    assert report.passed and report.section("domain") is None
    assert any("domain: not applicable" in n for n in report.notes)

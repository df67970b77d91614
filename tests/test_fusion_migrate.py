"""The BERT fusion families through the engine: detection, exact migration, rollback, BERT config, resume."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from athelas_migrate import api
from athelas_migrate.errors import MissingInformationError, UsageError
from athelas_migrate.families import detect
from athelas_migrate.families.bert import resolve_bert_config
from athelas_migrate.io.reader import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = json.loads((ROOT / "fixtures" / "fusion_manifest.json").read_text())
IDS = [e["file"] for e in MANIFEST]


def _overrides(entry):
    return {**entry["overrides"], "bert_config": entry["bert_config"]}


def _legacy_sd(entry):
    obj = torch.load(ROOT / "fixtures" / entry["file"], weights_only=True)
    return obj.get("state_dict", obj)


@pytest.fixture(scope="module")
def migrated(tmp_path_factory):
    out = tmp_path_factory.mktemp("fusion")
    return {e["file"]: (api.migrate(ROOT / "fixtures" / e["file"], out / (Path(e["file"]).stem + ".ckpt"),
                                    overrides=_overrides(e)), out / (Path(e["file"]).stem + ".ckpt"))
            for e in MANIFEST}


@pytest.mark.parametrize("entry", MANIFEST, ids=IDS)
def test_detected_by_fusion_block_keys(entry):
    det = detect(read_checkpoint(ROOT / "fixtures" / entry["file"]))
    assert (det.family, det.version) == (entry["family"], "v1")


@pytest.mark.parametrize("entry", MANIFEST, ids=IDS)
def test_migrated_fusion_checkpoint_loads_plainly_and_matches_legacy(entry, migrated):
    result, dst = migrated[entry["file"]]
    from athelas_migrate.families.base import load_class

    model = load_class(result.family.v2_class).load_from_checkpoint(dst).eval()
    io = torch.load(ROOT / "fixtures" / entry["io"], weights_only=True)
    with torch.no_grad():
        assert torch.allclose(model(io["inputs"]), io["outputs"], atol=1e-6, rtol=0)
    new = torch.load(dst, weights_only=True)["state_dict"]
    old = _legacy_sd(entry)
    for tr in result.traces:
        assert tr.target is not None and torch.equal(new[tr.target], old[tr.source])


@pytest.mark.parametrize("entry", MANIFEST, ids=IDS)
def test_fusion_rollback_is_bitwise(entry, migrated, tmp_path):
    _, dst = migrated[entry["file"]]
    api.migrate(dst, tmp_path / "back.ckpt", to="v1")
    back = torch.load(tmp_path / "back.ckpt", weights_only=True)["state_dict"]
    old = _legacy_sd(entry)
    assert list(back) == list(old)
    assert all(torch.equal(back[k], old[k]) for k in old)


def test_text_encoder_registered_before_tab_and_optimizer_permuted(migrated):
    result, dst = migrated["fusion_gate_v1.ckpt"]
    keys = list(result.state)
    assert keys.index("text_encoder.bert.embeddings.word_embeddings.weight") < keys.index(
        "tab_encoder.embedding.0.weight")
    old = torch.load(ROOT / "fixtures" / "fusion_gate_v1.ckpt", weights_only=True)["optimizer_states"][0]
    new = torch.load(dst, weights_only=True)["optimizer_states"][0]
    assert [len(g["params"]) for g in old["param_groups"]] == [len(g["params"]) for g in new["param_groups"]]
    assert old["state"].keys() == new["state"].keys()
    assert any(not torch.equal(old["state"][i]["exp_avg"], new["state"][i]["exp_avg"]) for i in old["state"]
               if old["state"][i]["exp_avg"].shape == new["state"][i]["exp_avg"].shape)


class _Capture(pl.Callback):
    def on_train_start(self, trainer, pl_module):
        opt = trainer.optimizers[0]
        names = {id(p): n for n, p in pl_module.named_parameters()}
        self.state = {names[id(p)]: opt.state[p]["exp_avg"].clone() for g in opt.param_groups for p in g["params"]
                      if p in opt.state}
        self.step = trainer.global_step


def test_gate_fusion_resumes_training_with_permuted_adamw_state(migrated, tmp_path):
    entry = next(e for e in MANIFEST if e["file"] == "fusion_gate_v1.ckpt")
    result, dst = migrated[entry["file"]]
    from athelas_migrate.models.bert_fusion import BimodalBertGateFusion

    model = BimodalBertGateFusion.load_from_checkpoint(dst)
    io = torch.load(ROOT / "fixtures" / entry["io"], weights_only=True)
    batch = dict(io["inputs"], label=torch.arange(len(io["outputs"])) % 2)
    cap = _Capture()
    legacy = torch.load(ROOT / "fixtures" / entry["file"], weights_only=True)
    trainer = pl.Trainer(max_steps=legacy["global_step"] + 1, accelerator="cpu", logger=False, callbacks=[cap],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(model, DataLoader([batch], batch_size=None), ckpt_path=dst)
    assert cap.step == legacy["global_step"]
    rename = {t.source: t.target for t in result.traces}
    fam = result.family
    cfg = result.config
    legacy_params = fam.expected(cfg, "v1").parameters
    legacy_groups = fam.optimizer_groups(cfg, "v1", legacy_params, 2)
    order = legacy_groups[0] + legacy_groups[1]
    for pid, st in legacy["optimizer_states"][0]["state"].items():
        assert torch.equal(cap.state[rename[order[pid]]], st["exp_avg"]), order[pid]


def test_old_transformers_position_ids_dropped_and_restored(tmp_path):
    entry = next(e for e in MANIFEST if e["file"] == "fusion_cross_attn_v1.ckpt")
    ckpt = torch.load(ROOT / "fixtures" / entry["file"], weights_only=True)
    sd = ckpt["state_dict"]
    items = list(sd.items())
    i = [k for k, _ in items].index("text_subnetwork.bert.embeddings.word_embeddings.weight")
    n = sd["text_subnetwork.bert.embeddings.position_embeddings.weight"].shape[0]
    items.insert(i + 1, ("text_subnetwork.bert.embeddings.position_ids", torch.arange(n).reshape(1, -1)))
    ckpt["state_dict"] = dict(items)
    torch.save(ckpt, tmp_path / "old.ckpt")
    result = api.migrate(tmp_path / "old.ckpt", tmp_path / "v2.ckpt", overrides=_overrides(entry))
    dropped = [t for t in result.traces if t.target is None]
    assert [t.source for t in dropped] == ["text_subnetwork.bert.embeddings.position_ids"]
    api.migrate(tmp_path / "v2.ckpt", tmp_path / "back.ckpt", to="v1")
    back = torch.load(tmp_path / "back.ckpt", weights_only=True)["state_dict"]
    assert list(back) == list(ckpt["state_dict"])
    assert all(torch.equal(back[k], ckpt["state_dict"][k]) for k in back)


def test_bert_heads_must_be_supplied_when_the_name_does_not_fit(tmp_path):
    entry = MANIFEST[0]
    with pytest.raises(MissingInformationError, match="attention heads cannot be read.*--bert-config"):
        api.migrate(ROOT / "fixtures" / entry["file"], tmp_path / "x.ckpt", overrides=entry["overrides"])
    wrong = {**entry["bert_config"], "num_hidden_layers": 3}
    with pytest.raises(UsageError, match="disagrees with the weights: num_hidden_layers=3"):
        api.migrate(ROOT / "fixtures" / entry["file"], tmp_path / "x.ckpt",
                    overrides={**entry["overrides"], "bert_config": wrong})
    assert not (tmp_path / "x.ckpt").exists()


def test_standard_bert_names_fill_the_heads_only_when_shapes_agree():
    facts = dict(vocab_size=30522, hidden_size=128, num_hidden_layers=2, intermediate_size=512,
                 max_position_embeddings=512, type_vocab_size=2)
    notes: list[str] = []
    assert resolve_bert_config(facts, None, "prajjwal1/bert-tiny", "t", notes)["num_attention_heads"] == 2
    with pytest.raises(MissingInformationError, match="disagrees with the weights"):
        resolve_bert_config({**facts, "hidden_size": 64}, None, "prajjwal1/bert-tiny", "t", [])


def test_cli_ckpt_with_bert_config_file(tmp_path):
    from click.testing import CliRunner

    from athelas_migrate.cli import main

    entry = next(e for e in MANIFEST if e["file"] == "fusion_moe_v1.ckpt")
    (tmp_path / "bert.json").write_text(json.dumps(entry["bert_config"]))
    (tmp_path / "cfg.json").write_text(json.dumps(entry["overrides"]))
    args = ["ckpt", str(ROOT / "fixtures" / entry["file"]), str(tmp_path / "o.ckpt"),
            "--bert-config", str(tmp_path / "bert.json"), "--config", str(tmp_path / "cfg.json")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "BimodalBertMoE v1 -> v2" in res.output


def test_position_ids_that_are_not_arange_are_refused(tmp_path):
    from athelas_migrate.errors import ValidationError

    entry = next(e for e in MANIFEST if e["file"] == "fusion_gate_v1.ckpt")
    ckpt = torch.load(ROOT / "fixtures" / entry["file"], weights_only=True)
    n = ckpt["state_dict"]["text_subnetwork.bert.embeddings.position_embeddings.weight"].shape[0]
    items = list(ckpt["state_dict"].items())
    items.insert(3, ("text_subnetwork.bert.embeddings.position_ids", torch.arange(n).flip(0).reshape(1, -1)))
    ckpt["state_dict"] = dict(items)
    torch.save(ckpt, tmp_path / "odd.ckpt")
    with pytest.raises(ValidationError, match="position_ids is not what the target layout assumes"):
        api.migrate(tmp_path / "odd.ckpt", tmp_path / "v2.ckpt", overrides=_overrides(entry))
    assert not (tmp_path / "v2.ckpt").exists()

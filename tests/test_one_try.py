"""One try: for every fixture, the first refusal names everything the file cannot tell, a second run with
exactly that succeeds, and nothing recorded differs from the config the fixture was generated with."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FIXTURES, manifest_entries

from athelas_migrate import api
from athelas_migrate.errors import MissingInformationError

ENTRIES = [e for e in manifest_entries(fusion=True)]
FAST = {"bimodal_cnn_v1_state_dict.pt", "bimodal_cnn_v1.ckpt", "tab_ae_v1.ckpt", "fusion_gate_v1_state_dict.pt",
        "fusion_trimodal_v1.ckpt", "fusion_gate_notab_v1.ckpt", "text_cnn_v1.ckpt", "multimodal_cnn_v0.ckpt"}


def generating_config(entry: dict) -> dict:
    """What the fixture was trained with: the fusion generator's config, else the file's own hyper-parameters
    completed by the manifest's overrides (which the generator wrote from the same config)."""
    if "legacy_config" in entry:
        return {**entry["legacy_config"], **{k: v for k, v in entry["overrides"].items() if k != "bert_config"}}
    hp = torch.load(FIXTURES / entry["file"], weights_only=True).get("hyper_parameters") or {}
    base = dict(hp["config"]) if isinstance(hp.get("config"), dict) else dict(hp)
    return {**{k: v for k, v in base.items() if not isinstance(v, torch.Tensor)}, **entry["overrides"]}


def answer(need_key: str, entry: dict) -> tuple[str, object]:
    """The value a user copies from the original training config for one named need."""
    if need_key.startswith("bert_config."):
        field = need_key.split(".", 1)[1]
        return "bert_config", {field: entry["bert_config"][field]}
    return need_key, generating_config(entry)[need_key]


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e["file"] in FAST], ids=lambda e: e["file"])
def test_first_refusal_names_everything_and_second_run_succeeds(entry, tmp_path):
    src, dst = FIXTURES / entry["file"], tmp_path / "new.ckpt"
    supplied: dict = {}
    try:
        result = api.migrate(src, dst)
        tries = 1
    except MissingInformationError as err:
        assert err.needs and err.skeleton is not None
        for need in err.needs:
            key, value = answer(need.key, entry)
            if isinstance(value, dict) and isinstance(supplied.get(key), dict):
                value = {**supplied[key], **value}
            supplied[key] = value
        assert not dst.exists()
        result = api.migrate(src, dst, overrides=supplied)  # exactly what the refusal named: must succeed
        tries = 2
    assert dst.exists() and tries <= 2
    recorded = torch.load(dst, weights_only=True)["hyper_parameters"]["config"]
    truth = generating_config(entry)
    edited = {h.key for rf in result.chain for h in rf.hparams}  # rule-file edits, reported by the audit
    truth = {k: v for k, v in truth.items() if k not in edited}
    if "class_weights" in truth:  # the legacy models pad/truncate to num_classes: compare the effective list
        n = recorded["num_classes"]
        truth["class_weights"] = (list(truth["class_weights"]) + [1.0] * n)[:n]
    differs = {k: (recorded[k], v) for k, v in truth.items()
               if recorded.get(k) is not None and json.loads(json.dumps(recorded[k])) != json.loads(json.dumps(v))}
    assert differs == {}, f"recorded values that differ from the generating config: {differs}"


def test_bare_state_dict_records_training_only_values_as_unknown(tmp_path):
    """A bare state dict stores no config: what only training uses is recorded as unknown, not as a default."""
    entry = next(e for e in ENTRIES if e["file"] == "bimodal_cnn_v1_state_dict.pt")
    needed = {k: entry["overrides"][k] for k in ("text_name", "max_sen_len", "text_input_ids_key", "tab_field_list")}
    result = api.migrate(FIXTURES / entry["file"], tmp_path / "new.ckpt", overrides=needed)
    config = torch.load(tmp_path / "new.ckpt", weights_only=True)["hyper_parameters"]["config"]
    assert config["dropout_keep"] is None and config["lr"] is None and config["label_name"] is None
    assert set(config["unknown"]) >= {"dropout_keep", "lr", "optimizer_type", "label_name"}
    assert any("recorded as unknown" in n for n in result.notes)
    model = api.load_model(tmp_path / "new.ckpt")  # still loads and computes: unknowns only matter to training
    assert model is not None


def test_write_config_skeleton_round_trip(tmp_path):
    """--write-config writes known values and marks the rest; passed back unfilled it is refused (exit 2);
    filled in it migrates."""
    import subprocess
    import sys

    entry = next(e for e in ENTRIES if e["file"] == "fusion_gate_v1_state_dict.pt")
    skeleton = tmp_path / "config.json"
    cmd = [sys.executable, "-m", "athelas_migrate", "ckpt", str(FIXTURES / entry["file"]), str(tmp_path / "n.ckpt")]
    first = subprocess.run([*cmd, "--write-config", str(skeleton)], capture_output=True, text=True)
    assert first.returncode == 3 and "a migration needs 5 value(s)" in first.stderr, first.stderr
    data = json.loads(skeleton.read_text())
    assert data["hidden_common_dim"] == 16 and data["bert_config"]["hidden_size"] == 32
    assert data["tab_field_list"].startswith("<required")
    unfilled = subprocess.run([*cmd, "--config", str(skeleton)], capture_output=True, text=True)
    assert unfilled.returncode == 2 and "still marks" in unfilled.stderr and "tab_field_list" in unfilled.stderr
    for need in ("tab_field_list", "text_name", "text_input_ids_key", "text_attention_mask_key"):
        data[need] = entry["overrides"][need]
    data["bert_config"]["num_attention_heads"] = entry["bert_config"]["num_attention_heads"]
    skeleton.write_text(json.dumps(data))
    second = subprocess.run([*cmd, "--config", str(skeleton)], capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "n.ckpt").exists()

"""The committed fixtures are real, consistent legacy checkpoints that the legacy classes reproduce."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import regeneration_comparison

from legacy import BimodalCNN, MultimodalCNN, TabAE, TextCNN

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
BY_FILE = {e["file"]: e for e in MANIFEST}

EXPECTED_FILES = {
    "multimodal_cnn_v0.ckpt",
    "bimodal_cnn_v1.ckpt",
    "bimodal_cnn_v1_notab.ckpt",
    "bimodal_cnn_v1_multiclass.ckpt",
    "text_cnn_v1.ckpt",
    "tab_ae_v1.ckpt",
    "bimodal_cnn_v1_state_dict.pt",
    "bimodal_cnn_v1_fp16.ckpt",
}
LIGHTNING_KEYS = {
    "epoch", "global_step", "pytorch-lightning_version", "state_dict", "loops", "callbacks",
    "optimizer_states", "lr_schedulers", "hparams_name", "hyper_parameters",
}  # fmt: skip
V1_FORBIDDEN = {"tab_field_list", "label_name", "vocab_size", "optimizer_type", "momentum", "word_embeddings"}


def load(name: str):
    return torch.load(FIXTURES / name, map_location="cpu", weights_only=True)


def rebuild(entry: dict):
    """Build the legacy model a fixture came from, from its config and tensor shapes only."""
    raw = load(entry["file"])
    if entry["kind"] == "state_dict":
        state, hp = raw, {}
    else:
        state, hp = raw["state_dict"], raw["hyper_parameters"]
    family, version = entry["family"], entry["version"]
    if family == "TabAE":
        return TabAE({**hp, **entry["overrides"]}), state
    if family == "TextCNN" or version == "v0":
        config = {**hp["config"], **entry["overrides"]}
    else:
        config = {**hp, **entry["overrides"]}
    emb_key = "embeddings.weight" if family == "TextCNN" else "text_subnetwork.embeddings.weight"
    vocab, width = state[emb_key].shape
    cls = {"TextCNN": TextCNN, "v0": MultimodalCNN, "v1": BimodalCNN}[
        family if family == "TextCNN" else version
    ]
    return cls(config, vocab, torch.zeros(vocab, width)), state


def test_manifest_lists_every_fixture_with_the_contract_schema():
    assert EXPECTED_FILES <= set(BY_FILE)
    assert len(BY_FILE) == len(MANIFEST), "one entry per file"
    keys = {"file", "family", "version", "kind", "dtype", "overrides", "io", "description"}
    for entry in (BY_FILE[name] for name in EXPECTED_FILES):
        assert set(entry) == keys, entry["file"]
        assert (FIXTURES / entry["file"]).is_file() and (FIXTURES / entry["io"]).is_file()
        assert entry["io"] == Path(entry["file"]).stem + ".io.pt"
        assert entry["family"] in {"TextCNN", "TabAE", "BimodalCNN"}
        assert entry["version"] in {"v0", "v1"}
        assert entry["kind"] in {"lightning", "state_dict"}
        assert entry["dtype"] in {"float32", "float16"}
        assert (FIXTURES / entry["file"]).stat().st_size < 1_000_000
    assert BY_FILE["bimodal_cnn_v1_state_dict.pt"]["kind"] == "state_dict"
    assert BY_FILE["bimodal_cnn_v1_fp16.ckpt"]["dtype"] == "float16"
    assert BY_FILE["multimodal_cnn_v0.ckpt"]["version"] == "v0"


@pytest.mark.parametrize("name", sorted(EXPECTED_FILES))
def test_fixture_loads_strictly_and_reproduces_outputs(name):
    entry = BY_FILE[name]
    model, state = rebuild(entry)
    assert list(state) == list(model.state_dict()), "same keys in the same order"
    dtype = getattr(torch, entry["dtype"])
    assert {v.dtype for v in state.values()} == {dtype}
    model.load_state_dict(state, strict=True)
    model.eval()
    io = load(entry["io"])
    with torch.no_grad():
        out = model(io["inputs"])
    assert out.dtype == torch.float32 and out.shape == io["outputs"].shape
    assert torch.allclose(out, io["outputs"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(f for f in EXPECTED_FILES if f.endswith(".ckpt")))
def test_lightning_checkpoint_contents(name):
    entry = BY_FILE[name]
    ckpt = load(name)
    assert set(ckpt) == LIGHTNING_KEYS
    assert ckpt["global_step"] > 0
    hp = ckpt["hyper_parameters"]
    opt = ckpt["optimizer_states"][0]
    trainable = [k for k in ckpt["state_dict"] if not k.endswith(("class_weights_tensor", "loss_op.weight"))]
    assert opt["param_groups"][0]["params"] == list(range(len(trainable)))
    if name == "bimodal_cnn_v1_multiclass.ckpt":
        assert set(opt["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}  # Adam -> AdamW
    else:
        assert all(set(s) == {"momentum_buffer"} for s in opt["state"].values())
        assert len(opt["state"]) == len(trainable)
    if entry["family"] == "TextCNN" or entry["version"] == "v0":
        assert list(hp) == ["config", "vocab_size", "word_embeddings"]
        weight = ckpt["state_dict"][[k for k in ckpt["state_dict"] if k.endswith("embeddings.weight")][0]]
        assert hp["word_embeddings"].untyped_storage().data_ptr() == weight.untyped_storage().data_ptr()
        assert entry["overrides"] == {}
    elif entry["family"] == "TabAE":
        assert list(hp) == [
            "tab_field_list",
            "hidden_common_dim",
            "is_binary",
            "num_classes",
            "input_tab_dim",
        ]
    else:
        assert not V1_FORBIDDEN & set(hp)
        assert not any(isinstance(v, torch.Tensor) for v in hp.values())
        assert hp["model_class"] == "bimodal_cnn"
        assert "tab_field_list" in entry["overrides"] and "label_name" in entry["overrides"]
        has_tab = any(k.startswith("tab_subnetwork.") for k in ckpt["state_dict"])
        assert bool(entry["overrides"]["tab_field_list"]) == has_tab


def test_era_specific_io_batches():
    v0 = load("multimodal_cnn_v0.io.pt")["inputs"]
    v1 = load("bimodal_cnn_v1.io.pt")["inputs"]
    assert "dialogue_processed_input_ids" in v0 and "dialogue_input_ids" not in v0
    assert "dialogue_input_ids" in v1 and "dialogue_processed_input_ids" not in v1
    assert load("multimodal_cnn_v0.ckpt")["hyper_parameters"]["config"]["model_class"] == "multimodal_cnn"
    text = load("text_cnn_v1.io.pt")["inputs"]
    assert text.dtype == torch.long and text.shape[1] == 40
    tab = load("tab_ae_v1.io.pt")["inputs"]
    assert tab.dtype == torch.float32 and tab.shape[1] == 3


def test_state_dict_fixture_overrides_hold_the_full_config():
    overrides = BY_FILE["bimodal_cnn_v1_state_dict.pt"]["overrides"]
    for key in (
        "text_name",
        "label_name",
        "tab_field_list",
        "kernel_size",
        "num_layers",
        "num_channels",
        "hidden_common_dim",
        "max_sen_len",
        "is_binary",
        "num_classes",
    ):
        assert key in overrides, key


def _load_generator():
    spec = importlib.util.spec_from_file_location("_fixture_generate", FIXTURES / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_regenerating_reproduces_the_fixture(tmp_path, record_property):
    """Bitwise on the kernels the fixtures were made with; elsewhere within REGEN_TOLERANCE (reported)."""
    tolerance = regeneration_comparison()
    record_property("comparison", "bitwise" if tolerance is None else f"within {tolerance} (other CPU kernels)")
    generator = _load_generator()
    (entry,) = generator.generate(tmp_path, only=["tab_ae_v1"])
    assert entry == BY_FILE["tab_ae_v1.ckpt"]
    new, old = (torch.load(d / "tab_ae_v1.ckpt", weights_only=True) for d in (tmp_path, FIXTURES))
    new_io, old_io = (torch.load(d / "tab_ae_v1.io.pt", weights_only=True) for d in (tmp_path, FIXTURES))
    assert list(new["state_dict"]) == list(old["state_dict"])
    assert new["hyper_parameters"] == old["hyper_parameters"]
    assert torch.equal(new_io["inputs"], old_io["inputs"])  # made from a seed, not computed by a model
    pairs = [(new["state_dict"][k], v, k) for k, v in old["state_dict"].items()]
    pairs += [(new["optimizer_states"][0]["state"][i]["momentum_buffer"], st["momentum_buffer"], f"momentum {i}")
              for i, st in old["optimizer_states"][0]["state"].items()]
    pairs.append((new_io["outputs"], old_io["outputs"], "outputs"))
    for got, want, name in pairs:
        assert got.dtype == want.dtype and got.shape == want.shape, name
        if tolerance is None:
            assert torch.equal(got, want), name
        else:
            torch.testing.assert_close(got, want, **tolerance, msg=name)


def test_v1_cannot_load_itself_but_v0_can():
    with pytest.raises(TypeError):
        BimodalCNN.load_from_checkpoint(FIXTURES / "bimodal_cnn_v1.ckpt")
    model = MultimodalCNN.load_from_checkpoint(FIXTURES / "multimodal_cnn_v0.ckpt").eval()
    io = load("multimodal_cnn_v0.io.pt")
    with torch.no_grad():
        assert torch.allclose(model(io["inputs"]), io["outputs"], rtol=0, atol=1e-6)


def test_text_cnn_fixture_was_trained_stand_alone():
    config = load("text_cnn_v1.ckpt")["hyper_parameters"]["config"]
    assert config["hidden_common_dim"] == 2 and config["is_binary"]
    assert load("text_cnn_v1.io.pt")["outputs"].shape[1] == 2

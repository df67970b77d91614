"""Legacy (v1) BERT fusion classes reproduce the facts of ``shared/spec/fusion-layouts.md``."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from conftest import regeneration_comparison  # noqa: E402

from legacy.bert import (  # noqa: E402
    BERT_LEGACY_CLASS_PATHS,
    BimodalBertCrossAttn,
    BimodalBertGateFusion,
    BimodalBertMoE,
    TextBertBase,
    TrimodalCrossAttentionBert,
)
from legacy.bert._common import optimizer_groups  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning")]

FIXTURES = ROOT / "fixtures"
BERT = {
    "vocab_size": 100,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}
TABS = ["a", "b", "c"]
H = 16
#: Keys of one tiny BertModel (transformers 5.x: position_ids/token_type_ids are not persistent).
BERT_KEYS = 39


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def cfg(**over):
    c = {
        "text_name": "dlg",
        "label_name": "y",
        "hidden_common_dim": H,
        "tab_field_list": TABS,
        "bert_config": BERT,
    }
    c.update(over)
    return c


def tri_cfg(**over):
    c = cfg(primary_text_name="p", secondary_text_name="s", cross_attention_heads=4)
    del c["text_name"]
    c.update(over)
    return c


def batch(names=("dlg",), b=3, chunks=2, t=6, lengths=None, tabs=TABS):
    g = torch.Generator().manual_seed(1)
    out = {}
    for name in names:
        ids = torch.randint(1, 100, (b, chunks, t), generator=g)
        mask = torch.ones(b, chunks, t, dtype=torch.long)
        if lengths is not None:
            mask.zero_()
            for i, row in enumerate(lengths):
                for c, n in enumerate(row):
                    mask[i, c, :n] = 1
        out[f"{name}_input_ids"] = ids * mask
        out[f"{name}_attention_mask"] = mask
    for f in tabs or []:
        out[f] = torch.randn(b, generator=g)
    return out


def non_bert(keys):
    return [k for k in keys if ".bert." not in k]


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- key layouts


def test_text_bert_base_keys():
    m = TextBertBase(cfg())
    keys = list(m.state_dict())
    assert len(keys) == BERT_KEYS + 2
    assert all(k.startswith("bert.") for k in keys[:BERT_KEYS])
    assert keys[BERT_KEYS:] == ["head_layer.1.weight", "head_layer.1.bias"]
    assert shapes(m)["head_layer.1.weight"] == (H, 32)
    assert "bert.embeddings.position_ids" not in keys


def test_cross_attn_keys_order_shapes():
    m = BimodalBertCrossAttn(cfg(num_heads=2))
    keys = list(m.state_dict())
    assert len(keys) == 63
    assert keys[0] == "class_weights_tensor" and keys[-1] == "loss_op.weight"
    assert keys[1:5] == [
        f"tab_subnetwork.embedding_layer.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")
    ]
    assert all(k.startswith("text_subnetwork.bert.") for k in keys[5 : 5 + BERT_KEYS])
    mha = ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]
    assert non_bert(keys)[5:] == (
        ["text_subnetwork.head_layer.1.weight", "text_subnetwork.head_layer.1.bias"]
        + [f"cross_att.text2tab.{p}" for p in mha]
        + [f"cross_att.tab2text.{p}" for p in mha]
        + [f"cross_att.{n}.{p}" for n in ("text_norm", "tab_norm") for p in ("weight", "bias")]
        + [f"final_merge_network.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
        + ["loss_op.weight"]
    )
    s = shapes(m)
    assert s["cross_att.text2tab.in_proj_weight"] == (3 * H, H)
    assert s["cross_att.tab2text.out_proj.weight"] == (H, H)
    assert s["final_merge_network.0.weight"] == (H, 2 * H)
    assert s["final_merge_network.2.weight"] == (2, H)
    assert s["tab_subnetwork.embedding_layer.1.weight"] == (H, 3)


def test_cross_attn_needs_tab():
    with pytest.raises(AssertionError):
        BimodalBertCrossAttn(cfg(tab_field_list=None))


@pytest.mark.parametrize("fusion_dim", [H, 24])
def test_gate_keys_shapes(fusion_dim):
    m = BimodalBertGateFusion(cfg(fusion_dim=fusion_dim))
    keys = list(m.state_dict())
    assert len(keys) == 57
    assert non_bert(keys) == (
        ["class_weights_tensor"]
        + [f"tab_subnetwork.embedding_layer.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")]
        + ["text_subnetwork.head_layer.1.weight", "text_subnetwork.head_layer.1.bias"]
        + [
            f"gate_fusion.{n}.{p}"
            for n in ("text_proj", "tab_proj", "gate_net.0", "gate_net.1")
            for p in ("weight", "bias")
        ]
        + ["final_merge_network.1.weight", "final_merge_network.1.bias", "loss_op.weight"]
    )
    s = shapes(m)
    assert s["gate_fusion.text_proj.weight"] == (fusion_dim, H)
    assert s["gate_fusion.tab_proj.weight"] == (fusion_dim, H)
    assert s["gate_fusion.gate_net.0.weight"] == (fusion_dim, 2 * fusion_dim)
    assert s["final_merge_network.1.weight"] == (2, fusion_dim)
    # fusion_dim is not saved but readable from the shapes
    assert "fusion_dim" not in m.hparams


def test_gate_without_tab_has_empty_tab_proj_and_outputs_bias():
    m = BimodalBertGateFusion(cfg(tab_field_list=None)).eval()
    s = shapes(m)
    assert s["gate_fusion.tab_proj.weight"] == (H, 0)
    assert not any(k.startswith("tab_subnetwork") for k in s)
    assert len(s) == 53
    with torch.no_grad():
        m.gate_fusion.tab_proj.bias.normal_()
        b = batch(tabs=None)
        text = m.text_subnetwork(b)
        a = m.gate_fusion.text_proj(text)
        tab = m.gate_fusion.tab_proj.bias.expand_as(a)
        g = m.gate_fusion.gate_net(torch.cat([a, tab], dim=1))
        expected = m.final_merge_network(g * a + (1 - g) * tab)
        torch.testing.assert_close(m(b), expected, rtol=0, atol=1e-6)


def test_moe_identity_projections_when_widths_equal():
    m = BimodalBertMoE(cfg())
    keys = non_bert(m.state_dict())
    assert isinstance(m.moe_fusion.text_proj, torch.nn.Identity)
    assert isinstance(m.moe_fusion.tab_proj, torch.nn.Identity)
    assert keys[-5:] == [
        "moe_fusion.router.0.weight",
        "moe_fusion.router.0.bias",
        "classifier.1.weight",
        "classifier.1.bias",
        "loss_op.weight",
    ]
    assert len(m.state_dict()) == 51
    assert shapes(m)["classifier.1.weight"] == (2, H)  # fusion_dim readable here
    assert shapes(m)["moe_fusion.router.0.weight"] == (2, 2 * H)


def test_moe_projections_when_widths_differ():
    m = BimodalBertMoE(cfg(fusion_dim=24))
    s = shapes(m)
    assert s["moe_fusion.text_proj.weight"] == (24, H)
    assert s["moe_fusion.tab_proj.weight"] == (24, H)
    assert s["classifier.1.weight"] == (2, 24)
    assert len(s) == 55


def test_moe_without_tab_constructs_but_forward_fails():
    m = BimodalBertMoE(cfg(tab_field_list=None))
    assert shapes(m)["moe_fusion.tab_proj.weight"] == (H, 0)
    with pytest.raises(TypeError):
        m(batch(tabs=None))


def test_trimodal_keys_projection_and_head():
    m = TrimodalCrossAttentionBert(tri_cfg(secondary_hidden_common_dim=24))
    keys = list(m.state_dict())
    nb = non_bert(keys)
    assert len(keys) == 118
    assert nb[:5] == ["class_weights_tensor"] + [
        f"tab_subnetwork.embedding_layer.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")
    ]
    # primary (16) is narrower than secondary (24): it gets the projection
    assert "primary_projection.weight" in nb and not any(k.startswith("secondary_projection") for k in nb)
    order = [k.split(".")[0] for k in keys]
    assert order.index("primary_text_subnetwork") < order.index("secondary_text_subnetwork")
    assert order.index("tab_subnetwork") < order.index("primary_text_subnetwork")
    s = shapes(m)
    d = 24
    assert s["primary_projection.weight"] == (d, H)
    assert s["cross_attention.ffn_primary.0.weight"] == (4 * d, d)
    assert s["cross_attention.ffn_secondary.3.weight"] == (d, 4 * d)
    assert s["cross_attention.attn_p2s.in_proj_weight"] == (3 * d, d)
    assert s["final_merge_network.2.weight"] == (128, 2 * d + H)  # max(128, total // 2)
    assert s["final_merge_network.5.weight"] == (2, 128)
    assert keys[-1] == "loss_op.weight"


def test_trimodal_equal_widths_no_projection_no_tab():
    m = TrimodalCrossAttentionBert(tri_cfg(tab_field_list=None, fusion_hidden_dim=8))
    s = shapes(m)
    assert not any("projection" in k and "bert" not in k for k in s)
    assert not any(k.startswith("tab_subnetwork") for k in s)
    assert s["final_merge_network.2.weight"] == (8, 2 * H)


# --------------------------------------------------------------------------- hyper-parameters


@pytest.mark.parametrize(
    "cls,config",
    [
        (BimodalBertCrossAttn, cfg(num_heads=2)),
        (BimodalBertGateFusion, cfg(fusion_dim=24)),
        (BimodalBertMoE, cfg(fusion_dim=24)),
        (TrimodalCrossAttentionBert, tri_cfg(secondary_hidden_common_dim=24)),
    ],
)
def test_saved_hparams_are_the_whitelist(cls, config):
    hp = dict(cls(config).hparams)
    for absent in (
        "tab_field_list",
        "label_name",
        "fusion_dim",
        "num_heads",
        "cross_attention_heads",
        "primary_hidden_common_dim",
        "secondary_hidden_common_dim",
        "bert_config",
        "config",
    ):
        assert absent not in hp
    assert hp["tokenizer"] == "bert-base-cased"
    assert hp["hidden_common_dim"] == H
    assert all(not isinstance(v, torch.Tensor) for v in hp.values())


def test_load_from_checkpoint_fails_for_every_family():
    for entry in _manifest():
        if entry["kind"] != "lightning":
            continue
        cls = BERT_LEGACY_CLASS_PATHS[_HIST[entry["family"]]]
        with pytest.raises(TypeError, match="config"):
            cls.load_from_checkpoint(FIXTURES / entry["file"])


# --------------------------------------------------------------------------- forward arithmetic


def test_empty_batch_raises_and_2d_input_raises():
    m = TextBertBase(cfg()).eval()
    b = batch(tabs=None)
    b["dlg_attention_mask"] = torch.zeros_like(b["dlg_attention_mask"])
    with pytest.raises(ValueError, match="All input chunks in batch are empty!"):
        m(b)
    b = batch(tabs=None)
    b2 = {k: v[:, 0] for k, v in b.items()}
    with pytest.raises(ValueError):
        m(b2)


def test_chunk_mean_includes_fully_padded_chunks():
    m = TextBertBase(cfg()).eval()
    b = batch(tabs=None, b=2, chunks=3, lengths=[[6, 4, 0], [2, 6, 6]])
    with torch.no_grad():
        out = m(b)
        ids = b["dlg_input_ids"].view(6, -1)
        mask = b["dlg_attention_mask"].view(6, -1)
        pooled = m.bert(input_ids=ids, attention_mask=mask).pooler_output.view(2, 3, -1)
        all_chunks = m.head_layer(pooled.mean(dim=1))
        non_empty = m.head_layer(torch.stack([pooled[0, :2].mean(0), pooled[1].mean(0)]))
    torch.testing.assert_close(out, all_chunks, rtol=0, atol=1e-6)
    assert not torch.allclose(out[0], non_empty[0], atol=1e-4)  # the padded chunk counts


def _copy_weights(dst, src):
    dst.load_state_dict(src.state_dict())
    return dst.eval()


def test_cross_attention_independent_of_num_heads():
    ref = BimodalBertCrossAttn(cfg(num_heads=1)).eval()
    b = batch()
    with torch.no_grad():
        expected = ref(b)
        for heads in (2, 4, 8, 16):
            other = _copy_weights(BimodalBertCrossAttn(cfg(num_heads=heads)), ref)
            torch.testing.assert_close(other(b), expected, rtol=0, atol=1e-6)
        # only the value slice of in_proj and out_proj matter: scrambling q/k changes nothing
        for mha in (ref.cross_att.text2tab, ref.cross_att.tab2text):
            mha.in_proj_weight[: 2 * H].normal_()
            mha.in_proj_bias[: 2 * H].normal_()
        torch.testing.assert_close(ref(b), expected, rtol=0, atol=1e-6)


def _value_path(mha, x):
    """A 1-token attention output: out_proj(value projection of the key/value token)."""
    w_v = mha.in_proj_weight[2 * mha.embed_dim :]
    b_v = mha.in_proj_bias[2 * mha.embed_dim :]
    return mha.out_proj(x @ w_v.T + b_v)


def test_cross_attention_tab_attends_to_updated_text():
    m = BimodalBertCrossAttn(cfg()).eval()
    b = batch()
    ca = m.cross_att
    with torch.no_grad():
        text = m.text_subnetwork(b)
        tab = m.tab_subnetwork(m.tab_subnetwork.combine_tab_data(b))
        t = ca.text_norm(text + _value_path(ca.text2tab, tab))
        u = ca.tab_norm(tab + _value_path(ca.tab2text, t))
        expected = m.final_merge_network(torch.cat([t, u], dim=1))
        torch.testing.assert_close(m(b), expected, rtol=0, atol=1e-5)
        u_orig = ca.tab_norm(tab + _value_path(ca.tab2text, text))
        assert not torch.allclose(u, u_orig, atol=1e-4)


def test_gate_and_moe_arithmetic():
    b = batch()
    g = BimodalBertGateFusion(cfg(fusion_dim=24)).eval()
    moe = BimodalBertMoE(cfg(fusion_dim=24)).eval()
    with torch.no_grad():
        text = g.text_subnetwork(b)
        tab = g.tab_subnetwork(g.tab_subnetwork.combine_tab_data(b))
        a, c = g.gate_fusion.text_proj(text), g.gate_fusion.tab_proj(tab)
        gate = torch.sigmoid(g.gate_fusion.gate_net[1](g.gate_fusion.gate_net[0](torch.cat([a, c], 1))))
        expected = g.final_merge_network[1](torch.relu(gate * a + (1 - gate) * c))
        torch.testing.assert_close(g(b), expected, rtol=0, atol=1e-6)

        text = moe.text_subnetwork(b)
        tab = moe.tab_subnetwork(moe.tab_subnetwork.combine_tab_data(b))
        a, c = moe.moe_fusion.text_proj(text), moe.moe_fusion.tab_proj(tab)
        w = torch.softmax(moe.moe_fusion.router[0](torch.cat([a, c], 1)), dim=-1)
        expected = moe.classifier(w[:, :1] * a + w[:, 1:] * c)
        torch.testing.assert_close(moe(b), expected, rtol=0, atol=1e-6)


def test_trimodal_s2p_uses_original_primary():
    m = TrimodalCrossAttentionBert(tri_cfg(secondary_hidden_common_dim=8)).eval()
    b = batch(names=("p", "s"))
    ca = m.cross_attention
    with torch.no_grad():
        p = m.primary_text_subnetwork(b)
        s = m.secondary_projection(m.secondary_text_subnetwork(b))
        p1 = ca.norm_primary(p + _value_path(ca.attn_p2s, s))
        s1 = ca.norm_secondary(s + _value_path(ca.attn_s2p, p))
        p2 = ca.norm_ffn_primary(p1 + ca.ffn_primary(p1))
        s2 = ca.norm_ffn_secondary(s1 + ca.ffn_secondary(s1))
        tab = m.tab_subnetwork(m.tab_subnetwork.combine_tab_data(b))
        expected = m.final_merge_network(torch.cat([p2, s2, tab], dim=1))
        torch.testing.assert_close(m(b), expected, rtol=0, atol=1e-5)


def test_multiclass_label_read_from_processed_key():
    m = BimodalBertGateFusion(cfg(is_binary=False, num_classes=3, class_weights=[2.0]))
    assert m.label_name_transformed == "y_processed"
    assert m.class_weights_tensor.tolist() == [2.0, 1.0, 1.0]
    b = batch()
    b["y_processed"] = torch.tensor([0, 2, 1])
    loss, preds, labels = m.run_epoch(b, "train")
    assert preds.shape == (3, 3) and labels.tolist() == [0, 2, 1] and loss.dim() == 0


# --------------------------------------------------------------------------- optimizer


def test_optimizer_two_groups_no_decay_names():
    m = BimodalBertGateFusion(cfg(weight_decay=0.01))
    decay, no_decay = optimizer_groups(m.named_parameters(), 0.01)
    names = dict((id(p), n) for n, p in m.named_parameters())
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    for p in no_decay["params"]:
        assert "bias" in names[id(p)] or "LayerNorm.weight" in names[id(p)]
    for p in decay["params"]:
        assert "bias" not in names[id(p)] and "LayerNorm.weight" not in names[id(p)]
    # plain LayerNorms of the fusion block are decayed (their names do not contain "LayerNorm.weight")
    assert any(names[id(p)] == "gate_fusion.gate_net.1.weight" for p in decay["params"])
    first = [names[id(p)] for p in decay["params"]][0]
    assert first.startswith("tab_subnetwork.")  # tab registered before text


# --------------------------------------------------------------------------- fixtures

_HIST = {
    "BimodalBertCrossAttn": "athelas.models.lightning.bimodal.pl_bimodal_cross_attn.BimodalBertCrossAttn",
    "BimodalBertGateFusion": "athelas.models.lightning.bimodal.pl_bimodal_gate_fusion.BimodalBertGateFusion",
    "BimodalBertMoE": "athelas.models.lightning.bimodal.pl_bimodal_moe.BimodalBertMoE",
    "TrimodalCrossAttentionBert": (
        "athelas.models.lightning.trimodal.pl_trimodal_cross_attn.TrimodalCrossAttentionBert"
    ),
}


def _manifest():
    return json.loads((FIXTURES / "fusion_manifest.json").read_text())


def test_class_paths():
    assert set(BERT_LEGACY_CLASS_PATHS) == set(_HIST.values()) | {
        "athelas.models.lightning.text.pl_bert.TextBertBase"
    }
    for family, path in _HIST.items():
        assert BERT_LEGACY_CLASS_PATHS[path].__name__ == family


def test_manifest_lists_existing_small_files():
    entries = _manifest()
    assert {e["family"] for e in entries} == set(_HIST)
    expected = {
        "fusion_cross_attn_v1.ckpt",
        "fusion_gate_v1.ckpt",
        "fusion_gate_notab_v1.ckpt",
        "fusion_moe_v1.ckpt",
        "fusion_trimodal_v1.ckpt",
        "fusion_gate_v1_state_dict.pt",
    }
    assert expected <= {e["file"] for e in entries}
    for e in entries:
        assert e["version"] == "v1" and e["dtype"] == "float32"
        assert e["kind"] in ("lightning", "state_dict")
        for name in (e["file"], e["io"]):
            size = (FIXTURES / name).stat().st_size
            assert 0 < size < 1_000_000


@pytest.mark.parametrize("entry", _manifest(), ids=lambda e: e["file"])
def test_fixture_loads_strictly_and_reproduces_outputs(entry):
    loaded = torch.load(FIXTURES / entry["file"], weights_only=True)
    io = torch.load(FIXTURES / entry["io"], weights_only=True)
    assert io["bert_config"] == entry["bert_config"]
    if entry["kind"] == "lightning":
        sd = loaded["state_dict"]
        hp = loaded["hyper_parameters"]
        assert "tab_field_list" not in hp and "bert_config" not in hp
        assert len(loaded["optimizer_states"][0]["param_groups"]) == 2
        assert loaded["global_step"] == 3
    else:
        sd = loaded
    cls = BERT_LEGACY_CLASS_PATHS[_HIST[entry["family"]]]
    model = cls({**entry["legacy_config"], "bert_config": entry["bert_config"]})
    model.load_state_dict(sd, strict=True)
    model.eval()
    with torch.no_grad():
        out = model(io["inputs"])
    torch.testing.assert_close(out, io["outputs"], rtol=0, atol=1e-6)
    masks = [v for k, v in io["inputs"].items() if k.endswith("_attention_mask")]
    assert any(bool((m.sum(-1) == 0).any()) for m in masks)  # a fully padded chunk
    assert any(bool(((m.sum(-1) > 0) & (m.sum(-1) < m.shape[-1])).any()) for m in masks)  # partial chunks


def test_cross_attn_fixture_has_63_keys_and_notab_gate_has_empty_tab_proj():
    sd = torch.load(FIXTURES / "fusion_cross_attn_v1.ckpt", weights_only=True)["state_dict"]
    assert len(sd) == 63
    sd = torch.load(FIXTURES / "fusion_gate_notab_v1.ckpt", weights_only=True)["state_dict"]
    assert tuple(sd["gate_fusion.tab_proj.weight"].shape) == (H, 0)
    sd = torch.load(FIXTURES / "fusion_trimodal_v1.ckpt", weights_only=True)["state_dict"]
    assert "secondary_projection.weight" in sd


def test_regeneration_reproduces_the_fixtures(tmp_path, record_property):
    """Bitwise on the kernels the fixtures were made with; elsewhere within REGEN_TOLERANCE (reported)."""
    tolerance = regeneration_comparison()
    record_property("comparison", "bitwise" if tolerance is None else f"within {tolerance} (other CPU kernels)")
    spec = importlib.util.spec_from_file_location("_generate_fusion", FIXTURES / "generate_fusion.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    manifest = gen.generate(tmp_path, only=["fusion_gate_v1"])
    names = gen.fixture_files(manifest)
    assert "fusion_gate_v1_state_dict.pt" in names
    assert gen.compare_dirs(FIXTURES, tmp_path, names, tolerance) == []

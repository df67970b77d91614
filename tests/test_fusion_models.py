"""v2 BERT fusion components and models: layouts, legacy equivalence through the spec key map, training."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import legacy.bert as lb  # noqa: E402
from athelas_migrate.components.bert import (  # noqa: E402
    BertEncoder,
    BidirectionalCrossAttention,
    CrossAttentionFusion,
    GateFusion,
    MixtureOfExperts,
    MLPBlock,
    build_bert,
)
from athelas_migrate.models import AthelasModule  # noqa: E402
from athelas_migrate.models.bert_fusion import (  # noqa: E402
    BimodalBertCrossAttn,
    BimodalBertGateFusion,
    BimodalBertMoE,
    TrimodalCrossAttentionBert,
    resolve_bert_fusion_config,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

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
V2 = {
    "BimodalBertCrossAttn": BimodalBertCrossAttn,
    "BimodalBertGateFusion": BimodalBertGateFusion,
    "BimodalBertMoE": BimodalBertMoE,
    "TrimodalCrossAttentionBert": TrimodalCrossAttentionBert,
}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def cfg(**over):
    c = {"text_name": "dlg", "label_name": "y", "hidden_common_dim": H, "tab_field_list": TABS}
    c.update(over)
    return c


def tri_cfg(**over):
    c = cfg(primary_text_name="p", secondary_text_name="s", cross_attention_heads=4, fusion_hidden_dim=8)
    del c["text_name"]
    c.update(over)
    return c


def batch(names=("dlg",), b=4, chunks=2, t=6, tabs=TABS, label=True, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in names:
        ids = torch.randint(1, 100, (b, chunks, t), generator=g)
        mask = torch.ones(b, chunks, t, dtype=torch.long)
        mask[0, 1:] = 0  # a fully padded chunk
        mask[1, 0, 3:] = 0  # a partially padded chunk
        out[f"{name}_input_ids"] = ids * mask
        out[f"{name}_attention_mask"] = mask
    for f in tabs or []:
        out[f] = torch.randn(b, generator=g)
    if label:
        out["y"] = torch.randint(0, 2, (b,), generator=g)
    return out


# --------------------------------------------------------------------------- the spec key map (test helper)


def legacy_to_v2(state_dict):
    """Apply the legacy -> v2 key map of fusion-layouts.md (the real engine lives elsewhere)."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith("bert.embeddings.position_ids"):
            continue  # older transformers only; dropped
        new = re.sub(r"^(primary_|secondary_|)text_subnetwork\.bert\.", r"\1text_encoder.bert.", key)
        new = re.sub(
            r"^(primary_|secondary_|)text_subnetwork\.head_layer\.1\.", r"\1text_encoder.projection.1.", new
        )
        new = re.sub(r"^tab_subnetwork\.embedding_layer\.", "tab_encoder.embedding.", new)
        new = re.sub(
            r"^cross_attention\.ffn_(primary|secondary)\.(0|3)\.", r"cross_attention.ffn_\1.net.\2.", new
        )
        out[new] = value
    return out


def derive_config(family, state_dict, hparams, overrides):
    """What a migration knows: saved hyper-parameters + user overrides + widths read off shapes."""
    config = {**hparams, **overrides}
    sd = state_dict
    if family == "TrimodalCrossAttentionBert":
        config["primary_hidden_common_dim"] = sd["primary_text_subnetwork.head_layer.1.weight"].shape[0]
        config["secondary_hidden_common_dim"] = sd["secondary_text_subnetwork.head_layer.1.weight"].shape[0]
        config["fusion_hidden_dim"] = sd["final_merge_network.2.weight"].shape[0]
        head = sd["final_merge_network.5.weight"]
    else:
        config.setdefault("hidden_common_dim", sd["text_subnetwork.head_layer.1.weight"].shape[0])
        if family == "BimodalBertGateFusion":
            config["fusion_dim"] = sd["gate_fusion.text_proj.weight"].shape[0]
            head = sd["final_merge_network.1.weight"]
        elif family == "BimodalBertMoE":
            config["fusion_dim"] = sd["classifier.1.weight"].shape[1]
            head = sd["classifier.1.weight"]
        else:
            head = sd["final_merge_network.2.weight"]
    config.setdefault("num_classes", head.shape[0])
    config.setdefault("is_binary", head.shape[0] == 2)
    return config


def _manifest():
    return json.loads((FIXTURES / "fusion_manifest.json").read_text())


# --------------------------------------------------------------------------- components


def test_bert_encoder_2d_equals_single_chunk_and_empty_raises():
    enc = BertEncoder(build_bert(BERT), 12).eval()
    assert [n for n, _ in enc.named_children()] == ["bert", "projection"]
    assert isinstance(enc.projection[0], torch.nn.Dropout) and enc.projection[1].weight.shape == (12, 32)
    b = batch(tabs=None, label=False)
    ids, mask = b["dlg_input_ids"], b["dlg_attention_mask"]
    with torch.no_grad():
        three = enc(ids[:, :1], mask[:, :1])
        two = enc(ids[:, 0], mask[:, 0])
        torch.testing.assert_close(three, two, rtol=0, atol=1e-6)
        full = enc(ids, mask)
        pooled = enc.bert(input_ids=ids.view(-1, 6), attention_mask=mask.view(-1, 6)).pooler_output
        torch.testing.assert_close(full, enc.projection(pooled.view(4, 2, -1).mean(1)), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="All input chunks in batch are empty!"):
        enc(ids, torch.zeros_like(mask))


def test_component_submodule_names():
    assert [n for n, _ in CrossAttentionFusion(16, 4).named_children()] == [
        "text2tab",
        "tab2text",
        "text_norm",
        "tab_norm",
    ]
    assert [n for n, _ in GateFusion(16, 0, 8).named_children()] == ["text_proj", "tab_proj", "gate_net"]
    assert GateFusion(16, 0, 8).tab_proj.weight.shape == (8, 0)
    moe = MixtureOfExperts(16, 16, 16)
    assert isinstance(moe.text_proj, torch.nn.Identity) and list(moe.state_dict()) == [
        "router.0.weight",
        "router.0.bias",
    ]
    assert MixtureOfExperts(16, 8, 16).tab_proj.weight.shape == (16, 8)
    assert list(MLPBlock(4, 16, 4, 0.1).state_dict()) == [
        "net.0.weight",
        "net.0.bias",
        "net.3.weight",
        "net.3.bias",
    ]
    bca = BidirectionalCrossAttention(16, 4, 0.1)
    assert [n for n, _ in bca.named_children()] == [
        "attn_p2s",
        "attn_s2p",
        "norm_primary",
        "norm_secondary",
        "ffn_primary",
        "ffn_secondary",
        "norm_ffn_primary",
        "norm_ffn_secondary",
    ]
    assert isinstance(bca.ffn_primary, MLPBlock)
    p, s, (w1, w2) = bca.eval()(torch.randn(3, 16), torch.randn(3, 16))
    assert p.shape == s.shape == (3, 16) and w1.shape == (3, 1, 1)


# --------------------------------------------------------------------------- v2 key layouts


def _nb(model):
    return [k for k in model.state_dict() if ".bert." not in k]


def test_v2_keys_cross_attn():
    m = BimodalBertCrossAttn(cfg(num_heads=2), BERT)
    assert isinstance(m, AthelasModule)
    keys = list(m.state_dict())
    assert len(keys) == 63
    assert all(k.startswith("text_encoder.bert.") for k in keys[1:40])
    mha = ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]
    assert _nb(m) == (
        ["class_weights_tensor", "text_encoder.projection.1.weight", "text_encoder.projection.1.bias"]
        + [f"tab_encoder.embedding.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")]
        + [f"cross_att.text2tab.{p}" for p in mha]
        + [f"cross_att.tab2text.{p}" for p in mha]
        + [f"cross_att.{n}.{p}" for n in ("text_norm", "tab_norm") for p in ("weight", "bias")]
        + [f"final_merge_network.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
        + ["loss_op.weight"]
    )


def test_v2_keys_gate_moe_trimodal():
    enc = ["class_weights_tensor", "text_encoder.projection.1.weight", "text_encoder.projection.1.bias"] + [
        f"tab_encoder.embedding.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")
    ]
    gate = BimodalBertGateFusion(cfg(fusion_dim=24), BERT)
    assert _nb(gate) == enc + [
        f"gate_fusion.{n}.{p}"
        for n in ("text_proj", "tab_proj", "gate_net.0", "gate_net.1")
        for p in ("weight", "bias")
    ] + ["final_merge_network.1.weight", "final_merge_network.1.bias", "loss_op.weight"]
    notab = BimodalBertGateFusion(cfg(tab_field_list=None), BERT)
    assert notab.state_dict()["gate_fusion.tab_proj.weight"].shape == (H, 0)
    assert not any(k.startswith("tab_encoder") for k in notab.state_dict())
    moe = BimodalBertMoE(cfg(), BERT)
    assert _nb(moe) == enc + ["moe_fusion.router.0.weight", "moe_fusion.router.0.bias"] + [
        "classifier.1.weight",
        "classifier.1.bias",
        "loss_op.weight",
    ]
    tri = TrimodalCrossAttentionBert(tri_cfg(secondary_hidden_common_dim=8), BERT)
    nb = _nb(tri)
    assert nb[:7] == [
        "class_weights_tensor",
        "primary_text_encoder.projection.1.weight",
        "primary_text_encoder.projection.1.bias",
        "secondary_text_encoder.projection.1.weight",
        "secondary_text_encoder.projection.1.bias",
        "secondary_projection.weight",
        "secondary_projection.bias",
    ]
    assert nb[7:11] == [f"tab_encoder.embedding.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")]
    assert (
        "cross_attention.ffn_primary.net.0.weight" in nb and "cross_attention.ffn_secondary.net.3.bias" in nb
    )
    assert nb[-5:] == [
        "final_merge_network.2.weight",
        "final_merge_network.2.bias",
        "final_merge_network.5.weight",
        "final_merge_network.5.bias",
        "loss_op.weight",
    ]


def test_config_resolution_makes_widths_explicit():
    c = resolve_bert_fusion_config(cfg(), "BimodalBertGateFusion")
    assert c["fusion_dim"] == H and c["lr"] == 2e-5 and c["text_attention_mask_key"] == "attention_mask"
    c = resolve_bert_fusion_config(cfg(), "BimodalBertCrossAttn")
    assert c["num_heads"] == 4
    c = resolve_bert_fusion_config(
        tri_cfg(secondary_hidden_common_dim=24, fusion_hidden_dim=None), "TrimodalCrossAttentionBert"
    )
    assert (c["primary_hidden_common_dim"], c["secondary_hidden_common_dim"]) == (H, 24)
    assert c["fusion_hidden_dim"] == 128
    assert resolve_bert_fusion_config(c, "TrimodalCrossAttentionBert") == c
    with pytest.raises(ValueError, match="tabular"):
        resolve_bert_fusion_config(cfg(tab_field_list=None), "BimodalBertCrossAttn")
    with pytest.raises(ValueError, match="BERT config"):
        BimodalBertGateFusion(cfg())


@pytest.mark.parametrize("family", list(V2))
def test_parameter_order_is_legacy_order_with_tab_moved_after_text(family):
    """The optimizer-state permutation a migration needs: legacy tab block moves after the text block."""
    legacy_cls = getattr(lb, family)
    config = tri_cfg(secondary_hidden_common_dim=8) if family.startswith("Tri") else cfg(fusion_dim=24)
    legacy = legacy_cls({**config, "bert_config": BERT})
    v2 = V2[family](config, BERT)
    legacy_names = [next(iter(legacy_to_v2({n: None}))) for n, _ in legacy.named_parameters()]
    v2_names = [n for n, _ in v2.named_parameters()]
    assert sorted(legacy_names) == sorted(v2_names)
    tab = [n for n in legacy_names if n.startswith("tab_encoder.")]
    rest = [n for n in legacy_names if not n.startswith("tab_encoder.")]
    last_text = max(
        i
        for i, n in enumerate(rest)
        if "text_encoder." in n or n.endswith("_projection.weight") or n.endswith("_projection.bias")
    )
    assert v2_names == rest[: last_text + 1] + tab + rest[last_text + 1 :]


# --------------------------------------------------------------------------- legacy fixtures -> v2


@pytest.mark.parametrize("entry", _manifest(), ids=lambda e: e["file"])
def test_legacy_fixture_through_key_map_gives_identical_logits(entry):
    loaded = torch.load(FIXTURES / entry["file"], weights_only=True)
    io = torch.load(FIXTURES / entry["io"], weights_only=True)
    if entry["kind"] == "lightning":
        sd, hp = loaded["state_dict"], loaded["hyper_parameters"]
    else:
        sd, hp = loaded, {}
    family = entry["family"]
    config = derive_config(family, sd, hp, entry["overrides"])
    model = V2[family](config, entry["bert_config"])
    model.load_state_dict(legacy_to_v2(sd), strict=True)
    model.eval()
    with torch.no_grad():
        out = model(io["inputs"])
    torch.testing.assert_close(out, io["outputs"], rtol=0, atol=1e-6)

    legacy = getattr(lb, family)({**entry["legacy_config"], "bert_config": entry["bert_config"]})
    legacy.load_state_dict(sd, strict=True)
    legacy.eval()
    with torch.no_grad():
        torch.testing.assert_close(out, legacy(io["inputs"]), rtol=0, atol=1e-6)
        # and back: the v2 state dict maps onto legacy exactly (same tensors, same key set)
        assert set(legacy_to_v2(legacy.state_dict())) == set(model.state_dict())


# --------------------------------------------------------------------------- training + checkpoint round trip


class _Rows(torch.utils.data.Dataset):
    def __init__(self, b):
        self.b, self.n = b, len(next(iter(b.values())))

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.b.items()}


def _trainer(**kw):
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=2,
        deterministic=True,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kw,
    )


CASES = {
    "BimodalBertCrossAttn": (cfg(num_heads=2, lr=1e-3), ("dlg",)),
    "BimodalBertGateFusion": (cfg(fusion_dim=24, tab_field_list=None, lr=1e-3), ("dlg",)),
    "BimodalBertMoE": (cfg(fusion_dim=24, lr=1e-3, warmup_steps=1), ("dlg",)),
    "TrimodalCrossAttentionBert": (
        tri_cfg(secondary_hidden_common_dim=8, is_binary=False, num_classes=3, lr=1e-3),
        ("p", "s"),
    ),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Each v2 family trained 2 steps by a real Trainer and saved: ``{family: (model, path, inputs)}``."""
    out = {}
    for family, (config, names) in CASES.items():
        torch.manual_seed(0)
        model = V2[family](config, BERT)
        data = batch(names=names, b=8, tabs=config.get("tab_field_list"))
        if not model.is_binary:
            data["y_processed"] = data.pop("y") % 3
        before = {k: v.clone() for k, v in model.state_dict().items()}
        trainer = _trainer()
        trainer.fit(model, DataLoader(_Rows(data), batch_size=4))
        assert trainer.global_step == 2
        assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
        opt = trainer.optimizers[0]
        assert len(opt.param_groups) == 2 and {g["weight_decay"] for g in opt.param_groups} == {0.0}
        assert type(trainer.lr_scheduler_configs[0].scheduler).__name__ == "LambdaLR"
        assert trainer.lr_scheduler_configs[0].interval == "step"
        path = tmp_path_factory.mktemp(family) / "m.ckpt"
        trainer.save_checkpoint(path)
        model.eval()
        out[family] = (model, path, {k: v[:4] for k, v in data.items() if not k.startswith("y")})
    return out


def _check_reloaded(reloaded, model, inputs):
    reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(inputs), model(inputs), rtol=0, atol=0)
    assert reloaded.config == model.config
    assert reloaded.hparams["bert_config"] == model.hparams["bert_config"]


@pytest.mark.parametrize("family", list(CASES))
def test_v2_trains_and_checkpoint_rebuilds_from_hparams_alone(family, trained):
    model, path, inputs = trained[family]
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["athelas_migrate"]["layout"] == "v2" and ckpt["athelas_migrate"]["family"] == family
    assert set(ckpt["hyper_parameters"]) == {"config", "bert_config"}
    assert len(ckpt["optimizer_states"][0]["param_groups"]) == 2
    # Lightning's own loader (the one AthelasModule defers to for v2 files), no extra args
    reloaded = super(AthelasModule, V2[family]).load_from_checkpoint(path)
    _check_reloaded(reloaded, model, inputs)


@pytest.mark.parametrize("family", list(CASES))
def test_v2_load_from_checkpoint_no_args(family, trained):
    """``Class.load_from_checkpoint(path)`` through AthelasModule's loader.

    That loader detects the layout through ``athelas_migrate.families`` first; it
    needs the BERT families registered there (someone else's module). Skipped,
    with that reason, until they are.
    """
    from athelas_migrate.families import FAMILIES

    if family not in FAMILIES:
        pytest.skip(f"{family} is not registered in athelas_migrate.families yet")
    model, path, inputs = trained[family]
    _check_reloaded(V2[family].load_from_checkpoint(path), model, inputs)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_v2_forward_is_traceable():
    from lightning.pytorch.core.module import _jit_is_scripting

    entry = next(e for e in _manifest() if e["file"] == "fusion_trimodal_v1.ckpt")
    io = torch.load(FIXTURES / entry["io"], weights_only=True)
    sd = torch.load(FIXTURES / entry["file"], weights_only=True)
    config = derive_config(entry["family"], sd["state_dict"], sd["hyper_parameters"], entry["overrides"])
    model = TrimodalCrossAttentionBert(config, entry["bert_config"])
    model.load_state_dict(legacy_to_v2(sd["state_dict"]))
    model.eval()
    with _jit_is_scripting(), torch.no_grad():
        traced = torch.jit.trace(model, (io["inputs"],), strict=False, check_trace=False)
        torch.testing.assert_close(traced(io["inputs"]), io["outputs"], rtol=0, atol=1e-6)
        half = {k: v[:2] for k, v in io["inputs"].items()}
        torch.testing.assert_close(traced(half), model(half), rtol=0, atol=1e-6)

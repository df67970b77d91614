"""The families' pure-Python layouts must equal the real legacy and refactored classes, key for key."""

from __future__ import annotations

import pytest
import torch

import legacy
from athelas_migrate import models
from athelas_migrate.families import get_family
from athelas_migrate.models.config import resolve_config

CONFIGS = [
    dict(kernel_size=[3, 5], num_layers=2, num_channels=[8, 8], tab_field_list=["a", "b", "c"]),
    dict(kernel_size=[3, 5, 7], num_layers=2, num_channels=[8, 6], is_binary=False, num_classes=4, max_sen_len=60,
         tab_field_list=["a", "b"]),
    dict(kernel_size=[3], num_layers=1, num_channels=[5], tab_field_list=None),
    dict(kernel_size=[2, 3], num_layers=3, num_channels=[4, 5, 6], tab_field_list=["x"], max_sen_len=60),
]


def _config(extra):
    cfg = resolve_config({"text_name": "t", "label_name": "y", "hidden_common_dim": 7, "max_sen_len": 40, **extra})
    cfg.update(vocab_size=11, embed_size=6)
    return cfg


def _shapes(module):
    return [(k, tuple(v.shape)) for k, v in module.state_dict().items()]


@pytest.mark.parametrize("extra", CONFIGS)
def test_bimodal_layouts(extra):
    cfg = _config(extra)
    fam = get_family("BimodalCNN")
    emb = torch.zeros(11, 6)
    for version, cls in (("v0", legacy.MultimodalCNN), ("v1", legacy.BimodalCNN)):
        assert _shapes(cls(dict(cfg), 11, emb)) == list(fam.expected(cfg, version).shapes.items())
    v2 = models.BimodalCNN(dict(cfg), 11, 6)
    assert _shapes(v2) == list(fam.expected(cfg, "v2").shapes.items())
    assert [n for n, _ in v2.named_parameters()] == fam.expected(cfg, "v2").parameters


@pytest.mark.parametrize("extra", CONFIGS)
def test_text_cnn_layouts(extra):
    cfg = _config({**extra, "tab_field_list": None})
    fam = get_family("TextCNN")
    assert _shapes(legacy.TextCNN(dict(cfg), 11, torch.zeros(11, 6))) == list(fam.expected(cfg, "v1").shapes.items())
    assert _shapes(models.TextCNN(dict(cfg), 11, 6)) == list(fam.expected(cfg, "v2").shapes.items())


def test_tab_ae_layouts():
    cfg = {"tab_field_list": ["a", "b", "c", "d"], "hidden_common_dim": 5, "input_tab_dim": 4}
    fam = get_family("TabAE")
    assert _shapes(legacy.TabAE(dict(cfg))) == list(fam.expected(cfg, "v1").shapes.items())
    assert _shapes(models.TabAE(dict(cfg))) == list(fam.expected(cfg, "v2").shapes.items())


# -- the fusion and Names3Risk families: layouts computed in pure Python vs the classes built on the meta device ---

def _real_layout(fam, config, version):
    """Keys, shapes, buffers of the real class for `config` (what the family used to build to learn its layout)."""
    from athelas_migrate.families.base import load_class

    clean = {k: v for k, v in config.items() if not k.startswith("_")}
    bert = config.get("_bert_config")
    with torch.device("meta"):
        if bert is None:  # Names3Risk: config only
            model = load_class(fam.v2_class if version == "v2" else fam.legacy_classes[version])(clean)
        elif version == "v2":
            model = load_class(fam.v2_class)(clean, bert)
        else:
            hook = {**clean, "label_name": clean.get("label_name") or "label"}
            if "primary" in bert:
                hook.update(primary_bert_config=bert["primary"], secondary_bert_config=bert["secondary"])
            hook["bert_config"] = bert.get("primary", bert)
            model = load_class(fam.legacy_classes[version])(hook)
    shapes = [(k, tuple(v.shape)) for k, v in model.state_dict(keep_vars=True).items()]
    params = {n for n, _ in model.named_parameters()}
    return shapes, {k for k, _ in shapes if k not in params}


def _fixture_configs():
    import json

    from conftest import FIXTURES

    from athelas_migrate.families import detect
    from athelas_migrate.io.reader import read_checkpoint

    out = []
    for manifest in ("fusion_manifest.json", "names3risk_manifest.json"):
        for entry in json.loads((FIXTURES / manifest).read_text()):
            raw = read_checkpoint(str(FIXTURES / entry["file"]))
            fam = get_family(detect(raw).family)
            overrides = {**entry["overrides"], **({"bert_config": entry["bert_config"]} if "bert_config" in entry
                                                  else {})}
            out.append((entry["file"], fam, fam.configure(raw, "v1", overrides)))
    return out


_BERT = dict(vocab_size=50, hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=40,
             max_position_embeddings=20, type_vocab_size=1)


def _fusion(name, **cfg):
    from athelas_migrate.models.bert_fusion_config import resolve_bert_fusion_config

    base = {"text_name": "t", "label_name": "y", "hidden_common_dim": 8, "tab_field_list": ["a", "b"]}
    if name == "TrimodalCrossAttentionBert":
        base.update(primary_text_name="p", secondary_text_name="s")
    resolved = resolve_bert_fusion_config({**base, **cfg}, name)
    return name, get_family(name), {**resolved, "_bert_config": dict(_BERT)}


def _names3risk(name, **cfg):
    from athelas_migrate.models.names3risk_config import resolve_names3risk_config

    base = {"tab_field_list": ["a", "b", "c"], "n_embed": 30, "embedding_size": 8, "hidden_size": 4}
    return name, get_family(name), resolve_names3risk_config({**base, **cfg}, name)


OTHER_CONFIGS = [
    _fusion("BimodalBertCrossAttn", num_heads=2, is_binary=False, num_classes=5),
    _fusion("BimodalBertGateFusion", fusion_dim=8, tab_field_list=None),
    _fusion("BimodalBertMoE", fusion_dim=8),  # both widths equal F: no projections
    _fusion("BimodalBertMoE", fusion_dim=12, tab_field_list=None),
    _fusion("TrimodalCrossAttentionBert", primary_hidden_common_dim=4, secondary_hidden_common_dim=8,
            tab_field_list=None, cross_attention_heads=2),
    _fusion("TrimodalCrossAttentionBert", primary_hidden_common_dim=8, secondary_hidden_common_dim=8,
            cross_attention_heads=2, fusion_hidden_dim=6),
    _names3risk("LSTM2Risk", n_lstm_layers=3),
    _names3risk("Transformer2Risk", n_blocks=3, n_heads=2, max_sen_len=7, is_binary=False, num_classes=3),
]


@pytest.mark.parametrize("name,fam,config", _fixture_configs() + OTHER_CONFIGS,
                         ids=lambda x: x if isinstance(x, str) else None)
def test_computed_layouts_equal_the_classes(name, fam, config):
    for version in ("v1", "v2"):
        if fam.name in ("LSTM2Risk", "Transformer2Risk") and version == "v1" and not config["is_binary"]:
            continue  # the legacy Names3Risk models are binary only
        shapes, buffers = _real_layout(fam, config, version)
        expected = fam.expected(config, version)
        assert list(expected.shapes.items()) == shapes, (name, version)
        assert expected.buffers == buffers, (name, version)


def test_saved_position_ids_sit_after_the_word_embeddings():
    _, fam, config = _fusion("BimodalBertGateFusion")
    keys = list(fam.expected({**config, "bert_position_ids_saved": True}, "v1").shapes)
    i = keys.index("text_subnetwork.bert.embeddings.word_embeddings.weight")
    assert keys[i + 1] == "text_subnetwork.bert.embeddings.position_ids"

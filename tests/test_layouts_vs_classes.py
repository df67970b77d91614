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

"""Refactored (v2) Lightning models.

Exports load lazily: `athelas_migrate.models.config` (pure Python, used by the
migration engine) must not drag in torch and Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AthelasModule": "base",
    "BimodalCNN": "bimodal_cnn",
    "TabAE": "tab_ae",
    "TextCNN": "text_cnn",
    "CONFIG_DEFAULTS": "config",
    "resolve_config": "config",
    "text_batch_key": "config",
    "BimodalBertCrossAttn": "bert_fusion",
    "BimodalBertGateFusion": "bert_fusion",
    "BimodalBertMoE": "bert_fusion",
    "TrimodalCrossAttentionBert": "bert_fusion",
    "LSTM2Risk": "names3risk",
    "Transformer2Risk": "names3risk",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(name)


__all__ = list(_EXPORTS)

"""The fusion families' configuration, resolved in pure Python: the models and the migration engine both read it,
and the engine must not import torch to do so."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

__all__ = ["BERT_FUSION_DEFAULTS", "resolve_bert_fusion_config"]

#: Legacy defaults shared by the four fusion families (legacy BERT classes, not the CNN table).
BERT_FUSION_DEFAULTS: dict[str, Any] = {
    "text_input_ids_key": "input_ids",
    "text_attention_mask_key": "attention_mask",
    "tokenizer": "bert-base-cased",
    "tab_field_list": None,
    "is_binary": True,
    "num_classes": 2,
    "metric_choices": ["accuracy", "f1_score"],
    "optimizer_type": "AdamW",
    "lr": 2e-5,
    "weight_decay": 0.0,
    "adam_epsilon": 1e-8,
    "warmup_steps": 0,
    "run_scheduler": True,
    "reinit_pooler": False,
    "reinit_layers": 0,
}


def _set_default(cfg: dict[str, Any], key: str, value: Any) -> None:
    if cfg.get(key) is None:
        cfg[key] = value


def resolve_bert_fusion_config(config: Mapping[str, Any], family: str) -> dict[str, Any]:
    """Resolved flat config of a fusion family, with every width explicit.

    Idempotent; the input is not modified. ``bert_config`` keys in ``config``
    (the legacy offline test hook) are dropped.

    Args:
        config: the flat hyper-parameters.
        family: one of the four fusion class names.

    Returns:
        A new dict.

    Raises:
        TypeError: ``config`` is not a mapping.
        ValueError: ``hidden_common_dim`` or a text name is missing, or a combination is impossible.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping, got {type(config).__name__}")
    cfg: dict[str, Any] = copy.deepcopy(
        {
            k: v
            for k, v in config.items()
            if k not in ("bert_config", "primary_bert_config", "secondary_bert_config")
        }
    )
    for key, default in BERT_FUSION_DEFAULTS.items():
        if key not in cfg or (cfg[key] is None and default is not None):
            cfg[key] = copy.deepcopy(default)
    if cfg.get("hidden_common_dim") is None:
        raise ValueError(f"{family}: config needs 'hidden_common_dim'")
    hidden = cfg["hidden_common_dim"] = int(cfg["hidden_common_dim"])

    tabs = cfg.get("tab_field_list")
    if isinstance(tabs, str):
        raise ValueError("'tab_field_list' must be a list of field names, not a string")
    cfg["tab_field_list"] = list(tabs) if tabs else None
    tab_dim = hidden if cfg["tab_field_list"] else 0

    cfg["is_binary"] = bool(cfg["is_binary"])
    num_classes = 2 if cfg["is_binary"] else int(cfg["num_classes"])
    cfg["num_classes"] = num_classes
    weights = cfg.get("class_weights")
    weights = [1.0] * num_classes if weights is None else [float(w) for w in list(weights)]
    cfg["class_weights"] = (weights + [1.0] * (num_classes - len(weights)))[:num_classes]

    if family == "TrimodalCrossAttentionBert":
        for key in ("primary_text_name", "secondary_text_name"):
            if not cfg.get(key):
                raise ValueError(f"{family}: config needs '{key}'")
        for side in ("primary", "secondary"):
            _set_default(cfg, f"{side}_hidden_common_dim", hidden)
            cfg[f"{side}_hidden_common_dim"] = int(cfg[f"{side}_hidden_common_dim"])
            _set_default(cfg, f"{side}_tokenizer", cfg["tokenizer"])
        d_model = max(cfg["primary_hidden_common_dim"], cfg["secondary_hidden_common_dim"])
        _set_default(cfg, "cross_attention_heads", 8)
        _set_default(cfg, "cross_attention_dropout", 0.1)
        _set_default(cfg, "fusion_dropout", 0.1)
        _set_default(cfg, "fusion_hidden_dim", max(128, (2 * d_model + tab_dim) // 2))
        cfg["cross_attention_heads"] = int(cfg["cross_attention_heads"])
        cfg["fusion_hidden_dim"] = int(cfg["fusion_hidden_dim"])
        return cfg

    if not cfg.get("text_name"):
        raise ValueError(f"{family}: config needs 'text_name'")
    if family == "BimodalBertCrossAttn":
        if not cfg["tab_field_list"]:
            raise ValueError(
                f"{family}: needs tabular fields (legacy asserts text and tab widths both equal "
                "hidden_common_dim, so there is no text-only variant)"
            )
        _set_default(cfg, "num_heads", 4)
        cfg["num_heads"] = int(cfg["num_heads"])
    elif family == "BimodalBertGateFusion":
        _set_default(cfg, "fusion_dim", hidden)
        cfg["fusion_dim"] = int(cfg["fusion_dim"])
    elif family == "BimodalBertMoE":
        _set_default(cfg, "fusion_dim", max(hidden, tab_dim))
        cfg["fusion_dim"] = int(cfg["fusion_dim"])
    else:
        raise ValueError(f"unknown BERT fusion family {family!r}")
    return cfg

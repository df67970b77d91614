"""The Names3Risk families' configuration, resolved in pure Python (read by the models and by the torch-free
migration engine)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

__all__ = ["NAMES3RISK_DEFAULTS", "resolve_names3risk_config"]

NAMES3RISK_DEFAULTS: dict[str, Any] = {
    "text_name": "text_field",
    "text_input_ids_key": "input_ids",
    "tab_field_list": [],
    "label_name": "label",
    "is_binary": True,
    "num_classes": 2,
    "class_weights": None,
    "n_embed": 4000,
    "dropout_rate": 0.2,
    "lr": 2e-5,
    "weight_decay": 0.0,
    "adam_epsilon": 1e-8,
    "warmup_steps": 0,
    "run_scheduler": True,
}
_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "LSTM2Risk": {"embedding_size": 16, "hidden_size": 128, "n_lstm_layers": 4},
    "Transformer2Risk": {"text_attention_mask_key": "attention_mask", "embedding_size": 128, "hidden_size": 256,
                         "n_blocks": 8, "n_heads": 8, "max_sen_len": 100},
}
_INT_KEYS = ("n_embed", "embedding_size", "hidden_size", "n_lstm_layers", "n_blocks", "n_heads", "max_sen_len")


def resolve_names3risk_config(config: Mapping[str, Any], family: str) -> dict[str, Any]:
    """Defaults filled in, sizes as ints, ``input_tab_dim`` = number of tabular fields, class weights padded.

    Args:
        config: the flat hyper-parameters (not modified).
        family: ``LSTM2Risk`` or ``Transformer2Risk``.

    Returns:
        A new dict.

    Raises:
        TypeError: ``config`` is not a mapping.
        ValueError: ``tab_field_list`` is empty or disagrees with ``input_tab_dim``, or ``n_heads`` does not
            divide ``embedding_size``.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping, got {type(config).__name__}")
    cfg = copy.deepcopy(dict(config))
    for key, default in {**NAMES3RISK_DEFAULTS, **_FAMILY_DEFAULTS[family]}.items():
        if cfg.get(key) is None:
            cfg[key] = copy.deepcopy(default)
    for key in _INT_KEYS:
        if key in cfg:
            cfg[key] = int(cfg[key])
    fields = cfg["tab_field_list"]
    if isinstance(fields, str) or not fields:
        raise ValueError(f"{family}: 'tab_field_list' must be the non-empty, ordered list of tabular field names")
    cfg["tab_field_list"] = list(fields)
    if cfg.get("input_tab_dim") not in (None, len(fields)):
        raise ValueError(f"{family}: input_tab_dim={cfg['input_tab_dim']} but tab_field_list has {len(fields)} names")
    cfg["input_tab_dim"] = len(fields)
    cfg["is_binary"] = bool(cfg["is_binary"])
    n = 2 if cfg["is_binary"] else int(cfg["num_classes"])
    cfg["num_classes"] = n
    weights = [1.0] * n if cfg["class_weights"] is None else [float(w) for w in cfg["class_weights"]]
    cfg["class_weights"] = (weights + [1.0] * n)[:n]
    if family == "Transformer2Risk" and cfg["embedding_size"] % cfg["n_heads"]:
        raise ValueError(f"{family}: n_heads={cfg['n_heads']} does not divide embedding_size={cfg['embedding_size']}")
    return cfg

"""The flat legacy config: defaults table, resolution and the text batch key.

All CNN-family models (legacy and v2) share one flat config dict. The keys
and defaults below are those of ``docs/layouts/legacy-layouts.md``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

__all__ = [
    "CONFIG_DEFAULTS",
    "REQUIRED_KEYS",
    "resolve_config",
    "text_batch_key",
]

#: Keys without a default: ``text_name`` (needed to build the text batch key,
#: unless ``text_batch_key`` is set) and ``label_name`` (needed to train).
#: ``resolve_config`` does not insist on them: a v1 BimodalCNN checkpoint, for
#: instance, carries no ``label_name``; the models raise when they need one.
REQUIRED_KEYS = ("text_name", "label_name")

#: Legacy defaults. ``class_weights`` is derived (``[1.0] * num_classes``) and
#: therefore not listed here.
CONFIG_DEFAULTS: dict[str, Any] = {
    "text_input_ids_key": "input_ids",
    "tab_field_list": None,
    "is_binary": True,
    "num_classes": 2,
    "kernel_size": [3, 5, 7],
    "num_layers": 2,
    "num_channels": [100, 100],
    "hidden_common_dim": 100,
    "dropout_keep": 0.5,
    "max_sen_len": 512,
    "is_embeddings_trainable": True,
    "optimizer_type": "SGD",
    "lr": 0.02,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "adam_epsilon": 1e-8,
}


def resolve_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Return a new flat config with the legacy defaults filled in.

    - every key of :data:`CONFIG_DEFAULTS` that is absent (or ``None``, except
      ``tab_field_list`` whose ``None`` is meaningful) gets its default;
    - ``num_classes`` is forced to 2 when ``is_binary``;
    - ``class_weights`` defaults to ``[1.0] * num_classes``; a shorter list is
      padded with ``1.0`` and a longer one truncated to ``num_classes`` (the
      legacy ``(weights + [1.0] * (n - len(weights)))[:n]``).

    Unknown keys (``text_batch_key``, ``model_class``, ...) are kept. The input
    is not modified; the function is idempotent.

    Args:
        config: the flat hyper-parameters.

    Returns:
        A new dict.

    Raises:
        TypeError: ``config`` is not a mapping.
        ValueError: ``num_classes`` is below 1.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping, got {type(config).__name__}")
    resolved: dict[str, Any] = copy.deepcopy(dict(config))
    for key, default in CONFIG_DEFAULTS.items():
        if key not in resolved or (resolved[key] is None and default is not None):
            resolved[key] = copy.deepcopy(default)
    for key in ("kernel_size", "num_channels"):
        if isinstance(resolved[key], tuple):
            resolved[key] = list(resolved[key])

    resolved["is_binary"] = bool(resolved["is_binary"])
    if resolved["is_binary"]:
        resolved["num_classes"] = 2
    num_classes = int(resolved["num_classes"])
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {resolved['num_classes']!r}")
    resolved["num_classes"] = num_classes

    weights = resolved.get("class_weights")
    if weights is None:
        weights = [1.0] * num_classes
    else:
        if hasattr(weights, "tolist"):  # tensor / numpy array
            weights = weights.tolist()
        weights = [float(w) for w in weights]
        if len(weights) < num_classes:
            weights = weights + [1.0] * (num_classes - len(weights))
        weights = weights[:num_classes]
    resolved["class_weights"] = weights
    return resolved


def text_batch_key(config: Mapping[str, Any]) -> str:
    """Batch key of the text token ids.

    ``config["text_batch_key"]`` when set (a migrated v0 model sets it to
    ``f"{text_name}_processed_{text_input_ids_key}"``), else
    ``f"{text_name}_{text_input_ids_key}"`` (the v1/v2 convention).

    Args:
        config: the flat hyper-parameters.

    Returns:
        The key.

    Raises:
        KeyError: neither ``text_batch_key`` nor ``text_name`` is set.
    """
    key = config.get("text_batch_key")
    if key:
        return str(key)
    text_name = config.get("text_name")
    if not text_name:
        raise KeyError(
            "config needs 'text_name' (or an explicit 'text_batch_key') to know the text batch key"
        )
    suffix = config.get("text_input_ids_key") or CONFIG_DEFAULTS["text_input_ids_key"]
    return f"{text_name}_{suffix}"

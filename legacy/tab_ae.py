"""Legacy ``TabularEmbeddingModule`` and ``TabAE`` (athelas ``pl_tab_ae``, eras v0 and v1).

Frozen history: reproduces the pre-refactor tabular embedding exactly
(``embedding_layer = LayerNorm -> Linear -> ReLU``, the validated flat
hyper-parameters, the ``combine_tab_data`` rules). The original validated its
config with a small pydantic model; the same checks are done here by hand.
See ``docs/layouts/legacy-layouts.md``.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn as nn


def validate_tab_config(config: dict) -> dict:
    """Validate and flatten a TabAE config the way the legacy config model did.

    Returns ``{tab_field_list, hidden_common_dim, is_binary, num_classes, input_tab_dim}``
    (that order). An empty or missing ``tab_field_list`` raises ``ValueError``.
    """
    tab_field_list = config.get("tab_field_list")
    if not tab_field_list:
        raise ValueError("tab_field_list must not be empty")
    if isinstance(tab_field_list, str) or not all(isinstance(f, str) for f in tab_field_list):
        raise ValueError("tab_field_list must be a list of field names (str)")
    hidden_common_dim = config.get("hidden_common_dim", 100)
    if isinstance(hidden_common_dim, bool) or not isinstance(hidden_common_dim, int):
        raise ValueError(f"hidden_common_dim must be an int, got {hidden_common_dim!r}")
    tab_field_list = list(tab_field_list)
    return {
        "tab_field_list": tab_field_list,
        "hidden_common_dim": hidden_common_dim,
        # Stored as given (the legacy config model did not force num_classes for binary tasks).
        "is_binary": bool(config.get("is_binary", True)),
        "num_classes": int(config.get("num_classes", 2)),
        "input_tab_dim": len(tab_field_list),
    }


class TabularEmbeddingModule(pl.LightningModule):
    """Normalise-and-project embedding of numeric tabular fields, ``[B, D] -> [B, H]``."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = validate_tab_config(config)

        input_dim = self.config["input_tab_dim"]
        hidden_dim = self.config["hidden_common_dim"]

        self.embedding_layer = nn.Sequential(
            nn.LayerNorm(input_dim), nn.Linear(input_dim, hidden_dim), nn.ReLU()
        )

        self.output_tab_dim = hidden_dim
        self.save_hyperparameters(self.config)

    def combine_tab_data(self, batch: dict) -> torch.Tensor:
        """Stack the tabular fields of ``batch`` into ``[B, input_tab_dim]`` (float32, field order)."""
        features = []
        device = next(self.parameters()).device
        for field in self.config["tab_field_list"]:
            if field not in batch:
                raise KeyError(f"Missing field '{field}' in batch during tabular combination")
            val = batch[field]
            if isinstance(val, list):
                val = torch.tensor(val, dtype=torch.float32, device=device)
            elif isinstance(val, torch.Tensor):
                val = val.to(dtype=torch.float32, device=device)
            else:
                raise TypeError(f"Unsupported type for field {field}: {type(val)}")
            if val.dim() == 1:
                val = val.unsqueeze(1)
            features.append(val)
        return torch.cat(features, dim=1)

    def forward(self, inputs) -> torch.Tensor:
        """Embed a ``[B, D]`` tensor or a batch dict holding the tabular fields."""
        if isinstance(inputs, dict):
            inputs = self.combine_tab_data(inputs)
        if inputs.shape[1] != self.embedding_layer[1].in_features:
            raise ValueError(
                f"Expected input with {self.embedding_layer[1].in_features} features, got {inputs.shape[1]}"
            )
        return self.embedding_layer(inputs)

    def __str__(self):
        return f"TabAE(input_dim={self.embedding_layer[1].in_features}, output_dim={self.output_tab_dim})"


class TabAE(TabularEmbeddingModule):
    """The released name of the tabular embedding (inherits everything; has no loss of its own)."""

    def __init__(self, config: dict):
        super().__init__(config)

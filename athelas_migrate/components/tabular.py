"""Tabular components: ``TabularEmbedding`` and ``combine_tabular_fields``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .cnn_encoder import _as_positive_int

__all__ = ["TabularEmbedding", "combine_tabular_fields"]


class TabularEmbedding(nn.Module):
    """``LayerNorm -> Linear -> ReLU`` embedding of a ``[B, input_dim]`` numeric block.

    Registered as ``embedding = nn.Sequential(nn.LayerNorm(input_dim),
    nn.Linear(input_dim, hidden_dim), nn.ReLU())`` so the state-dict keys are
    ``embedding.0.{weight,bias}`` and ``embedding.1.{weight,bias}``.
    """

    def __init__(self, input_dim: int, hidden_dim: int) -> None:
        super().__init__()
        input_dim = _as_positive_int(input_dim, "input_dim")
        hidden_dim = _as_positive_int(hidden_dim, "hidden_dim")
        self.input_dim = input_dim
        self.hidden_dim = hidden_dim
        self.output_dim = hidden_dim
        self.embedding = nn.Sequential(
            nn.LayerNorm(input_dim),
            nn.Linear(input_dim, hidden_dim),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, input_dim] -> [B, hidden_dim]``; other shapes raise ``ValueError``."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"TabularEmbedding expects a tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.input_dim:
            raise ValueError(
                f"TabularEmbedding expects input of shape [B, {self.input_dim}], "
                f"got {tuple(x.shape)}"
            )
        weight = self.embedding[1].weight
        x = x.to(dtype=weight.dtype)
        return self.embedding(x)

    def extra_repr(self) -> str:
        return f"input_dim={self.input_dim}, hidden_dim={self.hidden_dim}"


def combine_tabular_fields(
    batch: Mapping[str, Any],
    field_list: Sequence[str],
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Concatenate numeric batch fields into one ``float32`` tensor ``[B, n]``.

    Same rules as the legacy ``TabAE.combine_tab_data``: for each name of
    ``field_list``, in order, a Python list becomes a float32 tensor, a tensor
    is cast to float32, a 1-D value becomes ``[B, 1]``; the values are then
    concatenated along dim 1.

    Args:
        batch: the batch dict.
        field_list: the tabular field names, in the model's column order.
        device: where the result is placed (None: where the values are, a list on the CPU).

    Returns:
        ``[B, len(field_list)]`` (wider when a field is 2-D).

    Raises:
        KeyError: a field is missing from the batch.
        TypeError: a value is neither a list nor a tensor.
        ValueError: ``field_list`` is empty, a value is not 1-D/2-D, or batch sizes disagree.
    """
    if not field_list:
        raise ValueError("field_list is empty: there are no tabular fields to combine")
    features = []
    batch_size = None
    for field in field_list:
        if field not in batch:
            raise KeyError(f"Missing tabular field {field!r} in batch")
        val = batch[field]
        if isinstance(val, list):
            val = torch.tensor(val, dtype=torch.float32, device=device)
        elif isinstance(val, torch.Tensor):
            val = val.to(dtype=torch.float32, device=device)
        else:
            raise TypeError(
                f"Unsupported type for tabular field {field!r}: {type(val).__name__} "
                "(expected a list or a torch.Tensor)"
            )
        if val.dim() == 1:
            val = val.unsqueeze(1)
        if val.dim() != 2:
            raise ValueError(
                f"tabular field {field!r} must be 1-D [B] or 2-D [B, n], got shape {tuple(val.shape)}"
            )
        if batch_size is None:
            batch_size = val.shape[0]
        elif val.shape[0] != batch_size:
            raise ValueError(
                f"tabular field {field!r} has batch size {val.shape[0]}, expected {batch_size}"
            )
        features.append(val)
    return torch.cat(features, dim=1)

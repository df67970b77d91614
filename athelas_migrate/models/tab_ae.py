"""TabAE (v2): a ``TabularEmbedding`` encoder for numeric tabular fields."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..components import TabularEmbedding, combine_tabular_fields
from .base import AthelasModule
from .config import resolve_config

__all__ = ["TabAE"]


class TabAE(AthelasModule):
    """Tabular encoder on the v2 layout.

    State-dict keys: ``embedding.embedding.0.{weight,bias}`` (LayerNorm ``[D]``),
    ``embedding.embedding.1.{weight,bias}`` (Linear ``[H, D]``), with
    ``D = len(tab_field_list)`` and ``H = hidden_common_dim``.

    ``forward`` accepts a ``[B, D]`` tensor or a batch dict and returns
    ``[B, H]``. TabAE has no classification head and no reconstruction loss
    (the legacy class never had one): it is an encoder used inside the
    multimodal models. ``training_step`` / ``validation_step`` / ``test_step``
    therefore raise ``RuntimeError``; ``predict_step`` returns the embeddings.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        config = resolve_config(config)
        tab_field_list = config.get("tab_field_list")
        if not tab_field_list:
            raise ValueError("TabAE needs a non-empty 'tab_field_list' in its config")
        if isinstance(tab_field_list, str):
            raise ValueError("'tab_field_list' must be a list of field names, not a string")
        super().__init__(config, with_metrics=False)
        self.save_hyperparameters("config")

        self.tab_field_list = list(tab_field_list)
        self.input_tab_dim = len(self.tab_field_list)
        self.output_tab_dim = int(config["hidden_common_dim"])
        self.embedding = TabularEmbedding(self.input_tab_dim, self.output_tab_dim)

    def combine_tab_data(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """The tabular fields of a batch as one block (the legacy method's name, kept for callers).

        Args:
            batch: the batch dict.

        Returns:
            ``[B, D]`` float32 of the ``tab_field_list`` fields, in order.
        """
        return combine_tabular_fields(batch, self.tab_field_list, self.device)

    def forward(self, inputs: torch.Tensor | Mapping[str, Any]) -> torch.Tensor:
        if isinstance(inputs, Mapping):
            inputs = self.combine_tab_data(inputs)
        return self.embedding(inputs)

    def _no_training(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            "TabAE is an encoder without a classification head or reconstruction loss; "
            "it cannot be trained or evaluated on its own. Train it inside a multimodal "
            "model (e.g. BimodalCNN), or use predict/forward to get embeddings."
        )

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        return self._no_training()

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        return self._no_training()

    def test_step(self, batch: Any, batch_idx: int) -> Any:
        return self._no_training()

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """Embeddings ``[B, hidden_common_dim]`` (TabAE has no classes)."""
        return self(batch)

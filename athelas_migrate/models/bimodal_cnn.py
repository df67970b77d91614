"""BimodalCNN (v2): CNN text encoder + tabular embedding + concatenation fusion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..components import ConcatenationFusion, TabularEmbedding, combine_tabular_fields
from .base import AthelasModule
from .config import resolve_config, text_batch_key
from .text_cnn import EmbeddingMatrix, build_text_cnn_encoder, resolve_embedding_sizes

__all__ = ["BimodalCNN"]


class BimodalCNN(AthelasModule):
    """Text + tabular classifier on the v2 layout (the upstream refactored key list).

    Registered in this order: ``text_encoder`` (CNNEncoder, projection width
    ``hidden_common_dim``), ``tab_encoder`` (TabularEmbedding or None when the
    config has no ``tab_field_list``), ``fusion`` (ConcatenationFusion to
    ``num_classes``), buffer ``class_weights_tensor``, ``loss_op``.

    ``forward(batch) -> logits [B, num_classes]``: token ids from
    ``text_batch_key(config)``, tabular block from ``combine_tabular_fields``.
    ``optimizer_type == "Adam"`` uses ``AdamW``.
    """

    adam_optimizer_cls = torch.optim.AdamW

    def __init__(
        self,
        config: Mapping[str, Any],
        vocab_size: int | None = None,
        embed_size: int | None = None,
        word_embeddings: EmbeddingMatrix | None = None,
    ) -> None:
        config = resolve_config(config)
        super().__init__(config)
        vocab_size, embed_size, matrix = resolve_embedding_sizes(
            config, vocab_size, embed_size, word_embeddings
        )
        self.vocab_size = vocab_size
        self.embed_size = embed_size
        self.save_hyperparameters("config", "vocab_size", "embed_size")

        tab_field_list = config.get("tab_field_list")
        if isinstance(tab_field_list, str):
            raise ValueError("'tab_field_list' must be a list of field names, not a string")
        self.tab_field_list = list(tab_field_list) if tab_field_list else []

        # 1. text encoder
        self.text_encoder = build_text_cnn_encoder(config, vocab_size, embed_size, matrix)
        text_dim = self.text_encoder.output_dim
        # 2. tabular encoder
        if self.tab_field_list:
            self.tab_encoder = TabularEmbedding(len(self.tab_field_list), config["hidden_common_dim"])
            input_dims = [text_dim, self.tab_encoder.output_dim]
        else:
            self.tab_encoder = None
            input_dims = [text_dim]
        # 3. fusion
        self.fusion = ConcatenationFusion(input_dims, self.num_classes, use_activation=True)
        # 4. class weights buffer, then loss
        self._register_loss()

    @property
    def text_batch_key(self) -> str:
        """Batch key of the text token ids (see ``config.text_batch_key``)."""
        return text_batch_key(self.config)

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        key = self.text_batch_key
        if key not in batch:
            raise KeyError(f"text field {key!r} missing from batch")
        input_ids = torch.as_tensor(batch[key], device=self.device)
        text_feat = self.text_encoder(input_ids)
        if self.tab_encoder is None:
            return self.fusion(text_feat)
        tab_data = combine_tabular_fields(batch, self.tab_field_list, self.device)
        tab_feat = self.tab_encoder(tab_data)
        return self.fusion(text_feat, tab_feat)

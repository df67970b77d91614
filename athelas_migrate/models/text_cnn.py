"""TextCNN (v2): a ``CNNEncoder`` with the legacy classification loss."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ..components import CNNEncoder
from .base import AthelasModule
from .config import resolve_config, text_batch_key

__all__ = ["TextCNN", "build_text_cnn_encoder", "resolve_embedding_sizes"]

EmbeddingMatrix = torch.Tensor | np.ndarray


def resolve_embedding_sizes(
    config: Mapping[str, Any],
    vocab_size: int | None,
    embed_size: int | None,
    word_embeddings: EmbeddingMatrix | None,
) -> tuple[int, int, torch.Tensor | None]:
    """The embedding table's sizes, from a pretrained matrix or from the arguments and config.

    With a matrix ``[V, E]``, missing sizes are read off it and given sizes
    must agree with it. Without one, both sizes are required (falling back to
    ``config["vocab_size"]`` / ``config["embed_size"]`` when present).

    Args:
        config: the flat hyper-parameters.
        vocab_size: V, or None.
        embed_size: E, or None.
        word_embeddings: a pretrained ``[V, E]`` float matrix, or None.

    Returns:
        ``(vocab_size, embed_size, matrix as a tensor or None)``.

    Raises:
        ValueError: the matrix is not a 2-D float matrix, disagrees with a given size, or sizes are missing.
    """
    matrix = None
    if word_embeddings is not None:
        matrix = torch.as_tensor(word_embeddings)
        if matrix.dim() != 2:
            raise ValueError(f"word_embeddings must be a [vocab_size, embed_size] matrix, "
                             f"got shape {tuple(matrix.shape)}")
        if not matrix.is_floating_point():
            raise ValueError(f"word_embeddings must be a floating tensor, got {matrix.dtype}")
        rows, cols = int(matrix.shape[0]), int(matrix.shape[1])
        if vocab_size is not None and int(vocab_size) != rows:
            raise ValueError(f"vocab_size ({vocab_size}) does not match word_embeddings rows ({rows})")
        if embed_size is not None and int(embed_size) != cols:
            raise ValueError(f"embed_size ({embed_size}) does not match word_embeddings columns ({cols})")
        return rows, cols, matrix
    if vocab_size is None:
        vocab_size = config.get("vocab_size")
    if embed_size is None:
        embed_size = config.get("embed_size")
    if vocab_size is None or embed_size is None:
        raise ValueError(
            "vocab_size and embed_size are required when word_embeddings is not given "
            f"(got vocab_size={vocab_size!r}, embed_size={embed_size!r})"
        )
    return int(vocab_size), int(embed_size), None


def build_text_cnn_encoder(
    config: Mapping[str, Any],
    vocab_size: int,
    embed_size: int,
    matrix: torch.Tensor | None,
) -> CNNEncoder:
    """The v2 text branch of the CNN families (projection width ``hidden_common_dim``).

    The pretrained ``matrix`` (a copy, cast to the embedding dtype) is
    installed as ``embeddings.weight``; ``requires_grad`` follows
    ``config["is_embeddings_trainable"]`` in both cases.

    Args:
        config: the resolved flat config (kernel sizes, channels, layers, widths).
        vocab_size: rows of the embedding table.
        embed_size: its width.
        matrix: pretrained embeddings, or None for a random table.

    Returns:
        The CNNEncoder.
    """
    encoder = CNNEncoder(
        vocab_size=vocab_size,
        embedding_dim=embed_size,
        kernel_sizes=config["kernel_size"],
        num_channels=config["num_channels"],
        num_layers=config["num_layers"],
        output_dim=config["hidden_common_dim"],
        dropout=config["dropout_keep"],
        max_seq_len=config["max_sen_len"],
    )
    trainable = bool(config["is_embeddings_trainable"])
    if matrix is not None:
        dtype = encoder.embeddings.weight.dtype
        encoder.embeddings.weight = nn.Parameter(
            matrix.detach().to(dtype=dtype).clone(), requires_grad=trainable
        )
    else:
        encoder.embeddings.weight.requires_grad_(trainable)
    return encoder


class TextCNN(AthelasModule):
    """Text CNN classifier/encoder on the v2 layout.

    State-dict keys: ``class_weights_tensor``, ``text_encoder.embeddings.weight``,
    ``text_encoder.convs.{j}.{3i}.{weight,bias}``, ``text_encoder.projection.1.{weight,bias}``,
    ``loss_op.weight``.

    ``forward(input_ids [B, L]) -> [B, hidden_common_dim]`` (a batch dict is
    also accepted: the ids are read from the text batch key). Trained on its
    own, the output is used as logits, so ``hidden_common_dim`` must equal
    ``num_classes`` (as in the legacy code).
    """

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

        self.text_encoder = build_text_cnn_encoder(config, vocab_size, embed_size, matrix)
        self.output_text_dim = self.text_encoder.output_dim
        self._register_loss()

    @property
    def text_batch_key(self) -> str:
        """Batch key of the text token ids (see ``config.text_batch_key``)."""
        return text_batch_key(self.config)

    def forward(self, input_ids: torch.Tensor | Mapping[str, Any]) -> torch.Tensor:
        if isinstance(input_ids, Mapping):
            key = self.text_batch_key
            if key not in input_ids:
                raise KeyError(f"text field {key!r} missing from batch")
            input_ids = input_ids[key]
        input_ids = torch.as_tensor(input_ids, device=self.device)
        return self.text_encoder(input_ids)

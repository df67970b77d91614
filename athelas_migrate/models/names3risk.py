"""The Names3Risk models on the refactored Lightning layout (``next-families.md`` B.2, B.3).

``LSTM2Risk`` and ``Transformer2Risk`` (upstream ``lightning/bimodal/pl_lstm2risk`` and
``pl_transformer2risk``): a text encoder (``text_encoder``), the tabular projection
(``tab_encoder``, BatchNorm first) and a residual classifier ending in ``Linear(., C)``
logits (no sigmoid); buffer ``class_weights_tensor`` first, ``loss_fn.weight`` last.

Constructor ``(config: dict)``; the resolved config is saved with
``save_hyperparameters(config)`` (``hparams_name = "config"``), so
``Class.load_from_checkpoint(path)`` needs no argument.

Batch: ``{text_name}_{text_input_ids_key}`` ``[B, T]`` or ``[B, 1, T]`` (int64 or int32);
LSTM: optional ``text_length`` ``[B]`` (sorted descending); Transformer: optional
``{text_name}_{text_attention_mask_key}`` (bool or int, True/1 = token); one ``[B]`` tensor
per name of ``tab_field_list`` (stacked in list order); labels ``label_name`` ``[B]``.

Optimizer: AdamW (``lr``, ``weight_decay``, ``adam_epsilon``) with OneCycleLR stepped per step
when ``run_scheduler`` (as upstream); ``warmup_steps`` is kept for the record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..components.tabular import combine_tabular_fields
from .base import AthelasModule
from .names3risk_config import NAMES3RISK_DEFAULTS, resolve_names3risk_config

__all__ = ["LSTM2Risk", "NAMES3RISK_DEFAULTS", "Transformer2Risk", "resolve_names3risk_config"]

class AttentionPooling(nn.Module):
    """Softmax-weighted sum over positions (``mask``: True = position may be attended)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.attention = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        scores = self.attention(x)  # [B, T, 1]
        if mask is not None:
            scores = scores.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        return (F.softmax(scores, dim=1) * x).sum(dim=1)


class LSTMEncoder(nn.Module):
    """Token embedding -> bidirectional LSTM (packed when lengths are given) -> attention pooling -> LayerNorm."""

    def __init__(self, n_embed: int, embedding_size: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(n_embed, embedding_size)
        self.lstm = nn.LSTM(embedding_size, hidden, num_layers=layers, batch_first=True, bidirectional=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.pooling = AttentionPooling(2 * hidden)
        self.norm = nn.LayerNorm(2 * hidden)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        x = self.token_embedding(tokens)
        mask = None
        if lengths is None:
            out, _ = self.lstm(x)
        else:
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True)
            out, _ = nn.utils.rnn.pad_packed_sequence(self.lstm(packed)[0], batch_first=True)
            mask = torch.arange(out.shape[1], device=out.device)[None, :] < lengths.to(out.device)[:, None]
        return self.norm(self.pooling(out, mask))


class AttentionHead(nn.Module):
    """One head with a fused bias-free ``qkv`` (rows q | k | v); ``mask`` hides keys."""

    def __init__(self, width: int, head_size: int, dropout: float) -> None:
        super().__init__()
        self.head_size = head_size
        self.qkv = nn.Linear(width, 3 * head_size, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q, k, v = self.qkv(x).split(self.head_size, dim=-1)
        wei = q @ k.transpose(-2, -1) * self.head_size ** -0.5
        if mask is not None:
            wei = wei.masked_fill(~mask[:, None, :], float("-inf"))
        return self.dropout(F.softmax(wei, dim=-1)) @ v


class MultiHeadAttention(nn.Module):
    def __init__(self, width: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = nn.ModuleList(AttentionHead(width, width // n_heads, dropout) for _ in range(n_heads))
        self.proj = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.dropout(self.proj(torch.cat([h(x, mask) for h in self.heads], dim=-1)))


class FeedForward(nn.Module):
    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, 4 * width), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(4 * width, width), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Pre-norm block; registration order ln1, self_attn, ln2, ffn (the target key order)."""

    def __init__(self, width: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.self_attn = MultiHeadAttention(width, n_heads, dropout)
        self.ln2 = nn.LayerNorm(width)
        self.ffn = FeedForward(width, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.ln1(x), mask)
        return x + self.ffn(self.ln2(x))


class TransformerEncoder(nn.Module):
    """Token + position embeddings -> blocks -> attention pooling (over every position) -> Linear(E, 2H)."""

    def __init__(self, n_embed: int, width: int, max_len: int, blocks: int, heads: int, hidden: int,
                 dropout: float) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(n_embed, width)
        self.position_embedding = nn.Embedding(max_len, width)
        self.blocks = nn.ModuleList(TransformerBlock(width, heads, dropout) for _ in range(blocks))
        self.pooling = AttentionPooling(width)
        self.proj = nn.Linear(width, 2 * hidden)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        for block in self.blocks:
            x = block(x, mask)
        return self.proj(self.pooling(x))


class ResidualBlock(nn.Module):
    """``x + ffn(norm(x))``; without ``norm`` (Transformer2Risk) ``x + ffn(x)``."""

    def __init__(self, width: int, expand: int, norm: bool) -> None:
        super().__init__()
        if norm:
            self.norm = nn.LayerNorm(width)
        self.ffn = nn.Sequential(nn.Linear(width, expand * width), nn.ReLU(), nn.Linear(expand * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ffn(self.norm(x) if hasattr(self, "norm") else x)


def tab_encoder(n: int, hidden: int, dropout: float) -> nn.Sequential:
    """BatchNorm, Linear(n, 2H), ReLU, Dropout, Linear(2H, 2H), LayerNorm, ReLU, Dropout (keys 0, 1, 4, 5).

    Args:
        n: number of tabular fields.
        hidden: H; the encoder's output width is 2H.
        dropout: dropout probability.

    Returns:
        The encoder; its indices are state-dict keys of the target layout.
    """
    return nn.Sequential(nn.BatchNorm1d(n), nn.Linear(n, 2 * hidden), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(2 * hidden, 2 * hidden), nn.LayerNorm(2 * hidden), nn.ReLU(),
                         nn.Dropout(dropout))


def classifier(blocks: list[nn.Module], width: int, hidden: int | None, classes: int,
               dropout: float) -> nn.Sequential:
    """Blocks (each followed by ReLU, Dropout), [Linear(width, hidden), ReLU, Dropout], Linear(., classes).

    Args:
        blocks: width-preserving blocks at the head's start.
        width: the input width.
        hidden: width of the hidden layer, or None for none.
        classes: number of classes.
        dropout: dropout probability.

    Returns:
        The head; its indices are state-dict keys of the target layout.
    """
    layers: list[nn.Module] = []
    for block in blocks:
        layers += [block, nn.ReLU(), nn.Dropout(dropout)]
    if hidden is not None:
        layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers, nn.Linear(hidden or width, classes))


class _Names3Risk(AthelasModule):
    """Shared plumbing: buffers, batch keys, loss, optimizer."""

    def _setup(self, config: dict[str, Any]) -> None:
        self.config = config  # the Names3Risk config, not the CNN defaults table
        self.tab_field_list: list[str] = list(config["tab_field_list"])
        self.text_name = config["text_name"]
        self.ids_key = f"{self.text_name}_{config['text_input_ids_key']}"
        self.register_buffer("class_weights_tensor", torch.tensor(config["class_weights"], dtype=torch.float))

    def _finish(self) -> None:
        self.loss_fn = nn.CrossEntropyLoss(weight=self.class_weights_tensor)

    @property
    def loss_op(self) -> nn.Module:  # the name AthelasModule's steps use
        return self.loss_fn

    def _tokens(self, batch: Mapping[str, Any]) -> torch.Tensor:
        if self.ids_key not in batch:
            raise KeyError(f"text field {self.ids_key!r} missing from batch")
        ids = torch.as_tensor(batch[self.ids_key], device=self.device)
        return ids.squeeze(1) if ids.dim() == 3 else ids

    def _tab(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return combine_tabular_fields(batch, self.tab_field_list, self.device)

    def configure_optimizers(self) -> Any:
        cfg = self.config
        opt = torch.optim.AdamW(self.parameters(), lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"]),
                                eps=float(cfg["adam_epsilon"]))
        if not cfg["run_scheduler"]:
            return opt
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=float(cfg["lr"]), pct_start=0.1,
                                                    total_steps=max(2, int(self.trainer.estimated_stepping_batches)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class LSTM2Risk(_Names3Risk):
    """Bidirectional LSTM text encoder + tabular projection + 3 pre-norm residual blocks -> logits ``[B, C]``."""

    def __init__(self, config: dict) -> None:
        config = resolve_names3risk_config(config, "LSTM2Risk")
        super().__init__(config)
        self.save_hyperparameters(config)
        self._setup(config)
        h, drop = config["hidden_size"], float(config["dropout_rate"])
        self.text_encoder = LSTMEncoder(config["n_embed"], config["embedding_size"], h, config["n_lstm_layers"], drop)
        self.tab_encoder = tab_encoder(config["input_tab_dim"], h, drop)
        self.classifier = classifier([ResidualBlock(4 * h, 4, True) for _ in range(3)], 4 * h, h,
                                     self.num_classes, drop)
        self._finish()

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        lengths = batch.get("text_length")
        text = self.text_encoder(self._tokens(batch), None if lengths is None else torch.as_tensor(lengths))
        return self.classifier(torch.cat([text, self.tab_encoder(self._tab(batch))], dim=1))


class Transformer2Risk(_Names3Risk):
    """Transformer text encoder + tabular projection + 4 residual blocks -> logits ``[B, C]``."""

    def __init__(self, config: dict) -> None:
        config = resolve_names3risk_config(config, "Transformer2Risk")
        super().__init__(config)
        self.save_hyperparameters(config)
        self._setup(config)
        self.mask_key = f"{self.text_name}_{config['text_attention_mask_key']}"
        h, drop = config["hidden_size"], float(config["dropout_rate"])
        self.text_encoder = TransformerEncoder(config["n_embed"], config["embedding_size"], config["max_sen_len"],
                                               config["n_blocks"], config["n_heads"], h, drop)
        self.tab_encoder = tab_encoder(config["input_tab_dim"], h, drop)
        self.classifier = classifier([ResidualBlock(4 * h, 1, False) for _ in range(4)], 4 * h, None,
                                     self.num_classes, drop)
        self._finish()

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        mask = batch.get(self.mask_key)
        if mask is not None:
            mask = torch.as_tensor(mask, device=self.device)
            mask = (mask.squeeze(1) if mask.dim() == 3 else mask).bool()
        text = self.text_encoder(self._tokens(batch), mask)
        return self.classifier(torch.cat([text, self.tab_encoder(self._tab(batch))], dim=1))



"""Frozen legacy Names3Risk models (``names3risk_legacy/lstm2risk.py``, ``transformer2risk.py``).

Plain ``nn.Module``s whose training script saved a bare ``state_dict()`` each epoch; see
``shared/spec/next-families.md`` part B for the layouts (B.2, B.3) and batch format (B.6).
Both end in ``Linear(., 1)`` + ``Sigmoid`` and return the probability ``[B, 1]``.

Batch (a dict): ``text`` int64/int32 ``[B, T]`` (pad id 1); LSTM: ``text_length`` int64 ``[B]``,
optional, sorted descending when present (``pack_padded_sequence`` raises otherwise);
Transformer: ``attn_mask`` bool ``[B, T]`` (True = token), optional, hides keys only (pooling
always runs over every position); ``tabular`` float32 ``[B, n]``.

The constructors take the legacy dataclass (``LSTMConfig``/``TransformerConfig``) or a mapping
of its fields; the migration tool's canonical keys ``input_tab_dim`` and ``max_sen_len`` stand
in for ``n_tab_features`` and ``block_size`` when those are absent.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LSTM2Risk", "LSTMConfig", "Transformer2Risk", "TransformerConfig", "legacy_collate"]


@dataclass
class LSTMConfig:
    embedding_size: int = 16
    dropout_rate: float = 0.2
    hidden_size: int = 128
    n_tab_features: int = 100
    n_embed: int = 4000
    n_lstm_layers: int = 4


@dataclass
class TransformerConfig:
    embedding_size: int = 128
    dropout_rate: float = 0.2
    hidden_size: int = 256
    n_tab_features: int = 100
    n_embed: int = 4000
    n_blocks: int = 8
    n_heads: int = 8
    block_size: int = 100


_CANONICAL = {"n_tab_features": "input_tab_dim", "block_size": "max_sen_len"}


def _config(cls: type, config: Any) -> Any:
    if config is None or isinstance(config, cls):
        return config or cls()
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a {cls.__name__} or a mapping, got {type(config).__name__}")
    values = {}
    for f in fields(cls):
        key = f.name if f.name in config else _CANONICAL.get(f.name)
        if key in config and config[key] is not None:
            values[f.name] = config[key]
    return cls(**values)


class AttentionPooling(nn.Module):
    """Softmax-weighted sum over positions; `mask` (True = keep) hides positions from the weights."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.attention = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        scores = self.attention(x)  # [B, T, 1]
        if mask is not None:
            scores = scores.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        return (F.softmax(scores, dim=1) * x).sum(dim=1)


def tab_projection(n: int, hidden: int, dropout: float) -> nn.Sequential:
    """BatchNorm, Linear(n, 2H), ReLU, Dropout, Linear(2H, 2H), LayerNorm, ReLU, Dropout (keys 0, 1, 4, 5)."""
    return nn.Sequential(nn.BatchNorm1d(n), nn.Linear(n, 2 * hidden), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(2 * hidden, 2 * hidden), nn.LayerNorm(2 * hidden), nn.ReLU(),
                         nn.Dropout(dropout))


class _NormResidual(nn.Module):
    """LSTM2Risk's residual block: x + ffwd(x), ffwd = LayerNorm, Linear(4x), ReLU, Linear."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.ffwd = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 4 * width), nn.ReLU(),
                                  nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ffwd(x)


class _PlainResidual(nn.Module):
    """Transformer2Risk's residual block: x + net(x), net = Linear, ReLU, Linear (same width)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


def _head(blocks: list[nn.Module], width: int, hidden: int | None, dropout: float) -> nn.Sequential:
    """Blocks (each followed by ReLU, Dropout), [Linear(width, hidden), ReLU, Dropout], Linear(., 1), Sigmoid."""
    layers: list[nn.Module] = []
    for block in blocks:
        layers += [block, nn.ReLU(), nn.Dropout(dropout)]
    if hidden is not None:
        layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
    layers += [nn.Linear(hidden or width, 1), nn.Sigmoid()]
    return nn.Sequential(*layers)


class _LSTMTextProjection(nn.Module):
    def __init__(self, cfg: LSTMConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.token_embedding_table = nn.Embedding(cfg.n_embed, cfg.embedding_size)
        with warnings.catch_warnings():  # a 1-layer LSTM was built with inter-layer dropout (warning only)
            warnings.simplefilter("ignore", UserWarning)
            self.lstm = nn.LSTM(cfg.embedding_size, h, num_layers=cfg.n_lstm_layers, batch_first=True,
                                bidirectional=True, dropout=cfg.dropout_rate)
        self.lstm_pooling = AttentionPooling(2 * h)
        self.lstm_norm = nn.LayerNorm(2 * h)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        x = self.token_embedding_table(tokens)
        if lengths is None:  # runs over the padding and pools over it
            out, _ = self.lstm(x)
            mask = None
        else:
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True)
            out, _ = self.lstm(packed)
            out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True)
            mask = torch.arange(out.shape[1], device=out.device)[None, :] < lengths.to(out.device)[:, None]
        return self.lstm_norm(self.lstm_pooling(out, mask))


class LSTM2Risk(nn.Module):
    """Legacy bidirectional-LSTM names model: text [2H] + tabular [2H] -> 3 residual blocks -> probability."""

    def __init__(self, config: LSTMConfig | Mapping[str, Any] | None = None) -> None:
        super().__init__()
        cfg = self.config = _config(LSTMConfig, config)
        h = cfg.hidden_size
        self.text_projection = _LSTMTextProjection(cfg)
        self.tab_projection = tab_projection(cfg.n_tab_features, h, cfg.dropout_rate)
        self.net = _head([_NormResidual(4 * h) for _ in range(3)], 4 * h, h, cfg.dropout_rate)

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        text = self.text_projection(batch["text"], batch.get("text_length"))
        tab = self.tab_projection(batch["tabular"])
        return self.net(torch.cat([text, tab], dim=1))


class _Head(nn.Module):
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


class _MultiHead(nn.Module):
    def __init__(self, width: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = nn.ModuleList(_Head(width, width // n_heads, dropout) for _ in range(n_heads))
        self.proj = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.dropout(self.proj(torch.cat([h(x, mask) for h in self.heads], dim=-1)))


class _FeedForward(nn.Module):
    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, 4 * width), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(4 * width, width), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _Block(nn.Module):
    def __init__(self, width: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.sa = _MultiHead(width, n_heads, dropout)
        self.ffwd = _FeedForward(width, dropout)
        self.ln1 = nn.LayerNorm(width)
        self.ln2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.sa(self.ln1(x), mask)
        return x + self.ffwd(self.ln2(x))


class _TransformerTextProjection(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        e, h = cfg.embedding_size, cfg.hidden_size
        self.token_embedding_table = nn.Embedding(cfg.n_embed, e)
        self.position_embedding_table = nn.Embedding(cfg.block_size, e)
        self.blocks = nn.ModuleList(_Block(e, cfg.n_heads, cfg.dropout_rate) for _ in range(cfg.n_blocks))
        self.tab_layer = nn.Linear(cfg.n_tab_features, h)  # built, never used by the forward
        self.attention_pooling = AttentionPooling(e)
        self.proj = nn.Linear(e, 2 * h)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_embedding_table(tokens) + self.position_embedding_table(positions)
        mask = mask.bool() if mask is not None else None
        for block in self.blocks:
            x = block(x, mask)
        return self.proj(self.attention_pooling(x))  # pooling never uses the mask


class Transformer2Risk(nn.Module):
    """Legacy transformer names model: text [2H] + tabular [2H] -> 4 residual blocks -> probability."""

    def __init__(self, config: TransformerConfig | Mapping[str, Any] | None = None) -> None:
        super().__init__()
        cfg = self.config = _config(TransformerConfig, config)
        h = cfg.hidden_size
        self.text_projection = _TransformerTextProjection(cfg)
        self.tab_projection = tab_projection(cfg.n_tab_features, h, cfg.dropout_rate)
        self.net = _head([_PlainResidual(4 * h) for _ in range(4)], 4 * h, None, cfg.dropout_rate)

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        text = self.text_projection(batch["text"], batch.get("attn_mask"))
        tab = self.tab_projection(batch["tabular"])
        return self.net(torch.cat([text, tab], dim=1))


def legacy_collate(rows: list[dict[str, Any]], pad_id: int = 1, block_size: int | None = None,
                   lengths: bool = True, mask: bool = False) -> dict[str, torch.Tensor]:
    """The legacy collates. LSTM (`lengths`): sort by length (descending), pad with `pad_id`, lengths.
    Transformer (`mask`): truncate to `block_size`, pad, `attn_mask = text != pad_id`, batch order kept."""
    if lengths:
        rows = sorted(rows, key=lambda r: -len(r["text"]))
    texts = [list(r["text"])[: block_size or None] for r in rows]
    t = max(len(x) for x in texts)
    out: dict[str, torch.Tensor] = {
        "text": torch.tensor([x + [pad_id] * (t - len(x)) for x in texts], dtype=torch.long),
        "tabular": torch.stack([torch.as_tensor(r["tabular"], dtype=torch.float32) for r in rows]),
        "label": torch.tensor([[float(r["label"])] for r in rows]),
    }
    if lengths:
        out["text_length"] = torch.tensor([len(x) for x in texts], dtype=torch.long)
    if mask:
        out["attn_mask"] = out["text"] != pad_id
    return out

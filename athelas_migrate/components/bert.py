"""BERT text encoder and the fusion blocks of the BERT families (plain ``nn.Module``).

Submodule names are fixed by ``fusion-layouts.md`` (section "Target v2"): they
keep the names of the legacy inline classes so that a legacy checkpoint maps
onto them with the small key map of that section.

* ``BertEncoder``: ``bert`` + ``projection = Sequential(Dropout, Linear)``; the
  arithmetic of the legacy ``TextBertBase`` (mean of ``pooler_output`` over
  chunks, fully padded chunks included).
* ``CrossAttentionFusion``: legacy ``cross_att`` (``text2tab``, ``tab2text``,
  ``text_norm``, ``tab_norm``).
* ``GateFusion``: legacy ``gate_fusion`` (``text_proj``, ``tab_proj``, ``gate_net``).
* ``MixtureOfExperts``: legacy ``moe_fusion`` (``text_proj``/``tab_proj`` are
  ``Identity`` when the width already equals ``fusion_dim``; ``router``).
* ``MLPBlock``: ``net = Sequential(Linear, ReLU, Dropout, Linear, Dropout)``.
* ``BidirectionalCrossAttention``: legacy trimodal ``cross_attention``, FFNs as
  ``MLPBlock``.

Nothing here imports Lightning; ``transformers`` is only needed by whoever
builds the ``bert`` passed to ``BertEncoder``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "BertEncoder",
    "BidirectionalCrossAttention",
    "CrossAttentionFusion",
    "GateFusion",
    "MLPBlock",
    "MixtureOfExperts",
    "build_bert",
]


def build_bert(bert_config: dict) -> nn.Module:
    """Build a randomly initialised ``transformers.BertModel`` from a config dict; nothing is ever downloaded.

    Args:
        bert_config: transformers' ``config.json`` format (the keyword arguments of ``BertConfig``);
            ``architectures`` and ``transformers_version`` are ignored.

    Returns:
        The ``BertModel``, with its pooling layer (the fusion models read ``pooler_output``).

    Raises:
        TypeError: ``bert_config`` is not a dict.
    """
    if not isinstance(bert_config, dict):
        raise TypeError(
            f"bert_config must be a dict (BertConfig keyword arguments), got {type(bert_config)!r}"
        )
    from transformers import BertConfig, BertModel

    cfg = {k: v for k, v in bert_config.items() if k not in ("architectures", "transformers_version")}
    return BertModel(BertConfig(**cfg), add_pooling_layer=True)


def _exporting() -> bool:
    return bool(torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())


class BertEncoder(nn.Module):
    """BERT + ``Sequential(Dropout, Linear)`` head, for ``[B, T]`` or ``[B, chunks, T]`` inputs.

    For ``[B, chunks, T]`` the chunks are flattened into the batch, BERT runs
    once, ``pooler_output`` is reshaped to ``[B, chunks, hidden]`` and averaged
    over **all** chunks (fully padded chunks included, as the legacy
    ``TextBertBase`` does). A batch whose every mask row is zero raises
    ``ValueError("All input chunks in batch are empty!")`` (the check is skipped
    while tracing/exporting, where it cannot be expressed).
    """

    def __init__(self, bert: nn.Module, output_dim: int, dropout: float = 0.1):
        super().__init__()
        self.bert = bert
        self.bert_hidden_size = int(bert.config.hidden_size)
        self.output_dim = int(output_dim)
        self.projection = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(self.bert_hidden_size, self.output_dim)
        )

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean ``pooler_output`` over chunks (before the projection).

        Args:
            input_ids: token ids ``[B, T]`` or ``[B, chunks, T]``.
            attention_mask: the same shape as ``input_ids``.

        Returns:
            ``[B, bert_hidden]``.

        Raises:
            ValueError: ``input_ids`` is neither 2-D nor 3-D, or every mask row is zero (not checked while
                tracing or exporting).
        """
        if input_ids.dim() == 3:
            b, c, t = input_ids.shape
            flat_ids = input_ids.reshape(b * c, t)
            flat_mask = attention_mask.reshape(b * c, t)
        elif input_ids.dim() == 2:
            b, c = input_ids.shape[0], 1
            flat_ids, flat_mask = input_ids, attention_mask
        else:
            raise ValueError(
                f"input_ids must be [B, T] or [B, chunks, T], got shape {tuple(input_ids.shape)}"
            )
        if not _exporting():
            if not bool((flat_mask.sum(dim=1) > 0).any()):
                raise ValueError("All input chunks in batch are empty!")
        pooled = self.bert(input_ids=flat_ids, attention_mask=flat_mask).pooler_output
        if input_ids.dim() == 3:
            pooled = pooled.reshape(b, c, -1).mean(dim=1)
        return pooled

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.projection(self.pooled(input_ids, attention_mask))


class CrossAttentionFusion(nn.Module):
    """Bidirectional single-token cross attention between a text and a tabular vector.

    ``t = text_norm(text + text2tab(q=text, k=v=tab))``;
    ``u = tab_norm(tab + tab2text(q=tab, k=v=t))`` (attends to the *updated* text).
    Returns ``(t, u)``, each ``[B, hidden_dim]``.
    """

    def __init__(self, hidden_dim: int, num_heads: int = 4):
        super().__init__()
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim {hidden_dim} is not divisible by num_heads {num_heads}")
        self.hidden_dim = int(hidden_dim)
        self.num_heads = int(num_heads)
        self.text2tab = nn.MultiheadAttention(hidden_dim, num_heads, batch_first=True)
        self.tab2text = nn.MultiheadAttention(hidden_dim, num_heads, batch_first=True)
        self.text_norm = nn.LayerNorm(hidden_dim)
        self.tab_norm = nn.LayerNorm(hidden_dim)

    def forward(self, text: torch.Tensor, tab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        text_seq = text.unsqueeze(1)
        tab_seq = tab.unsqueeze(1)
        attn_text, _ = self.text2tab(text_seq, tab_seq, tab_seq)
        text_seq = self.text_norm(text_seq + attn_text)
        attn_tab, _ = self.tab2text(tab_seq, text_seq, text_seq)
        tab_seq = self.tab_norm(tab_seq + attn_tab)
        return text_seq.squeeze(1), tab_seq.squeeze(1)


class GateFusion(nn.Module):
    """Gated fusion: ``g = gate_net(cat[a, b])``, output ``g*a + (1-g)*b`` with ``a, b`` projected.

    ``tab_dim`` may be 0 (no tabular branch): ``tab_proj`` is then ``Linear(0, F)``
    (a ``[F, 0]`` weight) whose output is its bias; pass ``tab=None``.
    """

    def __init__(self, text_dim: int, tab_dim: int, fusion_dim: int):
        super().__init__()
        self.text_dim, self.tab_dim, self.fusion_dim = int(text_dim), int(tab_dim), int(fusion_dim)
        self.text_proj = nn.Linear(text_dim, fusion_dim)
        self.tab_proj = nn.Linear(tab_dim, fusion_dim)
        self.gate_net = nn.Sequential(
            nn.Linear(fusion_dim * 2, fusion_dim),
            nn.LayerNorm(fusion_dim),
            nn.Sigmoid(),
        )

    def forward(self, text: torch.Tensor, tab: torch.Tensor | None = None) -> torch.Tensor:
        if tab is None:
            tab = text.new_zeros((text.shape[0], self.tab_dim))
        a = self.text_proj(text)
        b = self.tab_proj(tab)
        g = self.gate_net(torch.cat([a, b], dim=1))
        return g * a + (1 - g) * b


class MixtureOfExperts(nn.Module):
    """Two-expert mixture: ``w = router(cat[a, b])``, output ``w[:,0:1]*a + w[:,1:2]*b``.

    ``text_proj``/``tab_proj`` are ``Linear(width, fusion_dim)`` only when the
    width differs from ``fusion_dim``, otherwise ``Identity`` (no keys).
    """

    def __init__(self, text_dim: int, tab_dim: int, fusion_dim: int):
        super().__init__()
        self.text_dim, self.tab_dim, self.fusion_dim = int(text_dim), int(tab_dim), int(fusion_dim)
        self.text_proj = nn.Linear(text_dim, fusion_dim) if text_dim != fusion_dim else nn.Identity()
        self.tab_proj = nn.Linear(tab_dim, fusion_dim) if tab_dim != fusion_dim else nn.Identity()
        self.router = nn.Sequential(nn.Linear(fusion_dim * 2, 2), nn.Softmax(dim=-1))

    def forward(self, text: torch.Tensor, tab: torch.Tensor | None = None) -> torch.Tensor:
        if tab is None:
            tab = text.new_zeros((text.shape[0], self.tab_dim))
        a = self.text_proj(text)
        b = self.tab_proj(tab)
        w = self.router(torch.cat([a, b], dim=1))
        return w[:, 0:1] * a + w[:, 1:2] * b


class MLPBlock(nn.Module):
    """``net = Sequential(Linear(in, hidden), ReLU, Dropout, Linear(hidden, out), Dropout)``."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int | None = None, dropout: float = 0.1):
        super().__init__()
        output_dim = input_dim if output_dim is None else output_dim
        self.net = nn.Sequential(
            nn.Linear(input_dim, hidden_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, output_dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BidirectionalCrossAttention(nn.Module):
    """Cross attention between two text vectors with a post-attention FFN per side.

    ``p' = norm_primary(p + attn_p2s(q=p, k=v=s))``;
    ``s' = norm_secondary(s + attn_s2p(q=s, k=v=p))`` (the *original* ``p``);
    ``p'' = norm_ffn_primary(p' + ffn_primary(p'))``, likewise ``s''``.
    Accepts ``[B, D]`` (treated as 1-token sequences) or ``[B, L, D]``; returns
    ``(p'', s'', (attn_weights_p2s, attn_weights_s2p))`` with the input rank.
    """

    def __init__(self, d_model: int, num_heads: int = 8, dropout: float = 0.1):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        self.d_model, self.num_heads = int(d_model), int(num_heads)
        self.attn_p2s = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.attn_s2p = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.norm_primary = nn.LayerNorm(d_model)
        self.norm_secondary = nn.LayerNorm(d_model)
        self.ffn_primary = MLPBlock(d_model, 4 * d_model, d_model, dropout)
        self.ffn_secondary = MLPBlock(d_model, 4 * d_model, d_model, dropout)
        self.norm_ffn_primary = nn.LayerNorm(d_model)
        self.norm_ffn_secondary = nn.LayerNorm(d_model)

    def forward(self, primary: torch.Tensor, secondary: torch.Tensor):
        vector = primary.dim() == 2
        p = primary.unsqueeze(1) if vector else primary
        s = secondary.unsqueeze(1) if vector else secondary
        attn_p, w_p2s = self.attn_p2s(p, s, s)
        attn_s, w_s2p = self.attn_s2p(s, p, p)
        p1 = self.norm_primary(p + attn_p)
        s1 = self.norm_secondary(s + attn_s)
        p2 = self.norm_ffn_primary(p1 + self.ffn_primary(p1))
        s2 = self.norm_ffn_secondary(s1 + self.ffn_secondary(s1))
        if vector:
            p2, s2 = p2.squeeze(1), s2.squeeze(1)
        return p2, s2, (w_p2s, w_s2p)

"""The BERT fusion families on the v2 layout (``fusion-layouts.md``, "Target v2").

``BimodalBertCrossAttn``, ``BimodalBertGateFusion``, ``BimodalBertMoE`` and
``TrimodalCrossAttentionBert`` keep the legacy class names, batch keys and
widths (encoders at ``hidden_common_dim`` = H, fusion at ``fusion_dim`` = F),
so every legacy checkpoint has an exact home; the text encoder(s) are
registered **before** the tabular encoder. Keys (legacy -> v2):

* ``text_subnetwork.bert.*`` -> ``text_encoder.bert.*``
* ``text_subnetwork.head_layer.1.*`` -> ``text_encoder.projection.1.*``
* ``tab_subnetwork.embedding_layer.*`` -> ``tab_encoder.embedding.*``
* ``{primary,secondary}_text_subnetwork.*`` -> ``{primary,secondary}_text_encoder.*`` (same inner renames)
* ``cross_attention.ffn_{primary,secondary}.{0,3}.*`` -> ``cross_attention.ffn_*.net.{0,3}.*``
* everything else unchanged (``cross_att.*``, ``gate_fusion.*``, ``moe_fusion.*``,
  ``final_merge_network.*``, ``classifier.*``, ``*_projection.*``, buffers).

Constructor ``(config: dict, bert_config: dict | None = None)``. ``config`` is
the flat legacy config; it is resolved (legacy defaults filled in, every width
made explicit: ``fusion_dim``, ``num_heads``, per-text widths,
``cross_attention_heads``, ``fusion_hidden_dim``) before being saved with
``save_hyperparameters("config", "bert_config")``, so
``Class.load_from_checkpoint(path)`` needs no argument. ``bert_config`` is a
``transformers.BertConfig`` dict (``config.json`` format); the BERT is built
with ``BertModel(BertConfig(**bert_config))``, never downloaded. The trimodal
model also accepts ``{"primary": {...}, "secondary": {...}}``.

Optimizer: AdamW with two groups (no weight decay for names containing
``bias`` or ``LayerNorm.weight``) and a linear warm-up/decay ``LambdaLR``
stepped every step, as legacy; the parameter order is the v2 registration
order (text before tab).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..components.bert import (
    BertEncoder,
    BidirectionalCrossAttention,
    CrossAttentionFusion,
    GateFusion,
    MixtureOfExperts,
    build_bert,
)
from ..components.tabular import TabularEmbedding, combine_tabular_fields
from .base import AthelasModule
from .bert_fusion_config import BERT_FUSION_DEFAULTS, resolve_bert_fusion_config

__all__ = [
    "BERT_FUSION_DEFAULTS",
    "BimodalBertCrossAttn",
    "BimodalBertGateFusion",
    "BimodalBertMoE",
    "TrimodalCrossAttentionBert",
    "resolve_bert_fusion_config",
]

NO_DECAY = ("bias", "LayerNorm.weight")

def _plain_bert_config(bert_config: Any) -> dict[str, Any]:
    if bert_config is None:
        raise ValueError(
            "a BERT config is required (transformers' config.json format, e.g. "
            "{'vocab_size': ..., 'hidden_size': ..., 'num_attention_heads': ...}); "
            "nothing is ever downloaded"
        )
    if hasattr(bert_config, "to_dict"):
        bert_config = bert_config.to_dict()
    if not isinstance(bert_config, Mapping):
        raise TypeError(f"bert_config must be a dict, got {type(bert_config).__name__}")
    return copy.deepcopy(dict(bert_config))


class _BertFusionModule(AthelasModule):
    """Shared plumbing: config resolution, text keys, labels, optimizer, tab branch."""

    def _setup(self) -> None:
        self.tab_field_list: list[str] = list(self.config.get("tab_field_list") or [])
        multiclass = not self.is_binary and self.num_classes > 2
        self.label_key = (
            f"{self.label_name}_processed" if (multiclass and self.label_name) else self.label_name
        )
        self.text_attention_mask_key = self.config["text_attention_mask_key"]
        self.text_input_ids_key = self.config["text_input_ids_key"]

    def _text_inputs(self, batch: Mapping[str, Any], text_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        ids_key = f"{text_name}_{self.text_input_ids_key}"
        mask_key = f"{text_name}_{self.text_attention_mask_key}"
        for key in (ids_key, mask_key):
            if key not in batch:
                raise KeyError(f"text field {key!r} missing from batch")
        return batch[ids_key], batch[mask_key]

    def _tab_features(self, batch: Mapping[str, Any]) -> torch.Tensor | None:
        if self.tab_encoder is None:
            return None
        return self.tab_encoder(combine_tabular_fields(batch, self.tab_field_list, self.device))

    def get_labels(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Labels from ``batch[label_name]`` (multiclass: ``f"{label_name}_processed"``, as legacy)."""
        if not self.label_key:
            raise KeyError(f"{type(self).__name__}: config has no 'label_name'; it is needed to read labels")
        if self.label_key not in batch:
            raise KeyError(f"label field {self.label_key!r} missing from batch")
        labels = torch.as_tensor(batch[self.label_key], device=self.device)
        if not self.is_binary and labels.dim() > 1:
            labels = labels.argmax(dim=1)
        return labels.reshape(-1).long()

    def configure_optimizers(self):
        from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

        cfg = self.config
        named = list(self.named_parameters())
        groups = [
            {
                "params": [p for n, p in named if not any(nd in n for nd in NO_DECAY)],
                "weight_decay": float(cfg["weight_decay"]),
            },
            {"params": [p for n, p in named if any(nd in n for nd in NO_DECAY)], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=float(cfg["lr"]), eps=float(cfg["adam_epsilon"]))
        warmup = int(cfg["warmup_steps"])
        if cfg["run_scheduler"]:
            scheduler = get_linear_schedule_with_warmup(
                optimizer, warmup, self.trainer.estimated_stepping_batches
            )
        else:
            scheduler = get_constant_schedule_with_warmup(optimizer, num_warmup_steps=warmup)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class _BimodalBert(_BertFusionModule):
    """Text encoder, then tabular encoder (both at H); subclasses add fusion + head."""

    def _build_encoders(self, bert_config: dict[str, Any]) -> None:
        hidden = self.config["hidden_common_dim"]
        self.text_name = self.config["text_name"]
        self.text_encoder = BertEncoder(build_bert(bert_config), hidden, dropout=0.1)
        self.tab_encoder = TabularEmbedding(len(self.tab_field_list), hidden) if self.tab_field_list else None
        self.text_dim = hidden
        self.tab_dim = hidden if self.tab_encoder is not None else 0

    def encode(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        ids, mask = self._text_inputs(batch, self.text_name)
        return self.text_encoder(ids, mask), self._tab_features(batch)


class BimodalBertCrossAttn(_BimodalBert):
    """BERT text + tabular, fused by single-token bidirectional cross attention.

    Keys: ``class_weights_tensor``, ``text_encoder.bert.*``, ``text_encoder.projection.1.*``,
    ``tab_encoder.embedding.{0,1}.*``, ``cross_att.*``, ``final_merge_network.{0,2}.*``, ``loss_op.weight``.
    """

    def __init__(self, config: dict, bert_config: dict | None = None):
        config = resolve_bert_fusion_config(config, "BimodalBertCrossAttn")
        bert_config = _plain_bert_config(bert_config)
        super().__init__(config)
        self.save_hyperparameters("config", "bert_config")
        self._setup()
        self._build_encoders(bert_config)
        hidden = self.config["hidden_common_dim"]
        self.cross_att = CrossAttentionFusion(hidden, self.config["num_heads"])
        self.final_merge_network = nn.Sequential(
            nn.Linear(2 * hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, self.num_classes),
        )
        self._register_loss()

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        text, tab = self.encode(batch)
        text, tab = self.cross_att(text, tab)
        return self.final_merge_network(torch.cat([text, tab], dim=1))


class BimodalBertGateFusion(_BimodalBert):
    """BERT text + tabular, fused by a learned gate at width ``fusion_dim``.

    Keys: ``class_weights_tensor``, ``text_encoder.*``, ``tab_encoder.*`` (absent without
    tabular fields; ``gate_fusion.tab_proj.weight`` is then ``[F, 0]``), ``gate_fusion.*``,
    ``final_merge_network.1.*``, ``loss_op.weight``.
    """

    def __init__(self, config: dict, bert_config: dict | None = None):
        config = resolve_bert_fusion_config(config, "BimodalBertGateFusion")
        bert_config = _plain_bert_config(bert_config)
        super().__init__(config)
        self.save_hyperparameters("config", "bert_config")
        self._setup()
        self._build_encoders(bert_config)
        fusion_dim = self.config["fusion_dim"]
        self.gate_fusion = GateFusion(self.text_dim, self.tab_dim, fusion_dim)
        self.final_merge_network = nn.Sequential(nn.ReLU(), nn.Linear(fusion_dim, self.num_classes))
        self._register_loss()

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        text, tab = self.encode(batch)
        return self.final_merge_network(self.gate_fusion(text, tab))


class BimodalBertMoE(_BimodalBert):
    """BERT text + tabular, fused by a two-expert softmax router at width ``fusion_dim``.

    Keys: ``class_weights_tensor``, ``text_encoder.*``, ``tab_encoder.*``, ``moe_fusion.router.0.*``
    (plus ``moe_fusion.{text,tab}_proj.*`` only when a width differs from F),
    ``classifier.1.*``, ``loss_op.weight``. Unlike legacy (which constructs but
    cannot run a forward), the model also works without tabular fields: the tab
    expert is then the constant ``tab_proj`` bias.
    """

    def __init__(self, config: dict, bert_config: dict | None = None):
        config = resolve_bert_fusion_config(config, "BimodalBertMoE")
        bert_config = _plain_bert_config(bert_config)
        super().__init__(config)
        self.save_hyperparameters("config", "bert_config")
        self._setup()
        self._build_encoders(bert_config)
        fusion_dim = self.config["fusion_dim"]
        self.moe_fusion = MixtureOfExperts(self.text_dim, self.tab_dim, fusion_dim)
        self.classifier = nn.Sequential(nn.ReLU(), nn.Linear(fusion_dim, self.num_classes))
        self._register_loss()

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        text, tab = self.encode(batch)
        return self.classifier(self.moe_fusion(text, tab))


class TrimodalCrossAttentionBert(_BertFusionModule):
    """Two BERT texts + tabular: bidirectional cross attention between the texts, then an MLP head.

    Registered: ``primary_text_encoder``, ``secondary_text_encoder``, ``primary_projection``
    or ``secondary_projection`` (``Linear(d, max)`` for the narrower text, only when the
    widths differ), ``tab_encoder`` (None without tabular fields), ``cross_attention``
    (BidirectionalCrossAttention), ``final_merge_network``
    (``Sequential(ReLU, Dropout, Linear(2D + H_tab, fusion_hidden_dim), ReLU, Dropout, Linear(., C))``),
    buffer ``class_weights_tensor``, ``loss_op``. Both texts use the shared
    ``text_input_ids_key`` / ``text_attention_mask_key`` suffixes.
    """

    def __init__(self, config: dict, bert_config: dict | None = None):
        config = resolve_bert_fusion_config(config, "TrimodalCrossAttentionBert")
        bert_config = _plain_bert_config(bert_config)
        super().__init__(config)
        self.save_hyperparameters("config", "bert_config")
        self._setup()
        cfg = self.config
        per_text = set(bert_config) == {"primary", "secondary"}
        p_bert_cfg = bert_config["primary"] if per_text else bert_config
        s_bert_cfg = bert_config["secondary"] if per_text else bert_config
        self.primary_text_name = cfg["primary_text_name"]
        self.secondary_text_name = cfg["secondary_text_name"]
        p_dim, s_dim = cfg["primary_hidden_common_dim"], cfg["secondary_hidden_common_dim"]

        self.primary_text_encoder = BertEncoder(build_bert(p_bert_cfg), p_dim, dropout=0.1)
        self.secondary_text_encoder = BertEncoder(build_bert(s_bert_cfg), s_dim, dropout=0.1)
        self.d_model = max(p_dim, s_dim)
        self.primary_projection = nn.Linear(p_dim, self.d_model) if p_dim < self.d_model else None
        self.secondary_projection = nn.Linear(s_dim, self.d_model) if s_dim < self.d_model else None
        hidden = cfg["hidden_common_dim"]
        self.tab_encoder = TabularEmbedding(len(self.tab_field_list), hidden) if self.tab_field_list else None
        tab_dim = hidden if self.tab_encoder is not None else 0
        self.cross_attention = BidirectionalCrossAttention(
            self.d_model, cfg["cross_attention_heads"], float(cfg["cross_attention_dropout"])
        )
        total = 2 * self.d_model + tab_dim
        dropout = float(cfg["fusion_dropout"])
        self.final_merge_network = nn.Sequential(
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(total, cfg["fusion_hidden_dim"]),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(cfg["fusion_hidden_dim"], self.num_classes),
        )
        self._register_loss()

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        p_ids, p_mask = self._text_inputs(batch, self.primary_text_name)
        s_ids, s_mask = self._text_inputs(batch, self.secondary_text_name)
        primary = self.primary_text_encoder(p_ids, p_mask)
        secondary = self.secondary_text_encoder(s_ids, s_mask)
        if self.primary_projection is not None:
            primary = self.primary_projection(primary)
        if self.secondary_projection is not None:
            secondary = self.secondary_projection(secondary)
        primary, secondary, _ = self.cross_attention(primary, secondary)
        parts = [primary, secondary]
        tab = self._tab_features(batch)
        if tab is not None:
            parts.append(tab)
        return self.final_merge_network(torch.cat(parts, dim=1))

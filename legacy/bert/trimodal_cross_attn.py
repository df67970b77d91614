"""Legacy ``TrimodalCrossAttentionBert`` (``athelas.models.lightning.trimodal.pl_trimodal_cross_attn``).

Frozen reproduction per ``fusion-layouts.md``. Registration order:
``tab_subnetwork`` (when there are tabular fields), ``primary_text_subnetwork``,
``secondary_text_subnetwork``, ``primary_projection`` / ``secondary_projection``
(only for the narrower text when the widths differ), ``cross_attention``,
``final_merge_network``, buffer ``class_weights_tensor``, ``loss_op``.

Both texts share the id/mask key suffixes (``text_input_ids_key``,
``text_attention_mask_key``); each has its own tokenizer
(``primary_tokenizer``/``secondary_tokenizer`` falling back to ``tokenizer``)
and width (``primary_hidden_common_dim``/``secondary_hidden_common_dim`` falling
back to ``hidden_common_dim``). Offline test hook: ``primary_bert_config`` /
``secondary_bert_config`` falling back to ``bert_config``.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from ..tab_ae import TabAE
from ._common import LegacyTaskMixin, whitelisted_hparams
from .text_bert import TextBertBase


class CrossAttentionModule(nn.Module):
    """Legacy inline ``cross_attention`` block (bidirectional, with FFNs)."""

    def __init__(self, d_model: int, num_heads: int = 8, dropout: float = 0.1):
        super().__init__()
        self.attn_p2s = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.attn_s2p = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.norm_primary = nn.LayerNorm(d_model)
        self.norm_secondary = nn.LayerNorm(d_model)
        self.ffn_primary = nn.Sequential(
            nn.Linear(d_model, d_model * 4),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(d_model * 4, d_model),
            nn.Dropout(dropout),
        )
        self.ffn_secondary = nn.Sequential(
            nn.Linear(d_model, d_model * 4),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(d_model * 4, d_model),
            nn.Dropout(dropout),
        )
        self.norm_ffn_primary = nn.LayerNorm(d_model)
        self.norm_ffn_secondary = nn.LayerNorm(d_model)

    def forward(self, primary: torch.Tensor, secondary: torch.Tensor):
        primary = primary.unsqueeze(1)
        secondary = secondary.unsqueeze(1)
        primary_attn, _ = self.attn_p2s(primary, secondary, secondary)
        primary_out = self.norm_primary(primary + primary_attn)
        # attends to the *original* primary
        secondary_attn, _ = self.attn_s2p(secondary, primary, primary)
        secondary_out = self.norm_secondary(secondary + secondary_attn)
        primary_out = self.norm_ffn_primary(primary_out + self.ffn_primary(primary_out))
        secondary_out = self.norm_ffn_secondary(secondary_out + self.ffn_secondary(secondary_out))
        return primary_out.squeeze(1), secondary_out.squeeze(1)


class TrimodalCrossAttentionBert(LegacyTaskMixin, pl.LightningModule):
    model_class = "trimodal_cross_attn_bert"

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        task = self._init_task(config)
        hidden = task["hidden_common_dim"]
        self.text_input_ids_key = config.get("text_input_ids_key", "input_ids")
        self.text_attention_mask_key = config.get("text_attention_mask_key", "attention_mask")

        self.tab_subnetwork = TabAE(config) if self.tab_field_list else None
        tab_dim = hidden if self.tab_subnetwork is not None else 0

        primary_cfg = self._create_text_config(config, "primary")
        self.primary_text_subnetwork = TextBertBase(primary_cfg)
        secondary_cfg = self._create_text_config(config, "secondary")
        self.secondary_text_subnetwork = TextBertBase(secondary_cfg)
        p_dim = self.primary_text_subnetwork.output_text_dim
        s_dim = self.secondary_text_subnetwork.output_text_dim
        self.d_model = max(p_dim, s_dim)
        if p_dim != s_dim:
            if p_dim < self.d_model:
                self.primary_projection = nn.Linear(p_dim, self.d_model)
            else:
                self.secondary_projection = nn.Linear(s_dim, self.d_model)

        self.cross_attention = CrossAttentionModule(
            self.d_model,
            int(config.get("cross_attention_heads", 8)),
            float(config.get("cross_attention_dropout", 0.1)),
        )
        total = 2 * self.d_model + tab_dim
        self.fusion_hidden_dim = int(config.get("fusion_hidden_dim", max(128, total // 2)))
        dropout = float(config.get("fusion_dropout", 0.1))
        self.final_merge_network = nn.Sequential(
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(total, self.fusion_hidden_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(self.fusion_hidden_dim, self.num_classes),
        )
        self._init_loss(task["class_weights"])
        self.save_hyperparameters(
            whitelisted_hparams(
                {
                    **task,
                    "primary_text_name": config["primary_text_name"],
                    "secondary_text_name": config["secondary_text_name"],
                    "text_input_ids_key": self.text_input_ids_key,
                    "text_attention_mask_key": self.text_attention_mask_key,
                    "primary_tokenizer": primary_cfg["tokenizer"],
                    "secondary_tokenizer": secondary_cfg["tokenizer"],
                    "model_class": self.model_class,
                }
            )
        )

    def _create_text_config(self, config: dict[str, Any], text_type: str) -> dict[str, Any]:
        cfg = {
            k: v
            for k, v in config.items()
            if k not in ("bert_config", "primary_bert_config", "secondary_bert_config", "tab_field_list")
        }
        cfg.update(
            text_name=config[f"{text_type}_text_name"],
            tokenizer=config.get(f"{text_type}_tokenizer", config.get("tokenizer", "bert-base-cased")),
            hidden_common_dim=config.get(f"{text_type}_hidden_common_dim", config["hidden_common_dim"]),
            text_input_ids_key=self.text_input_ids_key,
            text_attention_mask_key=self.text_attention_mask_key,
            reinit_pooler=config.get(f"{text_type}_reinit_pooler", config.get("reinit_pooler", False)),
            reinit_layers=config.get(f"{text_type}_reinit_layers", config.get("reinit_layers", 0)),
        )
        bert_config = config.get(f"{text_type}_bert_config", config.get("bert_config"))
        if bert_config is not None:
            cfg["bert_config"] = bert_config
        return cfg

    def _forward_impl(self, batch: dict[str, Any], tab_data) -> torch.Tensor:
        primary = self.primary_text_subnetwork(batch)
        secondary = self.secondary_text_subnetwork(batch)
        if hasattr(self, "primary_projection"):
            primary = self.primary_projection(primary)
        if hasattr(self, "secondary_projection"):
            secondary = self.secondary_projection(secondary)
        primary, secondary = self.cross_attention(primary, secondary)
        parts = [primary, secondary]
        if tab_data is not None:
            parts.append(self.tab_subnetwork(tab_data.float()))
        return self.final_merge_network(torch.cat(parts, dim=1))

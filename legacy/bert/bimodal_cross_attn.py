"""Legacy ``BimodalBertCrossAttn`` (``athelas.models.lightning.bimodal.pl_bimodal_cross_attn``).

Frozen reproduction per ``fusion-layouts.md``. Registration order:
``tab_subnetwork`` (legacy TabAE), ``text_subnetwork`` (TextBertBase),
``cross_att``, ``final_merge_network``, buffer ``class_weights_tensor``, ``loss_op``.
Text and tab widths must both equal ``hidden_common_dim`` (asserted), so a
tabular branch is mandatory.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from ..tab_ae import TabAE
from ._common import LegacyTaskMixin, whitelisted_hparams
from .text_bert import TextBertBase


class CrossAttentionFusion(nn.Module):
    """Legacy ``cross_att``: text and tab vectors as 1-token sequences."""

    def __init__(self, hidden_dim: int, num_heads: int):
        super().__init__()
        self.text2tab = nn.MultiheadAttention(hidden_dim, num_heads, batch_first=True)
        self.tab2text = nn.MultiheadAttention(hidden_dim, num_heads, batch_first=True)
        self.text_norm = nn.LayerNorm(hidden_dim)
        self.tab_norm = nn.LayerNorm(hidden_dim)

    def forward(self, text: torch.Tensor, tab: torch.Tensor):
        text = text.unsqueeze(1)
        tab = tab.unsqueeze(1)
        text_attn, _ = self.text2tab(query=text, key=tab, value=tab)
        text = self.text_norm(text + text_attn)
        tab_attn, _ = self.tab2text(query=tab, key=text, value=text)
        tab = self.tab_norm(tab + tab_attn)
        return text.squeeze(1), tab.squeeze(1)


class BimodalBertCrossAttn(LegacyTaskMixin, pl.LightningModule):
    model_class = "bimodal_cross_attn_bert"

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        task = self._init_task(config)
        hidden = task["hidden_common_dim"]
        self.num_heads = int(config.get("num_heads", 4))

        self.tab_subnetwork = TabAE(config) if self.tab_field_list else None
        tab_dim = hidden if self.tab_subnetwork is not None else 0
        self.text_subnetwork = TextBertBase(config)
        text_dim = self.text_subnetwork.output_text_dim
        assert text_dim == hidden and tab_dim == hidden, (
            "text and tab widths must both equal hidden_common_dim"
        )

        self.cross_att = CrossAttentionFusion(hidden, self.num_heads)
        self.final_merge_network = nn.Sequential(
            nn.Linear(2 * hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, self.num_classes),
        )
        self._init_loss(task["class_weights"])
        self.save_hyperparameters(
            whitelisted_hparams({**task, **self.text_subnetwork.config, "model_class": self.model_class})
        )

    def _forward_impl(self, batch: dict[str, Any], tab_data) -> torch.Tensor:
        text_out = self.text_subnetwork(batch)
        tab_out = self.tab_subnetwork(tab_data.float())
        text_fused, tab_fused = self.cross_att(text_out, tab_out)
        return self.final_merge_network(torch.cat([text_fused, tab_fused], dim=1))

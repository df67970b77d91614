"""Legacy ``BimodalBertGateFusion`` (``athelas.models.lightning.bimodal.pl_bimodal_gate_fusion``).

Frozen reproduction per ``fusion-layouts.md``. Registration order:
``tab_subnetwork``, ``text_subnetwork``, ``gate_fusion``, ``final_merge_network``,
buffer ``class_weights_tensor``, ``loss_op``. Encoders output ``hidden_common_dim``;
``fusion_dim`` defaults to it. Without tabular fields ``gate_fusion.tab_proj``
is ``Linear(0, F)`` (a ``[F, 0]`` weight; its output is the bias).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from ..tab_ae import TabAE
from ._common import LegacyTaskMixin, whitelisted_hparams
from .text_bert import TextBertBase


class GateFusion(nn.Module):
    """Legacy ``gate_fusion``."""

    def __init__(self, text_dim: int, tab_dim: int, fusion_dim: int):
        super().__init__()
        self.text_proj = nn.Linear(text_dim, fusion_dim)
        self.tab_proj = nn.Linear(tab_dim, fusion_dim)
        self.gate_net = nn.Sequential(
            nn.Linear(fusion_dim * 2, fusion_dim),
            nn.LayerNorm(fusion_dim),
            nn.Sigmoid(),
        )

    def forward(self, text: torch.Tensor, tab: torch.Tensor) -> torch.Tensor:
        text_proj = self.text_proj(text)
        tab_proj = self.tab_proj(tab)
        gate = self.gate_net(torch.cat([text_proj, tab_proj], dim=1))
        return gate * text_proj + (1 - gate) * tab_proj


class BimodalBertGateFusion(LegacyTaskMixin, pl.LightningModule):
    model_class = "bimodal_gate_fusion_bert"

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        task = self._init_task(config)
        hidden = task["hidden_common_dim"]

        self.tab_subnetwork = TabAE(config) if self.tab_field_list else None
        tab_dim = hidden if self.tab_subnetwork is not None else 0
        self.text_subnetwork = TextBertBase(config)
        text_dim = self.text_subnetwork.output_text_dim
        self.fusion_dim = int(config.get("fusion_dim", text_dim))

        self.gate_fusion = GateFusion(text_dim, tab_dim, self.fusion_dim)
        self.final_merge_network = nn.Sequential(nn.ReLU(), nn.Linear(self.fusion_dim, self.num_classes))
        self._init_loss(task["class_weights"])
        self.save_hyperparameters(
            whitelisted_hparams({**task, **self.text_subnetwork.config, "model_class": self.model_class})
        )

    def _forward_impl(self, batch: dict[str, Any], tab_data) -> torch.Tensor:
        text_out = self.text_subnetwork(batch)
        if tab_data is not None:
            tab_out = self.tab_subnetwork(tab_data.float())
        else:
            tab_out = torch.zeros((text_out.size(0), 0), device=text_out.device)
        fused = self.gate_fusion(text_out, tab_out)
        return self.final_merge_network(fused)

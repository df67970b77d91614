"""Legacy ``BimodalBertMoE`` (``athelas.models.lightning.bimodal.pl_bimodal_moe``).

Frozen reproduction per ``fusion-layouts.md``. Registration order:
``tab_subnetwork``, ``text_subnetwork``, ``moe_fusion``, ``classifier``,
buffer ``class_weights_tensor``, ``loss_op``. ``fusion_dim`` defaults to
``max(text width, tab width)``; a projection exists only for a width that
differs from it. Without tabular fields the class constructs but every
forward fails (the tab expert receives ``None``).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from ..tab_ae import TabAE
from ._common import LegacyTaskMixin, whitelisted_hparams
from .text_bert import TextBertBase


class MixtureOfExperts(nn.Module):
    """Legacy ``moe_fusion``."""

    def __init__(self, text_dim: int, tab_dim: int, fusion_dim: int):
        super().__init__()
        self.text_proj = nn.Linear(text_dim, fusion_dim) if text_dim != fusion_dim else nn.Identity()
        self.tab_proj = nn.Linear(tab_dim, fusion_dim) if tab_dim != fusion_dim else nn.Identity()
        self.router = nn.Sequential(nn.Linear(fusion_dim * 2, 2), nn.Softmax(dim=-1))

    def forward(self, text: torch.Tensor, tab: torch.Tensor) -> torch.Tensor:
        text_proj = self.text_proj(text)
        tab_proj = self.tab_proj(tab)
        weights = self.router(torch.cat([text_proj, tab_proj], dim=1))
        return weights[:, 0:1] * text_proj + weights[:, 1:2] * tab_proj


class BimodalBertMoE(LegacyTaskMixin, pl.LightningModule):
    model_class = "bimodal_moe_bert"

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        task = self._init_task(config)
        hidden = task["hidden_common_dim"]

        self.tab_subnetwork = TabAE(config) if self.tab_field_list else None
        tab_dim = hidden if self.tab_subnetwork is not None else 0
        self.text_subnetwork = TextBertBase(config)
        text_dim = self.text_subnetwork.output_text_dim
        self.fusion_dim = int(config.get("fusion_dim", max(text_dim, tab_dim)))

        self.moe_fusion = MixtureOfExperts(text_dim, tab_dim, self.fusion_dim)
        self.classifier = nn.Sequential(nn.ReLU(), nn.Linear(self.fusion_dim, self.num_classes))
        self._init_loss(task["class_weights"])
        self.save_hyperparameters(
            whitelisted_hparams({**task, **self.text_subnetwork.config, "model_class": self.model_class})
        )

    def _forward_impl(self, batch: dict[str, Any], tab_data) -> torch.Tensor:
        text_out = self.text_subnetwork(batch)
        tab_out = self.tab_subnetwork(tab_data.float()) if tab_data is not None else None
        fused = self.moe_fusion(text_out, tab_out)
        return self.classifier(fused)

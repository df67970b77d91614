"""Pieces shared by the legacy BERT fusion classes (frozen; see ``fusion-layouts.md``).

* optimizer: AdamW with two groups (no weight decay for parameter names
  containing ``bias`` or ``LayerNorm.weight``), plus a linear warm-up/decay
  ``LambdaLR`` (``transformers.get_linear_schedule_with_warmup`` over
  ``trainer.estimated_stepping_batches``) stepped every step; with
  ``run_scheduler=False`` a constant schedule with warm-up.
* saved hyper-parameters: a flat, whitelisted subset of the config. Never
  ``tab_field_list``, ``label_name``, ``fusion_dim``, ``num_heads``, the
  per-text widths or the offline ``bert_config`` test hook; ``tokenizer`` is
  saved. Hence ``load_from_checkpoint`` fails (``missing ... 'config'``).
* task plumbing: class-weight buffer + ``CrossEntropyLoss``, label handling
  (multiclass reads ``f"{label_name}_processed"``), train/val/test/predict steps.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim import AdamW

NO_DECAY = ("bias", "LayerNorm.weight")

# Keys a legacy fusion checkpoint keeps in ``hyper_parameters`` (when present in
# the resolved config). Deliberately absent: tab_field_list, label_name,
# fusion_dim, num_heads, cross_attention_heads, cross_attention_dropout,
# fusion_hidden_dim, primary_/secondary_hidden_common_dim, bert_config.
SAVED_HPARAM_KEYS = (
    "id_name",
    "text_name",
    "primary_text_name",
    "secondary_text_name",
    "text_input_ids_key",
    "text_attention_mask_key",
    "tokenizer",
    "primary_tokenizer",
    "secondary_tokenizer",
    "hidden_common_dim",
    "is_binary",
    "num_classes",
    "class_weights",
    "metric_choices",
    "lr",
    "weight_decay",
    "adam_epsilon",
    "warmup_steps",
    "run_scheduler",
    "reinit_pooler",
    "reinit_layers",
    "max_sen_len",
    "model_class",
    "model_path",
)


def whitelisted_hparams(resolved: dict[str, Any]) -> dict[str, Any]:
    return {k: resolved[k] for k in SAVED_HPARAM_KEYS if k in resolved and resolved[k] is not None}


def optimizer_groups(named_parameters, weight_decay: float) -> list[dict[str, Any]]:
    named = list(named_parameters)
    return [
        {
            "params": [p for n, p in named if not any(nd in n for nd in NO_DECAY)],
            "weight_decay": weight_decay,
        },
        {"params": [p for n, p in named if any(nd in n for nd in NO_DECAY)], "weight_decay": 0.0},
    ]


def build_legacy_optimizers(module) -> dict[str, Any]:
    from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

    optimizer = AdamW(
        optimizer_groups(module.named_parameters(), module.weight_decay),
        lr=module.lr,
        eps=module.adam_epsilon,
    )
    if module.run_scheduler:
        total = module.trainer.estimated_stepping_batches
        scheduler = get_linear_schedule_with_warmup(optimizer, module.warmup_steps, total)
    else:
        scheduler = get_constant_schedule_with_warmup(optimizer, num_warmup_steps=module.warmup_steps)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def resolve_task(config: dict[str, Any]) -> dict[str, Any]:
    """Task-level settings shared by every fusion family (legacy defaults)."""
    if not config.get("label_name"):
        raise ValueError("Config must contain 'label_name'")
    is_binary = bool(config.get("is_binary", True))
    num_classes = 2 if is_binary else int(config.get("num_classes", 2))
    weights = list(config.get("class_weights", [1.0] * num_classes))
    if len(weights) < num_classes:
        weights = weights + [1.0] * (num_classes - len(weights))
    weights = [float(w) for w in weights[:num_classes]]
    return {
        "label_name": config["label_name"],
        "id_name": config.get("id_name"),
        "tab_field_list": list(config.get("tab_field_list") or []) or None,
        "tokenizer": config.get("tokenizer", "bert-base-cased"),
        "hidden_common_dim": int(config["hidden_common_dim"]),
        "is_binary": is_binary,
        "num_classes": num_classes,
        "class_weights": weights,
        "metric_choices": list(config.get("metric_choices", ["accuracy", "f1_score"])),
        "lr": float(config.get("lr", 2e-5)),
        "weight_decay": float(config.get("weight_decay", 0.0)),
        "adam_epsilon": float(config.get("adam_epsilon", 1e-8)),
        "warmup_steps": int(config.get("warmup_steps", 0)),
        "run_scheduler": bool(config.get("run_scheduler", True)),
        "reinit_pooler": bool(config.get("reinit_pooler", False)),
        "reinit_layers": int(config.get("reinit_layers", 0)),
        "model_path": config.get("model_path", ""),
        "max_sen_len": config.get("max_sen_len"),
    }


class LegacyTaskMixin:
    """Loss, label handling and Lightning steps of the legacy fusion classes."""

    def _init_task(self, config: dict[str, Any]) -> dict[str, Any]:
        task = resolve_task(config)
        self.config = config
        self.id_name = task["id_name"]
        self.label_name = task["label_name"]
        self.tab_field_list = task["tab_field_list"]
        self.is_binary = task["is_binary"]
        self.task = "binary" if self.is_binary else "multiclass"
        self.num_classes = task["num_classes"]
        self.label_name_transformed = (
            f"{self.label_name}_processed"
            if (not self.is_binary and self.num_classes > 2)
            else self.label_name
        )
        self.metric_choices = task["metric_choices"]
        self.lr = task["lr"]
        self.weight_decay = task["weight_decay"]
        self.adam_epsilon = task["adam_epsilon"]
        self.warmup_steps = task["warmup_steps"]
        self.run_scheduler = task["run_scheduler"]
        self.model_path = task["model_path"]
        self.id_lst: list = []
        self.pred_lst: list = []
        self.label_lst: list = []
        return task

    def _init_loss(self, class_weights: list[float]) -> None:
        # Registered last: ``class_weights_tensor`` (own buffer) comes first in the
        # state dict, ``loss_op.weight`` (last child) comes last.
        self.register_buffer("class_weights_tensor", torch.tensor(class_weights, dtype=torch.float))
        self.loss_op = nn.CrossEntropyLoss(weight=self.class_weights_tensor)

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        tab_data = self.tab_subnetwork.combine_tab_data(batch) if self.tab_subnetwork is not None else None
        return self._forward_impl(batch, tab_data)

    def _labels(self, batch: dict[str, Any]):
        labels = batch.get(self.label_name_transformed)
        if labels is None:
            return None
        if not isinstance(labels, torch.Tensor):
            labels = torch.tensor(labels, device=self.device)
        if not self.is_binary and labels.dim() > 1:
            labels = labels.argmax(dim=1)
        return labels.long()

    def run_epoch(self, batch: dict[str, Any], stage: str):
        labels = self._labels(batch) if stage != "pred" else None
        logits = self(batch)
        loss = self.loss_op(logits, labels) if labels is not None else None
        preds = torch.softmax(logits, dim=1)
        preds = preds[:, 1] if self.is_binary else preds
        return loss, preds, labels

    def training_step(self, batch, batch_idx):
        loss, _, _ = self.run_epoch(batch, "train")
        self.log("train_loss", loss, prog_bar=True)
        return {"loss": loss}

    def validation_step(self, batch, batch_idx):
        loss, preds, labels = self.run_epoch(batch, "val")
        self.log("val_loss", loss, prog_bar=True)
        self.pred_lst.extend(preds.detach().cpu().tolist())
        self.label_lst.extend(labels.detach().cpu().tolist())

    def test_step(self, batch, batch_idx):
        mode = "test" if self.label_name_transformed in batch else "pred"
        loss, preds, labels = self.run_epoch(batch, mode)
        self.pred_lst.extend(preds.detach().cpu().tolist())
        if labels is not None:
            self.label_lst.extend(labels.detach().cpu().tolist())
            self.log("test_loss", loss)
        if self.id_name:
            self.id_lst.extend(batch[self.id_name])

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        mode = "test" if self.label_name_transformed in batch else "pred"
        _, preds, labels = self.run_epoch(batch, mode)
        return (preds, labels) if mode == "test" else preds

    def configure_optimizers(self):
        return build_legacy_optimizers(self)

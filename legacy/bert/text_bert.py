"""Legacy ``TextBertBase`` (historical path ``athelas.models.lightning.text.pl_bert.TextBertBase``).

Frozen reproduction of the v1 class, per ``fusion-layouts.md``:

* ``bert``: a Hugging Face ``BertModel``. The real legacy code always called
  ``AutoModel.from_pretrained(config["tokenizer"])`` (default
  ``"bert-base-cased"``). Offline test hook (ours, not legacy): when the config
  carries a ``bert_config`` dict, ``BertModel(BertConfig(**config["bert_config"]))``
  is built instead, randomly initialised. ``bert_config`` is never saved in the
  hyper-parameters (real checkpoints do not have it).
* ``head_layer = Sequential(Dropout(0.1), Linear(bert_hidden, hidden_common_dim))``.
* forward(batch): ids/mask ``[B, chunks, T]`` from
  ``f"{text_name}_{text_input_ids_key}"`` / ``f"{text_name}_{text_attention_mask_key}"``;
  2-D input raises (unpacking); all-zero mask raises
  ``ValueError("All input chunks in batch are empty!")``; mean of ``pooler_output``
  over all chunks (padded chunks included); head -> ``[B, hidden_common_dim]``.

The real class validated its config with pydantic (extra keys ignored); this
reproduction validates by hand with the same effect (required keys, defaults,
extra keys ignored), so it does not need pydantic.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from ._common import build_legacy_optimizers

DEFAULT_TOKENIZER = "bert-base-cased"


def validate_text_bert_config(config: dict[str, Any]) -> dict[str, Any]:
    """The validated TextBertBase config (defaults filled in, unknown keys ignored)."""
    if not isinstance(config, dict):
        raise TypeError("config must be a dict")
    for key in ("text_name", "hidden_common_dim"):
        if config.get(key) is None:
            raise ValueError(f"Config must contain '{key}'")
    is_binary = bool(config.get("is_binary", True))
    return {
        "text_name": str(config["text_name"]),
        "text_input_ids_key": config.get("text_input_ids_key", "input_ids"),
        "text_attention_mask_key": config.get("text_attention_mask_key", "attention_mask"),
        "label_name": config.get("label_name"),
        "id_name": config.get("id_name"),
        "tokenizer": config.get("tokenizer", DEFAULT_TOKENIZER),
        "hidden_common_dim": int(config["hidden_common_dim"]),
        "is_binary": is_binary,
        "num_classes": 2 if is_binary else int(config.get("num_classes", 2)),
        "metric_choices": list(config.get("metric_choices", ["accuracy", "f1_score"])),
        "weight_decay": float(config.get("weight_decay", 0.0)),
        "warmup_steps": int(config.get("warmup_steps", 0)),
        "adam_epsilon": float(config.get("adam_epsilon", 1e-8)),
        "lr": float(config.get("lr", 2e-5)),
        "run_scheduler": bool(config.get("run_scheduler", True)),
        "reinit_pooler": bool(config.get("reinit_pooler", False)),
        "reinit_layers": int(config.get("reinit_layers", 0)),
        "model_path": config.get("model_path", ""),
    }


def _load_bert(tokenizer: str, bert_config: dict | None) -> nn.Module:
    if bert_config is not None:
        # Offline test hook: build the architecture, never download.
        from transformers import BertConfig, BertModel

        return BertModel(BertConfig(**bert_config))
    # What the real legacy code did (needs the model files locally or a network).
    from transformers import AutoModel

    return AutoModel.from_pretrained(tokenizer, output_attentions=False)


class TextBertBase(pl.LightningModule):
    model_class = "bert"

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        cfg = validate_text_bert_config(config)
        self.config = cfg
        self.id_name = cfg["id_name"]
        self.text_name = f"{cfg['text_name']}_{cfg['text_input_ids_key']}"
        self.text_attention_mask = f"{cfg['text_name']}_{cfg['text_attention_mask_key']}"
        self.label_name = cfg["label_name"]
        self.is_binary = cfg["is_binary"]
        self.task = "binary" if self.is_binary else "multiclass"
        self.num_classes = cfg["num_classes"]
        self.lr = cfg["lr"]
        self.weight_decay = cfg["weight_decay"]
        self.adam_epsilon = cfg["adam_epsilon"]
        self.warmup_steps = cfg["warmup_steps"]
        self.run_scheduler = cfg["run_scheduler"]
        self.reinit_pooler = cfg["reinit_pooler"]
        self.reinit_layers = cfg["reinit_layers"]

        self.bert = _load_bert(cfg["tokenizer"], config.get("bert_config"))
        if self.reinit_pooler:
            self._reinit()

        self.output_bert_dim = int(self.bert.config.hidden_size)
        self.output_text_dim = cfg["hidden_common_dim"]
        self.head_layer = nn.Sequential(
            nn.Dropout(0.1), nn.Linear(self.output_bert_dim, self.output_text_dim)
        )

    def _reinit(self) -> None:
        """Only changes initialisation (legacy ``reinit_pooler`` / ``reinit_layers``)."""
        bert = self.bert
        std = bert.config.initializer_range
        bert.pooler.dense.weight.data.normal_(mean=0.0, std=std)
        bert.pooler.dense.bias.data.zero_()
        for p in bert.pooler.parameters():
            p.requires_grad = True
        if self.reinit_layers > 0:
            for layer in bert.encoder.layer[-self.reinit_layers :]:
                for module in layer.modules():
                    if isinstance(module, (nn.Linear, nn.Embedding)):
                        module.weight.data.normal_(mean=0.0, std=std)
                    elif isinstance(module, nn.LayerNorm):
                        module.bias.data.zero_()
                        module.weight.data.fill_(1.0)
                    if isinstance(module, nn.Linear) and module.bias is not None:
                        module.bias.data.zero_()

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        input_ids = batch[self.text_name]
        attention_mask = batch[self.text_attention_mask]
        B, C, T = input_ids.shape  # noqa: N806 - a 2-D input raises here, as in legacy
        input_ids = input_ids.view(B * C, T)
        attention_mask = attention_mask.view(B * C, T)
        valid_mask = attention_mask.sum(dim=1) > 0
        if not valid_mask.any():
            raise ValueError("All input chunks in batch are empty!")
        outputs = self.bert(input_ids=input_ids, attention_mask=attention_mask)
        pooled = outputs.pooler_output.view(B, C, -1).mean(dim=1)
        return self.head_layer(pooled)

    def configure_optimizers(self):
        return build_legacy_optimizers(self)

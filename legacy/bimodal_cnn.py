"""Legacy text+tabular CNN classifiers: ``MultimodalCNN`` (v0) and ``BimodalCNN`` (v1).

Frozen history. Both nest a whole ``TextCNN`` Lightning module (``text_subnetwork``)
and, when there are tabular fields, a ``TabAE`` (``tab_subnetwork``), then merge them
with ``ReLU -> Linear``. Their state dicts are identical; they differ in the text
batch key (v0 reads ``{text_name}_processed_{key}``, v1 ``{text_name}_{key}``) and in
what they save as hyper-parameters (v0: ``config``, ``vocab_size``, ``word_embeddings``;
v1: a whitelisted flat subset of the config). See ``docs/layouts/legacy-layouts.md``.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn as nn
import torch.optim as optim

from .tab_ae import TabAE
from .text_cnn import TextCNN, padded_class_weights

# The v1 hyper-parameter whitelist (``utils/config_constants.TENSORBOARD_FIELDS``):
# only these config keys (and no tensors) were saved by v1 BimodalCNN. Notably absent:
# tab_field_list, label_name, vocab_size, optimizer_type, momentum.
V1_HPARAM_WHITELIST = frozenset(
    {
        # training
        "lr", "batch_size", "max_epochs", "weight_decay", "optimizer", "warmup_steps",
        "gradient_clip_val", "early_stop_patience", "adam_epsilon", "run_scheduler",
        "val_check_interval", "fp16",
        # architecture
        "model_class", "hidden_common_dim", "num_classes", "is_binary", "dropout_keep", "embed_size",
        "fusion_hidden_dim", "fusion_dropout", "kernel_size", "num_layers", "num_channels",
        # text
        "tokenizer", "primary_tokenizer", "secondary_tokenizer", "fixed_tokenizer_length",
        "is_embeddings_trainable", "reinit_pooler", "reinit_layers", "primary_reinit_pooler",
        "secondary_reinit_pooler", "primary_reinit_layers", "secondary_reinit_layers", "max_sen_len",
        "chunk_trancate", "max_total_chunks",
        # field names
        "primary_text_name", "secondary_text_name", "text_name", "text_input_ids_key",
        "text_attention_mask_key",
        # classification / evaluation / preprocessing
        "class_weights", "multiclass_categories", "metric_choices", "early_stop_metric",
        "smooth_factor", "count_threshold",
    }
)  # fmt: skip


def filter_config_for_hparams(config: dict) -> dict:
    """The v1 filter: whitelisted keys only, tensors dropped, config order kept."""
    return {k: v for k, v in config.items() if k in V1_HPARAM_WHITELIST and not isinstance(v, torch.Tensor)}


class _LegacyCNNClassifier(pl.LightningModule):
    """Shared body of MultimodalCNN (v0) and BimodalCNN (v1); only the subclasses are real classes."""

    model_class = "bimodal_cnn"
    text_key_infix = "_"

    def __init__(self, config: dict, vocab_size: int, word_embeddings: torch.Tensor):
        super().__init__()
        self.config = config
        self.model_class = type(self).model_class

        # === Core configuration ===
        self.id_name = config.get("id_name", None)
        self.label_name = config["label_name"]
        self.text_input_ids_key = config.get("text_input_ids_key", "input_ids")
        self.text_name = config["text_name"] + self.text_key_infix + self.text_input_ids_key
        self.tab_field_list = config.get("tab_field_list", None)

        self.is_binary = config.get("is_binary", True)
        self.task = "binary" if self.is_binary else "multiclass"
        self.num_classes = 2 if self.is_binary else config.get("num_classes", 2)
        self.metric_choices = config.get("metric_choices", ["accuracy", "f1_score"])

        self.model_path = config.get("model_path", ".")
        self.lr = config.get("lr", 0.02)
        self.weight_decay = config.get("weight_decay", 0.0)
        self.adam_epsilon = config.get("adam_epsilon", 1e-8)
        self.warmup_steps = config.get("warmup_steps", 0)
        self.run_scheduler = config.get("run_scheduler", True)

        self.id_lst, self.pred_lst, self.label_lst = [], [], []
        self.test_output_folder = None
        self.test_has_label = False

        # === Subnetworks (registration order is the state_dict order) ===
        self.text_subnetwork = TextCNN(config, vocab_size, word_embeddings)
        self.tab_subnetwork = TabAE(config) if self.tab_field_list else None

        text_dim = self.text_subnetwork.output_text_dim
        tab_dim = self.tab_subnetwork.output_tab_dim if self.tab_subnetwork else 0

        self.final_merge_network = nn.Sequential(nn.ReLU(), nn.Linear(tab_dim + text_dim, self.num_classes))

        # === Loss ===
        weights = padded_class_weights(config, self.num_classes)
        self.register_buffer("class_weights_tensor", torch.tensor(weights, dtype=torch.float))
        self.loss_op = nn.CrossEntropyLoss(weight=self.class_weights_tensor)

    def forward(self, batch: dict) -> torch.Tensor:
        tab_data = self.tab_subnetwork.combine_tab_data(batch) if self.tab_subnetwork else None
        return self._forward_impl(batch, tab_data)

    def _forward_impl(self, batch, tab_data):
        input_ids = batch[self.text_name]
        text_out = self.text_subnetwork(input_ids)
        tab_out = (
            self.tab_subnetwork(tab_data.float())
            if tab_data is not None
            else torch.zeros((text_out.size(0), 0), device=self.device)
        )
        combined = torch.cat([text_out, tab_out], dim=1)
        return self.final_merge_network(combined)

    def run_epoch(self, batch, stage):
        labels = batch.get(self.label_name) if stage != "pred" else None
        if labels is not None:
            if not isinstance(labels, torch.Tensor):
                labels = torch.tensor(labels, device=self.device)
            if not self.is_binary and labels.dim() > 1:
                labels = labels.argmax(dim=1)
            labels = labels.long()
        logits = self.forward(batch)
        loss = self.loss_op(logits, labels) if labels is not None else None
        preds = torch.softmax(logits, dim=1)
        preds = preds[:, 1] if self.is_binary else preds
        return loss, preds, labels

    def configure_optimizers(self):
        optimizer_type = self.config.get("optimizer_type", "SGD")
        if optimizer_type == "Adam":
            return optim.AdamW(
                self.parameters(), lr=self.lr, eps=self.adam_epsilon, weight_decay=self.weight_decay
            )
        return optim.SGD(
            self.parameters(),
            lr=self.lr,
            momentum=self.config.get("momentum", 0.9),
            weight_decay=self.weight_decay,
        )

    # The legacy validation/test hooks also gathered predictions across ranks, computed
    # metrics and wrote TSV reports; that reporting never touches checkpoint contents and
    # is left out. Losses and collected predictions are as before.
    def training_step(self, batch, batch_idx):
        loss, _, _ = self.run_epoch(batch, "train")
        self.log("train_loss", loss, sync_dist=True, prog_bar=True)
        return {"loss": loss}

    def on_validation_epoch_start(self):
        self.pred_lst.clear()
        self.label_lst.clear()

    def validation_step(self, batch, batch_idx):
        loss, preds, labels = self.run_epoch(batch, "val")
        self.log("val_loss", loss, sync_dist=True, prog_bar=True)
        self.pred_lst.extend(preds.detach().cpu().tolist())
        self.label_lst.extend(labels.detach().cpu().tolist())

    def on_test_epoch_start(self):
        self.id_lst.clear()
        self.pred_lst.clear()
        self.label_lst.clear()

    def test_step(self, batch, batch_idx):
        mode = "test" if self.label_name in batch else "pred"
        self.test_has_label = mode == "test"
        loss, preds, labels = self.run_epoch(batch, mode)
        self.pred_lst.extend(preds.detach().cpu().tolist())
        if labels is not None:
            self.label_lst.extend(labels.detach().cpu().tolist())
        self.log("test_loss", loss, sync_dist=True, prog_bar=True)
        if self.id_name:
            self.id_lst.extend(batch[self.id_name])

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        mode = "test" if self.label_name in batch else "pred"
        _, preds, labels = self.run_epoch(batch, mode)
        return preds if mode == "pred" else (preds, labels)


class MultimodalCNN(_LegacyCNNClassifier):
    """v0 (``athelas.models.lightning.pl_multimodal_cnn.MultimodalCNN``).

    Reads ``{text_name}_processed_{text_input_ids_key}``; ``save_hyperparameters()``
    stores ``config``, ``vocab_size`` and the ``word_embeddings`` tensor.
    """

    model_class = "multimodal_cnn"
    text_key_infix = "_processed_"

    def __init__(self, config: dict, vocab_size: int, word_embeddings: torch.Tensor):
        super().__init__(config, vocab_size, word_embeddings)
        self.save_hyperparameters()


class BimodalCNN(_LegacyCNNClassifier):
    """v1 (``athelas.models.lightning.bimodal.pl_bimodal_cnn.BimodalCNN``).

    Reads ``{text_name}_{text_input_ids_key}``; saves only the whitelisted flat
    subset of the config (no tab_field_list, label_name, vocab_size, no tensors), so
    its own ``load_from_checkpoint`` cannot rebuild it.
    """

    model_class = "bimodal_cnn"
    text_key_infix = "_"

    def __init__(self, config: dict, vocab_size: int, word_embeddings: torch.Tensor):
        super().__init__(config, vocab_size, word_embeddings)
        self.save_hyperparameters(filter_config_for_hparams(config))

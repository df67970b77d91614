"""Legacy ``TextCNN`` (athelas ``pl_text_cnn.TextCNN``, eras v0 and v1).

Frozen history: this class reproduces the pre-refactor module exactly (parameter
names, registration order, shapes, forward arithmetic, saved hyper-parameters) so
that checkpoints written by the real old code load strictly into it and vice versa.
Do not "fix" anything here; quirks are part of the layout. See
``docs/layouts/legacy-layouts.md``.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn as nn
import torch.optim as optim


def legacy_pool_size(kernel_size: int, max_sen_len: int, num_layers: int) -> int:
    """Length left after the last conv for an input of exactly ``max_sen_len`` tokens.

    The legacy branch uses this as the window of its last ``MaxPool1d`` (``P_k``).
    """
    length = max_sen_len
    for i in range(num_layers):
        length = length - kernel_size + 1
        if i < num_layers - 1:
            length = (length - kernel_size) // kernel_size + 1
    return length


def padded_class_weights(config: dict, num_classes: int) -> list[float]:
    """Legacy class-weight resolution: pad with 1.0 up to ``num_classes``, then truncate.

    Like the original, ``+=`` pads the list stored in ``config`` in place (so the
    hyper-parameters saved afterwards show the padded list).
    """
    weights = config.get("class_weights", [1.0] * num_classes)
    if len(weights) != num_classes:
        weights += [1.0] * (num_classes - len(weights))
    return list(weights[:num_classes])


class TextCNN(pl.LightningModule):
    """Word-embedding + parallel Conv1d branches + dropout/linear head.

    Kept verbatim from the legacy code base; the last pool of every branch is a
    fixed ``MaxPool1d(P_k)`` sized for ``max_sen_len``, so the forward is only
    defined for a narrow band of sequence lengths around ``max_sen_len``.
    """

    def __init__(self, config: dict, vocab_size: int, word_embeddings: torch.Tensor):
        super().__init__()
        self.config = config
        self.model_class = "cnn"

        # === Core configuration ===
        self.id_name = config.get("id_name", None)
        self.label_name = config["label_name"]
        self.text_input_ids_key = config.get("text_input_ids_key", "input_ids")
        self.text_attention_mask_key = config.get("text_attention_mask_key", "attention_mask")
        # Stand-alone TextCNN always read the "_processed_" key (it did not change with v1).
        self.text_name = config["text_name"] + "_processed_" + self.text_input_ids_key
        self.text_attention_mask = config["text_name"] + "_processed_" + self.text_attention_mask_key

        self.embed_size = word_embeddings.shape[1]
        self.is_binary = config.get("is_binary", True)
        self.task = "binary" if self.is_binary else "multiclass"
        self.num_classes = 2 if self.is_binary else config.get("num_classes", 2)
        self.metric_choices = config.get("metric_choices", ["accuracy", "f1_score"])
        self.dropout_keep = config.get("dropout_keep", 0.5)
        self.max_sen_len = config.get("max_sen_len", 512)
        self.kernel_size = config.get("kernel_size", [3, 5, 7])
        self.num_layers = config.get("num_layers", 2)
        self.num_channels = config.get("num_channels", [100, 100])
        self.hidden_common_dim = config.get("hidden_common_dim", 100)

        if vocab_size != word_embeddings.shape[0]:
            raise ValueError("Vocab size does not match embedding matrix")

        # 1. embeddings (weight replaced by the pretrained matrix; shares its storage)
        self.embeddings = nn.Embedding(vocab_size, self.embed_size)
        self.embeddings.weight = nn.Parameter(
            word_embeddings, requires_grad=config.get("is_embeddings_trainable", True)
        )

        # 2. convs: one Sequential per kernel size, conv i at index 3*i
        self.conv_output_dims = {
            k: legacy_pool_size(k, self.max_sen_len, self.num_layers) for k in self.kernel_size
        }
        self.conv_input_dims = {k: [self.embed_size] + self.num_channels[:-1] for k in self.kernel_size}
        self.convs = nn.ModuleList(
            [
                self._build_conv_layers(
                    k, self.num_layers, self.num_channels, self.conv_input_dims[k], self.conv_output_dims[k]
                )
                for k in self.kernel_size
            ]
        )

        # 3. network: dropout (``dropout_keep`` is used as the drop probability) + linear
        self.output_text_dim = self.hidden_common_dim
        self.network = nn.Sequential(
            nn.Dropout(self.dropout_keep),
            nn.Linear(self.num_channels[-1] * len(self.kernel_size), self.output_text_dim),
        )

        # 4./5. class weights buffer, then the loss (its ``weight`` is a buffer too)
        weights = padded_class_weights(config, self.num_classes)
        self.register_buffer("class_weights_tensor", torch.tensor(weights, dtype=torch.float))
        self.loss_op = nn.CrossEntropyLoss(weight=self.class_weights_tensor)

        # Stores config, vocab_size AND word_embeddings (the embedding matrix itself).
        self.save_hyperparameters()

    @staticmethod
    def _build_conv_layers(kernel_size, num_layers, num_channels, input_dims, output_dim):
        layers = []
        for i in range(num_layers):
            layers.append(nn.Conv1d(input_dims[i], num_channels[i], kernel_size))
            layers.append(nn.ReLU())
            if i < num_layers - 1:
                layers.append(nn.MaxPool1d(kernel_size))
            else:
                layers.append(nn.MaxPool1d(output_dim))
        return nn.Sequential(*layers)

    def forward(self, text_ids: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(text_ids).permute(0, 2, 1)
        conv_outs = [conv(x).squeeze(2) for conv in self.convs]
        features = torch.cat(conv_outs, dim=1)
        return self.network(features)

    def run_epoch(self, batch, stage):
        text_ids = batch[self.text_name]
        labels = batch[self.label_name] if stage != "pred" else None
        logits = self(text_ids)
        loss = self.loss_op(logits, labels) if labels is not None else None
        preds = torch.softmax(logits, dim=1)
        preds = preds[:, 1] if self.is_binary else preds
        return loss, preds, labels

    def configure_optimizers(self):
        optimizer_type = self.config.get("optimizer_type", "SGD")
        lr = self.config.get("lr", 0.02)
        momentum = self.config.get("momentum", 0.9)
        if optimizer_type == "Adam":
            return optim.Adam(self.parameters(), lr=lr)
        return optim.SGD(self.parameters(), lr=lr, momentum=momentum)

    # The legacy steps also logged torchmetrics-based metrics; that reporting does not
    # touch weights or checkpoint contents and is left out.
    def training_step(self, batch, batch_idx):
        loss, _, _ = self.run_epoch(batch, "train")
        self.log("train_loss", loss, prog_bar=True, sync_dist=True)
        return {"loss": loss}

    def validation_step(self, batch, batch_idx):
        loss, _, _ = self.run_epoch(batch, "val")
        self.log("val_loss", loss, prog_bar=True, sync_dist=True)

    def test_step(self, batch, batch_idx):
        loss, _, _ = self.run_epoch(batch, "test")
        self.log("test_loss", loss, prog_bar=True, sync_dist=True)

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        mode = "test" if self.label_name in batch else "pred"
        _, preds, labels = self.run_epoch(batch, mode)
        return preds if mode == "pred" else (preds, labels)

"""``AthelasModule``: the common Lightning base of every v2 model.

To add a refactored model: subclass ``AthelasModule`` in a module of this package (see the class docstring
for what a subclass must do), build it from ``athelas_migrate.components``, resolve its hyper-parameters in a
torch-free ``*_config.py`` module when the engine needs them, and add it to ``_EXPORTS`` in ``__init__.py``.
Its state-dict keys are the target layout: the family's ``expected()`` (``athelas_migrate/families/``) must
equal them (tests/test_layouts_vs_classes.py), and its ``v2_class`` names the class. A model never imports the
engine: ``load_from_checkpoint`` reaches it through ``athelas_migrate.hooks``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import AUROC, Accuracy, F1Score, MetricCollection

from ..errors import UsageError
from .config import resolve_config

__all__ = ["AthelasModule", "LAYOUT_VERSION", "STAMP_KEY"]

#: Top-level checkpoint key of the layout stamp (see docs/contracts.md).
STAMP_KEY = "athelas_migrate"
#: Layout written by the models of this package.
LAYOUT_VERSION = "v2"


class AthelasModule(pl.LightningModule):
    """Common base of the v2 models.

    Provides: the resolved flat config (``self.config``), ``is_binary`` /
    ``num_classes`` / ``label_name``, validation and test metrics (accuracy,
    F1, AUROC; binary or multiclass, via torchmetrics, never in the state
    dict), cross-entropy training/validation/test steps, a predict step that
    returns ``softmax`` probabilities ``[B, num_classes]``, the legacy
    optimizer choice and the v2 layout stamp in saved checkpoints.

    Subclasses must:

    - call ``super().__init__(config)`` first, then register their modules in
      the spec order, ending with ``self._register_loss()`` (buffer
      ``class_weights_tensor`` then ``loss_op``) when they classify;
    - call ``self.save_hyperparameters(...)`` from their own ``__init__``;
    - implement ``forward``; override :meth:`batch_logits` when ``forward``
      does not take the batch itself, and :meth:`get_labels` if labels are
      not ``batch[config["label_name"]]``.
    """

    #: torch optimizer used for ``optimizer_type == "Adam"``.
    adam_optimizer_cls: type[torch.optim.Optimizer] = torch.optim.Adam

    def __init__(self, config: Mapping[str, Any], *, with_metrics: bool = True) -> None:
        super().__init__()
        self.config: dict[str, Any] = resolve_config(config)
        self.is_binary: bool = self.config["is_binary"]
        self.num_classes: int = self.config["num_classes"]
        self.label_name: str | None = self.config.get("label_name")
        self.task: str = "binary" if self.is_binary else "multiclass"
        self._provenance: Any = None
        self._val_updated = False
        self._test_updated = False
        if with_metrics:
            self.val_metrics: MetricCollection | None = self._make_metrics("val_")
            self.test_metrics: MetricCollection | None = self._make_metrics("test_")
        else:
            self.val_metrics = None
            self.test_metrics = None

    # ------------------------------------------------------------------ setup
    def _make_metrics(self, prefix: str) -> MetricCollection:
        if self.is_binary:
            kwargs: dict[str, Any] = {"task": "binary"}
        else:
            kwargs = {"task": "multiclass", "num_classes": self.num_classes}
        return MetricCollection(
            {"accuracy": Accuracy(**kwargs), "f1": F1Score(**kwargs), "auroc": AUROC(**kwargs)},
            prefix=prefix,
        )

    def _register_loss(self) -> None:
        """Register buffer ``class_weights_tensor`` then ``loss_op`` (in that order)."""
        weights = torch.tensor(self.config["class_weights"], dtype=torch.float)
        self.register_buffer("class_weights_tensor", weights)
        self.loss_op = nn.CrossEntropyLoss(weight=self.class_weights_tensor)

    #: Layout version recorded in the stamp; equals the family's `latest` (tests/test_families_complete.py).
    layout_version: str = LAYOUT_VERSION

    @property
    def family_name(self) -> str:
        """Family recorded in the layout stamp (the class name)."""
        return type(self).__name__

    # ----------------------------------------------------------- batch hooks
    def batch_logits(self, batch: Any) -> torch.Tensor:
        """Logits for a batch; override when ``forward`` does not take the batch itself.

        Args:
            batch: a batch as the dataloader yields it.

        Returns:
            ``[B, num_classes]``; by default ``self(batch)``.
        """
        return self(batch)

    def get_labels(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Labels read from ``batch[config["label_name"]]``.

        Args:
            batch: a batch as the dataloader yields it.

        Returns:
            ``[B]`` long, on the model's device.

        Raises:
            KeyError: the config has no ``label_name``, or the batch lacks that field.
        """
        if not self.label_name:
            raise KeyError(
                f"{type(self).__name__}: config has no 'label_name'; it is needed to read labels"
            )
        if self.label_name not in batch:
            raise KeyError(f"label field {self.label_name!r} missing from batch")
        labels = batch[self.label_name]
        labels = torch.as_tensor(labels, device=self.device)
        return labels.reshape(-1).long()

    # ----------------------------------------------------------------- steps
    def _shared_step(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not hasattr(self, "loss_op"):
            raise RuntimeError(f"{type(self).__name__} has no loss (no classification head)")
        logits = self.batch_logits(batch)
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"{type(self).__name__} produced logits of shape {tuple(logits.shape)}, "
                f"but the loss expects [B, {self.num_classes}] (num_classes)"
            )
        labels = self.get_labels(batch)
        loss = self.loss_op(logits, labels)
        return loss, logits, labels

    def _metric_inputs(self, logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.detach().float(), dim=1)
        return probs[:, 1] if self.is_binary else probs

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, logits, _ = self._shared_step(batch)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=logits.shape[0])
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, logits, labels = self._shared_step(batch)
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, batch_size=logits.shape[0])
        if self.val_metrics is not None:
            self.val_metrics.update(self._metric_inputs(logits), labels)
            self._val_updated = True
        return loss

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, logits, labels = self._shared_step(batch)
        self.log("test_loss", loss, on_epoch=True, batch_size=logits.shape[0])
        if self.test_metrics is not None:
            self.test_metrics.update(self._metric_inputs(logits), labels)
            self._test_updated = True
        return loss

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """Class probabilities ``softmax(logits)`` ``[B, num_classes]``."""
        return F.softmax(self.batch_logits(batch), dim=1)

    def _log_metrics(self, metrics: MetricCollection | None, updated: bool) -> None:
        if metrics is None:
            return
        if updated:
            self.log_dict(metrics.compute())
        metrics.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, self._val_updated)
        self._val_updated = False

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, self._test_updated)
        self._test_updated = False

    # -------------------------------------------------------------- optimizer
    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Legacy choice: ``"SGD"`` (with ``momentum``) or ``"Adam"`` (``adam_optimizer_cls``)."""
        cfg = self.config
        kind = str(cfg["optimizer_type"]).lower()
        lr = float(cfg["lr"])
        weight_decay = float(cfg["weight_decay"])
        if kind == "sgd":
            return torch.optim.SGD(self.parameters(), lr=lr, momentum=float(cfg["momentum"]),
                                   weight_decay=weight_decay)
        if kind in ("adam", "adamw"):
            cls = torch.optim.AdamW if kind == "adamw" else self.adam_optimizer_cls
            return cls(self.parameters(), lr=lr, weight_decay=weight_decay,
                       eps=float(cfg["adam_epsilon"]))
        raise ValueError(f"unsupported optimizer_type {cfg['optimizer_type']!r} (use 'SGD' or 'Adam')")

    # ------------------------------------------------------------ checkpoint
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Stamp the checkpoint: ``checkpoint["athelas_migrate"] = {"layout": <layout_version>, "family": ...}``.

        Other entries of an existing stamp (notably ``"provenance"``) are kept;
        a provenance read by :meth:`on_load_checkpoint` is carried forward.
        """
        existing = checkpoint.get(STAMP_KEY)
        stamp = dict(existing) if isinstance(existing, Mapping) else {}
        stamp["layout"] = self.layout_version
        stamp["family"] = self.family_name
        if "provenance" not in stamp and self._provenance is not None:
            stamp["provenance"] = self._provenance
        checkpoint[STAMP_KEY] = stamp

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stamp = checkpoint.get(STAMP_KEY)
        if isinstance(stamp, Mapping) and stamp.get("provenance") is not None:
            self._provenance = stamp["provenance"]

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None, hparams_file: Any = None,
                             strict: bool | None = None, weights_only: bool | None = None, *,
                             overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        """Lightning's loader without ``torch.load``: the file is read by the package's restricted reader.

        Whatever the environment says (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``) and whatever
        ``weights_only`` is, no pickled code can run. A v0/v1 checkpoint is migrated in memory first
        (with a DeprecationWarning); `overrides` supplies hyper-parameters a legacy file lacks (e.g.
        tab_field_list). ``hparams_file`` (YAML or CSV) replaces the stored hyper-parameters and
        `kwargs` override single ones, as in Lightning; ``map_location`` moves the model (tensors are
        read on the CPU).

        Args:
            checkpoint_path: a local path or a binary file object.
            map_location: where the model goes (see `device_of`).
            hparams_file: a YAML or CSV file of hyper-parameters that replace the stored ones.
            strict: Lightning's strict state-dict loading.
            weights_only: ignored: the restricted reader always applies.
            overrides: hyper-parameters a legacy file lacks.
            **kwargs: single hyper-parameters that override the stored ones.

        Returns:
            The model, with the checkpoint's weights.

        Raises:
            UsageError: the file belongs to another model class, or ``hparams_file``/``map_location`` has an
                unsupported form (and the reader's refusals, all AthelasError).
        """
        from lightning.pytorch.core.saving import _load_state

        from ..hooks import checkpoint_reader

        del weights_only  # always the restricted reader
        checkpoint = checkpoint_reader()(checkpoint_path, overrides, cls)
        if hparams_file is not None:
            checkpoint[cls.CHECKPOINT_HYPER_PARAMS_KEY] = _read_hparams_file(hparams_file)
        checkpoint.setdefault(cls.CHECKPOINT_HYPER_PARAMS_KEY, {})
        checkpoint[cls.CHECKPOINT_HYPER_PARAMS_KEY].update(kwargs)
        model = _load_state(cls, checkpoint, strict=strict, **kwargs)
        device = device_of(map_location)
        return model.to(device) if device is not None else model


def device_of(map_location: Any) -> Any:
    """Where the model goes after loading.

    The reader decodes every tensor on the CPU, so only mappings from the CPU mean anything.

    Args:
        map_location: None, a device name, an index, a torch.device, or a ``{"cpu": target}`` mapping.

    Returns:
        The torch.device, or None to leave the model on the CPU.

    Raises:
        UsageError: any other form, such as a callable.
    """
    if map_location is None:
        return None
    if isinstance(map_location, str | int | torch.device):
        return torch.device(map_location)
    if isinstance(map_location, Mapping):
        target = map_location.get("cpu")
        return torch.device(target) if target is not None else None
    raise UsageError("map_location: a device, a device name or a {'cpu': device} mapping is supported "
                     f"(got {type(map_location).__name__}); the checkpoint is read on the CPU")


def _read_hparams_file(path: Any) -> dict[str, Any]:
    """Lightning's ``hparams_file`` forms, YAML read with ``safe_load`` (no object tags)."""
    import os

    import yaml


    ext = os.fspath(path).rsplit(".", 1)[-1].lower()
    if ext == "csv":
        from lightning.pytorch.core.saving import load_hparams_from_tags_csv

        return dict(load_hparams_from_tags_csv(path))
    if ext not in ("yml", "yaml"):
        raise UsageError(".csv, .yml or .yaml is required for `hparams_file`")
    with open(path, encoding="utf-8") as fh:
        hparams = yaml.safe_load(fh) or {}
    if not isinstance(hparams, dict):
        raise UsageError(f"{os.fspath(path)}: hyper-parameters must be a mapping")
    return hparams

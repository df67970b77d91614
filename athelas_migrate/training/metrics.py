"""Validation metrics: computing them, measuring a model on a loader, recording them per epoch, the best epoch.

The metric names (``val_loss``, ``val_accuracy``, ``val_f1``, ``val_auroc``) are those the models log during
training, so the untrained model, every epoch and ``predict`` report the same quantities. torch, torchmetrics
and Lightning are imported inside the functions.

To add a metric, compute it in :func:`compute_metrics` under ``f"{prefix}<name>"`` and log the same name from
the models' validation step; the training table (``result.render_result``) lists the columns it shows.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["MONITOR", "best_epoch", "compute_metrics", "evaluate", "history_callback"]

#: The metric that picks the best checkpoint and drives early stopping (higher is better).
MONITOR = "val_auroc"


def compute_metrics(probs: Any, labels: Any, num_classes: int, prefix: str = "val_") -> dict[str, float]:
    """Accuracy, F1 and AUROC (torchmetrics, binary or multiclass) of class probabilities against labels.

    Args:
        probs: ``Float[N, C]`` class probabilities.
        labels: ``[N]`` class ids.
        num_classes: C; 2 selects the binary metrics (on the probability of class 1).
        prefix: put before each metric name.

    Returns:
        ``{prefix + "accuracy", prefix + "f1", prefix + "auroc"}``; AUROC is nan when the labels hold one class.
    """
    import torch
    from torchmetrics.functional import accuracy, auroc, f1_score

    labels = torch.as_tensor(labels).long()
    if num_classes == 2:
        kw: dict[str, Any] = {"task": "binary"}
        scores = probs[:, 1]
    else:
        kw = {"task": "multiclass", "num_classes": num_classes}
        scores = probs
    out = {
        f"{prefix}accuracy": float(accuracy(scores, labels, **kw)),
        f"{prefix}f1": float(f1_score(scores, labels, **kw)),
    }
    if len(torch.unique(labels)) > 1:
        out[f"{prefix}auroc"] = float(auroc(scores, labels, **kw))
    else:
        out[f"{prefix}auroc"] = float("nan")
    return out


def evaluate(model: Any, loader: Any) -> dict[str, float]:
    """Loss and metrics of ``model`` on a labelled loader, in eval mode without gradients.

    Args:
        model: a classification model (``batch_logits``, ``get_labels``, ``loss_op``, ``num_classes``); its
            training mode is restored afterwards.
        loader: batches with labels.

    Returns:
        ``val_loss`` (row-weighted mean) and the ``val_`` metrics of :func:`compute_metrics`.
    """
    import torch

    was_training = model.training
    model.eval()
    probs, labels, losses, sizes = [], [], [], []
    with torch.no_grad():
        for batch in loader:
            logits = model.batch_logits(batch)
            y = model.get_labels(batch)
            losses.append(float(model.loss_op(logits, y)))
            sizes.append(len(y))
            probs.append(torch.softmax(logits.float(), dim=1))
            labels.append(y)
    model.train(was_training)
    result = {"val_loss": sum(a * b for a, b in zip(losses, sizes)) / max(1, sum(sizes))}
    result.update(compute_metrics(torch.cat(probs), torch.cat(labels), model.num_classes))
    return result


def history_callback(history: list[dict[str, Any]]) -> Any:
    """A Lightning callback that appends one row per validated epoch to ``history``.

    Args:
        history: filled in place with ``{"epoch": n, "val_...": ..., "train_loss": ...}`` rows.

    Returns:
        The ``lightning.pytorch.Callback``.
    """
    import lightning.pytorch as pl

    class History(pl.Callback):
        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if trainer.sanity_checking:
                return
            row: dict[str, Any] = {"epoch": trainer.current_epoch + 1}
            for k, v in trainer.callback_metrics.items():
                if k.startswith("val_"):
                    row[k] = float(v)
            history.append(row)

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            loss = trainer.callback_metrics.get("train_loss_epoch")
            if history and history[-1]["epoch"] == trainer.current_epoch + 1 and loss is not None:
                history[-1]["train_loss"] = float(loss)

    return History()


def best_epoch(history: list[dict[str, Any]], best_score: Any = None) -> dict[str, Any]:
    """The row of the best epoch by ``MONITOR`` (the last one when none has a score).

    Args:
        history: the per-epoch rows.
        best_score: the checkpoint callback's best score; it replaces the row's value when given.

    Returns:
        The best row (a copy carrying ``best_score`` when that is given), or ``{}`` without history.
    """
    if not history:
        return {}
    scored = [r for r in history if not math.isnan(r.get(MONITOR, math.nan))]
    row = max(scored, key=lambda r: r[MONITOR]) if scored else history[-1]
    return dict(row, **{MONITOR: float(best_score)}) if best_score is not None else row

"""The end-of-training summary printed by ``athelas-migrate train`` (rich is imported inside).

To show another metric, add its name to ``COLUMNS`` (it must be in the history rows, see :mod:`.metrics`).
"""

from __future__ import annotations

import math
from typing import Any

from .result import TrainResult

__all__ = ["COLUMNS", "render_result"]

#: The validation metrics shown, one table column each (the ``val_`` prefix is dropped in the header).
COLUMNS = ("val_loss", "val_accuracy", "val_f1", "val_auroc")


def _fmt(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def render_result(result: TrainResult, console: Any) -> None:
    """Print the table of the untrained model and each epoch (the best one marked), the notes and the paths.

    Args:
        result: the finished run.
        console: a ``rich.console.Console``.
    """
    from rich.table import Table as RichTable

    table = RichTable(title=f"{result.model_class}: validation metrics ({result.n_val} rows)")
    table.add_column("epoch", justify="right")
    table.add_column("train_loss", justify="right")
    for c in COLUMNS:
        table.add_column(c.removeprefix("val_"), justify="right")
    table.add_row("untrained", "-", *(_fmt(result.initial.get(c)) for c in COLUMNS))
    best_epoch = result.best.get("epoch")
    for row in result.history:
        mark = " *" if row.get("epoch") == best_epoch else ""
        table.add_row(f"{row['epoch']}{mark}", _fmt(row.get("train_loss")), *(_fmt(row.get(c)) for c in COLUMNS))
    console.print(table)
    for note in result.notes:
        console.print(f"note: {note}")
    if result.best:
        console.print(f"best val AUC {_fmt(result.best.get('val_auroc'))} at epoch {best_epoch} "
                      f"(untrained {_fmt(result.initial.get('val_auroc'))})")
    console.print(f"best checkpoint: {result.best_checkpoint}")
    console.print(f"last checkpoint: {result.last_checkpoint}")
    console.print(f"vocabulary:      {result.vocab_path} ({result.vocab_size} ids)")

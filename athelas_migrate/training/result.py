"""What a run leaves behind: its output directory, the result record and ``metrics.json``.

To add an output file, name it in ``OUTPUT_FILES`` (so a rerun refuses or, with ``--force``, replaces it) and
write it through ``io.writer.atomic_output``; to add a field to ``metrics.json``, add it to :class:`TrainResult`
and :meth:`TrainResult.to_json`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError

__all__ = ["OUTPUT_FILES", "TrainResult", "prepare_out_dir", "write_metrics"]

#: The files a run writes into ``--out`` (besides ``logs/``).
OUTPUT_FILES = ("best.ckpt", "last.ckpt", "vocab.json", "metrics.json")


@dataclass
class TrainResult:
    """A finished run: where its files are, the resolved config, and the metrics before and during training."""

    model_class: str
    out_dir: str
    best_checkpoint: str
    last_checkpoint: str
    vocab_path: str
    vocab_size: int
    config: dict[str, Any]
    initial: dict[str, float]
    history: list[dict[str, Any]]
    best: dict[str, Any]
    n_train: int
    n_val: int
    notes: list[str]
    global_zero: bool = True

    def to_json(self) -> dict[str, Any]:
        """The content of ``metrics.json``.

        Returns:
            A JSON-ready dict of the run's paths, sizes and metrics.
        """
        return {
            "model_class": self.model_class,
            "best_checkpoint": self.best_checkpoint,
            "last_checkpoint": self.last_checkpoint,
            "vocab_path": self.vocab_path,
            "vocab_size": self.vocab_size,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "untrained": self.initial,
            "history": self.history,
            "best": self.best,
            "notes": self.notes,
        }


def prepare_out_dir(out_dir: str, force: bool, clean: bool = True) -> str:
    """Create the output directory and clear the files of an earlier run from it.

    Args:
        out_dir: the ``--out`` directory.
        force: replace the files of an earlier run; without it their presence is refused.
        clean: False in the extra DDP processes, which leave the clean-up to the first one.

    Returns:
        The absolute path of the directory.

    Raises:
        UsageError: the path is a file, or it holds earlier outputs and ``force`` is False.
    """
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"--out {out_dir} exists and is not a directory")
    os.makedirs(out_dir, exist_ok=True)
    if not clean:
        return out_dir
    present = [f for f in OUTPUT_FILES if os.path.exists(os.path.join(out_dir, f))]
    if present and not force:
        raise UsageError(f"{out_dir} already holds {', '.join(present)}; pass --force to replace them "
                         "or choose another --out directory")
    for f in present:
        os.unlink(os.path.join(out_dir, f))
    return out_dir


def write_metrics(result: TrainResult) -> str:
    """Write ``metrics.json`` into the run's directory, atomically.

    Args:
        result: the finished run.

    Returns:
        The path written.

    Raises:
        OutputError: the file cannot be written.
    """
    from ..io.writer import atomic_output

    path = os.path.join(result.out_dir, "metrics.json")
    with atomic_output(path) as fh:
        fh.write((json.dumps(result.to_json(), indent=2, default=str) + "\n").encode("utf-8"))
    return path

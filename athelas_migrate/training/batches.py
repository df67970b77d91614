"""Tables as model batches: encoded column tensors, a dataset over them, and the data loader.

A batch is a dict keyed as the models read it (``text_key`` for token ids, one key per numeric field, the label
key), so training, evaluation and ``predict`` feed the models the same way. torch is imported inside the
functions. To feed a new kind of column, add its tensor in :func:`build_tensors` under the key the model reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..text_vocab import Vocabulary
from .tables import Table, float_column, label_column

__all__ = ["DictTensorDataset", "build_tensors", "make_loader"]


def build_tensors(table: Table, vocab: Vocabulary, *, text_col: str, text_key: str, length: int,
                  tab_fields: Sequence[str] = (), label_col: str | None = None,
                  label_key: str | None = None) -> dict[str, Any]:
    """Column tensors in batch-key form.

    Args:
        table: the data.
        vocab: the vocabulary that encodes the text column.
        text_col: the text column.
        text_key: the batch key of the token ids.
        length: ids per text (truncated or padded with 0).
        tab_fields: numeric columns, each under its own name.
        label_col: the label column, or None for unlabelled data.
        label_key: the batch key of the labels (default: ``label_col``).

    Returns:
        ``{text_key: Long[N, length], field: Float[N] per field, label_key: Long[N]}``.

    Raises:
        InputError: a column is missing or holds a value of the wrong kind.
    """
    import torch

    tensors: dict[str, Any] = {
        text_key: torch.tensor(vocab.encode_batch(table.column(text_col, "text"), length), dtype=torch.long)
    }
    for name in tab_fields:
        tensors[name] = torch.tensor(float_column(table, name), dtype=torch.float32)
    if label_col is not None:
        tensors[label_key or label_col] = torch.tensor(label_column(table, label_col), dtype=torch.long)
    return tensors


class DictTensorDataset:
    """Rows of equal-length column tensors; the default collate stacks them into a batch dict."""

    def __init__(self, tensors: Mapping[str, Any]) -> None:
        self.tensors = dict(tensors)
        lengths = {len(t) for t in self.tensors.values()}
        if len(lengths) != 1:
            raise ValueError(f"columns of different lengths: {lengths}")
        self.n = lengths.pop()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {k: v[i] for k, v in self.tensors.items()}


def make_loader(tensors: Mapping[str, Any], batch_size: int, shuffle: bool, seed: int = 0) -> Any:
    """A ``DataLoader`` of batch dicts over column tensors, loading in-process (the tensors are in memory).

    Args:
        tensors: equal-length column tensors, as :func:`build_tensors` returns them.
        batch_size: rows per batch.
        shuffle: reshuffle every epoch (training) or keep the row order (evaluation, prediction).
        seed: seed of the shuffle.

    Returns:
        The ``torch.utils.data.DataLoader``.
    """
    import torch
    from torch.utils.data import DataLoader

    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(DictTensorDataset(tensors), batch_size=batch_size, shuffle=shuffle,
                      generator=generator, num_workers=0)

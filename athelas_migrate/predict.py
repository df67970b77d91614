"""Per-row class probabilities from any supported checkpoint (``athelas-migrate predict``).

:func:`load_any_model` turns a checkpoint into a v2 model in eval mode with
``athelas_migrate.api.load_model`` (restricted reader; legacy files migrated in memory).

:func:`predict` tokenizes the text column with the vocabulary saved at training
time (``--vocab FILE``, else ``vocab_file`` next to the checkpoint, else
``vocab_path`` from the checkpoint's config), pads/truncates to the model's
``max_sen_len``, reads the numeric fields named by ``tab_field_list`` and writes
one output row per input row: ``row`` (or the ``--id-col`` value), ``prob_0`` ..
``prob_{C-1}`` (softmax, summing to 1), ``prediction`` (argmax) and ``label``
when the data has the label column. ``.tsv`` output is tab separated, ``.csv``
comma separated; the file is written atomically.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import InputError, UsageError
from .text_vocab import Vocabulary

__all__ = ["PredictResult", "find_vocabulary", "load_any_model", "predict"]


# ============================================================ model loading
def load_any_model(path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None) -> Any:
    """A v2 LightningModule in eval mode from any supported checkpoint.

    Args:
        path: the checkpoint, read by the restricted reader; a legacy one is migrated in memory.
        overrides: hyper-parameters a legacy checkpoint lacks.

    Returns:
        The model, in eval mode.

    Raises:
        InputError: the file is missing, unsafe or not a supported checkpoint (see ``api.load_model``).
        UsageError: a malformed override.
    """
    from .api import load_model

    return load_model(os.fspath(path), dict(overrides or {}) or None).eval()


# ================================================================ vocabulary
def find_vocabulary(config: Mapping[str, Any], ckpt_path: str, explicit: str | None = None) -> Vocabulary:
    """The vocabulary a model was trained with.

    Args:
        config: the model config (``vocab_file``, ``vocab_path`` as ``train`` records them).
        ckpt_path: the checkpoint; ``vocab_file`` is looked up beside it first.
        explicit: a ``--vocab`` file, which wins.

    Returns:
        ``explicit``, else ``vocab_file`` beside the checkpoint, else the recorded ``vocab_path``, loaded.

    Raises:
        InputError: the recorded vocabulary is in neither place, or a file is not a vocabulary.
        UsageError: the checkpoint records no vocabulary and none was given.
    """
    if explicit:
        return Vocabulary.load(explicit)
    tried = []
    name = config.get("vocab_file")
    if name:
        candidate = os.path.join(os.path.dirname(os.path.abspath(ckpt_path)), os.path.basename(str(name)))
        tried.append(candidate)
        if os.path.isfile(candidate):
            return Vocabulary.load(candidate)
    recorded = config.get("vocab_path")
    if recorded:
        tried.append(str(recorded))
        if os.path.isfile(str(recorded)):
            return Vocabulary.load(str(recorded))
    if tried:
        raise InputError(f"the vocabulary recorded in the checkpoint is not at {' nor '.join(tried)}; "
                         "pass --vocab FILE")
    raise UsageError("the checkpoint records no vocabulary (it was not trained by athelas-migrate train, "
                     "e.g. a legacy checkpoint); pass --vocab FILE with the vocabulary JSON it was trained with")


# =================================================================== predict
@dataclass
class PredictResult:
    """What ``predict`` wrote: the file, its rows and classes, metrics against the labels, notes for the user."""

    out_path: str
    n_rows: int
    num_classes: int
    model_class: str
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _checked_output(out: str, force: bool) -> tuple[str, str]:
    """The absolute output path and its delimiter; refusals before anything is read."""
    lower = out.lower()
    if not lower.endswith((".tsv", ".csv")):
        raise UsageError(f"{out}: the output must end in .tsv or .csv")
    out_abs = os.path.abspath(out)
    if os.path.isdir(out_abs):
        raise UsageError(f"{out}: is a directory; give a file name")
    if os.path.exists(out_abs) and not force:
        raise UsageError(f"{out} exists; pass --force to replace it")
    if not os.path.isdir(os.path.dirname(out_abs)):
        raise UsageError(f"output directory {os.path.dirname(out_abs)} does not exist")
    return out_abs, "\t" if lower.endswith(".tsv") else ","


def predict(ckpt: str, data: str, out: str, *, vocab: str | None = None,
            overrides: Mapping[str, Any] | None = None, text_col: str | None = None,
            label_col: str | None = None, id_col: str | None = None, batch_size: int = 256,
            force: bool = False, model: Any = None) -> PredictResult:
    """Write per-row class probabilities of ``data`` under the model of ``ckpt`` to ``out``.

    Args:
        ckpt: the checkpoint (v2 or legacy); also where the vocabulary is looked up.
        data: a CSV / TSV / Parquet file with the text column (and the numeric fields the model reads).
        out: the ``.tsv`` or ``.csv`` output, written atomically.
        vocab: the vocabulary JSON (default: the one the checkpoint records, see :func:`find_vocabulary`).
        overrides: hyper-parameters a legacy checkpoint lacks.
        text_col: the text column (default: the checkpoint's ``text_name``).
        label_col: the label column (default: ``label_name``); without it in ``data``, no metrics.
        id_col: a column copied into the output as the row id (default: the row number).
        batch_size: rows per forward pass.
        force: replace ``out`` if it exists.
        model: an already loaded model to use instead of loading ``ckpt``.

    Returns:
        The output's path, size, class count, metrics (when labelled) and notes.

    Raises:
        UsageError: a bad output name, an existing output without ``force``, a model without a classification
            head, no text column or no vocabulary known.
        InputError: an unreadable data or checkpoint file, a missing column, a vocabulary of the wrong size.
        OutputError: the output cannot be written.
    """
    out_abs, delimiter = _checked_output(out, force)
    if batch_size < 1:
        raise UsageError(f"batch size must be >= 1, got {batch_size}")

    from .training.batches import build_tensors, make_loader
    from .training.metrics import compute_metrics
    from .training.tables import read_table

    table = read_table(data)  # fail early on a bad data file, before loading the model
    if model is None:
        model = load_any_model(ckpt, overrides)
    model_class = type(model).__name__
    if model_class == "TabAE" or not hasattr(model, "num_classes") or not hasattr(model, "loss_op"):
        raise UsageError(f"{model_class} has no classification head: there are no class probabilities "
                         "to predict (TabAE is an encoder)")
    config = dict(model.config)
    from .models.config import text_batch_key

    text_col = text_col or config.get("text_name")
    if not text_col:
        raise UsageError("the checkpoint does not name its text column; pass --text-col NAME")
    label_col = label_col or config.get("label_name")
    has_label = bool(label_col) and label_col in table.columns
    vocabulary = find_vocabulary(config, ckpt, vocab)
    vocab_size = getattr(model, "vocab_size", None) or config.get("vocab_size")
    if vocab_size is not None and len(vocabulary) != int(vocab_size):
        raise InputError(f"the vocabulary has {len(vocabulary)} ids but the model's embedding has "
                         f"{vocab_size} rows: it is not the vocabulary this model was trained with")
    ids = table.column(id_col, "id") if id_col else list(range(table.n_rows))

    tensors = build_tensors(table, vocabulary, text_col=text_col, text_key=text_batch_key(config),
                            length=int(config["max_sen_len"]),
                            tab_fields=list(getattr(model, "tab_field_list", None) or []),
                            label_col=label_col if has_label else None)
    probs = _probabilities(model, make_loader(tensors, batch_size, shuffle=False))
    num_classes = probs.shape[1]
    labels = tensors[label_col].tolist() if has_label else None
    metrics = compute_metrics(probs, tensors[label_col], num_classes, prefix="") if has_label else {}
    _write_rows(out_abs, delimiter, [id_col or "row", *(f"prob_{c}" for c in range(num_classes)), "prediction"],
                ids, probs, labels)
    notes = []
    if label_col and not has_label:
        notes.append(f"no {label_col!r} column in {data}: no labels or metrics")
    unk = vocabulary.unknown_rate(table.column(text_col, "text"))
    notes.append(f"{unk:.1%} of tokens are unknown to the vocabulary")
    return PredictResult(out_abs, table.n_rows, num_classes, model_class, metrics, notes)


def _probabilities(model: Any, loader: Any) -> Any:
    """Softmax class probabilities ``Float[N, C]`` of every row, in eval mode without gradients."""
    import torch

    model.eval()
    with torch.no_grad():
        return torch.cat([torch.softmax(model.batch_logits(batch).float(), dim=1) for batch in loader])


def _write_rows(out_abs: str, delimiter: str, header: list[str], ids: list[Any], probs: Any,
                labels: list[int] | None) -> None:
    """One row per input row: id, probabilities (8 significant digits), argmax, label (when known)."""
    from .io.writer import atomic_output

    preds = probs.argmax(dim=1).tolist()
    with atomic_output(out_abs) as fh:
        text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
        writer = csv.writer(text, delimiter=delimiter, lineterminator="\n")
        writer.writerow(header + (["label"] if labels is not None else []))
        for i, p in enumerate(probs.tolist()):
            writer.writerow([ids[i], *(f"{v:.8g}" for v in p), preds[i], *([labels[i]] if labels is not None else [])])
        text.flush()
        text.detach()  # the atomic writer closes (and publishes) the file, not the text layer

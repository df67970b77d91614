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
def load_any_model(path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None):
    """A v2 LightningModule in eval mode from any supported checkpoint (legacy ones are migrated in memory,
    read by the restricted reader: ``athelas_migrate.api.load_model``)."""
    from .api import load_model

    return load_model(os.fspath(path), dict(overrides or {}) or None).eval()


# ================================================================ vocabulary
def find_vocabulary(config: Mapping[str, Any], ckpt_path: str, explicit: str | None = None) -> Vocabulary:
    """The training-time vocabulary: ``explicit``, else ``vocab_file`` beside the checkpoint, else ``vocab_path``."""
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
    out_path: str
    n_rows: int
    num_classes: int
    model_class: str
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _delimiter(out: str) -> str:
    lower = out.lower()
    if lower.endswith(".tsv"):
        return "\t"
    if lower.endswith(".csv"):
        return ","
    raise UsageError(f"{out}: the output must end in .tsv or .csv")


def predict(ckpt: str, data: str, out: str, *, vocab: str | None = None,
            overrides: Mapping[str, Any] | None = None, text_col: str | None = None,
            label_col: str | None = None, id_col: str | None = None, batch_size: int = 256,
            force: bool = False, model: Any = None) -> PredictResult:
    """Write per-row probabilities of ``data`` under the model of ``ckpt`` to ``out``."""
    delimiter = _delimiter(out)
    out_abs = os.path.abspath(out)
    if os.path.isdir(out_abs):
        raise UsageError(f"{out}: is a directory; give a file name")
    if os.path.exists(out_abs) and not force:
        raise UsageError(f"{out} exists; pass --force to replace it")
    if not os.path.isdir(os.path.dirname(out_abs)):
        raise UsageError(f"output directory {os.path.dirname(out_abs)} does not exist")
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

    text_key = text_batch_key(config)
    text_col = text_col or config.get("text_name")
    if not text_col:
        raise UsageError("the checkpoint does not name its text column; pass --text-col NAME")
    label_col = label_col or config.get("label_name")
    has_label = bool(label_col) and label_col in table.columns
    fields = list(getattr(model, "tab_field_list", None) or [])
    vocabulary = find_vocabulary(config, ckpt, vocab)
    vocab_size = getattr(model, "vocab_size", None) or config.get("vocab_size")
    if vocab_size is not None and len(vocabulary) != int(vocab_size):
        raise InputError(f"the vocabulary has {len(vocabulary)} ids but the model's embedding has "
                         f"{vocab_size} rows: it is not the vocabulary this model was trained with")
    length = int(config["max_sen_len"])
    ids = table.column(id_col, "id") if id_col else list(range(table.n_rows))

    import torch

    tensors = build_tensors(table, vocabulary, text_col=text_col, text_key=text_key, length=length,
                            tab_fields=fields, label_col=label_col if has_label else None)
    loader = make_loader(tensors, batch_size, shuffle=False)
    model.eval()
    probs_parts = []
    with torch.no_grad():
        for batch in loader:
            logits = model.batch_logits(batch)
            probs_parts.append(torch.softmax(logits.float(), dim=1))
    probs = torch.cat(probs_parts)
    num_classes = probs.shape[1]
    labels = tensors[label_col].tolist() if has_label else None
    metrics = compute_metrics(probs, tensors[label_col], num_classes, prefix="") if has_label else {}

    header = [id_col or "row", *(f"prob_{c}" for c in range(num_classes)), "prediction"]
    if has_label:
        header.append("label")
    preds = probs.argmax(dim=1).tolist()
    rows = probs.tolist()
    from .io.writer import atomic_output

    with atomic_output(out_abs) as fh:
        text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
        writer = csv.writer(text, delimiter=delimiter, lineterminator="\n")
        writer.writerow(header)
        for i, p in enumerate(rows):
            line = [ids[i], *(f"{v:.8g}" for v in p), preds[i]]
            if labels is not None:
                line.append(labels[i])
            writer.writerow(line)
        text.flush()
        text.detach()  # the atomic writer closes (and publishes) the file, not the text layer
    notes = []
    if label_col and not has_label:
        notes.append(f"no {label_col!r} column in {data}: no labels or metrics")
    unk = vocabulary.unknown_rate(table.column(text_col, "text"))
    notes.append(f"{unk:.1%} of tokens are unknown to the vocabulary")
    return PredictResult(out_abs, table.n_rows, num_classes, model_class, metrics, notes)

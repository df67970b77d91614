"""One training run, step by step: settings, data, vocabulary, model, Lightning ``Trainer``, result.

:func:`train` is the entry point (``athelas_migrate.train.train``); each step is a function of its own module
(:mod:`.options`, :mod:`.tables`, :mod:`.build`, :mod:`.batches`, :mod:`.metrics`, :mod:`.result`) and this
module only puts them in order. The order matters: every refusal comes before the output directory is touched,
and the seed is set before the model and the word vectors are drawn.

To add a callback or a ``Trainer`` setting, extend :func:`_trainer`; to add a step, write it in the module
of its job and call it from :func:`_train`.
"""

from __future__ import annotations

import math
import os
from typing import Any

from ..errors import InputError, UsageError
from ..text_vocab import Vocabulary
from .batches import build_tensors, make_loader
from .build import build_model, model_config, sequence_length, word_embeddings
from .metrics import MONITOR, best_epoch, evaluate, history_callback
from .options import Settings, TrainOptions, is_child_rank, parse_devices, resolve_settings
from .result import TrainResult, prepare_out_dir, write_metrics
from .tables import Table, holdout_split, label_column, read_table

__all__ = ["train"]

#: Lightning warnings that say nothing about the user's run: in-process loading (num_workers=0) is deliberate
#: for these small tensors, and the LeafSpec note is internal to Lightning.
_QUIET = (r".*does not have many workers.*", r".*smaller than the logging interval.*",
          r".*Checkpoint directory .* exists and is not empty.*", r".*isinstance\(treespec, LeafSpec\).*")


def train(opts: TrainOptions) -> TrainResult:
    """Train a TextCNN, BimodalCNN, LSTM2Risk or Transformer2Risk from data files (see ``athelas_migrate.train``).

    Process-wide state the run changes (warning filters, float32 matmul precision) is restored on the way
    out, success or error: a caller (a notebook, a test, ``verify`` afterwards) keeps its own settings.

    Args:
        opts: the request.

    Returns:
        The finished run; ``metrics.json``, ``vocab.json``, ``best.ckpt`` and ``last.ckpt`` are in its ``out_dir``.

    Raises:
        UsageError: a bad option, setting or combination (exit 2).
        InputError: a missing, malformed or unsuitable data, config or word-vector file (exit 3).
        OutputError: ``metrics.json`` cannot be written (exit 4).
    """
    import warnings

    import torch

    precision = torch.get_float32_matmul_precision()
    with warnings.catch_warnings():
        try:
            return _train(opts)
        finally:
            torch.set_float32_matmul_precision(precision)


def _train(opts: TrainOptions) -> TrainResult:
    s = resolve_settings(opts)
    train_table, val_table = _read_data(s)
    train_labels = label_column(train_table, s.label_col)
    val_labels = label_column(val_table, s.label_col)
    n_labels = max(train_labels + val_labels) + 1
    config = model_config(s, n_labels)
    vocab = _vocabulary(s, train_table, val_table)
    max_len = sequence_length(s, config, train_table.column(s.text_col, "text"))
    out_dir = prepare_out_dir(opts.out_dir, opts.force, clean=not is_child_rank())
    _seed_quietly(s.seed)
    embed_size, matrix = word_embeddings(s, config, vocab, out_dir)

    from ..models.config import text_batch_key

    text_key = text_batch_key(config)
    enc = {"vocab": vocab, "text_col": s.text_col, "text_key": text_key, "length": max_len,
           "tab_fields": s.tab_fields, "label_col": s.label_col}
    train_tensors = build_tensors(train_table, **enc)
    val_tensors = build_tensors(val_table, **enc)
    if len(set(val_labels)) < 2:
        s.notes.append("the validation set holds a single class: AUC is undefined (nan)")
    unk = vocab.unknown_rate(val_table.column(s.text_col, "text"))
    s.notes.append(f"vocabulary: {len(vocab)} ids (min_freq {s.min_freq}); {unk:.1%} of validation tokens unknown")

    model = build_model(s, config, len(vocab), embed_size, matrix)
    train_loader = make_loader(train_tensors, s.batch_size, shuffle=True, seed=s.seed)
    val_loader = make_loader(val_tensors, max(s.batch_size, 256), shuffle=False)
    initial = evaluate(model, val_loader)
    n_train, n_val = train_tensors[text_key].shape[0], val_tensors[text_key].shape[0]

    history: list[dict[str, Any]] = []
    trainer, checkpoint_cb = _trainer(s, out_dir, history, steps=max(1, math.ceil(n_train / s.batch_size)))
    import torch

    torch.set_float32_matmul_precision("high")
    trainer.fit(model, train_dataloaders=train_loader, val_dataloaders=val_loader)

    result = TrainResult(s.model_class, out_dir, checkpoint_cb.best_model_path or os.path.join(out_dir, "best.ckpt"),
                         checkpoint_cb.last_model_path or os.path.join(out_dir, "last.ckpt"),
                         config["vocab_path"], len(vocab), dict(model.config), initial, history,
                         best_epoch(history, checkpoint_cb.best_model_score), n_train, n_val, s.notes)
    result.global_zero = bool(trainer.is_global_zero)
    if result.global_zero:
        write_metrics(result)
    return result


def _read_data(s: Settings) -> tuple[Table, Table]:
    """The training and validation tables (a seeded hold-out of the training rows without ``--val``)."""
    train_table = read_table(s.opts.train_path)
    if s.opts.val_path:
        return train_table, read_table(s.opts.val_path)
    train_table, val_table = holdout_split(train_table, s.val_fraction, s.seed)
    s.notes.append(f"no --val file: held out {val_table.n_rows} of the training rows (seed {s.seed})")
    return train_table, val_table


def _vocabulary(s: Settings, train_table: Table, val_table: Table) -> Vocabulary:
    """The vocabulary of the training texts (the validation file must have the text column too)."""
    texts = train_table.column(s.text_col, "text")
    val_table.column(s.text_col, "text")
    vocab = Vocabulary.build(texts, min_freq=s.min_freq, max_size=s.max_vocab)
    if len(vocab) <= 2:
        raise InputError(f"{train_table.path}: no token occurs {s.min_freq}+ times in column {s.text_col!r}")
    return vocab


def _seed_quietly(seed: int) -> None:
    """Seed every generator and silence the warnings in ``_QUIET`` (inside ``train``'s ``catch_warnings``)."""
    import warnings

    import lightning.pytorch as pl

    for message in _QUIET:
        warnings.filterwarnings("ignore", message=message)
    pl.seed_everything(seed, workers=True, verbose=False)


def _trainer(s: Settings, out_dir: str, history: list[dict[str, Any]], steps: int) -> tuple[Any, Any]:
    """The Lightning ``Trainer`` and its checkpoint callback: best (by ``MONITOR``) and last checkpoints,
    early stopping, the per-epoch history, a CSV log under ``out_dir/logs``."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    opts = s.opts
    checkpoint_cb = ModelCheckpoint(dirpath=out_dir, filename="best", monitor=MONITOR, mode="max",
                                    save_top_k=1, save_last=True, auto_insert_metric_name=False)
    callbacks: list[Any] = [checkpoint_cb, history_callback(history)]
    if s.patience > 0:
        callbacks.append(EarlyStopping(monitor=MONITOR, mode="max", patience=s.patience))
    kwargs: dict[str, Any] = {
        "max_epochs": s.max_epochs,
        "accelerator": opts.accelerator,
        "devices": parse_devices(opts.devices),
        "strategy": opts.strategy,
        "callbacks": callbacks,
        "logger": CSVLogger(out_dir, name="logs"),
        "default_root_dir": out_dir,
        "enable_progress_bar": opts.progress,
        "enable_model_summary": False,
        "log_every_n_steps": min(50, steps),
        "num_sanity_val_steps": 0,
    }
    if opts.precision:
        kwargs["precision"] = opts.precision
    try:
        return pl.Trainer(**kwargs), checkpoint_cb
    except (ValueError, TypeError, RuntimeError) as exc:  # e.g. MisconfigurationException
        raise UsageError(f"Lightning refused the trainer settings: {exc}") from None

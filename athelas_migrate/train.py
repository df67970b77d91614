"""Training the refactored text models (TextCNN, BimodalCNN, LSTM2Risk, Transformer2Risk) from data files.

``athelas-migrate train`` is a thin wrapper over :func:`train`. Flow:

1. read the training (and validation) files; when no validation file is given,
   a seeded ``val_fraction`` of the training rows is held out;
2. resolve the column roles (text, numeric fields, label) and the model
   hyper-parameters: built-in defaults < ``--config FILE.json`` < explicit
   options < ``--set key=value``;
3. build the vocabulary on the training texts (:mod:`athelas_migrate.text_vocab`),
   save it as ``vocab.json`` in the output directory, record its file name,
   absolute path and size in the model config (``vocab_file``, ``vocab_path``,
   ``vocab_size``); optionally load GloVe-format word vectors;
4. encode every text to exactly ``max_sen_len`` ids, build the model, measure the
   untrained model on the validation set, then fit it with a Lightning ``Trainer``:
   validation accuracy / F1 / AUC every epoch, ``EarlyStopping`` and ``ModelCheckpoint``
   (``best.ckpt``) on ``val_auroc``, plus ``last.ckpt``; the checkpoints carry
   the v2 layout stamp;
5. write ``metrics.json`` (untrained, per-epoch and best metrics).

``TabAE`` has no classification head and cannot be trained on its own; asking
for it is a usage error.

This module is the public facade: the code lives in :mod:`athelas_migrate.training`, one module per job
(see that package's docstring for where to extend what). Nothing here imports torch at import time.
"""

from __future__ import annotations

from .training.batches import DictTensorDataset, build_tensors, make_loader
from .training.metrics import compute_metrics, evaluate
from .training.options import (
    DEFAULTS,
    MODEL_ALIASES,
    NAMES3RISK,
    ROLE_ALIASES,
    TRAIN_KEYS,
    TRAINABLE_MODELS,
    TrainOptions,
    load_config_file,
    parse_train_sets,
    resolve_model_name,
    split_names,
)
from .training.render import render_result
from .training.result import OUTPUT_FILES, TrainResult
from .training.tables import Table, label_column, read_table
from .training.trainer import train

__all__ = [
    "DEFAULTS",
    "MODEL_ALIASES",
    "NAMES3RISK",
    "OUTPUT_FILES",
    "ROLE_ALIASES",
    "TRAINABLE_MODELS",
    "TRAIN_KEYS",
    "DictTensorDataset",
    "Table",
    "TrainOptions",
    "TrainResult",
    "build_tensors",
    "compute_metrics",
    "evaluate",
    "label_column",
    "load_config_file",
    "make_loader",
    "parse_train_sets",
    "read_table",
    "render_result",
    "resolve_model_name",
    "split_names",
    "train",
]

"""Training the refactored (v2) text models from CSV / TSV / Parquet files.

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
4. encode every text to exactly ``max_sen_len`` ids, build the model
   (``TextCNN`` or ``BimodalCNN``), measure the untrained model on the
   validation set, then fit it with a Lightning ``Trainer``: validation
   accuracy / F1 / AUC every epoch, ``EarlyStopping`` and ``ModelCheckpoint``
   (``best.ckpt``) on ``val_auroc``, plus ``last.ckpt``; the checkpoints carry
   the v2 layout stamp;
5. write ``metrics.json`` (untrained, per-epoch and best metrics).

``TabAE`` has no classification head and cannot be trained on its own; asking
for it is a usage error.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import InputError, UsageError
from .text_vocab import TOKENIZER_ID, Vocabulary, load_word_vectors, tokenize

__all__ = [
    "TRAINABLE_MODELS",
    "Table",
    "TrainOptions",
    "TrainResult",
    "build_tensors",
    "compute_metrics",
    "read_table",
    "resolve_model_name",
    "train",
]

#: Model names accepted by ``--model`` (case-insensitive, ``_``/``-`` ignored) -> class name.
MODEL_ALIASES = {
    "textcnn": "TextCNN",
    "cnn": "TextCNN",
    "bimodalcnn": "BimodalCNN",
    "multimodalcnn": "BimodalCNN",
    "tabae": "TabAE",
    "lstm2risk": "LSTM2Risk",
    "transformer2risk": "Transformer2Risk",
}
TRAINABLE_MODELS = ("TextCNN", "BimodalCNN", "LSTM2Risk", "Transformer2Risk")
NAMES3RISK = ("LSTM2Risk", "Transformer2Risk")

#: Config keys that name columns, with the alternative spellings accepted in a config file.
ROLE_ALIASES = {
    "text_name": ("text_name", "text_col", "text_column"),
    "tab_field_list": ("tab_field_list", "num_cols", "numeric_columns"),
    "label_name": ("label_name", "label_col", "label_column"),
}

#: Training settings that may appear in a config file (legacy configs carried some of them).
TRAIN_KEYS = {
    "max_epochs": int,
    "batch_size": int,
    "early_stop_patience": int,
    "min_freq": int,
    "max_vocab_size": int,
    "val_fraction": float,
    "seed": int,
}


# =============================================================== data files
@dataclass
class Table:
    """Columns of a data file: ``columns[name]`` is the list of that column's values."""

    path: str
    columns: dict[str, list[Any]]

    @property
    def n_rows(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def column(self, name: str, role: str) -> list[Any]:
        if name not in self.columns:
            have = ", ".join(self.columns) or "none"
            raise InputError(f"{self.path}: no column {name!r} (the {role} column); columns: {have}")
        return self.columns[name]

    def take(self, rows: Sequence[int]) -> Table:
        return Table(self.path, {k: [v[i] for i in rows] for k, v in self.columns.items()})


def read_table(path: str | os.PathLike[str]) -> Table:
    """Read ``.csv``, ``.tsv`` or ``.parquet`` (``.pq``) into a :class:`Table`.

    CSV/TSV values stay strings (converted per role later); Parquet needs
    ``pyarrow``. Errors are ``InputError`` (unreadable, empty) or ``UsageError``
    (unknown extension).
    """
    path = os.fspath(path)
    lower = path.lower()
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such data file")
    if lower.endswith((".parquet", ".pq")):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UsageError(f"{path}: reading Parquet needs the 'pyarrow' package (pip install pyarrow)") from None
        try:
            columns = pq.read_table(path).to_pydict()
        except Exception as exc:  # pyarrow raises several types for broken files
            raise InputError(f"{path}: cannot read as Parquet ({exc})") from None
    elif lower.endswith((".csv", ".tsv", ".txt")):
        delimiter = "\t" if lower.endswith((".tsv", ".txt")) else ","
        try:
            with open(path, newline="", encoding="utf-8-sig") as fh:
                reader = csv.reader(fh, delimiter=delimiter)
                header = next(reader, None)
                if not header:
                    raise InputError(f"{path}: empty file (no header row)")
                columns = {name: [] for name in header}
                if len(columns) != len(header):
                    raise InputError(f"{path}: duplicate column names in the header")
                lists = list(columns.values())
                for lineno, row in enumerate(reader, 2):
                    if not row:
                        continue
                    if len(row) != len(header):
                        raise InputError(f"{path}:{lineno}: {len(row)} fields, the header has {len(header)}")
                    for col, value in zip(lists, row):
                        col.append(value)
        except UnicodeDecodeError as exc:
            raise InputError(f"{path}: not UTF-8 text ({exc.reason})") from None
        except csv.Error as exc:
            raise InputError(f"{path}: malformed CSV ({exc})") from None
    else:
        raise UsageError(f"{path}: unknown data format (use .csv, .tsv or .parquet)")
    table = Table(path, columns)
    if table.n_rows == 0:
        raise InputError(f"{path}: no data rows")
    return table


def _float_column(table: Table, name: str) -> list[float]:
    values = table.column(name, "numeric")
    out = []
    for i, v in enumerate(values):
        try:
            f = float(v) if v is not None and v != "" else math.nan
        except (TypeError, ValueError):
            raise InputError(f"{table.path}: column {name!r}, row {i + 1}: {v!r} is not a number") from None
        if not math.isfinite(f):
            raise InputError(f"{table.path}: column {name!r}, row {i + 1}: missing or non-finite value "
                             f"({v!r}); fill or drop such rows first")
        out.append(f)
    return out


def label_column(table: Table, name: str) -> list[int]:
    """Integer class labels ``0..C-1`` (``"1"``, ``1``, ``1.0`` and ``true``/``false`` accepted)."""
    out = []
    for i, v in enumerate(table.column(name, "label")):
        if isinstance(v, bool):
            out.append(int(v))
            continue
        s = str(v).strip().lower()
        if s in ("true", "false"):
            out.append(int(s == "true"))
            continue
        try:
            f = float(s)
        except ValueError:
            raise InputError(f"{table.path}: column {name!r}, row {i + 1}: label {v!r} is not an integer "
                             "class id (0, 1, ...)") from None
        if not f.is_integer() or f < 0:
            raise InputError(f"{table.path}: column {name!r}, row {i + 1}: label {v!r} is not a class id "
                             "(0, 1, ...)")
        out.append(int(f))
    return out


def build_tensors(table: Table, vocab: Vocabulary, *, text_col: str, text_key: str, length: int,
                  tab_fields: Sequence[str] = (), label_col: str | None = None,
                  label_key: str | None = None) -> dict[str, Any]:
    """Column tensors in batch-key form: ``{text_key: Long[N, length], field: Float[N], label_key: Long[N]}``."""
    import torch

    tensors: dict[str, Any] = {
        text_key: torch.tensor(vocab.encode_batch(table.column(text_col, "text"), length), dtype=torch.long)
    }
    for name in tab_fields:
        tensors[name] = torch.tensor(_float_column(table, name), dtype=torch.float32)
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


def make_loader(tensors: Mapping[str, Any], batch_size: int, shuffle: bool, seed: int = 0):
    import torch
    from torch.utils.data import DataLoader

    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(DictTensorDataset(tensors), batch_size=batch_size, shuffle=shuffle,
                      generator=generator, num_workers=0)


# ================================================================== metrics
def compute_metrics(probs: Any, labels: Any, num_classes: int, prefix: str = "val_") -> dict[str, float]:
    """Accuracy, F1 and AUROC (torchmetrics, binary or multiclass) of ``probs [N, C]`` against ``labels [N]``."""
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
    """Loss and metrics of ``model`` (eval mode, no grad) on a labelled loader."""
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


# ================================================================ options
@dataclass
class TrainOptions:
    """Everything ``train`` needs; ``None`` means "from the config file, else the default"."""

    train_path: str
    out_dir: str
    model: str = "BimodalCNN"
    val_path: str | None = None
    config_file: str | None = None
    text_col: str | None = None
    num_cols: list[str] | None = None
    label_col: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    max_epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    max_len: int | None = None
    embed_size: int | None = None
    min_freq: int | None = None
    max_vocab_size: int | None = None
    word_vectors: str | None = None
    patience: int | None = None
    val_fraction: float | None = None
    seed: int | None = None
    accelerator: str = "auto"
    devices: Any = "auto"
    strategy: str = "auto"
    precision: str | None = None
    progress: bool = True
    force: bool = False


DEFAULTS = {
    "max_epochs": 10,
    "batch_size": 32,
    "early_stop_patience": 3,
    "min_freq": 1,
    "max_vocab_size": 50000,
    "val_fraction": 0.2,
    "seed": 0,
    "embed_size": 100,
}

OUTPUT_FILES = ("best.ckpt", "last.ckpt", "vocab.json", "metrics.json")


@dataclass
class TrainResult:
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


def resolve_model_name(name: str) -> str:
    key = name.replace("_", "").replace("-", "").lower()
    if key not in MODEL_ALIASES:
        raise UsageError(f"unknown model {name!r} (choose TextCNN, BimodalCNN, LSTM2Risk or Transformer2Risk)")
    cls = MODEL_ALIASES[key]
    if cls not in TRAINABLE_MODELS:
        raise UsageError("TabAE is a tabular encoder without a classification head or loss; it cannot be "
                         "trained on its own. Train a BimodalCNN (text + the same numeric fields) instead")
    return cls


def load_config_file(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    from .overrides import read_json_object  # a regular file of bounded size (not a FIFO, not /dev/zero)

    return read_json_object(path, "--config")


def _normalise_roles(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    cfg = dict(cfg)
    for canonical, names in ROLE_ALIASES.items():
        found = [n for n in names if n in cfg]
        if len(found) > 1:
            raise UsageError(f"{where}: {', '.join(found)} name the same thing; keep one")
        if found and found[0] != canonical:
            cfg[canonical] = cfg.pop(found[0])
    fields = cfg.get("tab_field_list")
    if isinstance(fields, str):
        cfg["tab_field_list"] = [f.strip() for f in fields.split(",") if f.strip()]
    return cfg


def _min_length(config: Mapping[str, Any]) -> int:
    from .components.cnn_encoder import min_input_length

    return min_input_length(list(config["kernel_size"]), int(config["num_layers"]))


def _clean_out_dir(out_dir: str, force: bool) -> None:
    present = [f for f in OUTPUT_FILES if os.path.exists(os.path.join(out_dir, f))]
    if present and not force:
        raise UsageError(f"{out_dir} already holds {', '.join(present)}; pass --force to replace them "
                         "or choose another --out directory")
    for f in present:
        os.unlink(os.path.join(out_dir, f))


def _write_json(path: str, data: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, default=str)
        fh.write("\n")
    os.replace(tmp, path)


def _split(table: Table, fraction: float, seed: int) -> tuple[Table, Table]:
    n = table.n_rows
    n_val = max(1, round(n * fraction))
    if n - n_val < 1:
        raise UsageError(f"{table.path}: {n} rows are too few to hold out a validation split")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return table.take(sorted(order[n_val:])), table.take(sorted(order[:n_val]))


def _is_child_rank() -> bool:
    """True in the extra processes that Lightning's DDP launcher starts (they re-run this command)."""
    return any(os.environ.get(k, "0") not in ("", "0") for k in ("LOCAL_RANK", "NODE_RANK", "RANK"))


def _devices(value: Any) -> Any:
    """``"auto"``, ``"3"`` -> 3, ``"-1"`` -> -1, ``"0,1"`` -> [0, 1] (what Lightning expects)."""
    if isinstance(value, int) or value is None:
        return value
    s = str(value).strip()
    if s == "auto":
        return s
    try:
        if "," in s:
            return [int(p) for p in s.split(",") if p.strip()]
        return int(s)
    except ValueError:
        raise UsageError(f"--devices {value!r}: use auto, a count (2), -1 (all) or ids (0,1)") from None


# =================================================================== train
def train(opts: TrainOptions) -> TrainResult:
    """Train a TextCNN or BimodalCNN as described in the module docstring.

    Process-wide state the run changes (warning filters, float32 matmul precision) is restored on the way
    out, success or error: a caller (a notebook, a test, `verify` afterwards) keeps its own settings."""
    import warnings

    import torch

    precision = torch.get_float32_matmul_precision()
    with warnings.catch_warnings():
        try:
            return _train(opts)
        finally:
            torch.set_float32_matmul_precision(precision)


def _train(opts: TrainOptions) -> TrainResult:
    model_class = resolve_model_name(opts.model)
    file_cfg = _normalise_roles(load_config_file(opts.config_file), opts.config_file or "config")
    set_cfg = _normalise_roles(opts.overrides or {}, "--set")
    notes: list[str] = []

    def pick(key: str, explicit: Any, default: Any = None) -> Any:
        if key in set_cfg:
            return set_cfg[key]
        if explicit is not None:
            return explicit
        if key in file_cfg:
            return file_cfg[key]
        return default

    # ---- settings
    max_epochs = int(pick("max_epochs", opts.max_epochs, DEFAULTS["max_epochs"]))
    batch_size = int(pick("batch_size", opts.batch_size, DEFAULTS["batch_size"]))
    patience = int(pick("early_stop_patience", opts.patience, DEFAULTS["early_stop_patience"]))
    min_freq = int(pick("min_freq", opts.min_freq, DEFAULTS["min_freq"]))
    max_vocab = pick("max_vocab_size", opts.max_vocab_size, DEFAULTS["max_vocab_size"])
    max_vocab = None if max_vocab in (None, 0) else int(max_vocab)
    val_fraction = float(pick("val_fraction", opts.val_fraction, DEFAULTS["val_fraction"]))
    seed = int(pick("seed", opts.seed, DEFAULTS["seed"]))
    for name, value, low in (("max_epochs", max_epochs, 1), ("batch_size", batch_size, 1),
                             ("patience", patience, 0)):
        if value < low:
            raise UsageError(f"{name} must be >= {low}, got {value}")
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"val_fraction must be in (0, 1), got {val_fraction}")

    text_col = pick("text_name", opts.text_col)
    label_col = pick("label_name", opts.label_col)
    tab_fields = pick("tab_field_list", opts.num_cols or None)
    if isinstance(tab_fields, str):
        tab_fields = [f.strip() for f in tab_fields.split(",") if f.strip()]
    tab_fields = list(tab_fields or [])
    if not text_col:
        raise UsageError("which column holds the text? pass --text-col NAME (or text_name in --config)")
    if not label_col:
        raise UsageError("which column holds the label? pass --label-col NAME (or label_name in --config)")
    if model_class == "TextCNN" and tab_fields:
        notes.append(f"TextCNN uses text only; numeric columns {', '.join(tab_fields)} are ignored")
        tab_fields = []
    if model_class in NAMES3RISK and not tab_fields:
        raise UsageError(f"{model_class} needs numeric columns (--num-cols): its tabular branch is not optional")
    if model_class == "BimodalCNN" and not tab_fields:
        notes.append("no numeric columns given: the BimodalCNN is built without a tabular branch")
    clash = {text_col, label_col} & set(tab_fields)
    if clash or text_col == label_col or len(set(tab_fields)) != len(tab_fields):
        raise UsageError("text, label and numeric columns must be distinct columns")

    # ---- data
    train_table = read_table(opts.train_path)
    if opts.val_path:
        val_table = read_table(opts.val_path)
    else:
        train_table, val_table = _split(train_table, val_fraction, seed)
        notes.append(f"no --val file: held out {val_table.n_rows} of the training rows (seed {seed})")
    train_labels = label_column(train_table, label_col)
    val_labels = label_column(val_table, label_col)
    n_labels = max(train_labels + val_labels) + 1

    # ---- model config: defaults < file < options < --set
    from .models.config import resolve_config

    config: dict[str, Any] = {}
    config.update({k: v for k, v in file_cfg.items() if k not in TRAIN_KEYS})
    if opts.lr is not None:
        config["lr"] = float(opts.lr)
    if opts.optimizer is not None:
        config["optimizer_type"] = opts.optimizer
    config.update({k: v for k, v in set_cfg.items() if k not in TRAIN_KEYS})
    config["text_name"] = text_col
    config["label_name"] = label_col
    config["tab_field_list"] = tab_fields or None
    if "is_binary" not in config:
        config["is_binary"] = n_labels <= 2
    if not config["is_binary"] and "num_classes" not in config:
        config["num_classes"] = max(n_labels, 2)
    config["model_class"] = {"TextCNN": "text_cnn", "BimodalCNN": "bimodal_cnn", "LSTM2Risk": "lstm2risk",
                             "Transformer2Risk": "transformer2risk"}[model_class]
    config.update(batch_size=batch_size, max_epochs=max_epochs, early_stop_patience=patience)
    config = resolve_config(config)
    num_classes = config["num_classes"]
    if n_labels > num_classes:
        raise InputError(f"labels go up to {n_labels - 1}, but the model has {num_classes} classes "
                         "(set --set num_classes=N --set is_binary=false)")
    if model_class == "TextCNN" and int(config["hidden_common_dim"]) != num_classes:
        # A TextCNN trained on its own uses its text head's output as logits (as the legacy code did).
        if "hidden_common_dim" in set_cfg:
            raise UsageError(f"a TextCNN trained on its own outputs its logits from the text head, so "
                             f"hidden_common_dim must equal num_classes ({num_classes})")
        if "hidden_common_dim" in file_cfg:
            notes.append(f"TextCNN: hidden_common_dim {config['hidden_common_dim']} from the config file "
                         f"replaced by num_classes ({num_classes}): the text head gives the logits")
        config["hidden_common_dim"] = num_classes
    str_opt = str(config["optimizer_type"]).lower()
    if str_opt not in ("sgd", "adam", "adamw"):
        raise UsageError(f"optimizer {config['optimizer_type']!r}: use SGD, Adam or AdamW")

    # ---- vocabulary and sequence length
    texts = train_table.column(text_col, "text")
    val_table.column(text_col, "text")
    vocab = Vocabulary.build(texts, min_freq=min_freq, max_size=max_vocab)
    if len(vocab) <= 2:
        raise InputError(f"{train_table.path}: no token occurs {min_freq}+ times in column {text_col!r}")
    min_len = 1 if model_class in NAMES3RISK else _min_length(config)
    max_len = pick("max_sen_len", opts.max_len)
    if max_len is None:
        longest = max((len(tokenize(t)) for t in texts), default=0)
        max_len = max(min_len, min(512, longest))
        notes.append(f"sequence length {max_len} (longest training text {longest} tokens, "
                     f"minimum {min_len} for kernels {config['kernel_size']})")
    max_len = int(max_len)
    if max_len < min_len:
        raise UsageError(f"sequence length {max_len} is shorter than the {min_len} tokens that kernel sizes "
                         f"{config['kernel_size']} with {config['num_layers']} layers need")
    config["max_sen_len"] = max_len

    out_dir = os.path.abspath(opts.out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"--out {out_dir} exists and is not a directory")
    os.makedirs(out_dir, exist_ok=True)
    if not _is_child_rank():  # DDP re-runs the command in each extra process: only the first one cleans
        _clean_out_dir(out_dir, opts.force)

    import warnings

    import lightning.pytorch as pl
    import torch

    # Noise that says nothing about the user's run: in-process loading (num_workers=0) is
    # deliberate for these small tensors, and the LeafSpec note is internal to Lightning.
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    pl.seed_everything(seed, workers=True, verbose=False)
    matrix = None
    embed_size = pick("embed_size", opts.embed_size, DEFAULTS["embed_size"])
    if opts.word_vectors:
        matrix, found, dim = load_word_vectors(opts.word_vectors, vocab, seed=seed)
        if opts.embed_size is not None and int(opts.embed_size) != dim:
            raise UsageError(f"--embed-size {opts.embed_size} differs from the {dim}-wide word vectors")
        embed_size = dim
        notes.append(f"word vectors: {found} of {len(vocab) - 1} tokens found in {opts.word_vectors} ({dim}-d)")
        config["word_vectors_file"] = os.path.abspath(opts.word_vectors)
    embed_size = int(embed_size)
    vocab_path = vocab.save(os.path.join(out_dir, "vocab.json"))
    config.update(vocab_file="vocab.json", vocab_path=vocab_path, vocab_size=len(vocab),
                  embed_size=embed_size, tokenizer=TOKENIZER_ID)

    from .models import BimodalCNN, TextCNN
    from .models.config import text_batch_key

    text_key = text_batch_key(config)
    enc = {"vocab": vocab, "text_col": text_col, "text_key": text_key, "length": max_len,
           "tab_fields": tab_fields, "label_col": label_col}
    train_tensors = build_tensors(train_table, **enc)
    val_tensors = build_tensors(val_table, **enc)
    if len(set(val_labels)) < 2:
        notes.append("the validation set holds a single class: AUC is undefined (nan)")
    unk = vocab.unknown_rate(val_table.column(text_col, "text"))
    notes.append(f"vocabulary: {len(vocab)} ids (min_freq {min_freq}); {unk:.1%} of validation tokens unknown")

    if model_class in NAMES3RISK:
        model = _names3risk_model(model_class, config, file_cfg, set_cfg, opts, len(vocab), notes)
    else:
        cls = {"TextCNN": TextCNN, "BimodalCNN": BimodalCNN}[model_class]
        model = cls(config, vocab_size=len(vocab), embed_size=embed_size, word_embeddings=matrix)
    train_loader = make_loader(train_tensors, batch_size, shuffle=True, seed=seed)
    val_loader = make_loader(val_tensors, max(batch_size, 256), shuffle=False)
    initial = evaluate(model, val_loader)

    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    history: list[dict[str, Any]] = []

    class _History(pl.Callback):
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

    monitor = "val_auroc"
    checkpoint_cb = ModelCheckpoint(dirpath=out_dir, filename="best", monitor=monitor, mode="max",
                                    save_top_k=1, save_last=True, auto_insert_metric_name=False)
    callbacks: list[Any] = [checkpoint_cb, _History()]
    if patience > 0:
        callbacks.append(EarlyStopping(monitor=monitor, mode="max", patience=patience))
    steps = max(1, math.ceil(train_tensors[text_key].shape[0] / batch_size))
    trainer_kwargs: dict[str, Any] = {
        "max_epochs": max_epochs,
        "accelerator": opts.accelerator,
        "devices": _devices(opts.devices),
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
        trainer_kwargs["precision"] = opts.precision
    try:
        trainer = pl.Trainer(**trainer_kwargs)
    except (ValueError, TypeError, RuntimeError) as exc:  # e.g. MisconfigurationException
        raise UsageError(f"Lightning refused the trainer settings: {exc}") from None
    torch.set_float32_matmul_precision("high")
    trainer.fit(model, train_dataloaders=train_loader, val_dataloaders=val_loader)

    best_path = checkpoint_cb.best_model_path or os.path.join(out_dir, "best.ckpt")
    last_path = checkpoint_cb.last_model_path or os.path.join(out_dir, "last.ckpt")
    best_score = checkpoint_cb.best_model_score
    best_row: dict[str, Any] = {}
    if history:
        scored = [r for r in history if not math.isnan(r.get(monitor, math.nan))]
        best_row = max(scored, key=lambda r: r[monitor]) if scored else history[-1]
    if best_score is not None and best_row:
        best_row = dict(best_row, **{monitor: float(best_score)})
    result = TrainResult(model_class, out_dir, best_path, last_path, vocab_path, len(vocab),
                         dict(model.config), initial, history, best_row,
                         train_tensors[text_key].shape[0], val_tensors[text_key].shape[0], notes)
    result.global_zero = bool(trainer.is_global_zero)
    if result.global_zero:
        _write_json(os.path.join(out_dir, "metrics.json"), result.to_json())
    return result


def _names3risk_model(model_class: str, config: dict[str, Any], file_cfg: dict[str, Any], set_cfg: dict[str, Any],
                      opts: TrainOptions, vocab_size: int, notes: list[str]) -> Any:
    """A fresh LSTM2Risk / Transformer2Risk: its own defaults, not the CNN table (only what was asked is kept)."""
    from .models import names3risk

    given = {k: v for src in (file_cfg, set_cfg) for k, v in src.items() if k not in TRAIN_KEYS}
    cfg = {**given, "n_embed": vocab_size, "max_sen_len": config["max_sen_len"]}
    for key in ("text_name", "label_name", "tab_field_list", "is_binary", "num_classes", "model_class",
                "batch_size", "max_epochs", "early_stop_patience", "vocab_file", "vocab_path", "vocab_size",
                "tokenizer"):
        cfg[key] = config[key]
    cfg["lr"] = float(opts.lr) if opts.lr is not None else float(given.get("lr", 1e-3))
    if opts.lr is None and "lr" not in given:
        notes.append(f"{model_class}: learning rate 1e-3 (the legacy OneCycleLR max_lr); set --lr to change it")
    if opts.embed_size is not None:
        cfg["embedding_size"] = int(opts.embed_size)
    if opts.word_vectors:
        notes.append(f"{model_class}: --word-vectors ignored (its token table is trained from scratch)")
    return getattr(names3risk, model_class)(cfg)


def render_result(result: TrainResult, console: Any) -> None:
    """The end-of-training table (rich): untrained model, each epoch, the best one marked."""
    from rich.table import Table as RichTable

    cols = ["val_loss", "val_accuracy", "val_f1", "val_auroc"]
    table = RichTable(title=f"{result.model_class}: validation metrics ({result.n_val} rows)")
    table.add_column("epoch", justify="right")
    table.add_column("train_loss", justify="right")
    for c in cols:
        table.add_column(c.removeprefix("val_"), justify="right")

    def fmt(v: Any) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"

    table.add_row("untrained", "-", *(fmt(result.initial.get(c)) for c in cols))
    best_epoch = result.best.get("epoch")
    for row in result.history:
        mark = " *" if row.get("epoch") == best_epoch else ""
        table.add_row(f"{row['epoch']}{mark}", fmt(row.get("train_loss")), *(fmt(row.get(c)) for c in cols))
    console.print(table)
    for note in result.notes:
        console.print(f"note: {note}")
    if result.best:
        console.print(f"best val AUC {fmt(result.best.get('val_auroc'))} at epoch {best_epoch} "
                      f"(untrained {fmt(result.initial.get('val_auroc'))})")
    console.print(f"best checkpoint: {result.best_checkpoint}")
    console.print(f"last checkpoint: {result.last_checkpoint}")
    console.print(f"vocabulary:      {result.vocab_path} ({result.vocab_size} ids)")

"""What a training run is asked to do: the options, the model names, the settings resolved from them.

Precedence, lowest first: built-in ``DEFAULTS`` < the ``--config`` file < explicit options < ``--set``.
Pure Python: nothing here imports torch, so the CLI can refuse a bad request before any heavy import.

To add a training setting, add a field to :class:`TrainOptions`, its type to ``TRAIN_KEYS`` (so a config file
or ``--set`` may give it), its default to ``DEFAULTS``, and resolve it in :func:`resolve_settings`. To make
another model trainable, add its names to ``MODEL_ALIASES`` and ``TRAINABLE_MODELS``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError

__all__ = ["DEFAULTS", "MODEL_ALIASES", "NAMES3RISK", "ROLE_ALIASES", "TRAINABLE_MODELS", "TRAIN_KEYS",
           "Settings", "TrainOptions", "is_child_rank", "load_config_file", "parse_devices", "resolve_model_name",
           "resolve_settings", "split_names"]

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

#: Training settings that may appear in a config file (legacy configs carried some of them) or in ``--set``.
TRAIN_KEYS = {
    "max_epochs": int,
    "batch_size": int,
    "early_stop_patience": int,
    "min_freq": int,
    "max_vocab_size": int,
    "val_fraction": float,
    "seed": int,
}

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


@dataclass
class Settings:
    """The resolved request: options merged with the config file and ``--set``, checked, plus notes for the user."""

    opts: TrainOptions
    model_class: str
    file_cfg: dict[str, Any]
    set_cfg: dict[str, Any]
    max_epochs: int
    batch_size: int
    patience: int
    min_freq: int
    max_vocab: int | None
    val_fraction: float
    seed: int
    text_col: str
    label_col: str
    tab_fields: list[str]
    notes: list[str]

    def pick(self, key: str, explicit: Any, default: Any = None) -> Any:
        """One training setting, by precedence.

        Args:
            key: the setting's config key.
            explicit: the command-line option's value (None: not given).
            default: the value when no source gives one.

        Returns:
            ``--set``'s value of ``key``, else ``explicit``, else the config file's, else ``default``.
        """
        return _pick(self.file_cfg, self.set_cfg, key, explicit, default)

    def given(self) -> dict[str, Any]:
        """The model's hyper-parameters the user gave.

        Returns:
            The config file's model keys overlaid with ``--set`` (training settings left out).
        """
        return {k: v for src in (self.file_cfg, self.set_cfg) for k, v in src.items() if k not in TRAIN_KEYS}


def _pick(file_cfg: dict[str, Any], set_cfg: dict[str, Any], key: str, explicit: Any, default: Any) -> Any:
    if key in set_cfg:
        return set_cfg[key]
    if explicit is not None:
        return explicit
    return file_cfg.get(key, default)


def resolve_model_name(name: str) -> str:
    """The class name of a trainable model.

    Args:
        name: a ``--model`` value (case-insensitive, ``_``/``-`` ignored), e.g. ``text_cnn``.

    Returns:
        One of ``TRAINABLE_MODELS``.

    Raises:
        UsageError: an unknown name, or TabAE (no classification head).
    """
    key = name.replace("_", "").replace("-", "").lower()
    if key not in MODEL_ALIASES:
        raise UsageError(f"unknown model {name!r} (choose TextCNN, BimodalCNN, LSTM2Risk or Transformer2Risk)")
    cls = MODEL_ALIASES[key]
    if cls not in TRAINABLE_MODELS:
        raise UsageError("TabAE is a tabular encoder without a classification head or loss; it cannot be "
                         "trained on its own. Train a BimodalCNN (text + the same numeric fields) instead")
    return cls


def load_config_file(path: str | None) -> dict[str, Any]:
    """The ``--config`` JSON object, or ``{}`` without a file.

    Args:
        path: the file (a regular file of bounded size, not a FIFO or a device), or None.

    Returns:
        The object as read.

    Raises:
        UsageError: the file is missing, unreadable, too large or not a JSON object.
    """
    if not path:
        return {}
    from ..overrides import read_json_object

    return read_json_object(path, "--config")


def split_names(value: str | Iterable[str] | None) -> list[str]:
    """Column names from an option or a config value.

    Args:
        value: a string (split at commas, blanks dropped), a list (taken as it is: a name may hold a comma),
            or None.

    Returns:
        The names.
    """
    if value is None:
        return []
    if isinstance(value, str):
        return [name.strip() for name in value.split(",") if name.strip()]
    return list(value)


def _normalise_roles(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    cfg = dict(cfg)
    for canonical, names in ROLE_ALIASES.items():
        found = [n for n in names if n in cfg]
        if len(found) > 1:
            raise UsageError(f"{where}: {', '.join(found)} name the same thing; keep one")
        if found and found[0] != canonical:
            cfg[canonical] = cfg.pop(found[0])
    if isinstance(cfg.get("tab_field_list"), str):
        cfg["tab_field_list"] = split_names(cfg["tab_field_list"])
    return cfg


def parse_train_sets(sets: Iterable[str]) -> tuple[dict[str, Any], list[str]]:
    """Split ``--set`` items into the training settings (``TRAIN_KEYS``) and the rest (model hyper-parameters).

    Args:
        sets: ``KEY=VALUE`` items.

    Returns:
        ``(training settings by key, the other items unparsed)``.

    Raises:
        UsageError: a training setting whose value is not a number of its type, or given twice differently.
    """
    settings: dict[str, Any] = {}
    rest = []
    for item in sets:
        key, sep, text = str(item).partition("=")
        key = key.strip()
        if not sep or key not in TRAIN_KEYS:
            rest.append(item)
            continue
        kind = TRAIN_KEYS[key]
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and value != int(value)):
            raise UsageError(f"--set {key}={text}: {key} takes {'an integer' if kind is int else 'a number'}")
        if key in settings and settings[key] != kind(value):
            raise UsageError(f"conflicting --set values for {key}")
        settings[key] = kind(value)
    return settings, rest


def parse_devices(value: Any) -> Any:
    """A ``--devices`` value as Lightning expects it.

    Args:
        value: ``"auto"``, a count (``"3"``), ``"-1"`` (all) or ids (``"0,1"``); ints pass through.

    Returns:
        ``"auto"``, an int or a list of ints.

    Raises:
        UsageError: anything else.
    """
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


def is_child_rank() -> bool:
    """Whether this process is one of the extra ones Lightning's DDP launcher starts (they re-run this command).

    Returns:
        True in those processes (a rank variable is set and not 0).
    """
    return any(os.environ.get(k, "0") not in ("", "0") for k in ("LOCAL_RANK", "NODE_RANK", "RANK"))


def resolve_settings(opts: TrainOptions) -> Settings:
    """Merge and check the options before any data is read.

    Args:
        opts: the request.

    Returns:
        The settings; ``notes`` holds what the user should know about choices made for them.

    Raises:
        UsageError: an unknown model, an unreadable config file, a setting out of range, a missing or repeated
            column role, or numeric columns a model cannot do without.
    """
    model_class = resolve_model_name(opts.model)
    file_cfg = _normalise_roles(load_config_file(opts.config_file), opts.config_file or "config")
    set_cfg = _normalise_roles(opts.overrides or {}, "--set")

    def pick(key: str, explicit: Any, default: Any = None) -> Any:
        return _pick(file_cfg, set_cfg, key, explicit, default)

    max_epochs = int(pick("max_epochs", opts.max_epochs, DEFAULTS["max_epochs"]))
    batch_size = int(pick("batch_size", opts.batch_size, DEFAULTS["batch_size"]))
    patience = int(pick("early_stop_patience", opts.patience, DEFAULTS["early_stop_patience"]))
    max_vocab = pick("max_vocab_size", opts.max_vocab_size, DEFAULTS["max_vocab_size"])
    val_fraction = float(pick("val_fraction", opts.val_fraction, DEFAULTS["val_fraction"]))
    for name, value, low in (("max_epochs", max_epochs, 1), ("batch_size", batch_size, 1),
                             ("patience", patience, 0)):
        if value < low:
            raise UsageError(f"{name} must be >= {low}, got {value}")
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"val_fraction must be in (0, 1), got {val_fraction}")
    settings = Settings(
        opts, model_class, file_cfg, set_cfg, max_epochs, batch_size, patience,
        min_freq=int(pick("min_freq", opts.min_freq, DEFAULTS["min_freq"])),
        max_vocab=None if max_vocab in (None, 0) else int(max_vocab), val_fraction=val_fraction,
        seed=int(pick("seed", opts.seed, DEFAULTS["seed"])), text_col=pick("text_name", opts.text_col),
        label_col=pick("label_name", opts.label_col),
        tab_fields=split_names(pick("tab_field_list", opts.num_cols or None)), notes=[])
    _check_roles(settings)
    return settings


def _check_roles(s: Settings) -> None:
    """The text, label and numeric columns: present, distinct, and what the model class needs."""
    if not s.text_col:
        raise UsageError("which column holds the text? pass --text-col NAME (or text_name in --config)")
    if not s.label_col:
        raise UsageError("which column holds the label? pass --label-col NAME (or label_name in --config)")
    if s.model_class == "TextCNN" and s.tab_fields:
        s.notes.append(f"TextCNN uses text only; numeric columns {', '.join(s.tab_fields)} are ignored")
        s.tab_fields = []
    if s.model_class in NAMES3RISK and not s.tab_fields:
        raise UsageError(f"{s.model_class} needs numeric columns (--num-cols): its tabular branch is not optional")
    if s.model_class == "BimodalCNN" and not s.tab_fields:
        s.notes.append("no numeric columns given: the BimodalCNN is built without a tabular branch")
    clash = {s.text_col, s.label_col} & set(s.tab_fields)
    if clash or s.text_col == s.label_col or len(set(s.tab_fields)) != len(s.tab_fields):
        raise UsageError("text, label and numeric columns must be distinct columns")

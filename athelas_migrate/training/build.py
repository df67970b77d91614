"""The model a run trains: its config, its sequence length, its embeddings and the model object.

The config follows the precedence of :mod:`.options` (defaults < ``--config`` < options < ``--set``) and is
completed by ``models.config.resolve_config``, so a trained checkpoint records every key the refactored
classes read. Model classes are imported inside the functions.

To make another model class trainable, give it a ``model_class`` id in ``CONFIG_IDS`` and build it in
:func:`build_model` (a family with its own size defaults, like Names3Risk, gets its own builder).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ..errors import InputError, UsageError
from ..text_vocab import TOKENIZER_ID, Vocabulary, load_word_vectors, tokenize
from .options import DEFAULTS, NAMES3RISK, TRAIN_KEYS, Settings

__all__ = ["CONFIG_IDS", "build_model", "model_config", "sequence_length", "word_embeddings"]

#: Trainable class name -> the ``model_class`` value its config records.
CONFIG_IDS = {"TextCNN": "text_cnn", "BimodalCNN": "bimodal_cnn", "LSTM2Risk": "lstm2risk",
              "Transformer2Risk": "transformer2risk"}

#: Keys a Names3Risk config takes over from the resolved run config.
_NAMES3RISK_SHARED = ("text_name", "label_name", "tab_field_list", "is_binary", "num_classes", "model_class",
                      "batch_size", "max_epochs", "early_stop_patience", "vocab_file", "vocab_path", "vocab_size",
                      "tokenizer")


def model_config(s: Settings, n_labels: int) -> dict[str, Any]:
    """The resolved model config of the run (without the vocabulary and sequence length, added later).

    Args:
        s: the resolved settings.
        n_labels: the largest label id seen plus one.

    Returns:
        The config, completed by ``resolve_config``.

    Raises:
        InputError: the labels do not fit the configured number of classes.
        UsageError: a TextCNN head that cannot give the logits, or an unknown optimizer.
    """
    from ..models.config import resolve_config

    config: dict[str, Any] = {k: v for k, v in s.file_cfg.items() if k not in TRAIN_KEYS}
    if s.opts.lr is not None:
        config["lr"] = float(s.opts.lr)
    if s.opts.optimizer is not None:
        config["optimizer_type"] = s.opts.optimizer
    config.update({k: v for k, v in s.set_cfg.items() if k not in TRAIN_KEYS})
    config.update(text_name=s.text_col, label_name=s.label_col, tab_field_list=s.tab_fields or None)
    if "is_binary" not in config:
        config["is_binary"] = n_labels <= 2
    if not config["is_binary"] and "num_classes" not in config:
        config["num_classes"] = max(n_labels, 2)
    config["model_class"] = CONFIG_IDS[s.model_class]
    config.update(batch_size=s.batch_size, max_epochs=s.max_epochs, early_stop_patience=s.patience)
    config = resolve_config(config)
    num_classes = config["num_classes"]
    if n_labels > num_classes:
        raise InputError(f"labels go up to {n_labels - 1}, but the model has {num_classes} classes "
                         "(set --set num_classes=N --set is_binary=false)")
    if s.model_class == "TextCNN" and int(config["hidden_common_dim"]) != num_classes:
        _text_head_gives_logits(s, config, num_classes)
    if str(config["optimizer_type"]).lower() not in ("sgd", "adam", "adamw"):
        raise UsageError(f"optimizer {config['optimizer_type']!r}: use SGD, Adam or AdamW")
    return config


def _text_head_gives_logits(s: Settings, config: dict[str, Any], num_classes: int) -> None:
    """A TextCNN trained on its own uses its text head's output as logits (as the legacy code did)."""
    if "hidden_common_dim" in s.set_cfg:
        raise UsageError(f"a TextCNN trained on its own outputs its logits from the text head, so "
                         f"hidden_common_dim must equal num_classes ({num_classes})")
    if "hidden_common_dim" in s.file_cfg:
        s.notes.append(f"TextCNN: hidden_common_dim {config['hidden_common_dim']} from the config file "
                       f"replaced by num_classes ({num_classes}): the text head gives the logits")
    config["hidden_common_dim"] = num_classes


def sequence_length(s: Settings, config: dict[str, Any], texts: Sequence[str]) -> int:
    """Tokens per text: the option, else the longest training text (at most 512), at least what the kernels need.

    Args:
        s: the resolved settings.
        config: the model config (kernel sizes and layers).
        texts: the training texts.

    Returns:
        The length, also stored as ``config["max_sen_len"]``.

    Raises:
        UsageError: a requested length shorter than the kernels need.
    """
    if s.model_class in NAMES3RISK:
        min_len = 1
    else:
        from ..components.cnn_encoder import min_input_length

        min_len = min_input_length(list(config["kernel_size"]), int(config["num_layers"]))
    max_len = s.pick("max_sen_len", s.opts.max_len)
    if max_len is None:
        longest = max((len(tokenize(t)) for t in texts), default=0)
        max_len = max(min_len, min(512, longest))
        s.notes.append(f"sequence length {max_len} (longest training text {longest} tokens, "
                       f"minimum {min_len} for kernels {config['kernel_size']})")
    max_len = int(max_len)
    if max_len < min_len:
        raise UsageError(f"sequence length {max_len} is shorter than the {min_len} tokens that kernel sizes "
                         f"{config['kernel_size']} with {config['num_layers']} layers need")
    config["max_sen_len"] = max_len
    return max_len


def word_embeddings(s: Settings, config: dict[str, Any], vocab: Vocabulary, out_dir: str) -> tuple[int, Any]:
    """Save the vocabulary beside the checkpoints and choose the embedding width (and pretrained vectors).

    Args:
        s: the resolved settings (``--word-vectors``, ``--embed-size``).
        config: the model config; receives the vocabulary's file, path, size, the tokenizer and the width.
        vocab: the training vocabulary.
        out_dir: the run's output directory (``vocab.json`` is written there).

    Returns:
        ``(embedding width, the pretrained matrix or None)``.

    Raises:
        UsageError: ``--embed-size`` differs from the word vectors' width.
        InputError: the word vectors cannot be read.
    """
    opts = s.opts
    matrix = None
    embed_size = s.pick("embed_size", opts.embed_size, DEFAULTS["embed_size"])
    if opts.word_vectors:
        matrix, found, dim = load_word_vectors(opts.word_vectors, vocab, seed=s.seed)
        if opts.embed_size is not None and int(opts.embed_size) != dim:
            raise UsageError(f"--embed-size {opts.embed_size} differs from the {dim}-wide word vectors")
        embed_size = dim
        s.notes.append(f"word vectors: {found} of {len(vocab) - 1} tokens found in {opts.word_vectors} ({dim}-d)")
        config["word_vectors_file"] = os.path.abspath(opts.word_vectors)
    embed_size = int(embed_size)
    vocab_path = vocab.save(os.path.join(out_dir, "vocab.json"))
    config.update(vocab_file="vocab.json", vocab_path=vocab_path, vocab_size=len(vocab),
                  embed_size=embed_size, tokenizer=TOKENIZER_ID)
    return embed_size, matrix


def build_model(s: Settings, config: dict[str, Any], vocab_size: int, embed_size: int, matrix: Any) -> Any:
    """A fresh model of the run's class.

    Args:
        s: the resolved settings.
        config: the complete model config.
        vocab_size: rows of the token embedding.
        embed_size: the embedding width.
        matrix: pretrained embeddings, or None.

    Returns:
        The untrained LightningModule.
    """
    if s.model_class in NAMES3RISK:
        return _names3risk_model(s, config, vocab_size)
    from ..models import BimodalCNN, TextCNN

    cls = {"TextCNN": TextCNN, "BimodalCNN": BimodalCNN}[s.model_class]
    return cls(config, vocab_size=vocab_size, embed_size=embed_size, word_embeddings=matrix)


def _names3risk_model(s: Settings, config: dict[str, Any], vocab_size: int) -> Any:
    """A fresh LSTM2Risk / Transformer2Risk: its own defaults, not the CNN table (only what was asked is kept)."""
    from ..models import names3risk

    opts, given = s.opts, s.given()
    cfg = {**given, "n_embed": vocab_size, "max_sen_len": config["max_sen_len"]}
    for key in _NAMES3RISK_SHARED:
        cfg[key] = config[key]
    cfg["lr"] = float(opts.lr) if opts.lr is not None else float(given.get("lr", 1e-3))
    if opts.lr is None and "lr" not in given:
        s.notes.append(f"{s.model_class}: learning rate 1e-3 (the legacy OneCycleLR max_lr); set --lr to change it")
    if opts.embed_size is not None:
        cfg["embedding_size"] = int(opts.embed_size)
    if opts.word_vectors:
        s.notes.append(f"{s.model_class}: --word-vectors ignored (its token table is trained from scratch)")
    return getattr(names3risk, s.model_class)(cfg)

"""The hyper-parameter keys the families know, with their types: what `--set KEY=VALUE` is checked against.

Pure Python (no torch). Keys several families share are listed in `KEY_TYPES`; a family folder declares its own
in its `Family.key_types`, which the family registry adds here (`register_key_types`). A key not listed is a
typo until proven otherwise (`--allow-unknown-keys` proves it).
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from .errors import UsageError

STR, LIST, NUMBER, INT, BOOL, OBJECT = "string", "list", "number", "integer", "boolean", "object"

KEY_TYPES: dict[str, str] = {
    # inputs and labels
    "text_name": STR, "primary_text_name": STR, "secondary_text_name": STR, "label_name": STR, "id_name": STR,
    "text_input_ids_key": STR, "text_attention_mask_key": STR, "text_batch_key": STR, "tab_field_list": LIST,
    "tokenizer": STR, "primary_tokenizer": STR, "secondary_tokenizer": STR, "max_sen_len": INT,
    # architecture
    "model_class": STR, "model_path": STR, "is_binary": BOOL, "num_classes": INT, "kernel_size": LIST,
    "num_layers": INT, "num_channels": LIST, "hidden_common_dim": INT, "embed_size": INT, "vocab_size": INT,
    "input_tab_dim": INT, "primary_hidden_common_dim": INT, "secondary_hidden_common_dim": INT, "num_heads": INT,
    "cross_attention_heads": INT, "fusion_dim": INT, "fusion_hidden_dim": INT, "bert_config": OBJECT,
    # Names3Risk (LSTM2Risk, Transformer2Risk)
    "n_embed": INT, "embedding_size": INT, "hidden_size": INT, "n_lstm_layers": INT, "n_blocks": INT, "n_heads": INT,
    "dropout_rate": NUMBER,
    # bookkeeping written by the tool (values a file could not tell, and what uses them)
    "unknown": OBJECT,
    # training
    "dropout_keep": NUMBER, "is_embeddings_trainable": BOOL, "class_weights": LIST, "optimizer_type": STR,
    "lr": NUMBER, "momentum": NUMBER, "weight_decay": NUMBER, "adam_epsilon": NUMBER, "metric_choices": LIST,
    "warmup_steps": INT, "run_scheduler": BOOL, "reinit_pooler": BOOL, "reinit_layers": INT,
    "cross_attention_dropout": NUMBER, "fusion_dropout": NUMBER,
}


#: Element kind of each list-typed key (what a file's value is checked against, see io.values).
LIST_ITEMS: dict[str, str] = {"tab_field_list": "strings", "metric_choices": "strings", "kernel_size": "ints",
                              "num_channels": "ints", "class_weights": "numbers"}


def register_key_types(types: dict[str, str], owner: str) -> None:
    """Add a family's hyper-parameter keys and their types.

    Args:
        types: key -> one of the kinds above (`"string"`, `"list"`, `"number"`, `"integer"`, `"boolean"`,
            `"object"`).
        owner: who declares them (for the error message).

    Raises:
        UsageError: an unknown kind, or a key already declared with another type.
    """
    kinds = {STR, LIST, NUMBER, INT, BOOL, OBJECT}
    for key, kind in types.items():
        if kind not in kinds:
            raise UsageError(f"{owner}: key {key!r} has the unknown type {kind!r} (known: {', '.join(sorted(kinds))})")
        if KEY_TYPES.get(key, kind) != kind:
            raise UsageError(f"{owner}: key {key!r} is a {kind} but already declared a {KEY_TYPES[key]}")
        KEY_TYPES[key] = kind


def file_kinds() -> dict[str, str]:
    """The kinds io.values checks values read from a file against (one schema for files and --set).

    Returns:
        Key -> kind ("string", "int", "number", "boolean", "mapping", "list" or a list's item kind).
    """
    simple = {STR: "string", INT: "int", NUMBER: "number", BOOL: "boolean", OBJECT: "mapping"}
    kinds = {k: LIST_ITEMS.get(k, "list") if t == LIST else simple[t] for k, t in KEY_TYPES.items()}
    kinds["config"] = "mapping"
    return kinds


def parse_typed(key: str, text: str, allow_unknown: bool = False) -> Any:
    """The value of `--set KEY=TEXT`, parsed for KEY's type.

    Strings are taken literally (a JSON-quoted string is unquoted); lists accept JSON (`["a","b"]`) or an
    unambiguous comma list (`a,b`, items
    parsed as JSON numbers where they are numbers); other types must be valid JSON of that type (`null` clears
    any key). An unknown key is a usage error with the closest known names, unless `allow_unknown`.

    Args:
        key: the hyper-parameter name.
        text: the text after `=`.
        allow_unknown: parse an undeclared key as JSON (or keep it as text) instead of refusing it.

    Returns:
        The parsed value (None for `null`).

    Raises:
        UsageError: an unknown key, or text that is not a value of the key's type.
    """
    kind = KEY_TYPES.get(key)
    if kind is None:
        if not allow_unknown:
            close = difflib.get_close_matches(key, KEY_TYPES, n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise UsageError(f"--set {key}: not a hyper-parameter this tool knows{hint} "
                             "(pass --allow-unknown-keys to record it anyway)")
        try:
            return json.loads(text)
        except ValueError:
            return text
    if text.strip() == "null":
        return None
    if kind == STR:  # a JSON string ('"a b"') is unquoted; anything else is the text as it is (123 -> "123")
        try:
            value = json.loads(text)
        except ValueError:
            return text
        return value if isinstance(value, str) else text
    try:
        value = json.loads(text)
    except ValueError:
        value = _comma_list(key, text) if kind == LIST else _refuse(key, kind, text)
    return check_type(key, value, f"--set {key}")


def _comma_list(key: str, text: str) -> list[Any]:
    if text.strip().startswith("[") or '"' in text or "'" in text:
        raise UsageError(f"--set {key}={text}: neither JSON nor a plain comma list; write "
                         f"--set '{key}=[\"a\",\"b\"]' (JSON) or --set {key}=a,b")
    items = [item.strip() for item in text.split(",")]
    if any(not item for item in items):
        raise UsageError(f"--set {key}={text}: an empty item in the comma list")
    return [_number_or_text(item) for item in items]


def _number_or_text(item: str) -> Any:
    try:
        value = json.loads(item)
    except ValueError:
        return item
    return value if isinstance(value, int | float) and not isinstance(value, bool) else item


def _refuse(key: str, kind: str, text: str) -> Any:
    raise UsageError(f"--set {key}={text}: {key} takes a JSON {kind}")


def check_type(key: str, value: Any, where: str) -> Any:
    """Check `value` against KEY's declared type (None always passes: it records "unknown").

    Args:
        key: the hyper-parameter name (an undeclared key passes unchecked).
        value: the value as parsed from JSON, a file or a comma list.
        where: where the value came from, for the message (e.g. "--set lr").

    Returns:
        `value`, unchanged.

    Raises:
        UsageError: a value of the wrong type, or a `<required ...>` placeholder left in a config.
    """
    kind = KEY_TYPES.get(key)
    if isinstance(value, str) and value.startswith("<required"):
        raise UsageError(f"{where}: the config still marks {key} as required: fill in the real value")
    if value is None or kind is None:
        return value
    ok = {STR: isinstance(value, str), LIST: isinstance(value, list), OBJECT: isinstance(value, dict),
          BOOL: isinstance(value, bool), INT: isinstance(value, int) and not isinstance(value, bool),
          NUMBER: isinstance(value, int | float) and not isinstance(value, bool)}[kind]
    if not ok:
        raise UsageError(f"{where}: {key} takes a {kind}, got {json.dumps(value)[:80]}")
    return value

"""A simple, documented word tokenizer and vocabulary for the CNN text models.

Tokenizer (``TOKENIZER_ID = "athelas-regex-v1"``): lowercase the text, then take
every maximal run of Unicode word characters (``re.findall(r"\\w+", text.lower())``).
Punctuation and whitespace separate tokens and are dropped. ``"Don't  stop!"``
becomes ``["don", "t", "stop"]``.

Vocabulary: token ids are positions in a list. Two ids are reserved:
``0 = "<pad>"`` (padding; also the id of the padded tail of short texts) and
``1 = "<unk>"`` (any token not in the vocabulary). The remaining tokens are the
training tokens seen at least ``min_freq`` times, most frequent first (ties in
alphabetical order, so the result does not depend on row order), cut at
``max_size`` entries in total (reserved ids included).

Encoding a text gives exactly ``length`` ids: truncated at the end when longer,
right-padded with ``0`` when shorter.

The JSON file written by :meth:`Vocabulary.save` (``vocab.json`` beside the
checkpoints)::

    {"format": "athelas-vocab", "version": 1,
     "tokenizer": "athelas-regex-v1", "lowercase": true, "pattern": "\\\\w+",
     "pad_token": "<pad>", "pad_id": 0, "unk_token": "<unk>", "unk_id": 1,
     "min_freq": 1, "max_size": 50000, "size": 1234,
     "tokens": ["<pad>", "<unk>", "the", ...]}

``tokens[i]`` is the token of id ``i``. Only ``tokens`` is needed to decode and
encode; the other fields document how the list was built and are checked on load.

Pretrained vectors: :func:`load_word_vectors` reads a GloVe-format text file
(one ``word v1 v2 ... vE`` line per word, space separated; a word2vec-style
``"N E"`` header line is skipped) into a ``[len(vocab), E]`` matrix.

This module imports only the standard library at import time (torch is imported
inside :func:`load_word_vectors`).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from .errors import InputError, UsageError

__all__ = [
    "PAD_ID",
    "PAD_TOKEN",
    "TOKENIZER_ID",
    "UNK_ID",
    "UNK_TOKEN",
    "Vocabulary",
    "load_word_vectors",
    "tokenize",
]

TOKENIZER_ID = "athelas-regex-v1"
TOKEN_PATTERN = r"\w+"
PAD_TOKEN, PAD_ID = "<pad>", 0
UNK_TOKEN, UNK_ID = "<unk>", 1
VOCAB_FORMAT = "athelas-vocab"
VOCAB_VERSION = 1

_TOKEN_RE = re.compile(TOKEN_PATTERN)


def tokenize(text: Any) -> list[str]:
    """Lowercase ``text`` and split it into runs of word characters (``\\w+``).

    Args:
        text: a cell of the text column; ``None`` and NaN give no tokens, other non-strings go through ``str``.

    Returns:
        The tokens, in order.
    """
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return []
    return _TOKEN_RE.findall(str(text).lower())


class Vocabulary:
    """Token <-> id mapping with ``0 = <pad>`` and ``1 = <unk>`` reserved."""

    def __init__(self, tokens: Sequence[str], *, min_freq: int = 1, max_size: int | None = None) -> None:
        tokens = list(tokens)
        if len(tokens) < 2 or tokens[PAD_ID] != PAD_TOKEN or tokens[UNK_ID] != UNK_TOKEN:
            raise ValueError(f"a vocabulary starts with {PAD_TOKEN!r}, {UNK_TOKEN!r}")
        self.itos: list[str] = tokens
        self.stoi: dict[str, int] = {}
        for i, tok in enumerate(tokens):
            if tok in self.stoi:
                raise ValueError(f"token {tok!r} appears twice in the vocabulary (ids {self.stoi[tok]}, {i})")
            self.stoi[tok] = i
        self.min_freq = int(min_freq)
        self.max_size = None if max_size is None else int(max_size)

    # -------------------------------------------------------------- building
    @classmethod
    def build(cls, texts: Iterable[Any], *, min_freq: int = 1, max_size: int | None = None) -> Vocabulary:
        """Count the tokens of ``texts`` and keep those seen ``>= min_freq`` times.

        Most frequent first, ties alphabetically, so the same texts give the same ids everywhere.

        Args:
            texts: the training texts.
            min_freq: the fewest occurrences a kept token has.
            max_size: the most entries in total (the two reserved ids included); ``None`` means no limit.

        Returns:
            The vocabulary.

        Raises:
            UsageError: ``min_freq`` below 1 or ``max_size`` below 3.
        """
        if min_freq < 1:
            raise UsageError(f"min_freq must be >= 1, got {min_freq}")
        if max_size is not None and max_size < 3:
            raise UsageError(f"max vocabulary size must be >= 3 (2 reserved ids + 1 token), got {max_size}")
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(tokenize(text))
        for reserved in (PAD_TOKEN, UNK_TOKEN):  # cannot come out of \w+, but be safe
            counts.pop(reserved, None)
        ranked = sorted((tok for tok, n in counts.items() if n >= min_freq), key=lambda t: (-counts[t], t))
        if max_size is not None:
            ranked = ranked[: max_size - 2]
        return cls([PAD_TOKEN, UNK_TOKEN, *ranked], min_freq=min_freq, max_size=max_size)

    # ------------------------------------------------------------- encoding
    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def token_ids(self, text: Any) -> list[int]:
        """Ids of the tokens of ``text``, unpadded.

        Args:
            text: a cell of the text column (see `tokenize`).

        Returns:
            One id per token; unknown tokens are ``1``.
        """
        get = self.stoi.get
        return [get(tok, UNK_ID) for tok in tokenize(text)]

    def encode(self, text: Any, length: int) -> list[int]:
        """Exactly ``length`` ids: truncated at the end, or right-padded with ``0``.

        Args:
            text: a cell of the text column (see `tokenize`).
            length: the model's ``max_sen_len``.

        Returns:
            The ids.
        """
        ids = self.token_ids(text)[:length]
        return ids + [PAD_ID] * (length - len(ids))

    def encode_batch(self, texts: Iterable[Any], length: int) -> list[list[int]]:
        """`encode` of every text.

        Args:
            texts: cells of the text column.
            length: the model's ``max_sen_len``.

        Returns:
            One row of ``length`` ids per text.
        """
        return [self.encode(t, length) for t in texts]

    def unknown_rate(self, texts: Iterable[Any]) -> float:
        """Fraction of tokens of ``texts`` that map to ``<unk>`` (train and predict warn when it is high).

        Args:
            texts: cells of the text column.

        Returns:
            The fraction; 0.0 when there are no tokens.
        """
        total = unk = 0
        for text in texts:
            ids = self.token_ids(text)
            total += len(ids)
            unk += sum(1 for i in ids if i == UNK_ID)
        return unk / total if total else 0.0

    # ---------------------------------------------------------------- files
    def to_json(self) -> dict[str, Any]:
        """The vocabulary file's content: the tokens and how they were made (tokenizer, limits).

        Returns:
            A JSON-ready dict.
        """
        return {
            "format": VOCAB_FORMAT,
            "version": VOCAB_VERSION,
            "tokenizer": TOKENIZER_ID,
            "lowercase": True,
            "pattern": TOKEN_PATTERN,
            "pad_token": PAD_TOKEN,
            "pad_id": PAD_ID,
            "unk_token": UNK_TOKEN,
            "unk_id": UNK_ID,
            "min_freq": self.min_freq,
            "max_size": self.max_size,
            "size": len(self),
            "tokens": self.itos,
        }

    def save(self, path: str | os.PathLike[str]) -> str:
        """Write the JSON file atomically (temporary file, then rename).

        Args:
            path: the file; its directory must exist.

        Returns:
            The absolute path.
        """
        path = os.path.abspath(os.fspath(path))
        directory = os.path.dirname(path)
        fd, tmp = tempfile.mkstemp(prefix=".vocab.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self.to_json(), fh, ensure_ascii=False, indent=0)
                fh.write("\n")
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Vocabulary:
        """Read a vocabulary JSON file written by `save`.

        Args:
            path: a JSON file written by `save`.

        Returns:
            The vocabulary.

        Raises:
            InputError: the file is missing, unreadable, not a vocabulary of this format and version, made
                with another tokenizer, or inconsistent.
        """
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            raise InputError(f"{path}: vocabulary file not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: not a vocabulary JSON file ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != VOCAB_FORMAT:
            raise InputError(f"{path}: not an athelas vocabulary file (expected \"format\": \"{VOCAB_FORMAT}\")")
        if data.get("version") != VOCAB_VERSION:
            raise InputError(f"{path}: unsupported vocabulary version {data.get('version')!r}")
        if data.get("tokenizer", TOKENIZER_ID) != TOKENIZER_ID:
            raise InputError(f"{path}: built with tokenizer {data.get('tokenizer')!r}, "
                             f"this version only knows {TOKENIZER_ID!r}")
        tokens = data.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise InputError(f"{path}: \"tokens\" must be a list of strings")
        if "size" in data and data["size"] != len(tokens):
            raise InputError(f"{path}: says size {data['size']} but holds {len(tokens)} tokens")
        try:
            return cls(tokens, min_freq=data.get("min_freq") or 1, max_size=data.get("max_size"))
        except ValueError as exc:
            raise InputError(f"{path}: {exc}") from None


def load_word_vectors(path: str | os.PathLike[str], vocab: Vocabulary, *, seed: int = 0,
                      scale: float = 0.1) -> tuple[Any, int, int]:
    """Embedding matrix ``[len(vocab), E]`` (float32 tensor) from a GloVe-format text file.

    Rows of tokens found in the file get their vector (an exact match first,
    else the first lowercase match); ``<pad>`` is all zeros; the others are
    drawn from ``N(0, scale^2)`` with ``seed``.

    Args:
        path: a GloVe (or word2vec text) file.
        vocab: the vocabulary whose rows are filled.
        seed: seed of the random rows.
        scale: standard deviation of the random rows.

    Returns:
        ``(matrix, tokens found in the file, E)``.

    Raises:
        InputError: an unreadable file, inconsistent widths, a value that is not a number, or no vector at all.
    """
    import torch

    path = os.fspath(path)
    vectors: dict[str, list[float]] = {}
    lower: dict[str, list[float]] = {}
    dim: int | None = None
    try:
        fh = open(path, encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InputError(f"{path}: cannot read word vectors ({exc.strerror or exc})") from None
    with fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.rstrip("\n\r").rstrip(" ").split(" ")
            if lineno == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                continue  # word2vec text header "N E"
            if len(parts) < 2:
                if line.strip():
                    raise InputError(f"{path}:{lineno}: expected 'word v1 ... vE'")
                continue
            word, values = parts[0], parts[1:]
            if dim is None:
                dim = len(values)
            elif len(values) != dim:
                raise InputError(f"{path}:{lineno}: {len(values)} values, but the first vector has {dim}")
            if word not in vocab.stoi and word.lower() not in vocab.stoi:
                continue
            try:
                vec = [float(v) for v in values]
            except ValueError:
                raise InputError(f"{path}:{lineno}: a value is not a number") from None
            vectors.setdefault(word, vec)
            lower.setdefault(word.lower(), vec)
    if dim is None:
        raise InputError(f"{path}: no word vectors found")
    rng = random.Random(seed)
    rows: list[list[float]] = []
    found = 0
    for i, tok in enumerate(vocab.itos):
        if i == PAD_ID:
            rows.append([0.0] * dim)
            continue
        vec = vectors.get(tok) or lower.get(tok)
        if vec is not None:
            found += 1
            rows.append(vec)
        else:
            rows.append([rng.gauss(0.0, scale) for _ in range(dim)])
    return torch.tensor(rows, dtype=torch.float32), found, dim

"""A small, deterministic demo dataset with a learnable signal in text and numbers.

Each row is a short customer message (``review``), three numeric fields and a
binary ``label``. The label is drawn first (``P(label=1) = 0.5``); then

* the text mixes neutral words with *signal* words: each word is a signal word
  with probability ``0.2``; a signal word comes from the label's own list with
  probability ``0.8`` and from the other label's list otherwise;
* ``spend_score ~ N(+0.5, 1)`` for label 1 and ``N(-0.5, 1)`` for label 0,
  ``complaint_rate ~ N(-0.5, 1)`` / ``N(+0.5, 1)``, ``tenure_years ~ N(0, 1)``
  (pure noise).

Neither modality alone separates the classes well; together they do, so a
BimodalCNN beats a TextCNN on it, and both beat an untrained model after a short
CPU run. Everything comes from ``random.Random(seed)``: the same seed gives
byte-identical files.

Files written by :func:`write_demo_data` (``athelas-migrate demo-data OUT_DIR``):
``train.csv``, ``val.csv``, ``test.csv`` (or ``.parquet`` with ``fmt="parquet"``,
which needs ``pyarrow``) with columns ``id, review, spend_score, complaint_rate,
tenure_years, label``, and ``config.json``: the column roles plus small
hyper-parameters for a quick CPU run, usable as ``athelas-migrate train --config``.

Standard library only.
"""

from __future__ import annotations

import csv
import json
import os
import random
import tempfile
from typing import Any

from .errors import UsageError

__all__ = ["DEMO_COLUMNS", "DEMO_CONFIG", "make_demo_rows", "write_demo_data"]

POSITIVE = [
    "excellent", "great", "love", "perfect", "happy", "recommend", "fantastic", "smooth",
    "reliable", "wonderful", "friendly", "quick", "helpful", "pleased", "superb",
]  # fmt: skip
NEGATIVE = [
    "terrible", "broken", "refund", "awful", "hate", "late", "damaged", "worst",
    "disappointed", "rude", "slow", "faulty", "missing", "angry", "useless",
]  # fmt: skip
NEUTRAL = [
    "the", "a", "my", "order", "item", "delivery", "package", "box", "store", "customer",
    "service", "price", "day", "week", "phone", "call", "email", "account", "card", "app",
    "it", "was", "is", "and", "to", "of", "for", "with", "on", "this", "that", "we", "i",
    "they", "there", "after", "before", "again", "today", "yesterday", "shipping", "size",
    "color", "model", "support", "team", "website", "return", "product", "time", "about",
    "just", "really", "very", "also", "still", "then", "when", "from", "but",
]  # fmt: skip

TEXT_COL = "review"
NUM_COLS = ["spend_score", "complaint_rate", "tenure_years"]
LABEL_COL = "label"
ID_COL = "id"
DEMO_COLUMNS = [ID_COL, TEXT_COL, *NUM_COLS, LABEL_COL]

#: ``config.json`` written beside the demo files: column roles and a small, fast model.
DEMO_CONFIG: dict[str, Any] = {
    "text_name": TEXT_COL,
    "tab_field_list": NUM_COLS,
    "label_name": LABEL_COL,
    "id_name": ID_COL,
    "kernel_size": [3, 5],
    "num_layers": 2,
    "num_channels": [32, 32],
    "hidden_common_dim": 32,
    "embed_size": 32,
    "dropout_keep": 0.5,
    "max_sen_len": 40,
    "optimizer_type": "Adam",
    "lr": 0.005,
    "batch_size": 32,
    "max_epochs": 10,
    "early_stop_patience": 3,
}

SIGNAL_RATE = 0.2
SIGNAL_PURITY = 0.8
TAB_SHIFT = 0.5


def make_demo_rows(n_rows: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """Demo rows whose label the text and the tabular columns both predict, so a short training run learns.

    Args:
        n_rows: how many rows.
        seed: the same seed gives the same rows on every machine (``random.Random``, no numpy).

    Returns:
        Dicts keyed by :data:`DEMO_COLUMNS`.

    Raises:
        UsageError: ``n_rows`` is below 1.
    """
    if n_rows < 1:
        raise UsageError(f"the number of rows must be >= 1, got {n_rows}")
    rng = random.Random(seed)
    rows = []
    for i in range(n_rows):
        label = 1 if rng.random() < 0.5 else 0
        own, other = (POSITIVE, NEGATIVE) if label else (NEGATIVE, POSITIVE)
        words = []
        for _ in range(rng.randint(6, 24)):
            if rng.random() < SIGNAL_RATE:
                words.append(rng.choice(own if rng.random() < SIGNAL_PURITY else other))
            else:
                words.append(rng.choice(NEUTRAL))
        text = " ".join(words)
        text = text[0].upper() + text[1:] + rng.choice([".", "!", "", "?"])
        sign = 1.0 if label else -1.0
        rows.append({
            ID_COL: f"r{seed}-{i:06d}",
            TEXT_COL: text,
            "spend_score": round(rng.gauss(sign * TAB_SHIFT, 1.0), 4),
            "complaint_rate": round(rng.gauss(-sign * TAB_SHIFT, 1.0), 4),
            "tenure_years": round(rng.gauss(0.0, 1.0), 4),
            LABEL_COL: label,
        })  # fmt: skip
    return rows


def _atomic_write(path: str, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=os.path.dirname(path))
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_csv(path: str, rows: list[dict[str, Any]]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=DEMO_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)

    _atomic_write(path, write)


def _write_parquet(path: str, rows: list[dict[str, Any]]) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError("writing Parquet needs the 'pyarrow' package (pip install pyarrow); "
                         "use --format csv otherwise") from None
    table = pa.table({c: [r[c] for r in rows] for c in DEMO_COLUMNS})
    _atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def write_demo_data(out_dir: str | os.PathLike[str], n_rows: int = 1000, seed: int = 0,
                    val_fraction: float = 0.2, test_fraction: float = 0.1, fmt: str = "csv",
                    force: bool = False) -> dict[str, Any]:
    """Write ``train``/``val``/``test`` files and a matching training ``config.json`` into ``out_dir``.

    Each file is written atomically; all options are checked before the first write.

    Args:
        out_dir: the directory, created when missing.
        n_rows: rows over all three splits.
        seed: seed of :func:`make_demo_rows`.
        val_fraction: share of rows in ``val`` (at least one row).
        test_fraction: share of rows in ``test`` (may be 0).
        fmt: ``csv`` or ``parquet`` (needs pyarrow).
        force: replace existing demo files.

    Returns:
        ``{"train": path, "val": path, "test": path, "config": path, "rows": {split: count}}``.

    Raises:
        UsageError: a bad format or fraction, pyarrow missing for Parquet, ``out_dir`` is a file, a demo file
            exists without ``force``, or no training rows are left.
    """
    fmt = fmt.lower()
    if fmt not in ("csv", "parquet"):
        raise UsageError(f"unknown format {fmt!r} (use csv or parquet)")
    if not (0.0 < val_fraction < 1.0) or not (0.0 <= test_fraction < 1.0) or val_fraction + test_fraction >= 1.0:
        raise UsageError("val and test fractions must be in (0, 1) with val + test < 1")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UsageError("writing Parquet needs the 'pyarrow' package (pip install pyarrow); "
                             "use --format csv otherwise") from None
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"{out_dir} exists and is not a directory")
    ext = "csv" if fmt == "csv" else "parquet"
    paths = {split: os.path.join(out_dir, f"{split}.{ext}") for split in ("train", "val", "test")}
    paths["config"] = os.path.join(out_dir, "config.json")
    existing = [p for p in paths.values() if os.path.exists(p)]
    if existing and not force:
        raise UsageError(f"{existing[0]} exists; pass --force to replace the demo files")
    rows = make_demo_rows(n_rows, seed)
    n_val = max(1, round(n_rows * val_fraction))
    n_test = round(n_rows * test_fraction)
    n_train = n_rows - n_val - n_test
    if n_train < 1:
        raise UsageError(f"{n_rows} rows leave no training rows")
    splits = {"train": rows[:n_train], "val": rows[n_train:n_train + n_val], "test": rows[n_train + n_val:]}
    os.makedirs(out_dir, exist_ok=True)
    writer = _write_csv if fmt == "csv" else _write_parquet
    for split, split_rows in splits.items():
        writer(paths[split], split_rows)
    config = dict(DEMO_CONFIG, demo_seed=seed, demo_rows=n_rows)

    def write_config(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(config, fh, indent=2)
            fh.write("\n")

    _atomic_write(paths["config"], write_config)
    return {**paths, "rows": {k: len(v) for k, v in splits.items()}}

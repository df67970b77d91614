"""Data files as columns: reading CSV / TSV / Parquet, typed columns, the held-out validation split.

Pure Python (pyarrow only for Parquet, imported when a Parquet file is read). Values of CSV/TSV files stay
strings here; :func:`float_column` and :func:`label_column` convert one column for its role.

To add a data format, write a reader ``(path) -> dict[column name, list of values]`` that raises
``InputError`` for a broken file, and add it to ``READERS`` under the file name endings it handles.
"""

from __future__ import annotations

import csv
import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InputError, UsageError

__all__ = ["READERS", "Table", "float_column", "holdout_split", "label_column", "read_table"]


@dataclass
class Table:
    """Columns of a data file: ``columns[name]`` is the list of that column's values."""

    path: str
    columns: dict[str, list[Any]]

    @property
    def n_rows(self) -> int:
        """The number of data rows (0 for a table without columns)."""
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def column(self, name: str, role: str) -> list[Any]:
        """The values of column ``name``.

        Args:
            name: the column name.
            role: what the column is for (text, label, ...), named in the error.

        Returns:
            The column's values, one per row.

        Raises:
            InputError: the file has no such column.
        """
        if name not in self.columns:
            have = ", ".join(self.columns) or "none"
            raise InputError(f"{self.path}: no column {name!r} (the {role} column); columns: {have}")
        return self.columns[name]

    def take(self, rows: Sequence[int]) -> Table:
        """A table of some rows (a split of the data).

        Args:
            rows: row indices, in the order wanted.

        Returns:
            A new table with those rows.
        """
        return Table(self.path, {k: [v[i] for i in rows] for k, v in self.columns.items()})


def _read_parquet(path: str) -> dict[str, list[Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError(f"{path}: reading Parquet needs the 'pyarrow' package (pip install pyarrow)") from None
    try:
        return pq.read_table(path).to_pydict()
    except Exception as exc:  # pyarrow raises several types for broken files
        raise InputError(f"{path}: cannot read as Parquet ({exc})") from None


def _delimited(delimiter: str) -> Callable[[str], dict[str, list[Any]]]:
    """A reader of text files whose fields are separated by ``delimiter`` and whose first row is the header."""

    def read(path: str) -> dict[str, list[Any]]:
        try:
            with open(path, newline="", encoding="utf-8-sig") as fh:
                return _read_rows(path, csv.reader(fh, delimiter=delimiter))
        except UnicodeDecodeError as exc:
            raise InputError(f"{path}: not UTF-8 text ({exc.reason})") from None
        except csv.Error as exc:
            raise InputError(f"{path}: malformed CSV ({exc})") from None

    return read


def _read_rows(path: str, reader: Any) -> dict[str, list[Any]]:
    header = next(reader, None)
    if not header:
        raise InputError(f"{path}: empty file (no header row)")
    columns: dict[str, list[Any]] = {name: [] for name in header}
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
    return columns


#: File name endings (lower case) -> the reader of that format.
READERS: dict[tuple[str, ...], Callable[[str], dict[str, list[Any]]]] = {
    (".parquet", ".pq"): _read_parquet,
    (".csv",): _delimited(","),
    (".tsv", ".txt"): _delimited("\t"),
}


def read_table(path: str | os.PathLike[str]) -> Table:
    """Read a ``.csv``, ``.tsv`` (``.txt``) or ``.parquet`` (``.pq``) file into a :class:`Table`.

    Args:
        path: the data file; its name ending picks the reader (``READERS``).

    Returns:
        The table; CSV/TSV values are strings, Parquet values keep their types.

    Raises:
        InputError: the file is missing, unreadable, malformed or has no data rows.
        UsageError: the name ending is not a known format, or Parquet support (pyarrow) is missing.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such data file")
    lower = path.lower()
    reader = next((read for endings, read in READERS.items() if lower.endswith(endings)), None)
    if reader is None:
        raise UsageError(f"{path}: unknown data format (use .csv, .tsv or .parquet)")
    table = Table(path, reader(path))
    if table.n_rows == 0:
        raise InputError(f"{path}: no data rows")
    return table


def float_column(table: Table, name: str) -> list[float]:
    """The numeric column ``name`` as floats.

    Args:
        table: the data.
        name: the column.

    Returns:
        One finite float per row.

    Raises:
        InputError: the column is missing, or a value is not a number, empty or not finite.
    """
    out = []
    for i, v in enumerate(table.column(name, "numeric")):
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
    """Integer class labels ``0..C-1`` of column ``name``.

    Args:
        table: the data.
        name: the label column; ``"1"``, ``1``, ``1.0`` and ``true``/``false`` are accepted.

    Returns:
        One class id per row.

    Raises:
        InputError: the column is missing, or a value is not a non-negative integer class id.
    """
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


def holdout_split(table: Table, fraction: float, seed: int) -> tuple[Table, Table]:
    """Hold out a seeded ``fraction`` of the rows (at least one) for validation; rows keep their file order.

    Args:
        table: the training data.
        fraction: the share of rows held out, in (0, 1).
        seed: seed of the row shuffle.

    Returns:
        ``(training rows, validation rows)``.

    Raises:
        UsageError: too few rows to leave at least one for training.
    """
    n = table.n_rows
    n_val = max(1, round(n * fraction))
    if n - n_val < 1:
        raise UsageError(f"{table.path}: {n} rows are too few to hold out a validation split")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return table.take(sorted(order[n_val:])), table.take(sorted(order[:n_val]))

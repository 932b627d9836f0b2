"""Parquet files: tables of typed columns, read with pyarrow; a list column holds a vector per row (an embedding).

Columns are chosen as for CSV files (`sparseae.data.tables.pick_columns`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sparseae.data.tables import Table, class_numbers, log_columns, pick_columns, warn_row_numbers
from sparseae.errors import SparseAEError


def read_parquet(
    path: Path,
    label_column: str | None = None,
    columns: str | None = None,
    drop_columns: str | None = None,
    text_column: str | None = None,
) -> Table:
    """The feature columns of a Parquet file (a list column gives a vector per row), its label column and its
    text column where named. The index pandas saved (``__index_level_0__``) is left out unless named."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SparseAEError(
            str(path), expected="pyarrow to read Parquet", got="no pyarrow", fix="pip install 'sparseae[parquet]' (or pyarrow)."
        ) from None
    import pyarrow as pa

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise SparseAEError(
            str(path), expected="a Parquet file", got=f"unreadable ({e})", fix="Write it with pyarrow or pandas."
        ) from None
    names = [str(name) for name in table.column_names]
    label, text = (_named(path, flag, name, names) for flag, name in (("--label-column", label_column),
                                                                      ("--text-column", text_column)))  # fmt: skip
    pandas_index = [c for c in (table.schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)]
    skip = tuple(names.index(c) for c in pandas_index if c in names)
    features = pick_columns(path, names, columns, drop_columns, label, skip=skip, text=text)
    texts = None if text is None else _texts(path, text_column, table.column(text))
    parts, scalars, bad = [], [], {}
    for i in features:
        part = _parquet_column(path, names[i], table.column(i))
        if part is None:
            bad[names[i]] = f"{names[i]} ({table.column(i).type})"
            continue
        parts.append(part)
        scalars.append(part[:, 0] if part.shape[1] == 1 and not _is_list(table.column(i).type) else None)
    if bad:
        raise SparseAEError(
            str(path),
            expected="numeric columns (or list columns of numbers)",
            got=f"non-numeric column(s) {', '.join(bad.values())}",
            fix=f"Drop them, or name the label column with --label-column. --drop-columns {','.join(bad)} leaves them out.",
        )
    if table.num_rows == 0:
        raise SparseAEError(str(path), expected="rows of numbers", got="no numeric data", fix="Check the file.")
    x = np.concatenate(parts, axis=1)
    labels = label_names = None
    if label is not None:
        labels, label_names = _labels(path, label_column, table.column(label))
    if columns is None:
        warn_row_numbers(path, names, features, scalars, numbered=False)
    log_columns(path, names, features, label, len(names), x.shape[1], text)
    feature_names = [n for i, part in zip(features, parts, strict=True) for n in _part_names(names[i], part, table.column(i))]
    return Table(x, labels, label_names, tuple(feature_names), texts)


def _named(path: Path, flag: str, name: str | None, names: list[str]) -> int | None:
    """The index of the column ``name`` (given with ``flag``), None when unset."""
    if name is None:
        return None
    if name not in names:
        raise SparseAEError(
            f"{path} {flag}", expected=f"a column name ({', '.join(names)})", got=repr(name), fix="Name a column the file has."
        )
    return names.index(name)


def _part_names(name: str, part: np.ndarray, column) -> list[str]:
    """The feature names of one column: its name, or ``name[j]`` for each value of a list column."""
    return [f"{name}[{j}]" for j in range(part.shape[1])] if _is_list(column.type) else [name]


def _is_text(kind) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _labels(path: Path, name: str | None, raw) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """A label column's classes: its numbers (checked whole later), or its words as 0..C-1 in sorted order."""
    import pyarrow as pa

    numeric = pa.types.is_integer(raw.type) or pa.types.is_floating(raw.type)
    if not (numeric or _is_text(raw.type)) or raw.null_count:
        raise SparseAEError(
            f"{path} column {name!r}",
            expected="class labels in every row: whole numbers, or words",
            got=f"type {raw.type}" + (f", {raw.null_count} missing" if raw.null_count else ""),
            fix="Encode the classes as 0, 1, 2, ... or as words (cat, dog), and fill in the missing ones.",
        )
    if numeric:
        return raw.to_numpy().astype(np.float64), None
    return class_numbers([str(v).strip() for v in raw.to_pylist()])


def _texts(path: Path, name: str | None, raw) -> tuple[str, ...]:
    if not _is_text(raw.type) or raw.null_count:
        raise SparseAEError(
            f"{path} --text-column {name!r}",
            expected="a column of strings, one in every row",
            got=f"type {raw.type}" + (f", {raw.null_count} missing" if raw.null_count else ""),
            fix="Name the column that holds the texts, and fill in the missing ones (an empty string will do).",
        )
    return tuple(raw.to_pylist())


def _is_list(kind) -> bool:
    import pyarrow as pa

    return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)


def _parquet_column(path: Path, name: str, column) -> np.ndarray | None:
    """A Parquet column as float64 ``(N, width)``: a number or a vector per row; ``None`` if not numeric."""
    import pyarrow as pa

    kind = column.type
    if _is_list(kind):  # an embedding per row, stored as a list column
        rows = column.to_pylist()
        lengths = {len(r) if r is not None else -1 for r in rows}
        if len(lengths) != 1 or -1 in lengths:
            raise SparseAEError(
                f"{path} column {name!r}",
                expected="lists of one length (an embedding per row)",
                got=f"lengths {sorted(lengths)[:5]}" + (" and missing rows" if -1 in lengths else ""),
                fix="Every row needs a vector of the same size.",
            )
        try:
            values = np.asarray(rows, dtype=np.float64)
        except (TypeError, ValueError):
            return None
        return values if values.ndim == 2 else None  # lists of lists are not one vector per row
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        if column.null_count:
            raise SparseAEError(
                f"{path} column {name!r}",
                expected="a value in every row",
                got=f"{column.null_count} missing value(s)",
                fix="Fill or drop the rows with missing values.",
            )
        return column.to_numpy().astype(np.float64)[:, None]
    return None

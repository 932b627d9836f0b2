"""CSV and Parquet files: tables of columns, some of them features and at most one the label.

Which columns are features is set by ``columns`` and ``drop_columns`` (names, 0-based numbers,
``FIRST:LAST`` ranges, glob patterns); the columns used are logged, and a column that looks like
a row number (``id``, ``index``, ``Unnamed: 0``, or 0..n-1) draws a warning. A CSV file's
encoding (UTF-8, or UTF-16/32 with a byte-order mark) and delimiter are found by themselves.
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from difflib import get_close_matches
from fnmatch import fnmatchcase
from itertools import islice
from pathlib import Path
from typing import NamedTuple, TextIO

import numpy as np

from sparseae.errors import SparseAEError

log = logging.getLogger(__name__)

DELIMITERS = (",", ";", "\t", "|", " ")
"""The delimiters a CSV file may use unannounced, the first preferred when several fit."""
DELIMITER_NAMES = {"comma": ",", "semicolon": ";", "tab": "\t", "\\t": "\t", "pipe": "|", "space": " "}
"""Names for ``csv_delimiter`` (a tab or a space is awkward to type on a command line)."""
SNIFF_ROWS = 50
"""Rows read to find the delimiter."""
SNIFF_CHARS = 1 << 20
"""At most this much of the file is read to find the delimiter."""
_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),  # before UTF-16: its BOM starts with UTF-16-LE's
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF8, "UTF-8"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)
_CODECS = {codecs.BOM_UTF32_LE: "utf-32-le", codecs.BOM_UTF32_BE: "utf-32-be", codecs.BOM_UTF16_LE: "utf-16-le",
           codecs.BOM_UTF16_BE: "utf-16-be", codecs.BOM_UTF8: "utf-8"}  # fmt: skip


def delimiter_char(name: str) -> str:
    """The character ``name`` stands for: itself, or one of `DELIMITER_NAMES`."""
    return DELIMITER_NAMES.get(name.lower(), name)


class Table(NamedTuple):
    """What a CSV or Parquet file holds for training."""

    x: np.ndarray
    """The feature columns, float64 ``(N, D)``."""
    labels: np.ndarray | None
    """The label column's classes ``(N,)``, if one was named: its whole numbers, or the index of its words in ``label_names``."""
    label_names: tuple[str, ...] | None
    """The label column's words in sorted order, where its values are words."""
    columns: tuple[str, ...] | None
    """A name per feature (``D``), where the file names its columns (a list column ``emb`` gives ``emb[0]``, ...)."""
    texts: tuple[str, ...] | None
    """The text column's value in each row, if one was named."""


def read_csv(
    path: Path,
    label_column: str | None = None,
    columns: str | None = None,
    drop_columns: str | None = None,
    delimiter: str | None = None,
    text_column: str | None = None,
) -> Table:
    """The feature columns of a CSV file, its label column and its text column where named."""
    encoding = _encoding(path)
    with _text(path, encoding) as f:
        sample = f.read(SNIFF_CHARS)
    if "\x00" in sample:
        raise SparseAEError(
            str(path),
            expected="a UTF-8 text file",
            got=f"a NUL character (at byte {encoding[0] + len(sample[: sample.index(chr(0))].encode(encoding[1]))}): "
            "UTF-16 without a byte-order mark, or not a text file",
            fix="Save it as UTF-8.",
        )
    sure = delimiter is not None
    if delimiter is None:
        delimiter = _sniff(sample.removeprefix("\ufeff"), complete=len(sample) < SNIFF_CHARS)
        if delimiter != ",":
            log.info("%s: values separated by %r", path.name, delimiter)
    delimiter = delimiter_char(delimiter)
    with _text(path, encoding) as f:
        rows = [row for row in csv.reader(f, delimiter=delimiter, skipinitialspace=delimiter == " ") if row]
    if not rows:
        raise SparseAEError(str(path), expected="rows of numbers", got="an empty file", fix="Write the data again.")
    rows[0][0] = rows[0][0].removeprefix("\ufeff")  # a second BOM, written as text by some tools
    header = None if all(_is_number(v) for v in _without_empty_end(rows[0])) else [name.strip() for name in rows[0]]
    body = rows[1:] if header else rows
    if not body:
        raise SparseAEError(str(path), expected="rows of numbers under the header", got="only a header", fix="Add data rows.")
    header = _drop_empty_last_columns(path, header, body, delimiter)
    width = len(header) if header else len(body[0])
    names = header or [str(i) for i in range(width)]
    label_index = None if label_column is None else _column_index(path, header, label_column, width)
    text_index = None if text_column is None else _column_index(path, header, text_column, width, "--text-column")
    features = pick_columns(path, names, columns, drop_columns, label_index, numbered=header is None, text=text_index)
    values = np.empty((len(body), width), dtype=np.float64)
    first = 2 if header else 1
    for line, row in enumerate(body, start=first):
        if len(row) != width:
            raise SparseAEError(
                f"{path}, line {line}",
                expected=f"{width} values, as on the first line",
                got=f"{len(row)} values",
                fix="Every row needs the same number of columns.",
            )
        for column in features:
            try:
                values[line - first, column] = float(row[column])
            except ValueError:
                raise _not_a_number(path, line, header, column, row[column], delimiter, sure) from None
    labels = label_names = None
    if label_index is not None:
        labels, label_names = _csv_labels(path, [row[label_index] for row in body], header, label_index, first)
    x = values[:, features]
    if columns is None:
        warn_row_numbers(path, names, features, list(x.T), numbered=header is None)
    log_columns(path, names, features, label_index, width, x.shape[1], text_index)
    texts = None if text_index is None else tuple(row[text_index] for row in body)
    return Table(x, labels, label_names, tuple(names[i] for i in features) if header else None, texts)


def _csv_labels(
    path: Path, cells: list[str], header: list[str] | None, column: int, first: int
) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """A CSV label column's classes: its whole numbers (names None), or, where any cell is not a number, its words."""
    where = f"{path}, line {{}}, column {_column_name(header, column)}"
    if all(_is_number(c) for c in cells):
        labels = np.array([float(c) for c in cells])
        bad = np.flatnonzero((labels != np.round(labels)) | (labels < 0))
        if len(bad):
            raise SparseAEError(
                where.format(int(bad[0]) + first),
                expected="a whole-number class label",
                got=repr(cells[int(bad[0])]),
                fix="Encode the classes as 0, 1, 2, ... (or as words, such as cat and dog).",
            )
        return labels, None
    words = [c.strip() for c in cells]
    if "" in words:
        raise SparseAEError(
            where.format(words.index("") + first),
            expected="a class label in every row",
            got="an empty cell",
            fix="Fill in the label, or drop the row.",
        )
    return class_numbers(words)


def class_numbers(words: list[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Classes named by words as numbers ``0..C-1`` in the words' sorted order, and the sorted words."""
    names = tuple(sorted(set(words)))
    number = {name: i for i, name in enumerate(names)}
    return np.array([number[w] for w in words], dtype=np.float64), names


Encoding = tuple[int, str, str]
"""A text file's byte-order mark length, Python codec and encoding name (for messages)."""


def _encoding(path: Path) -> Encoding:
    """UTF-8, or UTF-8/16/32 after a byte-order mark (as Excel writes them)."""
    with open(path, "rb") as f:
        head = f.read(4)
    bom, name = next(((b, n) for b, n in _BOMS if head.startswith(b)), (b"", "UTF-8"))
    return len(bom), _CODECS.get(bom, "utf-8"), name


@contextmanager
def _text(path: Path, encoding: Encoding) -> Iterator[TextIO]:
    """``path`` opened as text after its byte-order mark; a decoding error is reported with its byte."""
    skip, codec, _ = encoding
    raw = open(path, "rb")  # closed by the wrapper
    raw.seek(skip)
    with io.TextIOWrapper(raw, encoding=codec, newline="") as f:
        try:
            yield f
        except UnicodeDecodeError:
            raise _undecodable(path, encoding) from None


def _undecodable(path: Path, encoding: Encoding) -> SparseAEError:
    """The error for a file that is not in its encoding, naming the first byte that is not."""
    skip, codec, name = encoding
    decoder, at = codecs.getincrementaldecoder(codec)(), skip
    with open(path, "rb") as f:
        f.seek(skip)
        for chunk in [*iter(lambda: f.read(1 << 20), b""), b""]:
            held = len(decoder.getstate()[0])
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                at += e.start - held
                break
            at += len(chunk)
        f.seek(at)
        bad = f.read(4)
    return SparseAEError(
        str(path),
        expected="a UTF-8 text file (or UTF-16 with a byte-order mark, as Excel writes it)",
        got=f"bytes that are not {name} (at byte {at}: {bad!r})",
        fix="Save it as UTF-8 (Excel: Save As 'CSV UTF-8'; from Latin-1: iconv -f latin1 -t utf-8 in.csv > out.csv).",
    )


def _sniff(sample: str, complete: bool) -> str:
    """The delimiter of the first rows of ``sample``: the one that cuts every row into the same number of
    fields (two or more), preferring more numeric fields, then the order of `DELIMITERS`.

    When none cuts every row alike, the one that cuts the first row most (the ragged-row error then
    names the line); ``,`` when none cuts it at all. ``complete``: ``sample`` is the whole file (else its
    last row may be cut short, and is not looked at).
    """
    best, best_score, first_widths = ",", None, {}
    for rank, delimiter in enumerate(DELIMITERS):
        reader = csv.reader(io.StringIO(sample, newline=""), delimiter=delimiter, skipinitialspace=delimiter == " ")
        try:
            rows = [row for row in islice(reader, SNIFF_ROWS) if row]
        except csv.Error:
            continue  # e.g. a field over the size limit; the full read reports it
        rows = rows if complete or len(rows) < 2 else rows[:-1]
        if not rows:
            continue
        while all(len(row) > 1 and not row[-1].strip() for row in rows):  # trailing delimiters
            rows = [row[:-1] for row in rows]
        first_widths[delimiter] = len(rows[0])
        widths = {len(row) for row in rows[1:]} or {len(rows[0])}
        if len(widths) != 1 or min(widths) < 2 or len(rows[0]) < min(widths):
            continue
        cells = [cell for row in rows[1:] or rows for cell in row]
        score = (sum(map(_is_number, cells)) / len(cells), -rank)
        if best_score is None or score > best_score:
            best, best_score = delimiter, score
    if best_score is None and first_widths:
        widest = max(first_widths.values())
        best = next(d for d in DELIMITERS if first_widths.get(d) == widest) if widest > 1 else ","
    return best


def _without_empty_end(row: list[str]) -> list[str]:
    """``row`` less the empty cells it ends with (a row ending in a delimiter), keeping one cell at least."""
    end = len(row)
    while end > 1 and not row[end - 1].strip():
        end -= 1
    return row[:end]


def _drop_empty_last_columns(path: Path, header: list[str] | None, body: list[list[str]], delimiter: str) -> list[str] | None:
    """Drop the last column while it is empty in every data row (rows ending in a delimiter), and log it."""
    dropped = 0
    while all(len(row) > 1 and not row[-1].strip() for row in body):
        for row in body:
            row.pop()
        dropped += 1
    width = len(body[0])
    names = []
    while header is not None and len(header) > width and (dropped > len(names) or not header[-1]):
        names.append(header.pop())
    if dropped or names:
        named = [n for n in names if n]
        log.info(
            "%s: %s",
            path.name,
            f"column(s) {', '.join(map(repr, reversed(named)))} empty in every row: left out"
            if named
            else f"an empty last column (rows ending in {delimiter!r}): left it out",
        )
    return header


def pick_columns(
    path: Path,
    names: list[str],
    columns: str | None,
    drop_columns: str | None,
    label: int | None,
    *,
    numbered: bool = False,
    skip: tuple[int, ...] = (),
    text: int | None = None,
) -> list[int]:
    """The feature columns of a table with columns ``names``, in file order: ``columns`` (all when unset,
    but ``skip``) less ``drop_columns``, the label column and the ``text`` column."""
    chosen = _resolve(path, "--columns", columns, names, numbered) if columns is not None else None
    dropped = set(_resolve(path, "--drop-columns", drop_columns, names, numbered)) if drop_columns is not None else set()
    keep = [i for i in range(len(names)) if (i in chosen if chosen is not None else i not in skip)]
    features = [i for i in keep if i not in dropped and i not in (label, text)]
    if not features:
        given = [f"{flag} {value!r}" for flag, value in (("--columns", columns), ("--drop-columns", drop_columns)) if value]
        raise SparseAEError(
            f"{path} columns",
            expected="at least one feature column",
            got="none left"
            + (f" besides the label column {names[label]!r}" if label is not None else "")
            + (f" besides the text column {names[text]!r}" if text is not None else "")
            + (f" after {' and '.join(given)}" if given else ""),
            fix="Check --columns and --drop-columns.",
        )
    return features


def _resolve(path: Path, flag: str, spec: str, names: list[str], numbered: bool) -> list[int]:
    """The columns ``spec`` names: comma-separated names, numbers, ``FIRST:LAST`` ranges and glob patterns."""
    picked: list[int] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        if item in names:
            picked.append(names.index(item))
        elif ":" in item:
            first, _, last = item.partition(":")
            a, b = _position(path, flag, first.strip(), names, numbered), _position(path, flag, last.strip(), names, numbered)
            if a > b:
                raise SparseAEError(
                    f"{path} {flag}",
                    expected="a range FIRST:LAST with FIRST before LAST in the file",
                    got=repr(item),
                    fix=f"Write it the other way round: {last.strip()}:{first.strip()}.",
                )
            picked.extend(range(a, b + 1))
        elif any(c in item for c in "*?["):
            hits = [i for i, name in enumerate(names) if fnmatchcase(name, item)]
            if not hits:
                raise _unknown_column(path, flag, item, names, numbered)
            picked.extend(hits)
        else:
            picked.append(_position(path, flag, item, names, numbered))
    return picked


def _position(path: Path, flag: str, item: str, names: list[str], numbered: bool) -> int:
    if item in names:
        return names.index(item)
    if re.fullmatch(r"-?\d+", item) and -len(names) <= int(item) < len(names):
        return int(item) % len(names)
    raise _unknown_column(path, flag, item, names, numbered)


def _unknown_column(path: Path, flag: str, item: str, names: list[str], numbered: bool) -> SparseAEError:
    close = [] if numbered else [n for n in names if n.lower() == item.lower()][:1] or get_close_matches(item, names, 1)
    return SparseAEError(
        f"{path} {flag}",
        expected=f"column numbers 0 to {len(names) - 1} (the file has no header)"
        if numbered
        else f"columns of the file ({summary(names, 20)}), or their numbers 0 to {len(names) - 1}",
        got=repr(item),
        fix="".join(f"Did you mean {c!r}? " for c in close)
        + "Name columns the file has, comma-separated; FIRST:LAST ranges and patterns such as 'x*' work too.",
    )


def summary(names: list[str], most: int = 6) -> str:
    """``names`` joined, cut in the middle when there are more than ``most``."""
    if len(names) <= most:
        return ", ".join(names)
    return ", ".join(names[: most - 2]) + f", ... ({len(names) - most + 1} more), " + names[-1]


def log_columns(
    path: Path, names: list[str], features: list[int], label: int | None, width: int, values: int, text: int | None = None
) -> None:
    used = [names[i] for i in features]
    left = [names[i] for i in range(width) if i not in set(features) and i not in (label, text)]
    log.info(
        "%s: training on %d column%s: %s%s%s%s%s",
        path.name,
        len(used),
        "" if len(used) == 1 else "s",
        summary(used),
        f" ({values} values per row)" if values != len(used) else "",
        f"; label column: {names[label]}" if label is not None else "",
        f"; text column: {names[text]}" if text is not None else "",
        f"; left out: {summary(left)}" if left else "",
    )


_ROW_NUMBER_NAMES = re.compile(r"(?i)id|index|idx|row|unnamed: \d+|__index_level_\d+__")


def warn_row_numbers(path: Path, names: list[str], features: list[int], values: list[np.ndarray | None], numbered: bool) -> None:
    """Warn about feature columns that look like row numbers: by name, or by holding 0..n-1 or 1..n.

    ``values``: each feature column's values, ``None`` for a column of vectors.
    """
    for i, column in zip(features, values, strict=True):
        n = 0 if column is None else len(column)
        counts = n >= 3 and (np.array_equal(column, np.arange(n)) or np.array_equal(column, np.arange(1, n + 1)))
        named = not numbered and _ROW_NUMBER_NAMES.fullmatch(names[i]) is not None
        if counts or named:
            flag = names[i] if names[i] and "," not in names[i] else str(i)
            log.warning(
                "%s: column %s looks like a row number (%s), not a feature, and is trained on as one. "
                "Pass --drop-columns %s to leave it out (or --columns to choose the feature columns).",
                path.name,
                repr(names[i]) if not numbered else i,
                "it counts the rows" if counts else "by its name",
                flag,
            )


def _not_a_number(
    path: Path, line: int, header: list[str] | None, column: int, text: str, delimiter: str, sure: bool
) -> SparseAEError:
    where = f"{path}, line {line}, column {_column_name(header, column)}"
    if not sure and column == 0 and len(header or [text]) == 1:
        return SparseAEError(
            f"{path}, line {line}",
            expected="numbers separated by a delimiter (none of , ; tab | or space separates the first rows alike)",
            got=f"one column, and {text[:60]!r} is not a number",
            fix="Pass --csv-delimiter with the character between the values (e.g. --csv-delimiter ':').",
        )
    if delimiter != "," and re.fullmatch(r"\s*[-+]?\d*,\d+\s*", text):
        fix = "Write numbers with a decimal point (1.5, not 1,5), e.g. save the file with '.' as decimal separator."
    else:
        name = header[column] if header and header[column] and "," not in header[column] else str(column)
        fix = (
            "Drop the non-numeric columns, or name the label column with --label-column. "
            f"--drop-columns {name} leaves this column out."
        )
    return SparseAEError(where, expected="a number", got=repr(text), fix=fix)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _column_index(path: Path, header: list[str] | None, name: str, width: int, flag: str = "--label-column") -> int:
    if header is not None and name in header:
        return header.index(name)
    try:
        number = int(name)
    except ValueError:
        number = None
    if number is not None and -width <= number < width:
        return number % width
    raise SparseAEError(
        f"{path} {flag}",
        expected=f"a column name ({', '.join(header)})" if header else f"a column number below {width}",
        got=repr(name),
        fix="Name a column the file has.",
    )


def _column_name(header: list[str] | None, column: int) -> str:
    return repr(header[column]) if header else str(column)

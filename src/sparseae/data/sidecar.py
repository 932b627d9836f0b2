"""The text of each row of an array file, from a file beside it: ``embeddings.npy`` with ``embeddings.txt``
(one line per row) or ``embeddings.jsonl`` (one JSON object with a ``"text"`` key, or a JSON string, per line).

A ``.txt`` line ends at ``\\n`` alone (a ``\\r`` before it is dropped), so a text holding other line
breaks (``\\u2028``) stays one row; a text with a newline needs ``.jsonl``. A ``.jsonl`` file may have
blank lines, which are skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

from sparseae.errors import SparseAEError

SUFFIXES = (".txt", ".jsonl")


def find_texts(data: Path) -> Path | None:
    """The texts file beside the array file ``data`` (same name, ``.txt`` or ``.jsonl``), if there is one."""
    found = [data.with_suffix(s) for s in SUFFIXES if data.with_suffix(s).is_file()]
    if len(found) > 1:
        raise SparseAEError(
            str(data),
            expected="one file of texts beside it",
            got=f"{found[0].name} and {found[1].name}",
            fix=f"Name the one to use: --texts {found[0]} (or remove the other).",
        )
    return found[0] if found else None


def read_row_texts(path: Path, rows: int, data: str) -> tuple[str, ...]:
    """The ``rows`` texts in ``path`` (``.txt`` or ``.jsonl``), one per row of ``data`` (named in messages)."""
    if path.suffix.lower() not in SUFFIXES:
        raise SparseAEError(
            f"--texts {path}", expected="a .txt or .jsonl file", got=repr(path.suffix or path.name), fix="Convert it."
        )
    try:
        content = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SparseAEError(f"--texts {path}", expected="a file of texts", got="no such file", fix="Check the path.") from None
    except UnicodeDecodeError as e:
        raise SparseAEError(
            str(path), expected="UTF-8 text", got=f"a byte that is not UTF-8 at {e.start}", fix="Save it as UTF-8."
        ) from None
    lines = content.split("\n")
    if lines and lines[-1] == "":  # the newline that ends the last line
        lines.pop()
    lines = [line.removesuffix("\r") for line in lines]
    if path.suffix.lower() == ".jsonl":
        texts = tuple(_json_text(path, n, line) for n, line in enumerate(lines, 1) if line.strip())
    else:
        texts = tuple(lines)
    if len(texts) != rows:
        kind = "line" if path.suffix.lower() == ".txt" else "JSON line"
        raise SparseAEError(
            str(path),
            expected=f"one text per row of {data} ({rows} rows)",
            got=f"{len(texts)} {kind}s",
            fix="Write one text per row, in the rows' order"
            + (" (a text with a newline in it needs .jsonl: one JSON string per line)." if kind == "line" else "."),
        )
    return texts


def _json_text(path: Path, number: int, line: str) -> str:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        raise SparseAEError(
            f"{path}, line {number}", expected="a JSON object or string", got=f"invalid JSON ({e.msg})", fix="Fix the line."
        ) from None
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        return value["text"]
    if isinstance(value, str):
        return value
    raise SparseAEError(
        f"{path}, line {number}",
        expected='a JSON string, or an object with a "text" string',
        got=line.strip()[:60],
        fix='Write each row as {"text": "..."} or as "...".',
    )

"""Arrays from files: .npy, .npz, .safetensors, .pt, CSV and Parquet.

``.npy`` and ``.safetensors`` files are read in place, a run of rows at a time (never
loaded whole), so they can be streamed when larger than memory. The others are loaded
into memory. Every loader checks what it reads: numbers only, finite, one shape.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sparseae.data.stream import RowReader
from sparseae.errors import SparseAEError

ARRAY_SUFFIXES = (".npy", ".npz", ".safetensors", ".pt", ".pth", ".csv", ".parquet")
STREAMABLE_SUFFIXES = (".npy", ".safetensors")


class Arrays:
    """What a file holds: samples, and where the file has them, labels and its own test split."""

    def __init__(
        self,
        x: Tensor | RowReader,
        labels: Tensor | None = None,
        test: Tensor | None = None,
        test_labels: Tensor | None = None,
        label_names: tuple[str, ...] | None = None,
    ):
        self.x, self.labels, self.test, self.test_labels, self.label_names = x, labels, test, test_labels, label_names


# --- files read in place ------------------------------------------------------------


class NpyReader(RowReader):
    """A ``.npy`` file, read row range by row range with ``os.pread`` (never loaded whole).

    Reading with ``pread`` rather than through ``np.memmap`` keeps the pages read in the
    kernel's page cache instead of the process, so a streamed epoch does not grow the
    process's memory with the file.
    """

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                header = read_header(f)  # (shape, fortran_order, dtype)
            except (ValueError, OSError) as e:
                raise SparseAEError(
                    str(path),
                    expected="a .npy file written by numpy.save",
                    got=f"unreadable ({e})",
                    fix="Save it with numpy.save.",
                ) from None
            self.offset = f.tell()
        shape, fortran, dtype = header
        _check_dtype(path, dtype)
        if fortran and len(shape) > 1:
            raise SparseAEError(
                str(path),
                expected="an array in C (row-major) order",
                got="a Fortran-ordered array",
                fix="Save np.ascontiguousarray(x) instead.",
            )
        self.shape, self.dtype = _check_shape(path, tuple(shape)), dtype
        self.row_bytes = dtype.itemsize * math.prod(self.shape[1:])
        size = path.stat().st_size
        if size < self.offset + self.row_bytes * self.shape[0]:
            raise SparseAEError(
                str(path),
                expected=f"{self.offset + self.row_bytes * self.shape[0]} bytes for shape {self.shape}",
                got=f"{size} bytes (truncated)",
                fix="The file is incomplete: write it again.",
            )

    def read(self, start: int, stop: int) -> np.ndarray:
        return _pread(self.path, self.offset + start * self.row_bytes, (stop - start) * self.row_bytes, self.dtype).reshape(
            stop - start, *self.shape[1:]
        )


_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": "bf16",
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
}


class SafetensorsReader(RowReader):
    """One tensor of a ``.safetensors`` file, read row range by row range (never loaded whole)."""

    def __init__(self, path: Path, key: str | None = None):
        self.path = path
        header = _safetensors_header(path)
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        key = key if key is not None else _pick_key(path, list(tensors), ("x", "activations", "train"))
        if key not in tensors:
            raise SparseAEError(
                f"{path} key", expected=f"one of {', '.join(sorted(tensors))}", got=repr(key), fix="Pass --key with one of them."
            )
        info = tensors[key]
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise SparseAEError(
                f"{path} tensor {key!r}",
                expected=f"numbers ({', '.join(_SAFETENSORS_DTYPES)})",
                got=info["dtype"],
                fix="Save the tensor as float32.",
            )
        self.key, self.dtype = key, _SAFETENSORS_DTYPES[info["dtype"]]
        self.shape = _check_shape(path, tuple(info["shape"]))
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
        self.row_bytes = (2 if self.dtype == "bf16" else np.dtype(self.dtype).itemsize) * math.prod(self.shape[1:])
        begin, end = _offsets(path, key, info)
        if end - begin != self.row_bytes * self.shape[0] or 8 + header_len + end > path.stat().st_size:
            raise SparseAEError(
                f"{path} tensor {key!r}",
                expected=f"{self.row_bytes * self.shape[0]} bytes for shape {self.shape} within the file",
                got=f"offsets {begin}..{end} in a file of {path.stat().st_size} bytes (truncated or damaged)",
                fix="Write the file again.",
            )
        self.offset = 8 + header_len + begin

    def read(self, start: int, stop: int) -> np.ndarray:
        n = stop - start
        dtype = np.uint16 if self.dtype == "bf16" else self.dtype
        raw = _pread(self.path, self.offset + start * self.row_bytes, n * self.row_bytes, np.dtype(dtype))
        if self.dtype == "bf16":  # numpy has no bfloat16: reinterpret through torch
            return torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16).float().numpy().reshape(n, *self.shape[1:])
        return raw.reshape(n, *self.shape[1:])


def _offsets(path: Path, key: str, info: Any) -> tuple[int, int]:
    offsets = info.get("data_offsets") if isinstance(info, dict) else None
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) and o >= 0 for o in offsets)):
        raise SparseAEError(
            f"{path} tensor {key!r}", expected="data offsets [begin, end]", got=repr(offsets), fix="Write the file again."
        )
    return offsets[0], offsets[1]


def _safetensors_header(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        try:
            if not 0 < n <= size - 8:
                raise ValueError
            header = json.loads(f.read(n))
            if not isinstance(header, dict):
                raise ValueError
        except (ValueError, UnicodeDecodeError):
            raise SparseAEError(
                str(path),
                expected="a safetensors file",
                got="a file without a valid safetensors header",
                fix="Save it with safetensors.torch.save_file.",
            ) from None
    return header


def _pread(path: Path, offset: int, nbytes: int, dtype: np.dtype) -> np.ndarray:
    buf = bytearray(nbytes)
    view = memoryview(buf)
    fd = os.open(path, os.O_RDONLY)
    try:
        done = 0
        while done < nbytes:
            got = os.preadv(fd, [view[done:]], offset + done)
            if got == 0:
                raise SparseAEError(str(path), expected=f"{nbytes} more bytes", got="end of file", fix="The file is truncated.")
            done += got
    finally:
        os.close(fd)
    return np.frombuffer(buf, dtype=dtype)


# --- files loaded whole ---------------------------------------------------------------


def read_arrays(path: Path, *, key: str | None = None, label_column: str | None = None) -> Arrays:
    """The samples (and labels) in an array file; ``.npy``/``.safetensors`` come back as readers.

    Every problem with the file's contents is a :class:`SparseAEError` naming the file: the
    specific checks below say what was wrong; anything a parser underneath raises on a
    damaged file (zip, pickle, JSON, header errors) is reported as such.
    """
    try:
        return _read_arrays(path, key, label_column)
    except SparseAEError:
        raise
    except Exception as e:  # a damaged file: the parsers underneath raise all kinds of errors
        raise damaged(path, e) from None


def damaged(path: Path, error: BaseException) -> SparseAEError:
    """The error for a file that its parser could not read."""
    text = " ".join(str(error).split())[:200]
    return SparseAEError(
        str(path),
        expected=f"a readable {path.suffix or 'data'} file",
        got=f"one its parser rejects ({type(error).__name__}{': ' + text if text else ''})",
        fix="The file is damaged or not in this format: write it again.",
    )


def _read_arrays(path: Path, key: str | None, label_column: str | None) -> Arrays:
    if not path.is_file():
        raise SparseAEError(
            str(path),
            expected=f"an array file ({', '.join(ARRAY_SUFFIXES)})",
            got="no such file" if not path.exists() else "a directory",
            fix="Check the path.",
        )
    if path.stat().st_size == 0:
        raise SparseAEError(str(path), expected="a file with data", got="an empty file", fix="Write the data again.")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _check_labels(path, Arrays(NpyReader(path)), label_column, key)
    if suffix == ".safetensors":
        header = _safetensors_header(path)
        if key is None and ({"x_train", "x_test"} <= set(header) or {"train", "test"} <= set(header)):
            from safetensors.torch import load_file

            return _from_dict(path, load_file(str(path)), key, label_column)
        reader = SafetensorsReader(path, key)
        names = sorted(k for k in header if k != "__metadata__")
        label = label_column or ("y" if reader.key == "x" and "y" in names else None)
        labels = None
        if label is not None:
            if label not in names:
                raise SparseAEError(
                    f"{path} labels",
                    expected=f"one of {', '.join(names)}",
                    got=repr(label),
                    fix="Pass --label-column with one of them.",
                )
            from safetensors import SafetensorError, safe_open

            try:
                with safe_open(path, framework="pt") as f:  # labels are small: read whole
                    labels = _tensor(path, label, f.get_tensor(label))
            except (SafetensorError, ValueError, OSError) as e:
                raise SparseAEError(
                    f"{path} labels", expected="a readable tensor", got=f"an error ({e})", fix="Save it again."
                ) from None
        return _check_labels(path, Arrays(reader, labels), None, None)
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (ValueError, OSError) as e:
            raise SparseAEError(
                str(path), expected="a .npz file of numeric arrays", got=f"unreadable ({e})", fix="Save it with numpy.savez."
            ) from None
        return _from_dict(path, arrays, key, label_column)
    if suffix in (".pt", ".pth"):
        return _from_dict(path, _torch_load(path), key, label_column)
    if suffix == ".csv":
        return _read_csv(path, label_column)
    if suffix == ".parquet":
        return _read_parquet(path, label_column)
    raise SparseAEError(
        str(path), expected=f"a file ending in {', '.join(ARRAY_SUFFIXES)}", got=repr(suffix or path.name), fix="Convert it."
    )


def _torch_load(path: Path) -> dict[str, Any]:
    import pickle

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)  # never runs code hidden in the file
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SparseAEError(
            str(path),
            expected="tensors saved with torch.save (loaded with weights_only=True)",
            got=f"a file that cannot be loaded safely ({first[:200]})",
            fix="Save plain tensors, or a dict of tensors: torch.save({'x': x}, path).",
        ) from None
    if isinstance(obj, Tensor):
        return {"x": obj}
    if isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        return obj
    raise SparseAEError(
        str(path),
        expected="a tensor or a dict of tensors",
        got=type(obj).__name__,
        fix="Save torch.save(x, path) or torch.save({'x': x, 'y': labels}, path).",
    )


def _from_dict(path: Path, arrays: dict[str, Any], key: str | None, label_column: str | None) -> Arrays:
    """Pick samples and labels from named arrays (Keras' x_train/x_test/y_train/y_test are understood)."""
    names = [str(k) for k in arrays]
    if len(names) != len(arrays) or any(not isinstance(k, str) for k in arrays):
        raise SparseAEError(str(path), expected="arrays named by strings", got=f"keys {names[:5]}", fix="Name them: {'x': x}.")
    if key is None:
        for train, test, ytrain, ytest in (
            ("x_train", "x_test", "y_train", "y_test"),
            ("train", "test", "train_labels", "test_labels"),
        ):
            if train in arrays and test in arrays:
                return _check_labels(
                    path,
                    Arrays(
                        _tensor(path, train, arrays[train]),
                        _optional(path, ytrain, arrays),
                        _tensor(path, test, arrays[test]),
                        _optional(path, ytest, arrays),
                    ),
                    None,
                    None,
                )
        key = _pick_key(path, names, ("x",))
    if key not in arrays:
        raise SparseAEError(
            f"{path} key", expected=f"one of {', '.join(names)}", got=repr(key), fix="Pass --key with one of them."
        )
    labels = label_column or ("y" if "y" in arrays and key == "x" else None)
    return _check_labels(path, Arrays(_tensor(path, key, arrays[key]), _optional(path, labels, arrays)), None, None)


def _pick_key(path: Path, names: list[str], preferred: tuple[str, ...]) -> str:
    if len(names) == 1:
        return names[0]
    for name in preferred:
        if name in names:
            return name
    raise SparseAEError(
        str(path),
        expected="one array, or arrays named x (and y), or x_train/x_test",
        got=f"arrays {', '.join(names) or '(none)'}",
        fix="Pass --key NAME to say which array holds the samples.",
    )


def _optional(path: Path, name: str | None, arrays: dict[str, Any]) -> Tensor | None:
    if name is None or name not in arrays:
        if name is not None and name not in ("y", "y_train", "y_test", "train_labels", "test_labels"):
            raise SparseAEError(
                f"{path} labels",
                expected=f"one of {', '.join(arrays)}",
                got=repr(name),
                fix="Pass --label-column with one of them.",
            )
        return None
    return _tensor(path, name, arrays[name])


def _tensor(path: Path, name: str, value: Any) -> Tensor:
    if isinstance(value, Tensor):
        value = value.detach()
        if not (value.is_floating_point() or value.dtype in (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32,
                                                             torch.int64)):  # fmt: skip
            raise SparseAEError(
                f"{path} array {name!r}", expected="numbers (float, int or bool)", got=f"dtype {value.dtype}", fix="Convert it."
            )
        return value.float() if value.is_floating_point() else value.long()
    array = np.asarray(value)
    _check_dtype(path, array.dtype, name)
    if array.dtype.kind == "f":
        return torch.from_numpy(array.astype(np.float32))  # native byte order, a dtype torch knows (not longdouble)
    if array.dtype.kind == "u" and array.dtype.itemsize == 8:
        return torch.from_numpy(array.astype(np.float64))  # uint64 beyond int64 would wrap round to negative
    return torch.from_numpy(array.astype(np.int64) if array.dtype.kind in "iu" else array.astype(np.bool_))


def _check_dtype(path: Path, dtype: np.dtype, name: str | None = None) -> None:
    if dtype.kind not in "fiub":
        raise SparseAEError(
            f"{path}" + (f" array {name!r}" if name else ""),
            expected="numbers (float, int or bool)",
            got=f"dtype {dtype}",
            fix="Convert the data to numbers, e.g. x.astype(np.float32).",
        )


def _check_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) < 2:
        raise SparseAEError(
            str(path),
            expected="a 2-D (or more) array, one sample per row",
            got=f"shape {shape}",
            fix="Reshape it: x.reshape(-1, 1) for one feature, x.reshape(1, -1) for one sample.",
        )
    if any(not isinstance(d, int) or d < 0 for d in shape):
        raise SparseAEError(str(path), expected="a shape of whole numbers >= 0", got=f"shape {shape}", fix="The file is damaged.")
    if shape[0] == 0 or math.prod(shape[1:]) == 0:
        raise SparseAEError(
            str(path), expected="at least one sample with at least one value", got=f"shape {shape}", fix="Check the file."
        )
    return shape


def _check_labels(path: Path, arrays: Arrays, label_column: str | None, key: str | None) -> Arrays:
    if label_column is not None and isinstance(arrays.x, RowReader):
        raise SparseAEError(
            f"{path} labels",
            expected="labels in a file that can hold several arrays (.npz, .safetensors, .pt, CSV, Parquet)",
            got=f"--label-column {label_column} with a .npy file",
            fix="Save samples and labels together: np.savez(path, x=x, y=labels).",
        )
    for x, y, split in ((arrays.x, arrays.labels, "train"), (arrays.test, arrays.test_labels, "test")):
        if x is None:
            continue
        if not isinstance(x, RowReader):
            _check_shape(path, tuple(x.shape))
        if y is not None:
            if y.ndim != 1 or len(y) != len(x) or y.is_floating_point() and not torch.equal(y, y.round()):
                raise SparseAEError(
                    f"{path} {split} labels",
                    expected=f"one whole-number label per sample ({len(x)})",
                    got=f"shape {tuple(y.shape)}, dtype {y.dtype}",
                    fix="Labels are class numbers, one per row.",
                )
    if arrays.test is not None and not isinstance(arrays.x, RowReader) and arrays.test.shape[1:] != arrays.x.shape[1:]:
        raise SparseAEError(
            f"{path} test samples",
            expected=f"the train samples' shape {tuple(arrays.x.shape[1:])}",
            got=f"shape {tuple(arrays.test.shape[1:])}",
            fix="Both splits must hold the same kind of samples.",
        )
    return arrays


def _read_csv(path: Path, label_column: str | None) -> Arrays:
    with open(path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: a BOM is not part of the first cell
        rows = [row for row in csv.reader(f) if row]
    if not rows:
        raise SparseAEError(str(path), expected="rows of numbers", got="an empty file", fix="Write the data again.")
    header = None if all(_is_number(v) for v in rows[0]) else [name.strip() for name in rows[0]]
    body = rows[1:] if header else rows
    width = len(rows[0])
    if not body:
        raise SparseAEError(str(path), expected="rows of numbers under the header", got="only a header", fix="Add data rows.")
    label_index = None
    if label_column is not None:
        label_index = _column_index(path, header, label_column, width)
    values = np.empty((len(body), width), dtype=np.float64)
    for line, row in enumerate(body, start=2 if header else 1):
        if len(row) != width:
            raise SparseAEError(
                f"{path}, line {line}",
                expected=f"{width} values, as on the first line",
                got=f"{len(row)} values",
                fix="Every row needs the same number of columns.",
            )
        for column, text in enumerate(row):
            try:
                values[line - (2 if header else 1), column] = float(text)
            except ValueError:
                if column == label_index:
                    raise SparseAEError(
                        f"{path}, line {line}, column {_column_name(header, column)}",
                        expected="a whole-number class label",
                        got=repr(text),
                        fix="Encode the classes as 0, 1, 2, ...",
                    ) from None
                raise SparseAEError(
                    f"{path}, line {line}, column {_column_name(header, column)}",
                    expected="a number",
                    got=repr(text),
                    fix="Drop the non-numeric columns, or name the label column with --label-column.",
                ) from None
    if label_index is not None:
        labels = values[:, label_index]
        bad = np.flatnonzero((labels != np.round(labels)) | (labels < 0))
        if len(bad):
            raise SparseAEError(
                f"{path}, line {int(bad[0]) + (2 if header else 1)}, column {_column_name(header, label_index)}",
                expected="a whole-number class label",
                got=repr(body[int(bad[0])][label_index]),
                fix="Encode the classes as 0, 1, 2, ...",
            )
    return _split_label_column(path, values, label_index)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _column_index(path: Path, header: list[str] | None, name: str, width: int) -> int:
    if header is not None and name in header:
        return header.index(name)
    try:
        number = int(name)
    except ValueError:
        number = None
    if number is not None and -width <= number < width:
        return number % width
    raise SparseAEError(
        f"{path} --label-column",
        expected=f"a column name ({', '.join(header)})" if header else f"a column number below {width}",
        got=repr(name),
        fix="Name a column the file has.",
    )


def _column_name(header: list[str] | None, column: int) -> str:
    return repr(header[column]) if header else str(column)


def _split_label_column(path: Path, values: np.ndarray, label_index: int | None) -> Arrays:
    if label_index is None:
        return Arrays(torch.from_numpy(values.astype(np.float32)))
    labels = values[:, label_index]
    x = np.delete(values, label_index, axis=1)
    if x.shape[1] == 0:
        raise SparseAEError(
            str(path), expected="feature columns besides the label", got="only the label column", fix="Check the file."
        )
    return _check_labels(path, Arrays(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(labels)), None, None)


def _read_parquet(path: Path, label_column: str | None) -> Arrays:
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
    if label_column is not None and label_column not in table.column_names:
        raise SparseAEError(
            f"{path} --label-column",
            expected=f"a column name ({', '.join(table.column_names)})",
            got=repr(label_column),
            fix="Name a column the file has.",
        )
    columns, names, bad = [], [], []
    for name in table.column_names:
        column = table.column(name)
        if name == label_column:
            continue
        kind = column.type
        if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
            # An embedding per row, stored as a list column.
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
                columns.append(np.asarray(rows, dtype=np.float64))
            except (TypeError, ValueError):
                bad.append(f"{name} ({kind})")
                continue
            names.append(name)
        elif pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
            if column.null_count:
                raise SparseAEError(
                    f"{path} column {name!r}",
                    expected="a value in every row",
                    got=f"{column.null_count} missing value(s)",
                    fix="Fill or drop the rows with missing values.",
                )
            columns.append(column.to_numpy().astype(np.float64)[:, None])
            names.append(name)
        else:
            bad.append(f"{name} ({kind})")
    if bad:
        raise SparseAEError(
            str(path),
            expected="numeric columns (or list columns of numbers)",
            got=f"non-numeric column(s) {', '.join(bad)}",
            fix="Drop them, or name the label column with --label-column.",
        )
    if not columns or table.num_rows == 0:
        raise SparseAEError(str(path), expected="rows of numbers", got="no numeric data", fix="Check the file.")
    x = torch.from_numpy(np.concatenate(columns, axis=1).astype(np.float32))
    labels = None
    if label_column is not None:
        raw = table.column(label_column)
        if not (pa.types.is_integer(raw.type) or pa.types.is_floating(raw.type)) or raw.null_count:
            raise SparseAEError(
                f"{path} column {label_column!r}",
                expected="whole-number class labels in every row",
                got=f"type {raw.type}" + (f", {raw.null_count} missing" if raw.null_count else ""),
                fix="Encode the classes as 0, 1, 2, ...",
            )
        labels = torch.from_numpy(raw.to_numpy().astype(np.float64))
    return _check_labels(path, Arrays(x, labels), None, None)

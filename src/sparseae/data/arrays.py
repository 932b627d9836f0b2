"""Arrays from files: .npy, .npz, .safetensors, .pt, CSV and Parquet.

``.npy`` and ``.safetensors`` files are read in place, a run of rows at a time (never
loaded whole), so they can be streamed when larger than memory. The others are loaded
into memory. Every loader checks what it reads: numbers only, finite, one shape.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sparseae.data.parquet import read_parquet
from sparseae.data.rows import RowInfo
from sparseae.data.stream import RowReader
from sparseae.data.tables import Table, read_csv
from sparseae.errors import SparseAEError

log = logging.getLogger(__name__)

ARRAY_SUFFIXES = (".npy", ".npz", ".safetensors", ".pt", ".pth", ".csv", ".parquet")
STREAMABLE_SUFFIXES = (".npy", ".safetensors")


class Arrays:
    """What a file holds: samples, and where the file has them, labels, its own test split, what each
    row is (``rows``: the rows of ``x``, then those of ``test``) and a name per feature (``columns``)."""

    def __init__(
        self,
        x: Tensor | RowReader,
        labels: Tensor | None = None,
        test: Tensor | None = None,
        test_labels: Tensor | None = None,
        label_names: tuple[str, ...] | None = None,
        rows: RowInfo | None = None,
        columns: tuple[str, ...] | None = None,
    ):
        self.x, self.labels, self.test, self.test_labels, self.label_names = x, labels, test, test_labels, label_names
        self.rows, self.columns = rows, columns

    def __len__(self) -> int:
        """Rows in all: those of ``x`` and of ``test``."""
        return len(self.x) + (0 if self.test is None else len(self.test))


# --- files read in place ------------------------------------------------------------


class NpyReader(RowReader):
    """A ``.npy`` file, read row range by row range with ``os.pread`` (never loaded whole).

    Reading with ``pread`` rather than through ``np.memmap`` keeps the pages read in the
    kernel's page cache instead of the process, so a streamed epoch does not grow the
    process's memory with the file. A Fortran-ordered (column-major) file holds each
    column as a run of ``len(self)`` values: a range of rows is the same stretch of every
    run, read run by run.
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
        self.shape, self.dtype = _check_shape(path, tuple(shape)), dtype
        self.row_bytes = dtype.itemsize * math.prod(self.shape[1:])
        self.fortran = bool(fortran) and math.prod(self.shape[1:]) > 1  # one value per row: the same either way
        if self.fortran:
            log.info(
                "%s: a Fortran-ordered (column-major) array, read column by column; "
                "np.save(path, np.ascontiguousarray(x)) makes it faster to read",
                path.name,
            )
        size = path.stat().st_size
        if size < self.offset + self.row_bytes * self.shape[0]:
            raise SparseAEError(
                str(path),
                expected=f"{self.offset + self.row_bytes * self.shape[0]} bytes for shape {self.shape}",
                got=f"{size} bytes (truncated)",
                fix="The file is incomplete: write it again.",
            )

    def read(self, start: int, stop: int) -> np.ndarray:
        if self.fortran:
            return self._read_fortran(start, stop)
        return _pread(self.path, self.offset + start * self.row_bytes, (stop - start) * self.row_bytes, self.dtype).reshape(
            stop - start, *self.shape[1:]
        )

    def _read_fortran(self, start: int, stop: int) -> np.ndarray:
        n, rows, item = stop - start, len(self), self.dtype.itemsize
        runs = math.prod(self.shape[1:])  # one run of `rows` values per column
        if 2 * n >= rows:  # the rows make half of each run or more: one read from the first row to the end
            buf = bytearray(runs * rows * item)
            _read_into(self.path, [(memoryview(buf)[start * item :], self.offset + start * item)])
            values = np.frombuffer(buf, self.dtype).reshape(runs, rows)[:, start:stop]
        else:
            buf = bytearray(runs * n * item)
            view, size = memoryview(buf), n * item
            _read_into(
                self.path, [(view[j * size : (j + 1) * size], self.offset + (j * rows + start) * item) for j in range(runs)]
            )
            values = np.frombuffer(buf, self.dtype).reshape(runs, n)
        # Runs are in Fortran order of the sample's axes: reversed, they are in C order; .T puts rows first.
        return np.ascontiguousarray(values.reshape(*self.shape[:0:-1], n).T)


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
    _read_into(path, [(memoryview(buf), offset)])
    return np.frombuffer(buf, dtype=dtype)


def _read_into(path: Path, parts: list[tuple[memoryview, int]]) -> None:
    """Fill each view of ``parts`` with the file's bytes from its offset on (one open of the file for all)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:  # a file read in place (streamed, a shard) was deleted or moved while training ran
        raise SparseAEError(
            str(path),
            expected="the file to stay in place while it is read",
            got=f"{e.strerror or e} (deleted, moved or made unreadable during the run)",
            fix="Put it back (or write the data again) and continue with `sparseae train --resume RUN`; "
            "the run's checkpoints are intact.",
        ) from None
    try:
        for view, offset in parts:
            _read_at(fd, path, view, offset)
    finally:
        os.close(fd)


def _read_at(fd: int, path: Path, view: memoryview, offset: int) -> None:
    """Fill ``view`` with the bytes of the open file ``fd`` from ``offset`` on."""
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise SparseAEError(
                str(path), expected=f"{len(view) - done} more bytes", got="end of file", fix="The file is truncated."
            )
        done += got


# --- files loaded whole ---------------------------------------------------------------


def read_arrays(
    path: Path,
    *,
    key: str | None = None,
    label_column: str | None = None,
    columns: str | None = None,
    drop_columns: str | None = None,
    csv_delimiter: str | None = None,
    text_column: str | None = None,
) -> Arrays:
    """The samples (and labels) in an array file; ``.npy``/``.safetensors`` come back as readers.

    ``columns``, ``drop_columns``, ``text_column`` (CSV, Parquet) and ``csv_delimiter`` are those of
    `DataConfig`. Every problem with the file's contents is a
    `SparseAEError` naming the file: the specific checks below say what was wrong;
    anything a parser underneath raises on a damaged file (zip, pickle, JSON, header
    errors) is reported as such.
    """
    try:
        return _read_arrays(path, key, label_column, (columns, drop_columns, csv_delimiter), text_column)
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


def _read_arrays(
    path: Path, key: str | None, label_column: str | None, table: tuple[str | None, ...], text_column: str | None
) -> Arrays:
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
    _check_table_flags(path, suffix, *table, text_column)
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
        return _table(path, read_csv(path, label_column, *table, text_column))
    if suffix == ".parquet":
        return _table(path, read_parquet(path, label_column, *table[:2], text_column))
    raise SparseAEError(
        str(path), expected=f"a file ending in {', '.join(ARRAY_SUFFIXES)}", got=repr(suffix or path.name), fix="Convert it."
    )


def _check_table_flags(
    path: Path, suffix: str, columns: str | None, drop_columns: str | None, csv_delimiter: str | None, text_column: str | None
) -> None:
    """Refuse column flags for a file without named columns, rather than ignore them."""
    for flag, value, kinds in (
        ("--columns", columns, {".csv": "CSV", ".parquet": "Parquet"}),
        ("--drop-columns", drop_columns, {".csv": "CSV", ".parquet": "Parquet"}),
        ("--text-column", text_column, {".csv": "CSV", ".parquet": "Parquet"}),
        ("--csv-delimiter", csv_delimiter, {".csv": "CSV"}),
    ):
        if value is not None and suffix not in kinds:
            raise SparseAEError(
                f"{path} {flag}",
                expected=f"a {' or '.join(kinds.values())} file, which {flag} applies to",
                got=f"{flag} {value!r} with a {suffix or 'data'} file",
                fix=f"Leave {flag} out for this file.",
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


def _table(path: Path, table: Table) -> Arrays:
    labels = None if table.labels is None else torch.from_numpy(table.labels)
    rows = None if table.texts is None else RowInfo(texts=table.texts)
    arrays = Arrays(torch.from_numpy(table.x.astype(np.float32)), labels, label_names=table.label_names, rows=rows,
                    columns=table.columns)  # fmt: skip
    return _check_labels(path, arrays, None, None)

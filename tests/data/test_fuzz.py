"""Fuzz tests of every parser that reads user files: IDX, the array loaders, config JSON.

Each property feeds generated input (random bytes, and near-valid files built to hit the
edges: wrong header fields, truncated or extra payload, odd dtypes and shapes) to a public
reader and asserts that it either returns sane data (float32, finite where the loader
promises it, consistent shapes, labels that fit) or raises :class:`SparseAEError`, the one
documented input error. Anything else (IndexError, struct.error, UnicodeDecodeError, a numpy
or torch error, RecursionError, ...) fails the test, and hypothesis shrinks it to a small input.

Targets: ``read_idx`` (raw and gzip) and MNIST-layout IDX directories through ``load_data``;
``.npy`` and ``.safetensors`` through ``load_data`` (``load="memory"`` and ``"stream"``);
``.npz``, ``.pt``, CSV and Parquet through ``load_data``; ``from_dict`` for TrainConfig,
DataConfig and DenseConfig, ``read_json``, ``read_tensors`` and ``model_from_cfg``.

Budget: each ``@given`` test runs ``SPARSEAE_FUZZ_EXAMPLES`` examples, default 150: the
whole file (22 fuzz tests, 3,300 inputs, plus the regression tests) takes about 15 s on two
idle cores (about 30 s when they are shared). The issue asks for at least 10,000 generated
inputs per parser; that long run, ::

    SPARSEAE_FUZZ_EXAMPLES=10000 .venv/bin/pytest tests/test_fuzz.py -p no:cacheprovider

takes about 18 minutes on the same machine (13 s to 110 s per test; under 0.7 GB of memory),
too long for every CI run. Examples are random per run (no database, not derandomized); a
failure prints the shrunk input and a ``@reproduce_failure`` line. Generated shapes avoid
mid-sized dims (2**20 to 2**40) on purpose: a loader that trusted such a header would allocate
gigabytes before failing, which would hang CI rather than fail it.

A bug that fuzzing finds gets fixed, not tolerated: its name and what went wrong go into
``FIXED_BUGS``, and the input that failed (shrunk) becomes an ``@example`` of a ``test_fixed_*``
regression test (``@_fixed(name, *inputs)``), which runs those inputs on every run.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
import struct
import types
import typing
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as npst
from torch import Tensor

import sparseae
from sparseae._config import from_dict, to_dict
from sparseae.data import DataConfig, load_data, read_idx
from sparseae.data.split import holdout_rows
from sparseae.data.stream import RowStream
from sparseae.errors import SparseAEError
from sparseae.io import model_from_cfg, read_json, read_tensors
from sparseae.models import Autoencoder
from sparseae.models.dense import DenseConfig
from sparseae.training import TrainConfig

pytestmark = pytest.mark.filterwarnings("ignore")  # casts of NaN, torch.load notices: noise at 10,000 examples

EXAMPLES = int(os.environ.get("SPARSEAE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
EXPLICIT = settings(phases=[Phase.explicit], deadline=None, database=None, report_multiple_bugs=False)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """One directory per module; each example overwrites its files (a tmp_path per example is slow)."""
    return tmp_path_factory.mktemp("fuzz")


def _write(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    return path


# --- fixed bugs: each keeps its failing inputs in a regression test ---------------------------


FIXED_BUGS: dict[str, str] = {
    "idx-size-zero-dim": "parse_idx: dims (2**32-1, 0, 2**32-1) hold 0 bytes, and numpy's reshape raised ValueError",
    "idx-dir-float-range": "load_mnist: float labels >= 2**63 became -2**63, and float64 pixels beyond float32 became inf",
    "read-tensors": "io.read_tensors let safetensors/torch raise TypeError for a header shape [0, 2**63]",
    "idx-dir-unchecked": "load_mnist did not check IDX contents: NaN/inf images, a zero dim, negative or NaN labels",
    "idx-size-overflow": "parse_idx: the int64 size wrapped (dims 2**31, 2**31, 4 -> 0 bytes); reshape raised ValueError",
    "npy-negative-dim": "a .npy shape with a negative dim passed the size check: ValueError, RuntimeError, OverflowError, "
    "or a streamed split of sample shape (-1,)",
    "npy-header": "numpy's .npy header parser raised tokenize.TokenError ('{{{{') and TypeError (bytes and str keys)",
    "safetensors-json-recursion": "a deeply nested .safetensors header raised RecursionError",
    "safetensors-header-entry": "a .safetensors entry that is not {dtype, shape, data_offsets}, or a shape of strings, "
    "raised TypeError/KeyError",
    "safetensors-load-file": "x_train/x_test .safetensors went to load_file, whose SafetensorError was not caught",
    "npz-damaged": ".npz: .npy content ('with' on an ndarray: TypeError), BadZipFile, NotImplementedError, EOFError, "
    "zlib.error from a damaged archive",
    "tensor-byte-order": "torch.from_numpy raised ValueError for a big-endian array in a .npz",
    "tensor-dtype": "torch.from_numpy raised TypeError for np.longdouble, Tensor.numpy() for float8",
    "labels-unsigned": "labels < 0 is not implemented for uint16/32/64 tensors: NotImplementedError",
    "pt-unpickler-errors": "torch's weights-only unpickler raised IndexError (b'a'), KeyError, struct.error, TypeError, "
    "AssertionError on damaged .pt bytes",
    "dict-key-not-str": "', '.join(names) raised TypeError for a .pt dict with int keys",
    "tensor-requires-grad": "Tensor.numpy() raised RuntimeError for a .pt tensor that requires grad",
    "csv-encoding": "a CSV that is not UTF-8 raised UnicodeDecodeError",
    "csv-label-column-number": "--label-column '--1' or '²' passed isdigit() and int() raised ValueError",
    "csv-field-limit": "a CSV field over 131,072 characters raised csv.Error",
    "csv-bom": "a UTF-8 BOM made a header-less numeric CSV lose its first row (taken for a header)",
    "labels-overflow": "labels inf or >= 2**63 passed the checks and .long() made them -2**63",
    "parquet-nested-list": "a list<list<float>> Parquet column made np.concatenate raise ValueError",
    "config-float-overflow": "a JSON integer above 1.8e308 for a float field raised OverflowError",
    "config-missing-required": "a nested config without its required fields ({'lm': {}}) raised TypeError",
    "json-recursion": "read_json of deeply nested JSON raised RecursionError",
    "json-int-digits": "read_json of an integer of more than 4,300 digits raised ValueError",
    "model-cfg-types": "cfg.json with kind [], sparsity 'topk', name None or params [1] raised TypeError/AttributeError",
    "npz-uint64-wrap": "uint64 samples >= 2**63 in a .npz wrapped to negative numbers (astype(np.int64)), silently",
    "dense-input-shape": "DenseConfig accepted input_shape [-4] (nn.Linear raised RuntimeError) and [0]",
}
"""Bugs this fuzzing found and that are fixed: each keeps its failing inputs in a ``test_fixed_*`` regression test."""


def _run(fn: Callable[[], Any], target: str) -> Any:
    """``fn()``, or ``None`` if it raised SparseAEError, the one documented input error; anything else propagates."""
    try:
        result = fn()
    except SparseAEError:
        event(f"{target}: SparseAEError")
        return None
    event(f"{target}: accepted")
    return result


def _fixed(name: str, *examples: Any):
    """A regression test for fixed bug ``name`` (see ``FIXED_BUGS``): it runs the inputs that once failed."""
    assert name in FIXED_BUGS, name

    def decorate(fn):
        for value in reversed(examples):
            fn = example(value)(fn)
        return EXPLICIT(given(st.none())(fn))

    return decorate


# --- checks of what a loader returns ----------------------------------------------------------


def _check_dataset(data: sparseae.Dataset, what: str, values: bool = True) -> sparseae.Dataset:
    """Assert that ``data`` is what :class:`Dataset` promises, reading streamed splits whole.

    ``values``: also that samples are finite and labels >= 0, as the array loaders check.
    """
    assert isinstance(data, sparseae.Dataset)
    shapes = []
    for split, x, y in (("train", data.train, data.train_labels), ("test", data.test, data.test_labels)):
        if isinstance(x, RowStream):
            assert len(x) > 0 and all(isinstance(d, int) and d >= 1 for d in x.sample_shape), (
                f"{what}: sample shape {x.sample_shape}"
            )
            rows = x[:]  # reading checks the values
            assert rows.shape == (len(x), *x.sample_shape)
            batches = list(x.batches(3, seed=0, epoch=0))
            assert sum(len(b) for b in batches) == len(x) and all(b.dtype == torch.float32 for b in batches)
            assert all(b.shape[1:] == rows.shape[1:] for b in batches)
        else:
            assert isinstance(x, Tensor), f"{what}: {split} split is a {type(x).__name__}"
            rows = x
        assert rows.dtype == torch.float32 and rows.ndim >= 2 and len(rows) > 0, f"{what}: {rows.dtype} {rows.shape}"
        assert rows.numel() > 0, f"{what}: empty {split} samples {tuple(rows.shape)}"
        if values:
            assert torch.isfinite(rows).all(), f"{what}: non-finite {split} samples"
        shapes.append(tuple(rows.shape[1:]))
        if y is not None:
            assert y.dtype == torch.int64 and y.ndim == 1 and len(y) == len(rows), f"{what}: {split} labels {y.dtype} {y.shape}"
            assert not values or (y >= 0).all(), f"{what}: negative {split} labels"
    assert shapes[0] == shapes[1], f"{what}: train {shapes[0]} vs test {shapes[1]}"
    return data


def _whole(data: sparseae.Dataset) -> tuple[Tensor, Tensor]:
    return tuple(x[:] if isinstance(x, RowStream) else x for x in (data.train, data.test))  # type: ignore[return-value]


def _load(path: Path, what: str, **config: Any) -> sparseae.Dataset:
    return _check_dataset(load_data(DataConfig(str(path), **config)), what)


def _expect_rows(data: Any, expected: np.ndarray, what: str, labels: np.ndarray | None = None) -> None:
    """``data`` loaded and holds ``expected`` (as float32) and ``labels``, split by ``holdout_rows``."""
    assert isinstance(data, sparseae.Dataset), f"{what}: valid input rejected"
    dtype = expected.dtype
    expected = torch.from_numpy(np.ascontiguousarray(expected, dtype=np.float32))
    train_rows, test_rows = holdout_rows(len(expected), 0.1)
    train, test = _whole(data)
    assert torch.equal(train, expected[train_rows]) and torch.equal(test, expected[test_rows]), (
        f"{what}: values differ (dtype {dtype})"
    )
    if labels is not None:
        y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        assert data.train_labels is not None and data.test_labels is not None, f"{what}: labels not read"
        assert torch.equal(data.train_labels, y[train_rows]) and torch.equal(data.test_labels, y[test_rows]), f"{what}: labels"


def _float32_finite(array: np.ndarray) -> bool:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return bool(np.isfinite(array.astype(np.float32)).all())


# --- generators shared by several targets -----------------------------------------------------

SMALL_DIM = st.integers(0, 4)
ODD_DIM = st.sampled_from([-1, -2, 2**62, 2**63, 2**64, 10**30])
"""Dims that break size arithmetic. Never mid-sized: a .safetensors header (or a .npy one with a negative dim)
claiming 2**31 rows makes load_data allocate 16 GB in holdout_rows, where 2**62 fails at once."""
DIMS = st.lists(st.one_of(SMALL_DIM, SMALL_DIM, SMALL_DIM, ODD_DIM), max_size=4)
IDX_DIMS = st.lists(st.one_of(SMALL_DIM, SMALL_DIM, SMALL_DIM, ODD_DIM, st.sampled_from([2**31, 2**32 - 1])), max_size=4)
"""IDX dims are uint32; parse_idx checks them against the bytes there before it allocates."""


def _rarely(draw, one_in: int = 4) -> bool:
    """True one time in ``one_in`` (False when shrinking: towards the plain, valid case)."""
    return draw(st.integers(0, one_in - 1)) == one_in - 1


def _payload(draw, n: int) -> bytes:
    """``n`` bytes: zeros, a repeated pattern, or random."""
    kind = draw(st.sampled_from(["zeros", "random", "random", "pattern"]))
    if kind == "zeros":
        return bytes(n)
    if kind == "pattern":
        pattern = draw(st.binary(min_size=1, max_size=8))
        return (pattern * (n // len(pattern) + 1))[:n]
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1))).bytes(n)


def _sized(draw, n: int | None) -> bytes:
    """A payload of ``n`` bytes (when known and small), sometimes a little short or long, else of random length."""
    if n is None or n > 4096:
        n = draw(st.integers(0, 64))
    if _rarely(draw):
        n = max(0, n + draw(st.sampled_from([-1, 1, -3, 8])))
    return _payload(draw, n)


def _nbytes(dims: list[int], itemsize: int) -> int | None:
    return math.prod(dims) * itemsize if all(d >= 0 for d in dims) else None


JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.sampled_from([10**400, -(10**400)]),
    st.floats(),
    st.text(max_size=8),
)
SMALL_JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-2, 12), st.floats(-2, 2), st.text(max_size=8))
"""Junk for model configs: a size of 2**40 would build a model that takes all memory (a legitimate, huge, model)."""
SMALL_JSON = st.recursive(
    SMALL_JSON_LEAF, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=8
)
JSON = st.recursive(
    JSON_LEAF, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4), max_leaves=12
)


# --- 1. IDX -----------------------------------------------------------------------------------

IDX_CODES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@st.composite
def idx_files(draw) -> tuple[bytes, np.ndarray | None]:
    """A near-valid IDX file (maybe gzip) and the array it holds if it is valid."""
    code = draw(st.sampled_from(sorted(IDX_CODES)) | st.integers(0, 255))
    dims = draw(IDX_DIMS)
    ndim = draw(st.just(len(dims)) | st.integers(0, 255))
    magic = draw(st.just(b"\0\0") | st.binary(min_size=0, max_size=2))
    wrapped = [d % 2**32 for d in dims]
    header = magic + bytes([code, ndim]) + b"".join(struct.pack(">I", d) for d in wrapped)
    header = header[: draw(st.sampled_from([len(header)] * 4 + list(range(len(header)))))]
    dtype = np.dtype(IDX_CODES.get(code, ">u1"))
    payload = _sized(draw, _nbytes(wrapped, dtype.itemsize))
    valid = (
        magic == b"\0\0"
        and code in IDX_CODES
        and ndim == len(dims)
        and len(header) == 4 + 4 * ndim
        and len(payload) == math.prod(wrapped) * dtype.itemsize
        and max(wrapped, default=0) < 2**16  # an empty array of dims (0, 2**32-1, ...) may be refused as implausible
    )
    try:
        expected = np.frombuffer(payload, dtype).reshape(wrapped).astype(dtype.newbyteorder("=")) if valid else None
    except ValueError:  # dims whose product overflows numpy's size (with a zero among them): parse_idx fails too
        expected = None
    compression = draw(st.sampled_from(["raw", "raw", "gzip", "truncated gzip", "damaged gzip"]))
    data = header + payload
    if compression == "raw":
        return data, expected
    packed = gzip.compress(data, mtime=0)
    if compression == "truncated gzip":
        return packed[: draw(st.integers(0, len(packed) - 1))], None
    if compression == "damaged gzip":
        i = draw(st.integers(0, len(packed) - 1))
        return packed[:i] + bytes([packed[i] ^ draw(st.integers(1, 255))]) + packed[i + 1 :], None
    return packed, expected


def _check_idx(path: Path, expected: np.ndarray | None) -> None:
    got = _run(lambda: read_idx(path), "idx")
    if expected is not None:
        assert got is not None, "valid IDX rejected"
        assert got.shape == expected.shape and got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
    if got is not None:
        assert isinstance(got, np.ndarray) and got.dtype.isnative and got.dtype.str[1:] in {d[1:] for d in IDX_CODES.values()}


@FUZZ
@given(st.binary(max_size=600))
def test_idx_random_bytes(scratch, data):
    _check_idx(_write(scratch, "fuzz-idx", data), None)
    _check_idx(_write(scratch, "fuzz-idx.gz", gzip.compress(data, mtime=0)), None)


@FUZZ
@given(idx_files())
def test_idx_near_valid(scratch, case):
    data, expected = case
    _check_idx(_write(scratch, "fuzz-idx", data), expected)


@_fixed(
    "idx-size-overflow",
    bytes([0, 0, 8, 3]) + struct.pack(">III", 2**31, 2**31, 4),
    bytes([0, 0, 8, 3]) + struct.pack(">III", 0, 2**32 - 1, 2**32 - 1),  # 0 bytes, but numpy's size overflows
)
def test_fixed_idx_size_overflow(scratch, data):
    _check_idx(_write(scratch, "fuzz-idx", data), None)


@_fixed("idx-size-zero-dim", bytes([0, 0, 8, 3]) + struct.pack(">III", 2**32 - 1, 0, 2**32 - 1))
def test_fixed_idx_zero_dim_among_huge_ones(scratch, data):
    _check_idx(_write(scratch, "fuzz-idx", data), None)


IDX_STEMS = (
    ("train-images-idx3-ubyte", 3),
    ("train-labels-idx1-ubyte", 1),
    ("t10k-images-idx3-ubyte", 3),
    ("t10k-labels-idx1-ubyte", 1),
)


@st.composite
def idx_directories(draw) -> list[bytes]:
    """The four files of an MNIST-layout directory: mostly images (N, H, W) and labels (N,) of one N, any type and values."""
    height, width = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    files = []
    for _split in ("train", "test"):
        n = draw(st.integers(1, 3))
        for dims in ([n, height, width], [n]):
            if _rarely(draw, 8):
                dims = draw(st.lists(st.integers(0, 3), max_size=4))
            code = 0x08 if not _rarely(draw) else draw(st.sampled_from(sorted(IDX_CODES)))
            payload = _payload(draw, math.prod(dims) * np.dtype(IDX_CODES[code]).itemsize)
            files.append(bytes([0, 0, code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + payload)
    return files


def _check_idx_dir(directory: Path, files: list[bytes]) -> None:
    directory.mkdir(exist_ok=True)
    for old in directory.iterdir():
        old.unlink()
    for (stem, _), data in zip(IDX_STEMS, files, strict=True):
        (directory / stem).write_bytes(data)
    _run(lambda: _check_dataset(load_data(DataConfig(str(directory))), "idx-dir"), "idx-dir")


@FUZZ
@given(idx_directories())
def test_idx_directory_through_load_data(scratch, files):
    _check_idx_dir(scratch / "idx-dir", files)


def _idx(code: int, array: np.ndarray) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(IDX_CODES[code]).tobytes()


@_fixed(
    "idx-dir-unchecked",
    [_idx(0x0D, np.full((2, 1, 1), np.nan)), _idx(0x08, np.zeros(2)), _idx(0x08, np.zeros((1, 1, 1))), _idx(0x08, np.zeros(1))],
    [_idx(0x08, np.zeros((2, 1, 1))), _idx(0x09, -np.ones(2)), _idx(0x08, np.zeros((1, 1, 1))), _idx(0x08, np.zeros(1))],
)
def test_fixed_idx_directory_contents_unchecked(scratch, files):
    _check_idx_dir(scratch / "idx-dir", files)


@_fixed(
    "idx-dir-float-range",
    [
        _idx(0x08, np.zeros((2, 1, 1))),
        _idx(0x0D, np.array([1.9e19, 0])),
        _idx(0x08, np.zeros((1, 1, 1))),
        _idx(0x08, np.zeros(1)),
    ],
    [_idx(0x0E, np.full((2, 1, 1), 1e300)), _idx(0x08, np.zeros(2)), _idx(0x08, np.zeros((1, 1, 1))), _idx(0x08, np.zeros(1))],
)
def test_fixed_idx_directory_float_range(scratch, files):
    _check_idx_dir(scratch / "idx-dir", files)


# --- 2. .npy ----------------------------------------------------------------------------------


def npy_bytes(header: str | bytes, payload: bytes = b"", version: tuple[int, int] = (1, 0)) -> bytes:
    """A .npy file: magic, version, header length, the header text padded to 64 bytes, the payload."""
    text = header.encode("latin1", "replace") if isinstance(header, str) else header
    size = "<H" if version[0] == 1 else "<I"
    pad = -(8 + struct.calcsize(size) + len(text) + 1) % 64
    text = text + b" " * pad + b"\n"
    return b"\x93NUMPY" + bytes(version) + struct.pack(size, len(text) % 2 ** (8 * struct.calcsize(size))) + text + payload


NPY_DESCRS = st.sampled_from(
    ["<f4", ">f4", "<f8", ">f8", "<f2", "<f16", "|u1", "|i1", "<i2", ">i4", "<i8", "<u8", ">u2", "|b1", "<c8", "|O", "<U3", "|S2"]
    + ["|V4", "<M8[s]", "<m8[D]", "(2,)<f4", "f4,i2"]
) | st.sampled_from([[("a", "<f4"), ("b", "<i2")], [("a", "<f4", (2,))], [("", "|u1")]])
JUNK = st.one_of(st.text(max_size=6), st.integers(-3, 3), st.lists(st.integers(-2, 3), max_size=3), st.none(), st.booleans())


def _descr_itemsize(descr: Any) -> int:
    try:
        return np.lib.format.descr_to_dtype(descr).itemsize
    except Exception:
        return 4


@st.composite
def npy_files(draw) -> bytes:
    """A .npy file with a well-formed or damaged header and a payload that may not fit it."""
    descr = draw(st.sampled_from(["<f4", "<f8", "|u1", "<i8", ">f4", "<f2"])) if not _rarely(draw, 3) else draw(NPY_DESCRS | JUNK)
    dims = draw(st.lists(st.integers(1, 4), min_size=2, max_size=3)) if not _rarely(draw, 3) else draw(DIMS)
    fortran = False if not _rarely(draw) else draw(st.booleans() | JUNK)
    header: dict[str, Any] = {"descr": descr, "fortran_order": fortran, "shape": tuple(dims)}
    if draw(st.integers(0, 9)) == 0:
        header["shape"] = draw(JUNK)
    if draw(st.integers(0, 9)) == 0:
        del header[draw(st.sampled_from(sorted(header)))]
    if draw(st.integers(0, 9)) == 0:
        header[draw(st.text(max_size=4))] = draw(JUNK)
    text = repr(header)
    if draw(st.integers(0, 9)) == 0:
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.text(max_size=6)) + text[cut:]
    version = (
        (1, 0)
        if not _rarely(draw)
        else draw(st.sampled_from([(2, 0), (3, 0)]) | st.tuples(st.integers(0, 255), st.integers(0, 255)))
    )
    return npy_bytes(text, _sized(draw, _nbytes(dims, _descr_itemsize(descr))), version)


def _check_npy(path: Path, expected: np.ndarray | None = None) -> None:
    memory = _run(lambda: _load(path, "npy memory", load="memory"), "npy")
    stream = _run(lambda: _load(path, "npy stream", load="stream"), "npy")
    assert (memory is None) == (stream is None), f"npy: memory load {memory}, stream load {stream}"
    if memory is not None:
        assert all(torch.equal(a, b) for a, b in zip(_whole(memory), _whole(stream), strict=True)), "npy: memory != stream"
    if expected is not None:
        _expect_rows(memory, expected, "npy")


@FUZZ
@given(st.binary(max_size=300))
def test_npy_random_bytes(scratch, data):
    _check_npy(_write(scratch, "fuzz.npy", data))
    _check_npy(_write(scratch, "fuzz.npy", b"\x93NUMPY" + data))


@FUZZ
@given(npy_files())
def test_npy_near_valid(scratch, data):
    _check_npy(_write(scratch, "fuzz.npy", data))


NUMERIC_DTYPES = npst.boolean_dtypes() | npst.integer_dtypes() | npst.unsigned_integer_dtypes() | npst.floating_dtypes()
ANY_DTYPE = NUMERIC_DTYPES | st.one_of(
    npst.complex_number_dtypes(),
    npst.datetime64_dtypes(),
    npst.byte_string_dtypes(max_len=3),
    npst.unicode_string_dtypes(max_len=3),
    npst.array_dtypes(max_size=2),
)


@st.composite
def arrays(draw, dtypes: st.SearchStrategy | None = None) -> np.ndarray:
    """A small array of any dtype and shape (0-d and empty included), sometimes Fortran-ordered, sometimes of objects."""
    if draw(st.integers(0, 19)) == 0:
        return np.array(draw(st.lists(JSON_LEAF, min_size=1, max_size=4)) + [None], dtype=object)
    samples = npst.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=4)
    shape = draw(samples if not _rarely(draw, 3) else npst.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    dtype = draw(dtypes) if dtypes is not None else draw(NUMERIC_DTYPES if not _rarely(draw, 3) else ANY_DTYPE)
    array = draw(npst.arrays(dtype, shape))
    return np.asfortranarray(array) if _rarely(draw) else array


def _valid_samples(array: np.ndarray) -> bool:
    """Whether a loader must accept ``array`` as samples (2 rows at least, for the held-out split)."""
    return (
        array.dtype.kind in "fiub"
        and array.ndim >= 2
        and array.shape[0] >= 2
        and math.prod(array.shape[1:]) > 0
        and _float32_finite(array)
    )


@FUZZ
@given(arrays())
def test_npy_saved_by_numpy(scratch, array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    expected = array if _valid_samples(array) else None  # Fortran order too (issue 17)
    _check_npy(_write(scratch, "fuzz.npy", buffer.getvalue()), expected)


@_fixed(
    "npy-negative-dim",
    npy_bytes(repr({"descr": "<f4", "fortran_order": False, "shape": (-1, 5)})),
    npy_bytes(repr({"descr": "<f4", "fortran_order": False, "shape": (2, -1)})),
)
def test_fixed_npy_negative_dim(scratch, data):
    _check_npy(_write(scratch, "fuzz.npy", data))


@_fixed(
    "npy-header",
    npy_bytes("{" * 10),
    npy_bytes("{b'descr': '<f4', 'fortran_order': False, 'shape': (2, 2)}", bytes(16)),
)
def test_fixed_npy_header(scratch, data):
    _check_npy(_write(scratch, "fuzz.npy", data))


# --- 3. .safetensors --------------------------------------------------------------------------

ST_DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "U16", "F8_E4M3", "C64", "f32", ""]
ST_NAMES = st.sampled_from(["x", "y", "x_train", "x_test", "train", "test", "activations", "__metadata__"]) | st.text(max_size=3)


@st.composite
def safetensors_files(draw) -> tuple[bytes, str | None, str | None]:
    """A .safetensors file with a plausible or damaged header, and the key and label_column to load it with."""
    header: dict[str, Any] = {}
    offset = 0
    for name in draw(st.lists(ST_NAMES, max_size=3, unique=True)):
        if name == "__metadata__" or draw(st.integers(0, 9)) == 0:
            header[name] = draw(JSON)
            continue
        dtype = draw(st.sampled_from(ST_DTYPES))
        dims = draw(DIMS)
        itemsize = {"F64": 8, "I64": 8, "C64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2}.get(dtype, 1)
        size = _nbytes(dims, itemsize)
        size = size if size is not None and size <= 4096 else draw(st.integers(0, 64))
        offsets = [offset, offset + size]
        if draw(st.integers(0, 4)) == 0:
            offsets = draw(st.lists(st.integers(-(2**64), 2**64) | st.integers(-8, 80), max_size=3) | JSON)
        info = {"dtype": dtype, "shape": dims, "data_offsets": offsets}
        if draw(st.integers(0, 9)) == 0:
            info[draw(st.sampled_from(sorted(info)))] = draw(JSON)
        if draw(st.integers(0, 9)) == 0:
            del info[draw(st.sampled_from(sorted(info)))]
        header[name] = info
        offset += size
    text = json.dumps(header).encode()
    text += b" " * draw(st.sampled_from([0, 0, 1, 7]))
    length = draw(st.sampled_from([len(text)] * 6 + [len(text) + 1, len(text) - 1, 0, 2**63, 2**64 - 1]))
    data = struct.pack("<Q", max(0, length)) + text + _sized(draw, offset)
    data = data[: draw(st.sampled_from([len(data)] * 8 + [0, 4, 8, len(data) // 2]))]
    key = draw(st.none() | ST_NAMES)
    label = draw(st.none() | ST_NAMES)
    return data, key, label


def _check_safetensors(path: Path, key: str | None, label: str | None) -> tuple[Any, Any]:
    _run(lambda: read_tensors(path), "safetensors")  # the model reader, on the same bytes
    memory = _run(lambda: _load(path, "safetensors memory", load="memory", key=key, label_column=label), "safetensors")
    stream = _run(lambda: _load(path, "safetensors stream", load="stream", key=key, label_column=label), "safetensors")
    assert (memory is None) == (stream is None), f"safetensors: memory load {memory}, stream load {stream}"
    if memory is not None:
        assert all(torch.equal(a, b) for a, b in zip(_whole(memory), _whole(stream), strict=True))
    return memory, stream


def _safetensors(header: Any, payload: bytes = b"") -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + payload


@FUZZ
@given(st.binary(max_size=300))
def test_safetensors_random_bytes(scratch, data):
    _check_safetensors(_write(scratch, "fuzz.safetensors", data), None, None)
    header = struct.pack("<Q", len(data)) + data
    _check_safetensors(_write(scratch, "fuzz.safetensors", header), None, None)


@FUZZ
@given(safetensors_files())
# Offsets outside the file, and a shape far larger than the data (once OSError, and a 16 GB allocation for 2**31 rows):
@example((_safetensors({"x": {"dtype": "F32", "shape": [2, 2], "data_offsets": [-100, 16]}}, bytes(16)), None, None))
@example((_safetensors({"x": {"dtype": "F32", "shape": [2**62, 1], "data_offsets": [0, 8]}}, bytes(8)), None, None))
def test_safetensors_near_valid(scratch, case):
    data, key, label = case
    _check_safetensors(_write(scratch, "fuzz.safetensors", data), key, label)


@FUZZ
@given(
    st.dictionaries(ST_NAMES.filter(lambda s: s != "__metadata__"), arrays(NUMERIC_DTYPES), min_size=1, max_size=3), st.booleans()
)
@example({"x": np.ones((4, 2), np.float32)}, True)  # labels once never loaded: read as samples, they had to be 2-D
def test_safetensors_saved_by_safetensors(scratch, tensors, with_labels):
    from safetensors.numpy import save

    tensors = {k: np.ascontiguousarray(v).astype(v.dtype.newbyteorder("=")) for k, v in tensors.items()}
    tensors = {k: v for k, v in tensors.items() if v.dtype.kind != "f" or v.dtype.itemsize <= 8}
    if with_labels and "x" in tensors:
        tensors["y"] = np.arange(len(tensors["x"]) if tensors["x"].ndim else 1)
    try:
        data = save(tensors)
    except Exception:
        return  # a dtype safetensors does not write
    path = _write(scratch, "fuzz.safetensors", data)
    memory, _ = _check_safetensors(path, None, "y" if with_labels and "y" in tensors else None)
    if with_labels and set(tensors) == {"x", "y"} and tensors["x"].dtype.kind in "fiu" and tensors["x"].dtype.itemsize <= 8:
        if tensors["x"].dtype.kind != "u" or tensors["x"].dtype.itemsize == 1:  # safetensors' U16/U32/U64 are not read
            if _valid_samples(tensors["x"]):
                _expect_rows(memory, tensors["x"], "safetensors x, y")
                assert memory.train_labels is not None and memory.test_labels is not None, "safetensors: labels not read"


@_fixed("read-tensors", _safetensors({"x": {"dtype": "F64", "shape": [0, 2**63], "data_offsets": [0, 0]}}))
def test_fixed_read_tensors_huge_dim(scratch, data):
    _run(lambda: read_tensors(_write(scratch, "fuzz.safetensors", data)), "safetensors")


@_fixed("safetensors-json-recursion", _safetensors(b"[" * 100_000 + b"]" * 100_000))
def test_fixed_safetensors_deep_header(scratch, data):
    _check_safetensors(_write(scratch, "fuzz.safetensors", data), None, None)


@_fixed(
    "safetensors-header-entry",
    _safetensors({"x": 5}),
    _safetensors({"x": {"dtype": "F32", "shape": ["a", "b"], "data_offsets": [0, 0]}}),
)
def test_fixed_safetensors_header_entry(scratch, data):
    _check_safetensors(_write(scratch, "fuzz.safetensors", data), None, None)


@_fixed(
    "safetensors-load-file",
    _safetensors({"x_train": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}, "x_test": 1}, bytes(16)),
)
def test_fixed_safetensors_load_file(scratch, data):
    _check_safetensors(_write(scratch, "fuzz.safetensors", data), None, None)


# --- 5. .npz and .pt --------------------------------------------------------------------------

NPZ_NAMES = st.sampled_from(["x", "y", "x_train", "x_test", "y_train", "y_test", "train", "test", "train_labels", "test_labels"])
ARRAY_NAMES = NPZ_NAMES | st.text(max_size=3)
OPTIONAL_NAME = st.integers(0, 2).flatmap(lambda i: ARRAY_NAMES if i == 2 else st.none())
"""A key or label_column: mostly unset, so that files are read as they come."""
BIG_ENDIAN = st.sampled_from([">f4", ">f8", ">i4", ">u2"]).map(np.dtype)
NPZ_DTYPES = ANY_DTYPE | BIG_ENDIAN | st.just(np.dtype(np.longdouble))


def _check_arrays_file(path: Path, what: str, key: str | None, label: str | None) -> Any:
    return _run(lambda: _load(path, what, key=key, label_column=label), what)


@st.composite
def named_arrays(draw, dtypes: st.SearchStrategy) -> dict[str, np.ndarray]:
    """Arrays by name: mostly samples x (and labels y), or Keras' four; else any names and arrays."""
    kind = draw(st.integers(0, 3))
    if kind <= 1:
        x = draw(arrays())
        named = {"x": x}
        if kind == 1:
            named["y"] = _labels_for(draw, len(x)) if x.ndim and not _rarely(draw) else draw(arrays())
        return named
    if kind == 2:
        named = {"x_train": draw(arrays()), "x_test": draw(arrays())}
        for split in ("train", "test"):
            x = named[f"x_{split}"]
            if x.ndim and not _rarely(draw):
                named[f"y_{split}"] = _labels_for(draw, len(x))
        return named
    return draw(st.dictionaries(ARRAY_NAMES, arrays(dtypes), max_size=4))


def _labels_for(draw, n: int) -> np.ndarray:
    """Labels for ``n`` samples: class numbers mostly, else odd values (inf, huge, negative, fractional, NaN) or any array."""
    if not _rarely(draw, 3):
        return np.arange(n) % 3
    odd = st.sampled_from([0.0, 1.0, 2.0, np.inf, 1e300, 2.0**63, -1.0, 0.5, np.nan])
    return draw(npst.arrays(np.float64, (n,), elements=odd) | arrays())


def _numpy_samples(named: dict[str, Any]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Samples and labels a loader must accept in ``named`` (key and label_column unset), if there are."""
    if set(named) in ({"x"}, {"x", "y"}) and isinstance(named["x"], np.ndarray) and _valid_samples(named["x"]):
        if named["x"].dtype.isnative and named["x"].dtype != np.longdouble and named["x"].dtype.itemsize <= 8:
            y = named.get("y")
            if y is None or y.shape == (len(named["x"]),) and y.dtype == np.int64 and (y >= 0).all():
                return named["x"], y
    return None, None


@FUZZ
@given(
    named_arrays(NPZ_DTYPES),
    OPTIONAL_NAME,
    OPTIONAL_NAME,
    st.sampled_from(["savez", "savez_compressed", "truncated", "npy"]),
)
def test_npz_random_arrays(scratch, named, key, label, how):
    buffer = io.BytesIO()
    if how == "npy" and named:
        np.save(buffer, next(iter(named.values())))
    else:
        (np.savez_compressed if how == "savez_compressed" else np.savez)(buffer, **named)
    data = buffer.getvalue()
    if how == "truncated":
        data = data[: len(data) * 2 // 3]
    got = _check_arrays_file(_write(scratch, "fuzz.npz", data), "npz", key, label)
    x, y = _numpy_samples(named)
    if how in ("savez", "savez_compressed") and key is None and label is None and x is not None:
        _expect_rows(got, x, "npz", y)


@st.composite
def zip_files(draw) -> bytes:
    """A zip archive of members with random names holding random bytes or near-valid .npy files."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))) as z:
        for name in draw(st.lists(st.sampled_from(["x.npy", "y.npy", "x", "x_train.npy", "x_test.npy"]) | st.text(max_size=4))):
            try:
                z.writestr(name or "_", draw(npy_files() | st.binary(max_size=40)))
            except Exception:  # a name zipfile refuses
                pass
    data = buffer.getvalue()
    if draw(st.integers(0, 4)) == 0:
        i = draw(st.integers(0, max(0, len(data) - 1)))
        data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :] if data else data
    return data


@FUZZ
@given(zip_files() | st.binary(max_size=200).map(lambda b: b"PK\x03\x04" + b) | st.binary(max_size=200))
def test_npz_random_bytes(scratch, data):
    _check_arrays_file(_write(scratch, "fuzz.npz", data), "npz", None, None)


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buffer.getvalue()


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _damaged_npz() -> bytes:
    data = bytearray(_npz(x=np.ones((3, 2), np.float32)))
    data[data.index(b"\x93NUMPY") + 130] ^= 0xFF  # a payload byte: the member's CRC no longer matches
    return bytes(data)


@_fixed(
    "npz-damaged",
    _npy(np.ones((2, 2), np.float32)),
    b"PK\x03\x04" + bytes(40),
    _damaged_npz(),
    _zip({"x.npy": npy_bytes("{" * 10)}),
)
def test_fixed_npz_damaged(scratch, data):
    _check_arrays_file(_write(scratch, "fuzz.npz", data), "npz", None, None)


@_fixed("npz-uint64-wrap", _npz(x=np.full((2, 1), 2**63, np.uint64)))
def test_fixed_npz_uint64_wraps(scratch, data):
    got = _check_arrays_file(_write(scratch, "fuzz.npz", data), "npz", None, None)
    _expect_rows(got, np.full((2, 1), 2**63, np.uint64), "npz")


@_fixed("tensor-byte-order", _npz(x=np.ones((3, 2), ">f4")))
def test_fixed_npz_big_endian(scratch, data):
    _check_arrays_file(_write(scratch, "fuzz.npz", data), "npz", None, None)


@_fixed("tensor-dtype", _npz(x=np.ones((3, 2), np.longdouble)))
def test_fixed_npz_longdouble(scratch, data):
    _check_arrays_file(_write(scratch, "fuzz.npz", data), "npz", None, None)


@_fixed("labels-overflow", _npz(x=np.ones((3, 2), np.float32), y=np.array([np.inf, 1, 2])))
def test_fixed_npz_infinite_label(scratch, data):
    _check_arrays_file(_write(scratch, "fuzz.npz", data), "npz", None, None)


@_fixed("labels-unsigned", _npz(x=np.ones((3, 2), np.float32), y=np.arange(3, dtype=np.uint64)))
def test_fixed_npz_unsigned_labels(scratch, data):
    _check_arrays_file(_write(scratch, "fuzz.npz", data), "npz", None, None)


TORCH_DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.bool,
    torch.complex64,
    torch.uint16,
    torch.uint32,
    torch.uint64,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
]


@st.composite
def tensors(draw) -> Tensor:
    """A small tensor of any dtype (0-d, empty, non-contiguous, requiring grad, NaN/inf included)."""
    shape = (
        draw(st.lists(st.integers(0, 4), max_size=3)) if _rarely(draw, 3) else [draw(st.integers(2, 4)), draw(st.integers(1, 3))]
    )
    values = draw(
        st.lists(st.floats(width=32) | st.integers(-3, 300).map(float), min_size=math.prod(shape), max_size=math.prod(shape))
    )
    t = torch.tensor(values, dtype=torch.float64).reshape(shape)
    common = [torch.float32, torch.float64, torch.int64, torch.bfloat16, torch.uint8, torch.bool]
    dtype = draw(st.sampled_from(common if not _rarely(draw, 3) else TORCH_DTYPES))
    t = (
        (t.abs() if dtype in (torch.uint16, torch.uint32, torch.uint64) else t).nan_to_num(0.0)
        if not dtype.is_floating_point
        else t
    )
    t = t.to(dtype) if dtype not in (torch.uint16, torch.uint32, torch.uint64) else t.to(torch.int64).clamp(min=0).to(dtype)
    if t.ndim >= 2 and _rarely(draw):
        t = t.transpose(0, 1)
    if t.is_floating_point() and t.dtype in (torch.float32, torch.float64) and draw(st.integers(0, 9)) == 0:
        t.requires_grad_(True)
    return t


TORCH_OBJECTS = st.one_of(
    tensors(),
    st.fixed_dictionaries({"x": tensors()}),
    tensors().map(lambda t: {"x": t, "y": torch.arange(len(t)) % 3} if t.ndim else {"x": t}),
    st.dictionaries(ARRAY_NAMES, tensors(), max_size=4),
    st.dictionaries(ARRAY_NAMES | st.integers(0, 3), tensors() | JSON_LEAF, max_size=3),
    st.lists(tensors(), max_size=2),
    JSON,
)


@FUZZ
@given(TORCH_OBJECTS, OPTIONAL_NAME, OPTIONAL_NAME, st.sampled_from([None, None, None, 0.5, 0.9]))
def test_pt_random_objects(scratch, obj, key, label, cut):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    if cut is not None:
        data = data[: int(len(data) * cut)]
    got = _check_arrays_file(_write(scratch, "fuzz.pt", data), "pt", key, label)
    named = {"x": obj} if isinstance(obj, Tensor) else obj
    if cut is None and key is None and label is None and isinstance(named, dict):
        unsigned = (torch.uint16, torch.uint32, torch.uint64)  # .pt rejects these (numpy's are read); a choice, not checked
        if all(isinstance(v, Tensor) and not v.is_complex() and v.dtype not in unsigned for v in named.values()):
            x, y = _numpy_samples({k: _as_numpy(v) for k, v in named.items()})
            if x is not None:
                _expect_rows(got, x, "pt", y)


def _as_numpy(t: Tensor) -> np.ndarray:
    t = t.detach()
    return t.float().numpy() if t.dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2) else t.numpy()


@FUZZ
@given(
    st.binary(max_size=300)
    | st.binary(max_size=300).map(lambda b: b"PK\x03\x04" + b)
    | st.binary(max_size=200).map(lambda b: b"\x80\x02" + b)
)
def test_pt_random_bytes(scratch, data):
    _check_arrays_file(_write(scratch, "fuzz.pt", data), "pt", None, None)


def _pt(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@_fixed("pt-unpickler-errors", b"a", b"j\xad.4F\x8bxWn", b"G:x\x1b9.")
def test_fixed_pt_unpickler_errors(scratch, data):
    _check_arrays_file(_write(scratch, "fuzz.pt", data), "pt", None, None)


@_fixed("dict-key-not-str", _pt({1: torch.ones(2, 2), 2: torch.ones(2, 2)}))
def test_fixed_pt_int_keys(scratch, data):
    _check_arrays_file(_write(scratch, "fuzz.pt", data), "pt", None, None)


@_fixed("tensor-requires-grad", _pt(torch.ones(3, 2, requires_grad=True)))
def test_fixed_pt_requires_grad(scratch, data):
    _check_arrays_file(_write(scratch, "fuzz.pt", data), "pt", None, None)


@_fixed("tensor-dtype", _pt(torch.ones(3, 2).to(torch.float8_e4m3fn)))
def test_fixed_pt_float8(scratch, data):
    _check_arrays_file(_write(scratch, "fuzz.pt", data), "pt", None, None)


# --- 4. CSV -----------------------------------------------------------------------------------

CELL = st.one_of(
    st.floats().map(repr),
    st.integers().map(str),
    st.integers(-5, 9).map(str),
    st.sampled_from(
        ["", " ", "nan", "NaN", "inf", "-inf", "Infinity", "1e999", "-0", "0x10", "1_000", " 3 ", "1,5", "true", "x"]
    ),
    st.sampled_from(['"1"', '"a,b"', '"', "'2'", "label", "\ufeff1"]),
    st.text(max_size=5),
)


@st.composite
def csv_texts(draw) -> bytes:
    """CSV bytes from rows of cells (ragged, quoted or not, with a header, a BOM, odd line ends, odd encodings)."""
    width = draw(st.integers(1, 4))
    numbers = st.integers(0, 99).map(str)  # whole numbers: any column can be the label column
    if _rarely(draw, 3):
        numbers = st.floats(allow_nan=False, allow_infinity=False).map(repr) | st.integers(-9, 99).map(str)
    row = st.lists(numbers if not _rarely(draw) else CELL, min_size=width, max_size=width)
    rows = draw(st.lists(row if not _rarely(draw) else st.lists(CELL, max_size=5), max_size=8))
    header = draw(st.booleans())
    if header:
        rows = [draw(st.lists(st.sampled_from(["a", "b", "label", "y", " x ", "", "0", "1"]), min_size=1, max_size=5)), *rows]
    out = io.StringIO()
    quoting = draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONE, None]))
    end = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    if quoting is None:
        out.write(end.join(",".join(row) for row in rows) + draw(st.sampled_from([end, ""])))
    else:
        try:
            csv.writer(out, quoting=quoting, lineterminator=end, escapechar="\\").writerows(rows)
        except csv.Error:
            out.write(end.join(",".join(row) for row in rows))
    bom = draw(st.booleans())
    text = ("\ufeff" if bom else "") + out.getvalue()
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "latin-1", "utf-16"]))
    return text.encode(encoding, "replace")


LABELS = st.none() | st.sampled_from(["0", "1", "-1", "2", "label", "y", "a", "9"]) | st.text(max_size=3)


@FUZZ
@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")), LABELS)
def test_csv_random_text(scratch, text, label):
    _check_arrays_file(_write(scratch, "fuzz.csv", text.encode()), "csv", None, label)


@FUZZ
@given(st.binary(max_size=200), LABELS)
def test_csv_random_bytes(scratch, data, label):
    _check_arrays_file(_write(scratch, "fuzz.csv", data), "csv", None, label)


@FUZZ
@given(csv_texts(), LABELS)
def test_csv_rows(scratch, data, label):
    _check_arrays_file(_write(scratch, "fuzz.csv", data), "csv", None, label)


@st.composite
def numeric_csv(draw) -> tuple[bytes, np.ndarray, bool]:
    """A header-less CSV of finite numbers, maybe with a UTF-8 BOM, and its values."""
    width = draw(st.integers(1, 4))
    values = draw(
        st.lists(
            st.lists(
                st.floats(-1e30, 1e30, allow_nan=False) | st.integers(-1000, 1000).map(float), min_size=width, max_size=width
            ),
            min_size=2,
            max_size=8,
        )
    )
    bom = draw(st.booleans())
    text = ("\ufeff" if bom else "") + "".join(",".join(repr(v) for v in row) + "\n" for row in values)
    return text.encode(), np.array(values), bom


def _check_numeric_csv(path: Path, expected: np.ndarray, bom: bool) -> None:
    got = _check_arrays_file(path, "csv", None, None)
    _expect_rows(got, expected, "csv rows (BOM)" if bom else "csv rows")


@FUZZ
@given(numeric_csv())
def test_csv_numbers_load_exactly(scratch, case):
    data, expected, bom = case
    _check_numeric_csv(_write(scratch, "fuzz.csv", data), expected, bom)


@_fixed("csv-encoding", b"\xff\xfe1,2\n3,4\n")
def test_fixed_csv_not_utf8(scratch, data):
    _check_arrays_file(_write(scratch, "fuzz.csv", data), "csv", None, None)


@_fixed("csv-label-column-number", "--1", "\u00b2")
def test_fixed_csv_label_column_not_a_number(scratch, label):
    _check_arrays_file(_write(scratch, "fuzz.csv", b"1,2\n3,4\n5,6\n"), "csv", None, label)


@_fixed("labels-overflow", b"1,inf\n3,4\n5,6\n", b"1,1e300\n3,4\n5,6\n")
def test_fixed_csv_infinite_label(scratch, data):
    _check_arrays_file(_write(scratch, "fuzz.csv", data), "csv", None, "1")


@_fixed("csv-field-limit", b'"' + b"1" * 200_000 + b'"\n')
def test_fixed_csv_field_limit(scratch, data):
    _check_arrays_file(_write(scratch, "fuzz.csv", data), "csv", None, None)


@_fixed("csv-bom", ("\ufeff1.0,2.0\n3.0,4.0\n5.0,6.0\n".encode(), np.array([[1.0, 2], [3, 4], [5, 6]]), True))
def test_fixed_csv_bom_drops_first_row(scratch, case):
    data, expected, bom = case
    _check_numeric_csv(_write(scratch, "fuzz.csv", data), expected, bom)


# --- 7. Parquet -------------------------------------------------------------------------------


@st.composite
def parquet_tables(draw) -> tuple[Any, np.ndarray | None]:
    """A small table of random column types (nulls included), and its values if a loader must accept it."""
    pa = pytest.importorskip("pyarrow")
    n = draw(st.integers(2, 5)) if not _rarely(draw) else draw(st.integers(0, 1))
    numbers = st.floats(width=32) | st.integers(-100, 100).map(float)
    kinds = {
        "int8": (pa.int8(), st.integers(-128, 127)),
        "int64": (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
        "uint64": (pa.uint64(), st.integers(0, 2**64 - 1)),
        "float16": (pa.float16(), numbers.map(np.float16)),
        "float32": (pa.float32(), numbers),
        "float64": (pa.float64(), st.floats()),
        "bool": (pa.bool_(), st.booleans()),
        "string": (pa.string(), st.text(max_size=3)),
        "binary": (pa.binary(), st.binary(max_size=3)),
        "list<float>": (
            pa.list_(pa.float64()),
            st.lists(numbers, min_size=2, max_size=2) | st.lists(numbers | st.none(), max_size=3),
        ),
        "list<int>": (pa.list_(pa.int32()), st.lists(st.integers(-5, 5), min_size=2, max_size=2)),
        "fixed<float,2>": (pa.list_(pa.float32(), 2), st.lists(numbers, min_size=2, max_size=2)),
        "large_list": (pa.large_list(pa.float32()), st.lists(numbers, min_size=1, max_size=1)),
        "list<list>": (
            pa.list_(pa.list_(pa.float32())),
            st.lists(st.lists(numbers, min_size=1, max_size=1), min_size=1, max_size=1),
        ),
        "list<string>": (pa.list_(pa.string()), st.lists(st.text(max_size=2), min_size=1, max_size=1)),
        "null": (pa.null(), st.none()),
        "dictionary": (pa.dictionary(pa.int8(), pa.string()), st.sampled_from(["a", "b"])),
    }
    names = draw(
        st.lists(
            st.sampled_from(["a", "b", "label", "y", ""]) | st.text(max_size=2), min_size=1, max_size=4, unique=not _rarely(draw)
        )
    )
    columns, plain = [], True
    for _ in names:
        common = ["int8", "int64", "float32", "float64", "bool", "list<float>", "fixed<float,2>"]
        kind = draw(st.sampled_from(common if not _rarely(draw, 3) else sorted(kinds)))
        arrow_type, values = kinds[kind]
        nulls = _rarely(draw, 8)
        rows = draw(st.lists(values | st.none() if nulls else values, min_size=n, max_size=n))
        try:
            columns.append(pa.array(rows, type=arrow_type))
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            columns.append(pa.array([None] * n, type=pa.null()))
            kind = "null"
        plain = (
            plain and kind in ("int8", "int64", "uint64", "float16", "float32", "float64", "bool") and not columns[-1].null_count
        )
    table = pa.table(columns, names=names)
    expected = None
    if plain and len(set(names)) == len(names) and n >= 2:
        expected = np.stack([np.asarray(c.to_numpy(zero_copy_only=False), dtype=np.float64) for c in columns], axis=1)
        expected = expected if _float32_finite(expected) else None
    return table, expected


@FUZZ
@given(parquet_tables(), LABELS)
def test_parquet_random_tables(scratch, case, label):
    pq = pytest.importorskip("pyarrow.parquet")
    table, expected = case
    path = scratch / "fuzz.parquet"
    try:
        pq.write_table(table, path)
    except Exception:
        return  # a table pyarrow does not write
    got = _check_arrays_file(path, "parquet", None, label)
    if expected is not None and label is None:
        _expect_rows(got, expected, "parquet")


@FUZZ
@given(st.binary(max_size=300), st.sampled_from([None, 0.3, 0.7, 0.95]))
def test_parquet_random_bytes(scratch, data, cut):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    if cut is not None:  # a real file, truncated (with its magic kept at the end: damaged, not missing)
        buffer = io.BytesIO()
        pq.write_table(pa.table({"a": [1.0, 2.0, 3.0], "b": [[1, 2], [3, 4], [5, 6]]}), buffer)
        whole = buffer.getvalue()
        data = whole[: int(len(whole) * cut)] + data[:8] + b"PAR1"
    _check_arrays_file(_write(scratch, "fuzz.parquet", b"PAR1" + data), "parquet", None, None)


def _parquet_nested() -> bytes:
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    buffer = io.BytesIO()
    pq.write_table(pa.table({"a": [1.0, 2.0], "b": [[[1.0]], [[2.0]]]}), buffer)
    return buffer.getvalue()


@_fixed("parquet-nested-list", _parquet_nested())
def test_fixed_parquet_nested_list(scratch, data):
    _check_arrays_file(_write(scratch, "fuzz.parquet", data), "parquet", None, None)


# --- 6. config files --------------------------------------------------------------------------


def _values_for(hint: Any, small: bool = False) -> st.SearchStrategy:
    """Values of the type ``hint`` (and near misses), for config fields."""
    origin, args = get_origin(hint), get_args(hint)
    ints = st.integers(-1, 12) if small else st.integers(-3, 10**6) | st.integers() | st.sampled_from([10**400, 2**63])
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(_values_for(a, small) for a in args))
    if is_dataclass(hint):
        return _config_dicts(hint, small)
    if origin is Literal:
        return st.sampled_from(args) if small else st.sampled_from(args) | st.text(max_size=4)
    if origin is tuple:
        return st.lists(ints if args and args[0] is int else SMALL_JSON_LEAF if small else JSON_LEAF, max_size=3)
    if hint is type(None):
        return st.none()
    if hint is bool:
        return st.booleans() | st.integers(0, 1)
    if hint is int:
        return ints if small else ints | st.booleans() | st.floats(-3, 3)
    if hint is float:
        return st.floats(0, 1) if small else st.floats() | ints
    if hint is str:
        return st.text(max_size=6)
    return SMALL_JSON if small else JSON


@st.composite
def _config_dicts(draw, cls: type, small: bool = False) -> dict[str, Any]:
    """Dicts with some of ``cls``'s fields (values of the field's type, now and then junk), sometimes an unknown key."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    data = {}
    for name in draw(st.lists(st.sampled_from(names), unique=True, max_size=len(names))):
        data[name] = (
            draw(_values_for(hints[name], small)) if not _rarely(draw, 6) else draw(SMALL_JSON_LEAF if small else JSON_LEAF)
        )
    if _rarely(draw, 6):
        data[draw(st.text(max_size=6))] = draw(SMALL_JSON if small else JSON)
    return data


CONFIGS = (TrainConfig, DataConfig, DenseConfig)


def _check_from_dict(cls: type, data: Any) -> None:
    got = _run(lambda: from_dict(cls, data, "cfg.json"), "config")
    if got is None:
        return
    assert isinstance(got, cls)
    if isinstance(got, DenseConfig):
        assert all(d >= 1 for d in got.input_shape), f"DenseConfig input_shape {got.input_shape}"
    assert from_dict(cls, json.loads(json.dumps(to_dict(got))), "cfg.json") == got, "to_dict/from_dict round trip"


@FUZZ
@given(st.sampled_from(CONFIGS).flatmap(lambda cls: st.tuples(st.just(cls), _config_dicts(cls) | JSON)))
def test_config_from_dict(case):
    cls, data = case
    _check_from_dict(cls, data)


@_fixed("config-float-overflow", (TrainConfig, {"lr": 10**400}))
def test_fixed_config_huge_int_for_float(case):
    _check_from_dict(*case)


@_fixed("config-missing-required", (DataConfig, {"lm": {}}))
def test_fixed_config_nested_missing_field(case):
    _check_from_dict(*case)


def _check_read_json(path: Path) -> None:
    _run(lambda: read_json(path), "json")


@FUZZ
@given(
    st.binary(max_size=300)
    | JSON.map(lambda v: json.dumps(v).encode())
    | st.tuples(JSON, st.integers(0, 50)).map(lambda t: json.dumps(t[0]).encode()[: t[1]])
    | st.integers(0, 3000).map(lambda n: b"[" * n + b"]" * n)
    | st.integers(1, 6000).map(lambda n: b"9" * n)
)
def test_read_json_random_bytes(scratch, data):
    _check_read_json(_write(scratch, "fuzz.json", data))


@_fixed("json-recursion", b"[" * 100_000 + b"]" * 100_000)
def test_fixed_read_json_deep_nesting(scratch, data):
    _check_read_json(_write(scratch, "fuzz.json", data))


@_fixed("json-int-digits", b"1" * 5000)
def test_fixed_read_json_long_integer(scratch, data):
    _check_read_json(_write(scratch, "fuzz.json", data))


@st.composite
def model_cfgs(draw) -> Any:
    """A cfg.json dict: format, kind, config (small numbers), sparsity and its hyperparameters, preprocess; now and then junk."""
    from sparseae.models.base import _MODELS
    from sparseae.sparsity.base import _REGISTRY

    kind = draw(st.sampled_from(sorted(_MODELS))) if not _rarely(draw, 8) else draw(SMALL_JSON_LEAF)
    config_class = _MODELS[kind].config_class if isinstance(kind, str) and kind in _MODELS else DenseConfig
    name = draw(st.sampled_from(sorted(_REGISTRY))) if not _rarely(draw, 8) else draw(SMALL_JSON_LEAF)
    known = sorted(_REGISTRY[name].hyperparameters()) if isinstance(name, str) and name in _REGISTRY else []
    params = (
        {k: draw(st.integers(-1, 8) | st.floats(0, 1)) for k in draw(st.lists(st.sampled_from(known), unique=True))}
        if known
        else {}
    )
    if _rarely(draw, 8):
        params[draw(st.text(max_size=6))] = draw(SMALL_JSON_LEAF)
    cfg = {
        "format": 1 if not _rarely(draw, 8) else draw(SMALL_JSON_LEAF),
        "kind": kind,
        "config": draw(_config_dicts(config_class, small=True)) if not _rarely(draw, 8) else draw(SMALL_JSON),
        "sparsity": {"name": name, "params": params} if not _rarely(draw, 8) else draw(SMALL_JSON),
        "preprocess": draw(st.lists(st.sampled_from(["center", "standardize", "norm", "zca", "x"]), max_size=2))
        if not _rarely(draw, 8)
        else draw(SMALL_JSON),
    }
    if _rarely(draw, 8):
        del cfg[draw(st.sampled_from(sorted(cfg)))]
    return cfg


_DENSE = {
    "format": 1,
    "kind": "dense",
    "config": {"input_shape": [4], "n_latents": 8},
    "sparsity": {"name": "topk", "params": {"k": 2}},
}


@_fixed(
    "model-cfg-types",
    {**_DENSE, "kind": []},
    {**_DENSE, "sparsity": "topk"},
    {**_DENSE, "sparsity": {"name": None}},
    {**_DENSE, "sparsity": {"name": "topk", "params": [1]}},
)
def test_fixed_model_cfg_types(cfg):
    _run(lambda: model_from_cfg(cfg, "cfg.json"), "model-cfg")


@_fixed("dense-input-shape", {**_DENSE, "config": {"input_shape": [-4], "n_latents": 8}})
def test_fixed_dense_input_shape(cfg):
    _run(lambda: model_from_cfg(cfg, "cfg.json"), "model-cfg")


@FUZZ
@given(model_cfgs() | SMALL_JSON)
def test_model_from_cfg(cfg):
    got = _run(lambda: model_from_cfg(cfg, "cfg.json"), "model-cfg")
    assert got is None or isinstance(got, Autoencoder)

"""Reader for the IDX format (MNIST, Fashion-MNIST, KMNIST), gzip-compressed or raw.

IDX is big-endian: two zero bytes, a type code, the number of dimensions, each
dimension as uint32, then the data.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import zlib
from pathlib import Path

import numpy as np

from sparseae.errors import SparseAEError

_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed if it is gzip (detected by content, not name)."""
    if not path.is_file():
        raise SparseAEError(
            str(path),
            expected="an IDX file (raw or .gz)",
            got="no such file",
            fix="Check the path, or pass the directory that holds the file.",
        )
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
        raise SparseAEError(
            str(path),
            expected="a complete gzip file",
            got=f"a damaged or truncated one ({e})",
            fix="Download the file again.",
        ) from None


def verify_sha256(path: Path, data: bytes, expected: str) -> None:
    """Check the sha256 of the (uncompressed) bytes against ``expected``."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise SparseAEError(
            str(path),
            expected=f"uncompressed bytes with sha256 {expected}",
            got=f"sha256 {actual}",
            fix="The file is corrupted or is not the one expected: download it again.",
        )


def parse_idx(data: bytes, path: Path | str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes into an array in native byte order."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise SparseAEError(
            str(path),
            expected="an IDX file starting with magic bytes 00 00 <type> <ndim> (MNIST images: 00000803, labels: 00000801)",
            got=f"first bytes {data[:4].hex() or 'none (empty file)'}",
            fix="Pass an IDX file such as train-images-idx3-ubyte[.gz].",
        )
    dtype, ndim = _DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise _truncated(path, f"at least {header} header bytes", len(data))
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    n_bytes = math.prod(shape) * dtype.itemsize  # Python ints: no wrap-around for absurd dims
    if math.prod(max(d, 1) for d in shape) * dtype.itemsize > 2**40:  # zero dims too: numpy must still size the array
        raise SparseAEError(
            str(path), expected="an IDX sample of a plausible size", got=f"dims {shape}", fix="The header is damaged."
        )
    if len(data) - header < n_bytes:
        raise _truncated(path, f"{n_bytes} data bytes for shape {shape}", len(data) - header)
    if len(data) - header > n_bytes:
        raise SparseAEError(
            str(path),
            expected=f"{n_bytes} data bytes for shape {shape}",
            got=f"{len(data) - header} bytes",
            fix="The file has trailing data: it is not a valid IDX file.",
        )
    array = np.frombuffer(data, dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def _truncated(path: Path | str, expected: str, got: int) -> SparseAEError:
    return SparseAEError(
        str(path),
        expected=expected,
        got=f"{got} (the file is truncated)",
        fix="Download the file again.",
    )


def read_idx(path: str | Path, sha256: str | None = None) -> np.ndarray:
    """Read one IDX file (gzip or raw); verify the uncompressed bytes if ``sha256`` is given."""
    path = Path(path)
    data = read_bytes(path)
    if sha256 is not None:
        verify_sha256(path, data, sha256)
    return parse_idx(data, path)

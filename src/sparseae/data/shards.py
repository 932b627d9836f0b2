"""A directory of safetensors shards with a manifest: a cache of rows too many for memory.

Layout:

    manifest.json            {"format": "sparseae-shards", "version": 1, "sample_shape": [...],
                              "dtype": "float32", "rows": N, "shards": [{"file", "rows", "sha256"}],
                              "metadata": {...}}
    shard-00000.safetensors  one tensor "x" of shape (rows, *sample_shape)
    shard-00001.safetensors  ...

Shards are written one at a time (each atomically) and the manifest last, so a cache
whose writing was interrupted has no manifest and is never mistaken for a complete one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sparseae.data.arrays import SafetensorsReader
from sparseae.data.stream import RowReader
from sparseae.errors import DiskError, SparseAEError
from sparseae.io import atomic_write, disk_error, read_json, write_json

log = logging.getLogger("sparseae")

MANIFEST = "manifest.json"
FORMAT, VERSION = "sparseae-shards", 1
TENSOR = "x"


def is_shard_dir(path: Path) -> bool:
    """Whether ``path`` is a directory with a shard manifest."""
    return (path / MANIFEST).is_file()


@contextlib.contextmanager
def claim(out: str | Path) -> Iterator[Path]:
    """Hold ``out`` (new or empty; created) as this process's shard directory while the body writes into it.

    A second process claiming the same directory is refused (a lock, released by the
    kernel if this process dies). If the body fails (a full disk, Ctrl-C, an error in the
    rows), every file written into ``out`` is removed again, and ``out`` too if it was
    created here: a cache is complete (with its manifest) or absent, never half-written.
    """
    from sparseae.checkpoint import LOCK_FILE, RunLock

    out = Path(out)
    created = not out.exists()
    if out.exists() and not out.is_dir():
        raise SparseAEError(
            str(out), expected="a new or empty directory for the shards", got="a file", fix="Choose another directory."
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise disk_error(out, e) from None
    with RunLock(out, kind="shard directory", fix="choose another directory") as lock:
        if any(p.name != LOCK_FILE for p in out.iterdir()):  # checked under the lock: no other process fills it meanwhile
            raise SparseAEError(
                str(out),
                expected="a new or empty directory for the shards",
                got="one that holds files",
                fix="Choose another directory.",
            )
        try:
            yield out
        except BaseException as e:
            written = [path for path in out.iterdir() if path.name != LOCK_FILE]
            for path in written:
                with contextlib.suppress(OSError):
                    path.unlink()
            log.warning("%s: the cache was not finished; the %d file(s) written so far were removed", out, len(written))
            if created:
                lock.__exit__()
                with contextlib.suppress(OSError):
                    (out / LOCK_FILE).unlink()
                    out.rmdir()
            if isinstance(e, DiskError):
                kept = f"the {len(written)} shard(s) written so far were removed: write the cache again"
                raise disk_error(Path(e.what), e.error, kept) from None
            raise


def _not_new(out: Path, got: str) -> SparseAEError:
    return SparseAEError(str(out), expected="a new or empty directory for the shards", got=got, fix="Choose another directory.")


def write_shards(
    batches: Iterable[Tensor],
    out: str | Path,
    *,
    rows_per_shard: int = 65_536,
    dtype: torch.dtype = torch.float32,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``batches`` (tensors ``(n, *sample_shape)``, any n) into shards under ``out``; returns ``out``.

    ``out`` must be new or empty, and is held by `claim` while it is written. Each
    shard holds ``rows_per_shard`` rows (the last fewer); ``metadata`` (JSON-ready) is
    kept in the manifest.
    """
    with claim(out) as directory:
        return write_into(batches, directory, rows_per_shard=rows_per_shard, dtype=dtype, metadata=metadata)


def write_into(
    batches: Iterable[Tensor],
    out: Path,
    *,
    rows_per_shard: int = 65_536,
    dtype: torch.dtype = torch.float32,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """`write_shards` into a directory the caller holds with `claim`."""
    from safetensors.torch import save

    shards: list[dict[str, Any]] = []
    pending: list[Tensor] = []
    sample_shape: tuple[int, ...] | None = None

    def flush(rows: Tensor) -> None:
        name = f"shard-{len(shards):05d}.safetensors"
        data = save({TENSOR: rows.to(dtype).contiguous()})
        atomic_write(out / name, data)
        shards.append({"file": name, "rows": len(rows), "sha256": hashlib.sha256(data).hexdigest()})

    held = 0
    for batch in batches:
        batch = batch.detach().cpu()
        if sample_shape is None:
            sample_shape = tuple(batch.shape[1:])
        elif tuple(batch.shape[1:]) != sample_shape:
            raise SparseAEError(
                "batches to cache",
                expected=f"rows of one shape {sample_shape}",
                got=f"a batch of shape {tuple(batch.shape)}",
                fix="Every batch must have the same sample shape.",
            )
        pending.append(batch)
        held += len(batch)
        while held >= rows_per_shard:
            rows = torch.cat(pending)
            flush(rows[:rows_per_shard])
            pending, held = [rows[rows_per_shard:]], held - rows_per_shard
    if held:
        flush(torch.cat(pending))
    if sample_shape is None:
        raise SparseAEError("batches to cache", expected="at least one row", got="nothing", fix="Check the data source.")
    write_json(
        out / MANIFEST,
        {
            "format": FORMAT,
            "version": VERSION,
            "sample_shape": list(sample_shape),
            "dtype": str(dtype).removeprefix("torch."),
            "rows": sum(s["rows"] for s in shards),
            "shards": shards,
            "metadata": metadata or {},
        },
    )
    return out


class ShardReader(RowReader):
    """The rows of a shard directory, read in place from its safetensors files."""

    def __init__(self, path: str | Path, *, verify: bool = False):
        self.path = path = Path(path)
        if not is_shard_dir(path):
            raise SparseAEError(
                str(path),
                expected=f"a shard directory with {MANIFEST}",
                got="no such directory" if not path.exists() else f"no {MANIFEST} (an unfinished or foreign directory)",
                fix="Write the cache again (sparseae cache-activations) or pass the right directory.",
            )
        manifest = read_json(path / MANIFEST)
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise SparseAEError(
                str(path / MANIFEST), expected=f"a {FORMAT} manifest", got="another JSON file", fix="Pass a shard directory."
            )
        self.manifest = manifest
        self.readers = []
        for entry in manifest["shards"]:
            file = path / entry["file"]
            if verify:
                digest = hashlib.sha256(file.read_bytes()).hexdigest()
                if digest != entry["sha256"]:
                    raise SparseAEError(
                        str(file),
                        expected=f"sha256 {entry['sha256']} (from the manifest)",
                        got=digest,
                        fix="The shard is corrupt: write the cache again.",
                    )
            reader = SafetensorsReader(file, TENSOR)
            if len(reader) != entry["rows"]:
                raise SparseAEError(
                    str(file),
                    expected=f"{entry['rows']} rows (from the manifest)",
                    got=f"{len(reader)} rows",
                    fix="The cache is inconsistent: write it again.",
                )
            self.readers.append(reader)
        self.offsets = np.cumsum([0] + [len(r) for r in self.readers])
        self.shape = (int(self.offsets[-1]), *manifest["sample_shape"])

    @property
    def metadata(self) -> dict[str, Any]:
        return self.manifest.get("metadata", {})

    def read(self, start: int, stop: int) -> np.ndarray:
        parts = []
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        for i in range(max(first, 0), len(self.readers)):
            lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
            if lo >= stop:
                break
            parts.append(self.readers[i].read(max(start, lo) - lo, min(stop, hi) - lo))
        return np.concatenate(parts) if len(parts) != 1 else parts[0]


def describe_shards(path: str | Path) -> str:
    """A one-line summary of a shard directory, for logs."""
    manifest = json.loads((Path(path) / MANIFEST).read_text())
    return f"{manifest['rows']} rows of shape {tuple(manifest['sample_shape'])} in {len(manifest['shards'])} shard(s)"

"""A directory of safetensors shards with a manifest: a cache of rows too many for memory.

Layout::

    manifest.json            {"format": "sparseae-shards", "version": 1, "sample_shape": [...],
                              "dtype": "float32", "rows": N, "shards": [{"file", "rows", "sha256"}],
                              "metadata": {...}}
    shard-00000.safetensors  one tensor "x" of shape (rows, *sample_shape)
    shard-00001.safetensors  ...

Shards are written one at a time (each atomically) and the manifest last, so a cache
whose writing was interrupted has no manifest and is never mistaken for a complete one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sparseae.data.arrays import SafetensorsReader
from sparseae.data.stream import RowReader
from sparseae.errors import SparseAEError
from sparseae.io import atomic_write, read_json, write_json

MANIFEST = "manifest.json"
FORMAT, VERSION = "sparseae-shards", 1
TENSOR = "x"


def is_shard_dir(path: Path) -> bool:
    """Whether ``path`` is a directory with a shard manifest."""
    return (path / MANIFEST).is_file()


def write_shards(
    batches: Iterable[Tensor],
    out: str | Path,
    *,
    rows_per_shard: int = 65_536,
    dtype: torch.dtype = torch.float32,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``batches`` (tensors ``(n, *sample_shape)``, any n) into shards under ``out``; returns ``out``.

    ``out`` must be new or empty. Each shard holds ``rows_per_shard`` rows (the last
    fewer); ``metadata`` (JSON-ready) is kept in the manifest.
    """
    from safetensors.torch import save

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SparseAEError(
            str(out),
            expected="a new or empty directory for the shards",
            got="one that holds files",
            fix="Choose another directory.",
        )
    out.mkdir(parents=True, exist_ok=True)
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

"""Training data read in batches rather than held in memory: arrays on disk, shard caches, live activations.

A :class:`Stream` is a training split that yields shuffled batches. Its memory use is
set by its shuffle buffer, not by the size of the data, so the data may be far larger
than RAM. :class:`RowStream` streams the rows of any :class:`RowReader` (a ``.npy`` or
``.safetensors`` file read in place, a directory of shards) with a shuffle buffer.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sparseae.errors import SparseAEError

DEFAULT_CHUNK_ROWS = 4096
"""Rows read from disk in one go (one contiguous run of the file)."""
DEFAULT_BUFFER_ROWS = 262_144
"""Rows in the shuffle buffer: batches are drawn at random from this many rows, read from
chunks in random order. 262,144 rows of 768 float32 values take 0.8 GB."""


class Stream(ABC):
    """A training split read batch by batch.

    Subclasses give the number of rows, the shape of one sample, the first rows (for
    data-dependent initialisation and for pictures) and the batches of one epoch.
    """

    sample_shape: tuple[int, ...]
    """Shape of one sample."""

    @abstractmethod
    def __len__(self) -> int:
        """Samples in one epoch."""

    @abstractmethod
    def head(self, n: int) -> Tensor:
        """The first ``n`` samples (fewer if the split is shorter), float32 ``(n, *sample_shape)``."""

    @abstractmethod
    def batches(self, batch_size: int, seed: int, epoch: int) -> Iterator[Tensor]:
        """The shuffled float32 batches ``(B, *sample_shape)`` of one epoch, every sample once.

        A function of ``(seed, epoch)`` alone, so a resumed run sees the batches an
        uninterrupted one would. All batches have ``batch_size`` rows but the last.
        """

    def sample(self, n: int, seed: int) -> Tensor:
        """``n`` samples to initialise a model from (data-dependent initialisation); the first ``n`` unless overridden."""
        return self.head(n)

    def take(self, n: int) -> Stream:
        """The first ``n`` samples, as a stream."""
        raise SparseAEError(
            "train_limit / test_limit",
            expected="a source that can be cut short",
            got=type(self).__name__,
            fix="Set the size where the source is made (e.g. --lm-tokens).",
        )

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.sample_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.sample_shape)


class RowReader(ABC):
    """Rows ``[start, stop)`` of a 2-D-or-more array kept on disk."""

    shape: tuple[int, ...]
    """``(rows, *sample_shape)``."""
    path: Any = None
    """The file or directory read, to name it in messages."""

    @abstractmethod
    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as a new array (any numeric dtype)."""

    def __len__(self) -> int:
        return self.shape[0]


class RowStream(Stream):
    """The rows ``rows`` of ``reader``, shuffled through a buffer, read in chunks.

    An epoch cuts ``rows`` into chunks of ``chunk_rows`` neighbouring rows, visits the
    chunks in a random order, and fills a buffer of ``buffer_rows`` rows from them; the
    buffer's rows are shuffled and cut into batches, and what is left of it (fewer rows
    than a batch) carries over into the next buffer. Reading contiguous chunks keeps the
    disk fast; the buffer mixes rows from across the file.

    It can also be indexed like a tensor (a slice, or a tensor of indices into
    ``rows``), which is how test splits on disk are evaluated.
    """

    def __init__(
        self,
        reader: RowReader,
        rows: Tensor | None = None,
        *,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        buffer_rows: int = DEFAULT_BUFFER_ROWS,
    ):
        self.reader = reader
        self.rows = torch.arange(len(reader)) if rows is None else rows  # sorted indices into the reader
        self.sample_shape = tuple(reader.shape[1:])
        self.chunk_rows, self.buffer_rows = chunk_rows, max(buffer_rows, chunk_rows)

    def __len__(self) -> int:
        return len(self.rows)

    def _read_rows(self, rows: Tensor) -> Tensor:
        """Rows ``rows`` (sorted) of the reader, reading one contiguous span per run of near rows."""
        if len(rows) == 0:
            return torch.empty((0, *self.sample_shape))
        out = []
        # Split where consecutive rows are more than a chunk apart, so that a sparse
        # selection does not read the whole file in between.
        gaps = torch.nonzero(rows[1:] - rows[:-1] > self.chunk_rows).flatten() + 1
        for part in torch.tensor_split(rows, gaps.tolist()):
            start, stop = int(part[0]), int(part[-1]) + 1
            block = self.reader.read(start, stop)
            block = block if stop - start == len(part) else block[(part - start).numpy()]
            block = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))
            if not torch.isfinite(block).all():
                bad = int(part[torch.nonzero(~torch.isfinite(block).flatten(1).all(1))[0]])
                raise SparseAEError(
                    f"{self.reader.path}, row {bad}",
                    expected="finite numbers",
                    got="NaN or infinity",
                    fix="Clean the data first, e.g. x[~np.isfinite(x)] = 0, or drop those rows.",
                )
            out.append(block)
        return torch.cat(out)

    def __getitem__(self, index: int | slice | Tensor) -> Tensor:
        if isinstance(index, int) or isinstance(index, Tensor) and index.ndim == 0:
            i = int(index) % len(self.rows) if -len(self.rows) <= int(index) < len(self.rows) else len(self.rows)
            if i >= len(self.rows):
                raise IndexError(f"row {int(index)} of a split of {len(self.rows)}")
            return self._read_rows(self.rows[i : i + 1])[0]
        if isinstance(index, slice):
            return self._read_rows(self.rows[index])
        index = torch.as_tensor(index)
        order = torch.argsort(index)
        rows = self._read_rows(self.rows[index[order]])
        return rows[torch.argsort(order)]  # back in the order asked for

    def head(self, n: int) -> Tensor:
        return self[:n]

    def sample(self, n: int, seed: int) -> Tensor:
        if n >= len(self.rows):
            return self[:]
        pick = torch.randperm(len(self.rows), generator=torch.Generator().manual_seed(seed))[:n]
        return self[pick.sort().values]

    def take(self, n: int) -> RowStream:
        return RowStream(self.reader, self.rows[:n], chunk_rows=self.chunk_rows, buffer_rows=self.buffer_rows)

    def batches(self, batch_size: int, seed: int, epoch: int) -> Iterator[Tensor]:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        n_chunks = math.ceil(len(self.rows) / self.chunk_rows)
        chunk_order = torch.randperm(n_chunks, generator=g)
        per_buffer = max(1, self.buffer_rows // self.chunk_rows)
        left = torch.empty((0, *self.sample_shape))
        for i in range(0, n_chunks, per_buffer):
            parts = [left]
            for c in chunk_order[i : i + per_buffer].tolist():
                parts.append(self._read_rows(self.rows[c * self.chunk_rows : (c + 1) * self.chunk_rows]))
            buffer = torch.cat(parts)
            buffer = buffer[torch.randperm(len(buffer), generator=g)]
            whole = len(buffer) // batch_size * batch_size
            yield from buffer[:whole].split(batch_size)
            left = buffer[whole:]
        if len(left):
            yield left

"""Training data read in batches rather than held in memory: arrays on disk, shard caches, live activations.

A `Stream` is a training split that yields shuffled batches. Its memory use is
set by its shuffle buffer, not by the size of the data, so the data may be far larger
than RAM. `RowStream` streams the rows of any `RowReader` (a ``.npy`` or
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
GAP_ROWS = 64
"""Selected rows at most this far apart are read in one span (reading the rows between)."""


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

    def _read_rows(self, rows: Tensor, out: Tensor | None = None) -> Tensor:
        """Rows ``rows`` (sorted) of the reader, as float32, into ``out`` if given.

        Neighbouring rows (at most ``GAP_ROWS`` apart) are read in one span of at most
        ``chunk_rows`` rows, so that a scattered selection reads little more than it
        needs and a long one never holds more than a chunk beyond ``out``.
        """
        out = torch.empty((len(rows), *self.sample_shape)) if out is None else out
        if len(rows) == 0:
            return out
        new = torch.ones(len(rows), dtype=torch.bool)
        new[1:] = rows[1:] - rows[:-1] > GAP_ROWS
        first = rows[new][torch.cumsum(new, 0) - 1]  # the first row of each element's run
        within = (rows - first) // self.chunk_rows
        new[1:] |= within[1:] != within[:-1]
        bounds = [*torch.nonzero(new).flatten().tolist(), len(rows)]
        for lo, hi in zip(bounds, bounds[1:], strict=False):
            part = rows[lo:hi]
            start, stop = int(part[0]), int(part[-1]) + 1
            block = self.reader.read(start, stop)
            block = block if stop - start == len(part) else block[(part - start).numpy()]
            block = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))
            finite = torch.isfinite(block.flatten(1)).all(1)
            if not finite.all():
                bad = int(part[torch.nonzero(~finite)[0]])
                raise SparseAEError(
                    f"{self.reader.path}, row {bad}",
                    expected="finite numbers",
                    got="NaN or infinity",
                    fix="Clean the data first, e.g. x[~np.isfinite(x)] = 0, or drop those rows.",
                )
            out[lo:hi] = block
        return out

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
        # One buffer for the whole epoch: the rows left over from the last fill (fewer than
        # a batch) first, then the chunks read straight into it. Batches are gathered from
        # it by a shuffled index, so no shuffled copy of the buffer is ever made.
        buffer = torch.empty((min(len(self.rows), per_buffer * self.chunk_rows) + batch_size, *self.sample_shape))
        held = 0
        for i in range(0, n_chunks, per_buffer):
            for c in chunk_order[i : i + per_buffer].tolist():
                rows = self.rows[c * self.chunk_rows : (c + 1) * self.chunk_rows]
                self._read_rows(rows, buffer[held : held + len(rows)])
                held += len(rows)
            order = torch.randperm(held, generator=g)
            whole = held // batch_size * batch_size
            for j in range(0, whole, batch_size):
                yield buffer[order[j : j + batch_size]]
            rest = buffer[order[whole:held]]  # a copy, so it can move to the front
            buffer[: len(rest)] = rest
            held = len(rest)
        if held:
            yield buffer[:held].clone()

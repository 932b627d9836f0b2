"""An in-memory data set: a train split and a test split of samples, with optional labels."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sparseae.data.config import DataConfig
from sparseae.data.rows import RowInfo
from sparseae.data.stream import Stream
from sparseae.errors import SparseAEError, check


@dataclass(frozen=True)
class Dataset:
    """Train and test samples, float32 ``(N, *sample_shape)``: tensors, or streams read from disk.

    Labels, where the data has them, are int64 tensors of shape ``(N,)``. A split that is a
    `Stream` is read batch by batch (data larger than memory);
    a test split on disk is a `RowStream`, which slices like a tensor.
    What each test row is (its text, or its token in a document) is ``test_rows``.
    """

    name: str
    train: Tensor | Stream
    test: Tensor | Stream
    train_labels: Tensor | None = None
    test_labels: Tensor | None = None
    config: DataConfig | None = None
    """How to load this data again; ``None`` for data built in memory."""
    label_names: tuple[str, ...] | None = None
    """A name per label value (label i is called label_names[i]), where the data has them."""
    test_rows: RowInfo | None = None
    """What each test sample is (a text, a token in a document), where the data says; one entry per test sample."""
    columns: tuple[str, ...] | None = None
    """A name per feature of flat samples ``(N, D)`` (a table's column names, in feature order), where the data has them."""

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.train, self.train_labels), ("test", self.test, self.test_labels)):
            check(
                isinstance(x, Stream)
                and len(x) > 0
                or isinstance(x, Tensor)
                and x.is_floating_point()
                and x.ndim >= 2
                and len(x) > 0,
                f"{self.name} {split} split",
                expected="a non-empty floating-point tensor of shape (N, *sample_shape)",
                got=_describe(x),
                fix="Convert the samples with torch.as_tensor(x, dtype=torch.float32).",
            )
            if y is not None and len(y) != len(x):
                raise SparseAEError(
                    f"{self.name} {split} labels",
                    expected=f"one label per sample ({len(x)})",
                    got=f"{len(y)} labels",
                    fix="Pass the labels that belong to these samples.",
                )
        check(
            self.train.shape[1:] == self.test.shape[1:],
            f"{self.name} test split",
            expected=f"samples of the train split's shape {tuple(self.train.shape[1:])}",
            got=tuple(self.test.shape[1:]),
            fix="Both splits must come from the same kind of data.",
        )
        if self.test_rows is not None and len(self.test_rows) != len(self.test):
            raise SparseAEError(
                f"{self.name} test_rows",
                expected=f"one entry per test sample ({len(self.test)})",
                got=f"{len(self.test_rows)} entries",
                fix="Select the row information of the test samples (RowInfo.select with the test rows).",
            )
        if self.columns is not None:
            check(
                len(self.sample_shape) == 1 and len(self.columns) == self.sample_shape[0],
                f"{self.name} columns",
                expected=f"one name per feature of flat samples (samples of shape {self.sample_shape})",
                got=f"{len(self.columns)} names",
                fix="Pass a name for each column of x, or none.",
            )

    @classmethod
    def from_array(
        cls,
        x: Any,
        labels: Any = None,
        *,
        test_fraction: float = 0.1,
        name: str = "array",
        label_names: Any = None,
        texts: Any = None,
        columns: Any = None,
    ) -> Dataset:
        """A data set from samples in memory (a NumPy array or tensor ``(N, *sample_shape)``), ``test_fraction`` held out.

        The held-out rows are random blocks of neighbouring rows, the same for every call
        with the same ``N`` (see `sparseae.data.split.holdout_rows`). ``texts``: a string per
        sample (what it embeds), kept for the test samples as ``test_rows.texts``;
        ``columns``: a name per feature of ``(N, D)`` samples.
        """
        from sparseae.data.split import holdout_rows

        x = _as_samples(x, name)
        y = None if labels is None else torch.as_tensor(np.asarray(labels)).long()
        train_rows, test_rows = holdout_rows(len(x), test_fraction, name)

        def rows(t: Tensor | None, r: Tensor) -> Tensor | None:
            return None if t is None else t[r]

        names = None if label_names is None else tuple(map(str, label_names))
        info = None
        if texts is not None:
            texts = tuple(map(str, texts))
            check(len(texts) == len(x), f"{name} texts", expected=f"one text per sample ({len(x)})", got=f"{len(texts)} texts",
                  fix="Pass the texts of these samples, in their order.")  # fmt: skip
            info = RowInfo(texts=texts).select(test_rows)
        return cls(
            name,
            x[train_rows],
            x[test_rows],
            rows(y, train_rows),
            rows(y, test_rows),
            label_names=names,
            test_rows=info,
            columns=None if columns is None else tuple(map(str, columns)),
        )

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])

    @property
    def streamed(self) -> bool:
        """Whether the train split is read batch by batch rather than held in memory."""
        return isinstance(self.train, Stream)

    def subset(self, train: int | None = None, test: int | None = None) -> Dataset:
        """The first ``train`` / ``test`` samples of each split (``None`` keeps all)."""
        for what, n in (("train", train), ("test", test)):
            check(
                n is None or n > 0,
                f"{what} subset size",
                expected="a positive number of samples",
                got=n,
                fix="Leave it unset to use the whole split.",
            )

        def head(t: Any, n: int | None) -> Any:
            if t is None or n is None:
                return t
            if isinstance(t, Stream):
                return t.take(n)
            return t[:n]

        config = self.config and replace(self.config, train_limit=train, test_limit=test)
        return Dataset(
            self.name,
            head(self.train, train),
            head(self.test, test),
            head(self.train_labels, train),
            head(self.test_labels, test),
            config,
            self.label_names,
            self.test_rows if self.test_rows is None or test is None else self.test_rows.select(slice(0, test)),
            self.columns,
        )


def _as_samples(x: Any, what: str) -> Tensor:
    """``x`` as a float32 tensor of samples, checked: numbers, 2-D or more, finite."""
    array = x.detach().cpu() if isinstance(x, Tensor) else np.asarray(x)
    if isinstance(array, np.ndarray):
        check(
            array.dtype.kind in "fiub",
            what,
            expected="numbers (float, int or bool)",
            got=f"dtype {array.dtype}",
            fix="Convert the data to numbers, e.g. x.astype(np.float32).",
        )
        array = torch.from_numpy(np.ascontiguousarray(array))
    check(
        array.ndim >= 2 and len(array) > 0,
        what,
        expected="a non-empty array with one sample per row, 2-D or more",
        got=f"shape {tuple(array.shape)}",
        fix="Reshape it: x.reshape(-1, 1) for one feature, x.reshape(1, -1) for one sample.",
    )
    return check_finite_rows(array.float(), what)


def check_finite_rows(x: Tensor, what: str, split: str = "") -> Tensor:
    """``x`` itself, if every row holds finite numbers; else an error naming how many rows do not, and the first."""
    bad = ~torch.isfinite(x.flatten(1)).all(1)
    if bad.any():
        rows = torch.nonzero(bad).flatten()
        raise SparseAEError(
            what,
            expected="finite numbers",
            got=f"NaN or infinity in {len(rows)} {split}row(s), the first at row {int(rows[0])}",
            fix="Clean the data first, e.g. x[~np.isfinite(x)] = 0, or drop those rows.",
        )
    return x


def _describe(x: object) -> str:
    if isinstance(x, Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    if isinstance(x, Stream):
        return "an empty stream"
    return type(x).__name__

"""An in-memory data set: a train split and a test split of samples, with optional labels."""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import Tensor

from sparseae.errors import SparseAEError, check


@dataclass(frozen=True)
class DataConfig:
    """Where a data set comes from, so a run can load it again (resume, eval)."""

    source: str = "mnist"
    """'mnist' (shipped with sparseae) or a directory of MNIST-layout IDX files
    (train-images-idx3-ubyte[.gz] and the other three), e.g. Fashion-MNIST."""
    train_limit: int | None = None
    """Use only the first N training samples (all when unset)."""
    test_limit: int | None = None
    """Use only the first N test samples (all when unset)."""


@dataclass(frozen=True)
class Dataset:
    """Train and test samples as float32 tensors of shape ``(N, *sample_shape)``.

    Labels, where the data has them, are int64 tensors of shape ``(N,)``.
    """

    name: str
    train: Tensor
    test: Tensor
    train_labels: Tensor | None = None
    test_labels: Tensor | None = None
    config: DataConfig | None = None
    """How to load this data again; ``None`` for data built in memory."""
    label_names: tuple[str, ...] | None = None
    """A name per label value (label i is called label_names[i]), where the data has them."""

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.train, self.train_labels), ("test", self.test, self.test_labels)):
            check(
                isinstance(x, Tensor) and x.is_floating_point() and x.ndim >= 2 and len(x) > 0,
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
                    fix="Pass the label file that belongs to these images.",
                )
        check(
            self.train.shape[1:] == self.test.shape[1:],
            f"{self.name} test split",
            expected=f"samples of the train split's shape {tuple(self.train.shape[1:])}",
            got=tuple(self.test.shape[1:]),
            fix="Both splits must come from the same kind of data.",
        )

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])

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

        def head(t: Tensor | None, n: int | None) -> Tensor | None:
            return t if t is None or n is None else t[:n]

        config = self.config and replace(self.config, train_limit=train, test_limit=test)
        return Dataset(
            self.name,
            head(self.train, train),
            head(self.test, test),
            head(self.train_labels, train),
            head(self.test_labels, test),
            config,
            self.label_names,
        )


def _describe(x: object) -> str:
    if isinstance(x, Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__

"""[`load_data`][sparseae.data.load_data]: the data set a [`DataConfig`][sparseae.data.DataConfig] describes,
from MNIST, downloads, arrays, images, patches, shard caches or a language model's activations."""

from __future__ import annotations

from dataclasses import replace
from difflib import get_close_matches
from pathlib import Path

import torch
from torch import Tensor

from sparseae.data.arrays import ARRAY_SUFFIXES, Arrays, read_arrays
from sparseae.data.config import DataConfig
from sparseae.data.dataset import Dataset, check_finite_rows
from sparseae.data.download import DATASETS, load_named
from sparseae.data.mnist import load_mnist
from sparseae.data.shards import ShardReader, is_shard_dir
from sparseae.data.split import holdout_rows
from sparseae.data.stream import RowReader, RowStream, Stream
from sparseae.errors import SparseAEError

NAMED_SOURCES = ("mnist", *sorted(set(DATASETS) - {"mnist"}), "patches", "lm")


def is_named_source(source: str) -> bool:
    """Whether ``source`` is a name (``mnist``, a downloadable set, ``patches``, ``lm``) rather than a path."""
    return source in NAMED_SOURCES or source in DATASETS


def load_data(config: DataConfig) -> Dataset:
    """The data set ``config`` describes (see `DataConfig` for every kind of source)."""
    data = _load(config.source, config)
    if config.test_source is not None:
        test = _load(config.test_source, config)
        train_x, train_y = _whole(data)
        test_x, test_y = _whole(test)
        data = Dataset(data.name, train_x, test_x, train_y, test_y, None, data.label_names)
    data = replace(data, config=config)
    return data.subset(config.train_limit, config.test_limit)


def _load(source: str, config: DataConfig) -> Dataset:
    if source == "mnist":
        return load_mnist()
    if source in DATASETS:
        return load_named(source)
    if source == "patches" or source.startswith("patches:"):
        from sparseae.data.patches import load_patches

        images = source.partition(":")[2] or None
        mode = "gray" if config.image_mode == "auto" else config.image_mode
        return load_patches(
            images, patch_size=config.patch_size, n_patches=config.n_patches, mode=mode, test_fraction=config.test_fraction
        )
    if source == "lm":
        return _load_lm(config)
    path = Path(source)
    if path.is_dir():
        if is_shard_dir(path):
            reader = ShardReader(path)
            return _from_arrays(path, Arrays(reader), config)
        if any(path.glob("train-images-idx3-ubyte*")):
            return load_mnist(path)
        from sparseae.data.images import load_image_folder

        mode = config.image_mode
        return load_image_folder(path, size=config.image_size, mode=mode, test_fraction=config.test_fraction)
    if path.is_file() or path.suffix.lower() in ARRAY_SUFFIXES:
        arrays = read_arrays(
            path,
            key=config.key,
            label_column=config.label_column,
            columns=config.columns,
            drop_columns=config.drop_columns,
            csv_delimiter=config.csv_delimiter,
        )
        return _from_arrays(path, arrays, config)
    raise SparseAEError(
        "--data",
        expected=f"one of {', '.join(NAMED_SOURCES)}, an array file ({' '.join(ARRAY_SUFFIXES)}) or a directory "
        "(images, IDX files or a shard cache)",
        got=f"{source!r} (no such file or directory)",
        fix="Check the path or the name." + "".join(f" Did you mean {m!r}?" for m in get_close_matches(source, NAMED_SOURCES, 1)),
    )


LM_TEST_ROWS = 16_384
"""At most this many activation rows are held out for testing (they are kept in memory)."""


def _load_lm(config: DataConfig) -> Dataset:
    """Activations of a language model, computed as training goes; the first rows of the text are the test split."""
    from sparseae.data.activations import ActivationStream

    if config.lm is None:
        raise SparseAEError(
            "--data lm",
            expected="the language model, module and text (--lm-model, --lm-module, --lm-text)",
            got="none of them",
            fix="For example --lm-model gpt2 --lm-module transformer.h.6 --lm-text corpus.txt.",
        )
    n_test = config.test_limit or min(LM_TEST_ROWS, max(1, round(config.lm.tokens * config.test_fraction)))
    first = ActivationStream(config.lm)
    test = first.head(n_test)
    train = ActivationStream(config.lm, skip=len(test), lm=first._model())
    name = f"{Path(config.lm.model).name}:{config.lm.module}"
    return Dataset(name, train, test)


def _from_arrays(path: Path, arrays: Arrays, config: DataConfig) -> Dataset:
    """A data set from a file's arrays: its own test split, or ``test_fraction`` held out."""
    name = path.name
    if arrays.test is not None:
        return Dataset(
            name,
            check_finite_rows(arrays.x.float(), str(path)),
            check_finite_rows(arrays.test.float(), str(path), "test "),
            _labels(path, arrays.labels),
            _labels(path, arrays.test_labels),
        )
    x, labels = arrays.x, _labels(path, arrays.labels)
    n = len(x)
    train_rows, test_rows = holdout_rows(n, config.test_fraction, str(path))
    if isinstance(x, RowReader) and _stream(x, config):
        train = RowStream(x, train_rows, buffer_rows=config.shuffle_buffer)
        test = RowStream(x, test_rows, buffer_rows=config.shuffle_buffer)
        return Dataset(name, train, test, _rows(labels, train_rows), _rows(labels, test_rows), label_names=arrays.label_names)
    if isinstance(x, RowReader):  # each split read straight into its own tensor, checked finite on the way
        train, test = RowStream(x, train_rows)[:], RowStream(x, test_rows)[:]
        return Dataset(name, train, test, _rows(labels, train_rows), _rows(labels, test_rows), label_names=arrays.label_names)
    x = check_finite_rows(x.float(), str(path))
    return Dataset(
        name, x[train_rows], x[test_rows], _rows(labels, train_rows), _rows(labels, test_rows), label_names=arrays.label_names
    )


def _stream(reader: RowReader, config: DataConfig) -> bool:
    if config.load != "auto":
        return config.load == "stream"
    n_bytes = 4 * len(reader) * int(torch.tensor(reader.shape[1:]).prod())  # as float32
    return n_bytes > config.memory_limit_gb * 2**30


def _rows(labels: Tensor | None, rows: Tensor) -> Tensor | None:
    return None if labels is None else labels[rows]


def _labels(path: Path, labels: Tensor | None) -> Tensor | None:
    if labels is None:
        return None
    labels = labels.double() if labels.is_floating_point() else labels.long()
    if (
        labels.is_floating_point()
        and (not torch.isfinite(labels).all() or not torch.equal(labels, labels.round()) or (labels.abs() >= 2**53).any())
        or (labels < 0).any()
    ):
        raise SparseAEError(
            f"{path} labels",
            expected="whole-number class labels >= 0",
            got=f"values such as {labels[:3].tolist()}",
            fix="Encode the classes as 0, 1, 2, ...",
        )
    return labels.long()


def _whole(data: Dataset) -> tuple[Tensor | Stream, Tensor | None]:
    """Every sample of ``data``, train and test together (for a source used as one split)."""
    if isinstance(data.train, RowStream) and isinstance(data.test, RowStream) and data.train.reader is data.test.reader:
        labels = None if data.train_labels is None else torch.cat([data.train_labels, data.test_labels])
        rows = torch.cat([data.train.rows, data.test.rows])
        order = torch.argsort(rows)
        return RowStream(data.train.reader, rows[order], buffer_rows=data.train.buffer_rows), (
            None if labels is None else labels[order]
        )
    if isinstance(data.train, Tensor) and isinstance(data.test, Tensor):
        labels = None
        if data.train_labels is not None and data.test_labels is not None:
            labels = torch.cat([data.train_labels, data.test_labels])
        return torch.cat([data.train, data.test]), labels
    raise SparseAEError(
        data.name, expected="a source that can serve as one whole split", got=type(data.train).__name__, fix="Use an array file."
    )

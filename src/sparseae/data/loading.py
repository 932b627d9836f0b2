"""[`load_data`][sparseae.data.load_data]: the data set a [`DataConfig`][sparseae.data.DataConfig] describes,
from MNIST, downloads, arrays, images, patches, shard caches or a language model's activations."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparseae.data.activations import ActivationStream, _collect_per_module
from sparseae.data.arrays import ARRAY_SUFFIXES, Arrays, read_arrays
from sparseae.data.config import ActivationConfig, DataConfig
from sparseae.data.dataset import Dataset, check_finite_rows
from sparseae.data.download import DATASETS, load_named
from sparseae.data.mnist import load_mnist
from sparseae.data.rows import RowInfo
from sparseae.data.shards import ShardReader, is_shard_dir
from sparseae.data.sidecar import find_texts, read_row_texts
from sparseae.data.split import holdout_rows
from sparseae.data.stream import RowReader, RowStream, Stream
from sparseae.data.tokens import TokenLog, read_tokens
from sparseae.errors import SparseAEError

NAMED_SOURCES = ("mnist", *sorted(set(DATASETS) - {"mnist"}), "patches", "lm")


def is_named_source(source: str) -> bool:
    """Whether ``source`` is a name (``mnist``, a downloadable set, ``patches``, ``lm``) rather than a path."""
    return source in NAMED_SOURCES or source in DATASETS


def load_data(config: DataConfig) -> Dataset:
    """The data set ``config`` describes (see `DataConfig` for every kind of source).

    What each test row is comes along where the source says (``Dataset.test_rows``): texts from a
    text column or a texts file, tokens from a cache of language-model activations. ``--texts``
    belongs to the source; a test source finds its own texts file beside it.
    """
    data, _ = _load(config.source, config, config.texts)
    if config.test_source is not None:
        test, every = _load(config.test_source, config, None)
        train_x, train_y = _whole(data)
        test_x, test_y = _whole(test)
        test_y = _same_classes(data, test, test_y)
        data = Dataset(data.name, train_x, test_x, train_y, test_y, None, data.label_names, every, data.columns)
    if config.texts is not None and Path(config.texts).exists():  # found again from any directory
        config = replace(config, texts=str(Path(config.texts).resolve()))
    data = replace(data, config=config)
    return data.subset(config.train_limit, config.test_limit)


def _load(source: str, config: DataConfig, texts: str | None) -> tuple[Dataset, RowInfo | None]:
    """The data set in ``source``, and what each of its rows is in the order `_whole` puts them (None if unknown)."""
    path = Path(source)
    if not is_named_source(source) and not source.startswith("patches:"):
        if path.is_dir() and is_shard_dir(path):
            reader = ShardReader(path)
            tokens = read_tokens(path, len(reader))
            arrays = Arrays(reader, rows=None if tokens is None else RowInfo(tokens=tokens))
            return _from_arrays(path, _with_texts(path, arrays, texts, find=False), config)
        if not path.is_dir() and (path.is_file() or path.suffix.lower() in ARRAY_SUFFIXES):
            arrays = read_arrays(
                path,
                key=config.key,
                label_column=config.label_column,
                columns=config.columns,
                drop_columns=config.drop_columns,
                csv_delimiter=config.csv_delimiter,
                text_column=config.text_column,
            )
            return _from_arrays(path, _with_texts(path, arrays, texts, find=config.text_column is None), config)
    if texts is not None:
        raise SparseAEError(
            f"--texts {texts}",
            expected="an array file or a shard cache, whose rows the texts describe",
            got=f"--data {source}",
            fix="Leave --texts out for this source.",
        )
    return _load_other(source, path, config), None


def _load_other(source: str, path: Path, config: DataConfig) -> Dataset:
    """A source that is not an array file or a shard cache: a named one, patches, a language model, a folder."""
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
    if path.is_dir():
        caches = sorted(p for p in path.iterdir() if p.is_dir() and is_shard_dir(p))
        if caches:  # cache-activations with several modules writes one cache per module
            raise SparseAEError(
                str(path),
                expected="one shard cache (a directory with manifest.json)",
                got=f"a folder of {len(caches)} caches, one per module: {', '.join(p.name for p in caches)}",
                fix=f"Pass one of them, e.g. --data {caches[0]}.",
            )
        if any(path.glob("train-images-idx3-ubyte*")):
            return load_mnist(path)
        from sparseae.data.images import load_image_folder

        mode = config.image_mode
        return load_image_folder(path, size=config.image_size, mode=mode, test_fraction=config.test_fraction)
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
    return Dataset(name, train, test, test_rows=RowInfo(tokens=first.head_tokens(len(test))))


def _with_texts(path: Path, arrays: Arrays, texts: str | None, *, find: bool) -> Arrays:
    """``arrays`` with the texts of its rows from the file ``texts``, or (``find``) from a texts file beside ``path``."""
    file = Path(texts) if texts is not None else find_texts(path) if find else None
    if file is None:
        return arrays
    found = read_row_texts(file, len(arrays), str(path))
    tokens = None if arrays.rows is None else arrays.rows.tokens
    arrays.rows = RowInfo(texts=found, tokens=tokens)
    return arrays


def _from_arrays(path: Path, arrays: Arrays, config: DataConfig) -> tuple[Dataset, RowInfo | None]:
    """A data set from a file's arrays: its own test split, or ``test_fraction`` held out; and what each row is,
    in the order `_whole` puts the rows."""
    name, info, columns = path.name, arrays.rows, arrays.columns
    if arrays.test is not None:
        test_info = None if info is None else info.select(slice(len(arrays.x), None))
        data = Dataset(
            name,
            check_finite_rows(arrays.x.float(), str(path)),
            check_finite_rows(arrays.test.float(), str(path), "test "),
            _labels(path, arrays.labels),
            _labels(path, arrays.test_labels),
            label_names=arrays.label_names,
            test_rows=test_info,
            columns=columns,
        )
        return data, info
    x, labels = arrays.x, _labels(path, arrays.labels)
    n = len(x)
    train_rows, test_rows = holdout_rows(n, config.test_fraction, str(path))
    test_info = None if info is None else info.select(test_rows)
    streamed = isinstance(x, RowReader) and _stream(x, config)
    if streamed:
        train = RowStream(x, train_rows, buffer_rows=config.shuffle_buffer)
        test = RowStream(x, test_rows, buffer_rows=config.shuffle_buffer)
    elif isinstance(x, RowReader):  # each split read straight into its own tensor, checked finite on the way
        train, test = RowStream(x, train_rows)[:], RowStream(x, test_rows)[:]
    else:
        x = check_finite_rows(x.float(), str(path))
        train, test = x[train_rows], x[test_rows]
    data = Dataset(name, train, test, _rows(labels, train_rows), _rows(labels, test_rows), label_names=arrays.label_names,
                   test_rows=test_info, columns=columns)  # fmt: skip
    # _whole puts a streamed file's rows back in file order, and concatenates the two tensors otherwise
    every = info if info is None or streamed else info.select(torch.cat([train_rows, test_rows]))
    return data, every


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


def _same_classes(train: Dataset, test: Dataset, labels: Tensor | None) -> Tensor | None:
    """The test source's ``labels`` numbered as the source's classes, where both name their classes by words."""
    if labels is None or train.train_labels is None or train.label_names == test.label_names:
        return labels
    if train.label_names is None or test.label_names is None:
        named, numbered = ("--data", "--test-source") if test.label_names is None else ("--test-source", "--data")
        raise SparseAEError(
            "--test-source labels",
            expected="classes of the same kind as the training data's",
            got=f"classes named by words in {named} and numbers in {numbered}",
            fix="Label both files the same way.",
        )
    number = {name: i for i, name in enumerate(train.label_names)}
    unknown = [name for name in test.label_names if name not in number]
    if unknown:
        raise SparseAEError(
            "--test-source labels",
            expected=f"classes of the training data ({', '.join(train.label_names)})",
            got=f"class(es) {', '.join(map(repr, unknown[:5]))} that the training data lacks",
            fix="Train on data holding every class, or leave those rows out of the test file.",
        )
    return torch.tensor([number[name] for name in test.label_names])[labels]


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


def load_data_per_module(config: DataConfig) -> dict[str, Dataset]:
    """For ``--data lm`` with several modules (``config.lm.module`` a comma list or glob): one data set per module.

    Each is what `load_data` gives for that one module (its ``config.lm.module`` that name, the
    same test rows and batches), and every forward pass of the language model feeds them all:
    read their training batches in lockstep (as [`sweep`][sparseae.training.sweep] does), the
    k-th pass over the text that one module's stream asks for is run once for every module.
    """
    from sparseae.data.lm_models import load_lm, resolve_modules

    if config.lm is None or config.source != "lm":
        raise SparseAEError(
            f"--data {config.source}",
            expected="lm, with --lm-model, --lm-module and --lm-text",
            got="another source" if config.lm is not None else "no language model",
            fix="One data set per module comes from a language model's activations.",
        )
    lm = config.lm
    model, tokenizer = load_lm(lm.model, lm.device)
    names = resolve_modules(model, lm.module)
    n_test = config.test_limit or min(LM_TEST_ROWS, max(1, round(lm.tokens * config.test_fraction)))
    tokens, heads = TokenLog(), {name: [] for name in names}
    for rows in _collect_per_module(lm, model, tokenizer, n_test, tokens):  # the test rows: the text's first
        for name in names:
            heads[name].append(rows[name])
    test = {name: torch.cat(parts)[:n_test] for name, parts in heads.items()}
    skip = len(next(iter(test.values())))
    test_rows = RowInfo(tokens=tokens.token_rows(tokenizer, lm.model).select(slice(0, skip)))
    passes = _SharedPasses(lm, names, (model, tokenizer))
    out = {}
    for name in names:
        own = replace(lm, module=name)
        train = _ModuleStream(own, passes, skip=skip, lm=(model, tokenizer))
        data = Dataset(f"{Path(lm.model).name}:{name}", train, test[name], test_rows=test_rows)
        out[name] = replace(data, config=replace(config, lm=own)).subset(config.train_limit, None)
    return out


class _SharedPasses:
    """The forward passes of one model, shared by the streams of its modules: the k-th read of each module's
    rows gets the k-th pass over the text, run once (the first reader's) and teed to the others."""

    def __init__(self, config: ActivationConfig, names: list[str], lm: tuple[Any, Any]):
        self.config, self.names, self.lm = config, names, lm
        self.passes: list[tuple[int, dict[str, Iterator[Tensor]]]] = []
        self.reads = dict.fromkeys(names, 0)

    def rows(self, name: str, max_tokens: int) -> Iterator[Tensor]:
        k, self.reads[name] = self.reads[name], self.reads[name] + 1
        if k == len(self.passes):
            teed = itertools.tee(_collect_per_module(self.config, *self.lm, max_tokens), len(self.names))
            self.passes.append((max_tokens, {n: _pick(it, n) for n, it in zip(self.names, teed, strict=True)}))
        asked, readers = self.passes[k]
        assert asked == max_tokens, "the streams of one model's modules are read alike, in lockstep"
        return readers.pop(name)


def _pick(passes: Iterator[dict[str, Tensor]], name: str) -> Iterator[Tensor]:
    for rows in passes:
        yield rows[name]


class _ModuleStream(ActivationStream):
    """One module's rows of a model whose modules are read together: an `ActivationStream` (same buffer,
    shuffle and batches) whose rows come from the shared passes."""

    def __init__(self, config: ActivationConfig, passes: _SharedPasses, **kwargs: Any):
        super().__init__(config, **kwargs)
        self.passes = passes

    def _rows(self, max_tokens: int, tokens: TokenLog | None = None) -> Iterator[Tensor]:
        to_skip = self.skip
        for rows in self.passes.rows(self.config.module, max_tokens + self.skip):
            if to_skip >= len(rows):
                to_skip -= len(rows)
                continue
            yield rows[to_skip:]
            to_skip = 0

    def head(self, n: int) -> Tensor:  # the training rows' tokens are not kept: the test split's are
        n = min(n, len(self))
        if len(self._head) < n:
            self._head = torch.cat(list(self._rows(n)))
        return self._head[:n]

    def take(self, n: int) -> _ModuleStream:
        config = replace(self.config, tokens=min(n, self.config.tokens))
        return _ModuleStream(config, self.passes, buffer_batches=self.buffer_batches, skip=self.skip, lm=self._lm)

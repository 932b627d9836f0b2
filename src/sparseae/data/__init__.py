"""Data sources: one [`load_data`][sparseae.data.load_data] for MNIST, downloads, arrays, images, patches,
shard caches and language-model activations; the configs that describe them are in `config`."""

from sparseae.data.arrays import ARRAY_SUFFIXES, STREAMABLE_SUFFIXES, Arrays, read_arrays
from sparseae.data.config import ActivationConfig, DataConfig
from sparseae.data.dataset import Dataset, check_finite_rows
from sparseae.data.download import DATASETS, load_named
from sparseae.data.idx import read_idx
from sparseae.data.loading import LM_TEST_ROWS, NAMED_SOURCES, is_named_source, load_data, load_data_per_module
from sparseae.data.mnist import load_mnist
from sparseae.data.rows import Documents, RowInfo, TokenRows
from sparseae.data.shards import ShardReader, is_shard_dir, write_shards
from sparseae.data.split import holdout_rows
from sparseae.data.stream import RowReader, RowStream, Stream

__all__ = [
    "ARRAY_SUFFIXES",
    "ActivationConfig",
    "Arrays",
    "DATASETS",
    "DataConfig",
    "Dataset",
    "Documents",
    "LM_TEST_ROWS",
    "NAMED_SOURCES",
    "RowInfo",
    "RowReader",
    "RowStream",
    "STREAMABLE_SUFFIXES",
    "ShardReader",
    "Stream",
    "TokenRows",
    "check_finite_rows",
    "holdout_rows",
    "is_named_source",
    "is_shard_dir",
    "load_data",
    "load_data_per_module",
    "load_mnist",
    "load_named",
    "read_arrays",
    "read_idx",
    "write_shards",
]

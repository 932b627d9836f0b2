"""Inputs for a trained model: array files read in its input shape, and data sources that stay valid anywhere.

``read_inputs`` reads any file ``train --data`` reads (``sparseae encode --input``);
``table_options`` reads a CSV or Parquet file's columns the way the run's data did;
``absolute_source`` makes a path source absolute, so that a run finds its data from any directory.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sparseae.data import is_named_source
from sparseae.data.arrays import read_arrays
from sparseae.data.stream import RowReader, RowStream

TABLE_SUFFIXES = (".csv", ".parquet")
"""Files read as tables: their columns are chosen by name (``columns``, ``drop_columns``, ``label_column``)."""


def read_inputs(path: str | Path, shape: tuple[int, ...], options: Mapping[str, Any] | None = None) -> Tensor:
    """Samples from an array file (.npy .npz .safetensors .pt .csv .parquet) as a float tensor ``(N, *shape)``.

    Rows of ``prod(shape)`` values are reshaped to ``shape`` (flat rows for an image model, or images for a
    dense one); 8-bit images are scaled by 1/255, as MNIST's files hold them.

    Args:
        path: The file.
        shape: The model's input shape, e.g. ``model.input_shape``.
        options: Keyword arguments of `sparseae.data.read_arrays`, e.g. from `table_options`.
    """
    arrays = read_arrays(Path(path), **dict(options or {}))
    if isinstance(arrays.x, RowReader):
        eight_bit = arrays.x.read(0, 1).dtype == np.uint8
        x = RowStream(arrays.x)[:]
    else:
        eight_bit, x = arrays.x.dtype == torch.uint8, arrays.x.float()
    if eight_bit and x.ndim >= 3:
        x = x / 255.0
    if math.prod(x.shape[1:]) == math.prod(shape) and tuple(x.shape[1:]) != tuple(shape):
        x = x.reshape(len(x), *shape)
    return x


def table_options(data: Mapping[str, Any] | None, path: str | Path) -> dict[str, Any]:
    """The `read_inputs` options that read the table ``path`` as a run's data was read.

    Args:
        data: The ``data`` entry of the run's config.json (its ``columns``, ``drop_columns``,
            ``label_column``, ``text_column`` and CSV ``csv_delimiter``); None for a model without one.
        path: The CSV or Parquet file to read; other files need no options.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in TABLE_SUFFIXES or not isinstance(data, Mapping):
        return {}
    names = ("columns", "drop_columns", "label_column", "text_column") + (("csv_delimiter",) if suffix == ".csv" else ())
    return {name: data[name] for name in names if data.get(name) is not None}


def absolute_source(source: str) -> str:
    """A path source made absolute (so that a run can find it from anywhere); names, and paths not there, kept."""
    if is_named_source(source):
        return source
    if source.startswith("patches:"):
        return "patches:" + str(Path(source.partition(":")[2]).resolve())
    return str(Path(source).resolve()) if Path(source).exists() else source

"""MNIST, shipped with sparseae, and any data set in the MNIST IDX layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sparseae.data.dataset import DataConfig, Dataset
from sparseae.data.idx import read_idx
from sparseae.errors import SparseAEError

SHIPPED = Path(__file__).parent / "mnist_files"
"""The full MNIST (60,000 train + 10,000 test), gzip IDX, with its license note."""

MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
"""sha256 of the uncompressed bytes of each shipped MNIST file."""

_SPLITS = {"train": "train", "test": "t10k"}


def load_mnist(path: str | Path | None = None, *, sha256: dict[str, str] | None = None) -> Dataset:
    """Load an MNIST-layout data set as images in [0, 1], shape ``(N, 1, 28, 28)``.

    Args:
        path: A directory holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
            ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each raw or ``.gz``),
            as Fashion-MNIST and KMNIST are distributed. ``None`` loads the shipped MNIST,
            whose checksums are always verified.
        sha256: Expected sha256 of each uncompressed file, keyed by the names above.
    """
    if path is None:
        directory, sha256, name = SHIPPED, MNIST_SHA256, "mnist"
    else:
        directory, name = Path(path), Path(path).name or "idx"
        if not directory.is_dir():
            raise SparseAEError(
                str(directory),
                expected="a directory of MNIST-layout IDX files",
                got="no such directory" if not directory.exists() else "a file",
                fix="Pass the directory that holds train-images-idx3-ubyte[.gz] and the other three files.",
            )
    arrays = {}
    for split, prefix in _SPLITS.items():
        for kind, ndim in (("images", 3), ("labels", 1)):
            stem = f"{prefix}-{kind}-idx{ndim}-ubyte"
            file = _find(directory, stem)
            array = read_idx(file, (sha256 or {}).get(stem))
            if array.ndim != ndim:
                raise SparseAEError(
                    str(file),
                    expected=f"{kind} with {ndim} dimension(s)",
                    got=f"shape {array.shape}",
                    fix=f"Check that this file holds the {split} {kind}.",
                )
            arrays[split, kind] = (file, array)
    tensors = {}
    for split in _SPLITS:
        (image_file, images), (label_file, labels) = arrays[split, "images"], arrays[split, "labels"]
        if len(images) != len(labels):
            raise SparseAEError(
                str(label_file),
                expected=f"one label per image in {image_file.name} ({len(images)})",
                got=f"{len(labels)} labels",
                fix="The image and label files do not belong together: use files from one download.",
            )
        if images.dtype.kind == "f" and not np.isfinite(images).all() or min(images.shape, default=0) == 0:
            raise SparseAEError(
                str(image_file),
                expected="finite pixel values in images of a non-zero size",
                got=f"shape {images.shape}" + (", NaN or infinity" if images.size and images.dtype.kind == "f" else ""),
                fix="The file is damaged.",
            )
        float_labels = labels.dtype.kind == "f"
        if (
            float_labels
            and not (np.isfinite(labels) & (labels == np.round(labels)) & (np.abs(labels) < 2**53)).all()
            or (labels.size and labels.min() < 0)
        ):
            raise SparseAEError(
                str(label_file), expected="class labels >= 0", got="negative or NaN labels", fix="The file is damaged."
            )
        x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)  # (N, 1, H, W)
        if not torch.isfinite(x).all():  # float64 pixels beyond float32's range
            raise SparseAEError(
                str(image_file), expected="pixel values within float32's range", got="larger ones", fix="Rescale them."
            )
        tensors[split] = (x, torch.from_numpy(labels.astype(np.int64)))
    config = DataConfig("mnist" if path is None else str(directory.resolve()))
    return Dataset(name, tensors["train"][0], tensors["test"][0], tensors["train"][1], tensors["test"][1], config)


def _find(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    raise SparseAEError(
        str(directory / stem),
        expected="an IDX file named like this, raw or with .gz",
        got="no such file",
        fix=f"Put {stem}.gz (or {stem}) in {directory}.",
    )

"""Random square patches of photographs: the natural-image data of the classic sparse-coding papers.

By default the patches come from the two photographs scikit-learn ships
(``sklearn.datasets.load_sample_images``: a Chinese temple and a flower, 427 x 640 each).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sparseae.data.dataset import Dataset
from sparseae.data.images import MODES, ImageMode, check_mode, finish, image_files, read_image, scan
from sparseae.data.split import holdout_rows
from sparseae.errors import SparseAEError, check


def load_patches(
    images: str | Path | Sequence[str | Path] | None = None,
    *,
    patch_size: int = 8,
    n_patches: int = 50_000,
    mode: ImageMode = "gray",
    seed: int = 0,
    test_fraction: float = 0.1,
) -> Dataset:
    """``n_patches`` random ``patch_size`` x ``patch_size`` patches, shape ``(N, C, p, p)``, raw pixels in [0, 1].

    Each patch picks an image uniformly at random, then a position uniformly among all
    the places the patch fits in it, from a ``torch.Generator`` seeded by ``seed``: the same
    arguments always give the same patches. ``n_patches`` counts both splits; the test split
    is held out by `sparseae.data.split.holdout_rows`.

    The patches are NOT normalised here: the usual per-patch mean removal and ZCA whitening
    belong to the model's preprocessing, which learns them from the training split.

    Args:
        images: An image file, a folder of images (read recursively, as
            `sparseae.data.images.load_image_folder` reads one; sizes may differ), or a
            list of files and folders. ``None`` takes scikit-learn's sample photographs.
        patch_size: The side p of each square patch, in pixels.
        n_patches: How many patches in all (train + test).
        mode: ``"gray"`` (C = 1, ITU-R 601 luma), ``"rgb"`` (C = 3) or ``"auto"`` (gray when
            every image is stored as gray).
        seed: Seeds the patch positions.
        test_fraction: The share of patches held out as the test split.
    """
    check(
        isinstance(patch_size, int) and not isinstance(patch_size, bool) and patch_size >= 1,
        "patch_size",
        expected="a positive int (the side of a square patch, in pixels)",
        got=repr(patch_size),
        fix="Use e.g. patch_size=8, as in Ng's sparse-autoencoder exercise.",
    )
    check(
        isinstance(n_patches, int) and not isinstance(n_patches, bool) and n_patches >= 2,
        "n_patches",
        expected="an int of at least 2, to hold some out for testing",
        got=repr(n_patches),
        fix="Use e.g. n_patches=10_000.",
    )
    check_mode(mode, MODES)
    train_rows, test_rows = holdout_rows(n_patches, test_fraction, what="n_patches")
    named = _read_images(images, mode)
    for name, img in named:
        check(
            min(img.shape[1:]) >= patch_size,
            name,
            expected=f"an image at least {patch_size}x{patch_size}, to cut {patch_size}x{patch_size} patches from",
            got=f"{img.shape[1]}x{img.shape[2]} (height x width)",
            fix="Use a smaller patch_size, or leave this image out.",
        )
    generator = torch.Generator().manual_seed(seed)
    patches = _sample([img for _, img in named], patch_size, n_patches, generator)  # (n_patches, C, p, p)
    name = f"{Path(images).resolve().stem}-patches" if isinstance(images, (str, Path)) else "patches"
    return Dataset(name, patches[train_rows], patches[test_rows])


def _sample(images: list[Tensor], p: int, n: int, generator: torch.Generator) -> Tensor:
    """``n`` patches ``(n, C, p, p)``: an image uniformly, then a top-left corner uniformly where the patch fits."""
    which = torch.randint(len(images), (n,), generator=generator)
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    out = torch.empty(n, images[0].shape[0], p, p)
    offsets = torch.arange(p)
    for i, img in enumerate(images):
        rows = (which == i).nonzero().squeeze(1)
        if len(rows) == 0:
            continue
        room = torch.tensor([img.shape[1] - p + 1, img.shape[2] - p + 1], dtype=torch.float64)
        corner = (u[rows] * room).long().minimum(room.long() - 1)  # (m, 2): top, left
        ys = corner[:, :1] + offsets  # (m, p)
        xs = corner[:, 1:] + offsets  # (m, p)
        out[rows] = img[:, ys[:, :, None], xs[:, None, :]].permute(1, 0, 2, 3)  # (C, m, p, p) -> (m, C, p, p)
    return out


def _read_images(images: str | Path | Sequence[str | Path] | None, mode: str) -> list[tuple[str, Tensor]]:
    """``(name, pixels (C, H, W))`` for each image, C the same for all as ``mode`` decides."""
    if images is None:
        return _sample_photographs(mode)
    entries = [images] if isinstance(images, (str, Path)) else list(images)
    check(
        len(entries) > 0,
        "images",
        expected="an image file, a folder of images, or a list of them",
        got="an empty list",
        fix="Pass at least one image, or images=None for scikit-learn's sample photographs.",
    )
    files: list[Path] = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            files += image_files(path)
        elif path.is_file():
            files.append(path)
        else:
            raise SparseAEError(
                str(path),
                expected="an image file or a folder of images",
                got="no such file or folder",
                fix="Check the path.",
            )
    # "auto" reads every header first: whether the set is gray depends on all of them.
    gray = mode == "gray" or (mode == "auto" and all(scan(f).gray for f in files))
    return [(str(f), read_image(f, gray=gray)) for f in files]


def _sample_photographs(mode: str) -> list[tuple[str, Tensor]]:
    try:
        from sklearn.datasets import load_sample_images
    except ImportError as e:
        raise SparseAEError(
            "load_patches(images=None)",
            expected="scikit-learn installed, whose sample photographs are the default images",
            got=f"{type(e).__name__}: {e}",
            fix="Run `pip install scikit-learn`, or pass images=<an image file or folder>.",
        ) from e
    photos = load_sample_images()
    gray = mode == "gray"  # both photographs are colour, so "auto" means RGB
    return [
        (f"sklearn sample {Path(name).name}", finish(img.astype(np.float32) / 255.0, gray=gray, size=None))
        for name, img in zip(photos.filenames, photos.images, strict=True)
    ]

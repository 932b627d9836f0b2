"""A folder of image files as a data set, labelled by sub-folder (``path/cat/*.png``, ``path/dog/*.jpg``).

Every image becomes float32 pixels in [0, 1], shape ``(C, H, W)`` with C = 1 (gray) or 3 (RGB).
Conversions, decided once here so the folder loader and the patch sampler agree:

- Alpha is composited on black (each colour channel is multiplied by alpha), so a fully
  transparent pixel reads 0 whatever colour the file stores under it.
- RGB to gray is the ITU-R 601 luma, ``0.299 R + 0.587 G + 0.114 B`` (what Pillow's "L" uses),
  computed in float; gray to RGB repeats the channel.
- 16-bit gray ("I;16") is scaled by 1/65535; "I" is read as 16-bit data and "F" as [0, 1], both clipped.
- A camera's EXIF orientation is applied, so images come out the way viewers show them.
- Resizing is Pillow's Lanczos filter on the float pixels (antialiased when shrinking),
  clipped back to [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import Tensor

from sparseae.data.dataset import Dataset
from sparseae.data.split import holdout_rows
from sparseae.errors import SparseAEError, check

if TYPE_CHECKING:
    from PIL import Image as PILImage

ImageMode = Literal["auto", "gray", "rgb"]
MODES: tuple[str, ...] = ("auto", "gray", "rgb")

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".avif", ".bmp", ".dib", ".gif", ".ico", ".jfif", ".jpe", ".jpeg", ".jpg", ".pbm", ".pgm", ".png",
    ".pnm", ".ppm", ".qoi", ".tga", ".tif", ".tiff", ".webp",
)  # fmt: skip
"""File name endings (any case) read as images. A fixed list rather than everything Pillow
registers: that list also holds formats it cannot decode on its own (EPS needs Ghostscript,
HDF5/GRIB are stubs), and a folder's contents should not depend on how Pillow was built."""

LUMA = (0.299, 0.587, 0.114)
"""RGB -> gray weights (ITU-R 601, as Pillow's "L" conversion)."""

_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_HIGH_DEPTH = {"I": 65535.0, "I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "F": 1.0}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


def load_image_folder(
    path: str | Path,
    *,
    size: int | tuple[int, int] | None = None,
    mode: ImageMode = "auto",
    test_fraction: float = 0.1,
) -> Dataset:
    """Load every image under ``path`` (recursively) as samples of shape ``(N, C, H, W)`` in [0, 1].

    Args:
        path: A folder. Images straight in it give an unlabelled data set; images in its
            immediate sub-folders (at any depth below them) are labelled by sub-folder:
            label i is the i-th sub-folder name in sorted order, and ``label_names`` lists
            them. Files whose names do not end in one of `IMAGE_EXTENSIONS`, and
            hidden files and folders (names starting with "."), are ignored.
        size: Resize every image to ``size`` x ``size``, or to ``(height, width)``. Without it
            all images must already share one size.
        mode: ``"gray"`` (C = 1), ``"rgb"`` (C = 3) or ``"auto"``: gray when every image is
            stored as gray (modes 1, L, LA, I, I;16, F, or a palette of grays), else RGB.
        test_fraction: The share of images held out as the test split (see
            `sparseae.data.split.holdout_rows`).

    Returns:
        A `Dataset` named after the folder, with ``config=None``. Images are read in
        sorted path order, so the same folder always gives the same data and split.
    """
    root = Path(path)
    if not root.is_dir():
        raise SparseAEError(
            str(root),
            expected="a folder of images",
            got="a file" if root.exists() else "no such folder",
            fix="Pass the folder that holds the images, or sub-folders of images named by label.",
        )
    hw = _check_size(size)
    check_mode(mode, MODES)
    files = image_files(root)
    check(
        len(files) >= 2,
        str(root),
        expected="at least 2 images, to hold some out for testing",
        got=f"only {_rel(files[0], root)}",
        fix="Add more images to the folder.",
    )
    # Split, labels and sizes are all checked before any pixel is decoded: a large folder fails fast.
    train_rows, test_rows = holdout_rows(len(files), test_fraction, what=str(root))
    infos = [scan(f) for f in files]
    labels, label_names = _labels(root, files)
    if hw is None:
        first = infos[0]
        for info in infos[1:]:
            if info.hw != first.hw:
                raise SparseAEError(
                    str(root),
                    expected=f"images of one size, like {_rel(first.file, root)} ({_hw(first.hw)}, height x width)",
                    got=f"{_rel(info.file, root)} at {_hw(info.hw)}",
                    fix="Pass size=(height, width) (--image-size on the command line) to resize every image to one size.",
                )
    gray = mode == "gray" or (mode == "auto" and all(i.gray for i in infos))
    height, width = hw or infos[0].hw
    x = torch.empty(len(files), 1 if gray else 3, height, width)  # (N, C, H, W)
    for row, file in enumerate(files):
        x[row] = read_image(file, gray=gray, size=hw)
    y = None if labels is None else torch.tensor(labels, dtype=torch.int64)
    return Dataset(
        root.resolve().name or "images",
        x[train_rows],
        x[test_rows],
        None if y is None else y[train_rows],
        None if y is None else y[test_rows],
        None,
        label_names,
    )


def read_image(file: str | Path, *, gray: bool, size: tuple[int, int] | None = None) -> Tensor:
    """One image file as float32 pixels in [0, 1], shape ``(1 or 3, H, W)`` (``size`` = (H, W) if given).

    The conversions are those in this module's docstring. A file Pillow cannot decode raises
    `SparseAEError` naming it.
    """
    from PIL import Image, ImageOps

    file = Path(file)
    try:
        with Image.open(file) as img:
            img = ImageOps.exif_transpose(img)
            pixels = _pixels(img)  # (H, W, C), C = 1 or 3
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise _unreadable(file, e) from e
    return finish(pixels, gray=gray, size=size)


def image_files(path: Path, *, what: str | None = None) -> list[Path]:
    """The image files under folder ``path`` (recursively, hidden ones skipped), in sorted path order.

    Raises `SparseAEError` when there are none.
    """
    found, other = [], 0
    for file in path.rglob("*"):
        rel = file.relative_to(path).parts
        if any(part.startswith(".") for part in rel) or not file.is_file():
            continue
        if file.suffix.lower() in IMAGE_EXTENSIONS:
            found.append(file)
        else:
            other += 1
    if not found:
        raise SparseAEError(
            what or str(path),
            expected=f"image files (names ending in {', '.join(IMAGE_EXTENSIONS)}, any case)",
            got=f"{other} file(s), none of them an image" if other else "an empty folder",
            fix="Point to the folder that holds the images; files with other endings are ignored.",
        )
    # Sort by path components, so "a/z.png" comes before "a b/x.png" and each label's images stay together.
    return sorted(found, key=lambda f: f.relative_to(path).parts)


@dataclass(frozen=True)
class ImageInfo:
    file: Path
    hw: tuple[int, int]
    """(height, width) once the EXIF orientation is applied."""
    gray: bool


def scan(file: Path) -> ImageInfo:
    """Size and colour of an image from its header, so sizes are checked before anything is decoded."""
    from PIL import Image

    try:
        with Image.open(file) as img:
            width, height = img.size
            if img.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF orientations that turn the image a quarter
                width, height = height, width
            return ImageInfo(file, (height, width), _is_gray(img))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise _unreadable(file, e) from e


def _is_gray(img: PILImage.Image) -> bool:
    if img.mode in ("P", "PA"):
        palette = img.getpalette("RGB") or []
        return all(palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette), 3))
    return img.mode in _GRAY_MODES


def _pixels(img: PILImage.Image) -> np.ndarray:
    """Decoded pixels, float32 in [0, 1], shape ``(H, W, C)`` with C = 1 or 3, alpha composited on black."""
    if img.mode in _HIGH_DEPTH:
        # Pillow's own conversion of these to 8 bits clips rather than scales, so scale here.
        return np.clip(np.asarray(img, dtype=np.float32) / _HIGH_DEPTH[img.mode], 0, 1)[..., None]
    alpha = img.mode in _ALPHA_MODES or "transparency" in img.info
    target = ("L" if _is_gray(img) else "RGB") + ("A" if alpha else "")
    a = np.asarray(img.convert(target), dtype=np.float32) / 255.0
    if a.ndim == 2:
        a = a[..., None]
    if alpha:
        a = a[..., :-1] * a[..., -1:]
    return a


def finish(pixels: np.ndarray, *, gray: bool, size: tuple[int, int] | None) -> Tensor:
    """(H, W, C) float pixels -> (C', H', W') tensor: channels to the mode asked for, then resized."""
    if gray and pixels.shape[-1] == 3:
        pixels = pixels @ np.asarray(LUMA, dtype=np.float32)
        pixels = pixels[..., None]
    elif not gray and pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    channels = np.ascontiguousarray(pixels.transpose(2, 0, 1))  # (C, H, W)
    if size is not None and channels.shape[1:] != size:
        from PIL import Image

        # Resize the float pixels one channel at a time ("F" images): no rounding to 8 bits.
        channels = np.stack(
            [np.asarray(Image.fromarray(c, mode="F").resize(size[::-1], Image.Resampling.LANCZOS)) for c in channels]
        )
        channels = np.clip(channels, 0, 1)  # Lanczos overshoots a little at sharp edges
    return torch.from_numpy(channels.astype(np.float32, copy=False))


def _labels(root: Path, files: list[Path]) -> tuple[list[int] | None, tuple[str, ...] | None]:
    top = [f for f in files if f.parent == root]
    nested = [f for f in files if f.parent != root]
    if top and nested:
        raise SparseAEError(
            str(root),
            expected="all images straight in the folder (no labels) or all in sub-folders named by label",
            got=f"{len(top)} image(s) at the top, like {_rel(top[0], root)}, "
            f"and {len(nested)} in sub-folders, like {_rel(nested[0], root)}",
            fix="Move the top-level images into a sub-folder named by their label, or the others up to the top.",
        )
    if not nested:
        return None, None
    folders = [f.relative_to(root).parts[0] for f in files]
    names = tuple(sorted(set(folders)))
    index = {name: i for i, name in enumerate(names)}
    return [index[f] for f in folders], names


def _check_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    hw = (size, size) if not isinstance(size, Sequence) else tuple(size)
    check(
        len(hw) == 2 and all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n > 0 for n in hw),
        "size",
        expected="a positive int (square images) or (height, width) of positive ints",
        got=repr(size),
        fix="Pass e.g. size=28 or size=(32, 48), or leave it unset when all images share one size.",
    )
    return int(hw[0]), int(hw[1])


def check_mode(mode: str, modes: tuple[str, ...]) -> None:
    check(
        mode in modes,
        "mode",
        expected=f"one of {', '.join(modes)}",
        got=repr(mode),
        fix='Use "gray" for one channel, "rgb" for three, or "auto" to pick gray when every image is gray.',
    )


def _unreadable(file: Path, error: Exception) -> SparseAEError:
    return SparseAEError(
        str(file),
        expected="an image Pillow can decode",
        got=f"{type(error).__name__}: {error}",
        fix="Remove or replace the file (or give it a non-image extension so it is skipped).",
    )


def _rel(file: Path, root: Path) -> str:
    return file.relative_to(root).as_posix()


def _hw(hw: tuple[int, int]) -> str:
    return f"{hw[0]}x{hw[1]}"

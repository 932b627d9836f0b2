"""Image folders and natural-image patches, on tiny image files written with Pillow."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sparseae import SparseAEError
from sparseae.data.images import load_image_folder
from sparseae.data.patches import load_patches
from sparseae.data.split import holdout_rows


def save(path: Path, array: np.ndarray, mode: str | None = None, **kwargs) -> Path:
    """Write an (H, W) or (H, W, C) uint8 array as an image file, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode).save(path, **kwargs)
    return path


def constant(h: int, w: int, value) -> np.ndarray:
    return np.broadcast_to(np.asarray(value, dtype=np.uint8), (h, w, *np.shape(value))).copy()


def all_samples(data, test_fraction: float = 0.1):
    """Train and test samples (and labels) back in file order, undoing the held-out split."""
    n = len(data.train) + len(data.test)
    train_rows, test_rows = holdout_rows(n, test_fraction)
    x = torch.empty(n, *data.sample_shape)
    x[train_rows], x[test_rows] = data.train, data.test
    if data.train_labels is None:
        return x, None
    y = torch.empty(n, dtype=torch.int64)
    y[train_rows], y[test_rows] = data.train_labels, data.test_labels
    return x, y


def test_labels_come_from_sub_folders_in_sorted_order(tmp_path):
    # Written out of order, with mixed formats, and one label whose images sit a folder deeper.
    for name, value, count in (("dog", 20, 3), ("cat", 10, 4), ("eel", 30, 3)):
        for i in range(count):
            save(tmp_path / "pets" / name / f"{i}.png", constant(5, 6, value))
    save(tmp_path / "pets" / "cat" / "more" / "x.bmp", constant(5, 6, 10))
    (tmp_path / "pets" / "dog" / "notes.txt").write_text("not an image")
    save(tmp_path / "pets" / ".hidden" / "y.png", constant(5, 6, 99))

    data = load_image_folder(tmp_path / "pets")
    assert data.name == "pets" and data.label_names == ("cat", "dog", "eel") and data.config is None
    assert data.sample_shape == (1, 5, 6) and len(data.train) + len(data.test) == 11 and len(data.test) == 1
    x, y = all_samples(data)
    # Every image is labelled by its sub-folder: the pixel value tells which folder it came from.
    values = torch.tensor([10, 20, 30])[y]
    assert torch.allclose(x[:, 0, 0, 0] * 255, values.float())
    assert y.tolist() == [0] * 5 + [1] * 3 + [2] * 3  # sorted paths keep each label's images together
    assert data.train_labels.dtype == torch.int64


def test_images_straight_in_the_folder_have_no_labels_and_load_in_sorted_order(tmp_path):
    for i in (3, 1, 0, 2, 4, 5, 6, 7, 8, 9):
        save(tmp_path / f"img{i}.png", constant(4, 4, i * 10))
    data = load_image_folder(tmp_path, test_fraction=0.2)
    assert data.train_labels is None and data.label_names is None
    assert len(data.test) == 2
    x, _ = all_samples(data, test_fraction=0.2)
    assert (x[:, 0, 0, 0] * 255).round().tolist() == [i * 10 for i in range(10)]  # img0.png ... img9.png
    # Same folder, same data and split.
    again = load_image_folder(tmp_path, test_fraction=0.2)
    assert torch.equal(data.train, again.train) and torch.equal(data.test, again.test)


def test_auto_mode_is_gray_only_when_every_image_is_gray(tmp_path):
    save(tmp_path / "gray" / "a.png", constant(4, 4, 100))
    save(tmp_path / "gray" / "b.gif", constant(4, 4, 50))  # a GIF is a palette of grays
    save(tmp_path / "gray" / "c.png", constant(4, 4, (70, 255)), mode="LA")
    assert load_image_folder(tmp_path / "gray").sample_shape == (1, 4, 4)

    save(tmp_path / "mixed" / "a.png", constant(4, 4, 100))
    save(tmp_path / "mixed" / "b.jpg", constant(4, 4, (200, 0, 0)), quality=100)
    data = load_image_folder(tmp_path / "mixed")
    assert data.sample_shape == (3, 4, 4)
    x, _ = all_samples(data)
    assert torch.allclose(x[0, :, 0, 0], torch.full((3,), 100 / 255))  # gray repeated over three channels
    assert abs(x[1, 0, 0, 0] * 255 - 200) < 3 and x[1, 1:, 0, 0].max() * 255 < 3  # red, give or take JPEG


def test_forced_modes_and_alpha_composited_on_black(tmp_path):
    save(tmp_path / "a.png", constant(3, 3, (200, 100, 50)))
    save(tmp_path / "b.png", constant(3, 3, (255, 255, 255, 128)), mode="RGBA")
    gray, _ = all_samples(load_image_folder(tmp_path, mode="gray"))
    assert gray.shape == (2, 1, 3, 3)
    assert gray[0, 0, 0, 0] == pytest.approx((0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255, abs=1e-6)
    assert gray[1, 0, 0, 0] == pytest.approx(128 / 255, abs=1e-6)  # white at half alpha over black
    rgb, _ = all_samples(load_image_folder(tmp_path, mode="rgb"))
    assert rgb.shape == (2, 3, 3, 3) and torch.allclose(rgb[1, :, 2, 2], torch.full((3,), 128 / 255))
    with pytest.raises(SparseAEError, match=r"mode: expected one of auto, gray, rgb, got 'grey'"):
        load_image_folder(tmp_path, mode="grey")


def test_resize_gives_the_size_asked_for_and_keeps_colours(tmp_path):
    save(tmp_path / "a.png", constant(10, 20, (30, 60, 90)))
    save(tmp_path / "b.png", constant(7, 5, (250, 0, 125)))
    save(tmp_path / "c.png", np.tile(np.array([0, 255], dtype=np.uint8), (8, 4)))  # sharp stripes
    data = load_image_folder(tmp_path, size=(6, 4), mode="rgb")
    assert data.sample_shape == (3, 6, 4) and data.train.dtype == torch.float32
    x, _ = all_samples(data)
    assert torch.allclose(x[0], torch.tensor([30, 60, 90]).view(3, 1, 1) / 255, atol=1e-5)
    assert torch.allclose(x[1], torch.tensor([250, 0, 125]).view(3, 1, 1) / 255, atol=1e-5)
    assert x.min() >= 0 and x.max() <= 1  # Lanczos overshoot at the stripes' edges is clipped
    square = load_image_folder(tmp_path, size=9)
    assert square.sample_shape == (3, 9, 9)


@pytest.mark.parametrize("size", [0, -3, (4, 0), (4, 4, 4), 2.5, True])
def test_bad_size(tmp_path, size):
    save(tmp_path / "a.png", constant(4, 4, 0))
    with pytest.raises(SparseAEError, match=r"size: expected a positive int \(square images\) or \(height, width\)"):
        load_image_folder(tmp_path, size=size)


def test_mixed_sizes_without_size_name_two_files_and_the_fix(tmp_path):
    save(tmp_path / "a.png", constant(4, 5, 0))
    save(tmp_path / "b.png", constant(4, 5, 0))
    save(tmp_path / "c.png", constant(6, 5, 0))
    with pytest.raises(
        SparseAEError,
        match=r"expected images of one size, like a\.png \(4x5, height x width\), got c\.png at 6x5\. "
        r"Pass size=\(height, width\) \(--image-size",
    ):
        load_image_folder(tmp_path)
    assert load_image_folder(tmp_path, size=5).sample_shape == (1, 5, 5)


def test_unreadable_image_is_named(tmp_path):
    save(tmp_path / "a.png", constant(64, 64, 0))
    (tmp_path / "broken.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(SparseAEError, match=r"broken\.jpg: expected an image Pillow can decode, got UnidentifiedImageError"):
        load_image_folder(tmp_path)
    # A file that opens but whose pixels are cut short fails when decoded, and is named too.
    good = save(tmp_path / "c.png", np.random.default_rng(0).integers(0, 256, (64, 64)))
    (tmp_path / "broken.jpg").unlink()
    good.write_bytes(good.read_bytes()[:2000])  # of about 4,200
    with pytest.raises(SparseAEError, match=r"c\.png: expected an image Pillow can decode, got OSError"):
        load_image_folder(tmp_path)


def test_missing_folder_no_images_single_image_and_mixed_layout(tmp_path):
    with pytest.raises(SparseAEError, match=r"nowhere: expected a folder of images, got no such folder"):
        load_image_folder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hi")
    with pytest.raises(
        SparseAEError, match=r"empty: expected image files \(names ending in \.avif, \.bmp.*\.png.*\), got 1 file\(s\), none"
    ):
        load_image_folder(tmp_path / "empty")
    one = save(tmp_path / "one" / "a.png", constant(4, 4, 0))
    with pytest.raises(SparseAEError, match=r"one: expected at least 2 images, to hold some out for testing, got only a\.png"):
        load_image_folder(tmp_path / "one")
    with pytest.raises(SparseAEError, match=r"a\.png: expected a folder of images, got a file"):
        load_image_folder(one)
    save(tmp_path / "mix" / "top.png", constant(4, 4, 0))
    save(tmp_path / "mix" / "cat" / "x.png", constant(4, 4, 0))
    with pytest.raises(
        SparseAEError,
        match=r"expected all images straight in the folder \(no labels\) or all in sub-folders named by label, "
        r"got 1 image\(s\) at the top, like top\.png, and 1 in sub-folders, like cat/x\.png",
    ):
        load_image_folder(tmp_path / "mix")


def ramp_image(path: Path, h: int = 20, w: int = 30) -> Path:
    """A gray ramp image, pixel (y, x) = 7 * y + x (at most 7 * 19 + 29 = 162, so no wrap)."""
    return save(path, 7 * np.arange(h)[:, None] + np.arange(w)[None, :])


def test_patches_shape_determinism_and_seed(tmp_path):
    file = ramp_image(tmp_path / "ramp.png")
    data = load_patches(file, patch_size=3, n_patches=200, seed=1)
    assert data.name == "ramp-patches" and data.train.shape == (180, 1, 3, 3) and data.test.shape == (20, 1, 3, 3)
    again = load_patches(file, patch_size=3, n_patches=200, seed=1)
    assert torch.equal(data.train, again.train) and torch.equal(data.test, again.test)
    other = load_patches(file, patch_size=3, n_patches=200, seed=2)
    assert not torch.equal(data.train, other.train)
    rgb = load_patches([file, file], patch_size=4, n_patches=10, mode="rgb")
    assert rgb.train.shape[1:] == (3, 4, 4)


def test_patches_are_source_pixels_at_every_reachable_position(tmp_path):
    # Red is the row, green the column, blue some content: a patch's top-left pixel tells where it was cut.
    y, x = np.meshgrid(np.arange(20), np.arange(30), indexing="ij")
    source = np.stack([y, x, (y * x) % 256], axis=-1)  # (20, 30, 3)
    file = save(tmp_path / "where.png", source)
    patches, _ = all_samples(load_patches(file, patch_size=3, n_patches=6000, mode="rgb"))
    corners = set()
    for patch in (patches * 255).round().long().numpy():  # (3, 3, 3): channel, row, column
        y0, x0 = patch[0, 0, 0], patch[1, 0, 0]
        assert np.array_equal(patch, source[y0 : y0 + 3, x0 : x0 + 3].transpose(2, 0, 1))
        corners.add((y0, x0))
    assert len(corners) == 18 * 28  # every position, the last row and column included, is drawn


def test_patches_from_a_folder_of_several_sizes_cover_every_image(tmp_path):
    save(tmp_path / "imgs" / "a.png", constant(8, 8, 10))
    save(tmp_path / "imgs" / "b.png", constant(5, 12, 20))
    save(tmp_path / "imgs" / "sub" / "c.png", constant(16, 6, 30))
    data = load_patches(tmp_path / "imgs", patch_size=5, n_patches=300)
    values = torch.cat([data.train, data.test]).flatten(1)
    assert torch.all(values == values[:, :1])  # each patch inside one constant image
    counts = torch.bincount((values[:, 0] * 255).round().long() // 10)[1:]
    assert len(counts) == 3 and counts.min() > 70  # each image about a third of the time, whatever its size


def test_patch_errors(tmp_path):
    file = ramp_image(tmp_path / "ramp.png", h=6, w=10)
    with pytest.raises(
        SparseAEError, match=r"ramp\.png: expected an image at least 8x8, to cut 8x8 patches from, got 6x10 \(height x width\)"
    ):
        load_patches(file, patch_size=8, n_patches=10)
    with pytest.raises(SparseAEError, match=r"n_patches: expected an int of at least 2, to hold some out for testing, got 1"):
        load_patches(file, patch_size=3, n_patches=1)
    with pytest.raises(SparseAEError, match=r"test_fraction: expected a fraction between 0 and 1 \(exclusive\), got 1\.5"):
        load_patches(file, patch_size=3, n_patches=10, test_fraction=1.5)
    with pytest.raises(SparseAEError, match=r"patch_size: expected a positive int .*, got 0"):
        load_patches(file, patch_size=0)
    with pytest.raises(SparseAEError, match=r"missing\.png: expected an image file or a folder of images, got no such file"):
        load_patches(tmp_path / "missing.png")


def test_default_patches_come_from_sklearn_sample_photographs():
    pytest.importorskip("sklearn")
    data = load_patches(patch_size=8, n_patches=1000, seed=0)
    assert data.name == "patches" and data.train.shape == (900, 1, 8, 8) and data.test.shape == (100, 1, 8, 8)
    assert data.train.min() >= 0 and data.train.max() <= 1 and data.train.std() > 0.05  # raw pixels, not normalised
    assert load_patches(n_patches=10, mode="auto").sample_shape == (3, 8, 8)


def test_missing_sklearn_names_the_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes `from sklearn.datasets import ...` fail
    with pytest.raises(
        SparseAEError, match=r"load_patches\(images=None\): expected scikit-learn installed.*pip install scikit-learn"
    ):
        load_patches(n_patches=10)

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import sparseae
from sparseae.data import read_idx
from sparseae.data.mnist import MNIST_SHA256, SHIPPED


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_dir(path: Path, n_train=6, n_test=4, compress=True, **override: bytes) -> Path:
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte": idx_bytes(rng.integers(0, 256, (n_train, 28, 28))),
        "train-labels-idx1-ubyte": idx_bytes(rng.integers(0, 10, n_train)),
        "t10k-images-idx3-ubyte": idx_bytes(rng.integers(0, 256, (n_test, 28, 28))),
        "t10k-labels-idx1-ubyte": idx_bytes(rng.integers(0, 10, n_test)),
    }
    files.update(override)
    path.mkdir(exist_ok=True)
    for name, data in files.items():
        if compress:
            (path / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (path / name).write_bytes(data)
    return path


def test_shipped_mnist_is_the_full_data_set(mnist):
    assert mnist.train.shape == (60000, 1, 28, 28) and mnist.test.shape == (10000, 1, 28, 28)
    assert mnist.train.dtype == torch.float32 and mnist.train.min() == 0 and mnist.train.max() == 1
    assert mnist.train_labels.tolist()[:5] == [5, 0, 4, 1, 9]  # the well-known first labels
    assert sorted(mnist.test_labels.unique().tolist()) == list(range(10))
    assert mnist.config == sparseae.DataConfig("mnist")


def test_shipped_files_match_published_checksums_and_keep_attribution():
    for stem, digest in MNIST_SHA256.items():
        assert hashlib.sha256(gzip.decompress((SHIPPED / f"{stem}.gz").read_bytes())).hexdigest() == digest
    notice = (SHIPPED / "README.md").read_text()
    assert "LeCun" in notice and "Attribution-Share Alike 3.0" in notice


@pytest.mark.parametrize("compress", [True, False])
def test_user_idx_directory_loads_gzip_or_raw(tmp_path, compress):
    data = sparseae.load_mnist(write_idx_dir(tmp_path / "fashion", compress=compress))
    assert data.name == "fashion" and data.train.shape == (6, 1, 28, 28) and data.test_labels.shape == (4,)
    assert data.config.source == str((tmp_path / "fashion").resolve())


def test_idx_parses_other_types(tmp_path):
    values = np.arange(6, dtype=">i4").reshape(2, 3) - 3
    (tmp_path / "a.idx").write_bytes(struct.pack(">BBBBII", 0, 0, 0x0C, 2, 2, 3) + values.astype(">i4").tobytes())
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx"), values)


def test_missing_file_names_it_and_the_fix(tmp_path):
    write_idx_dir(tmp_path / "d")
    (tmp_path / "d" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(sparseae.SparseAEError, match=r"t10k-labels-idx1-ubyte: .*no such file\. Put t10k-labels-idx1-ubyte\.gz"):
        sparseae.load_mnist(tmp_path / "d")


def test_missing_directory(tmp_path):
    with pytest.raises(sparseae.SparseAEError, match="expected a directory of MNIST-layout IDX files, got no such directory"):
        sparseae.load_mnist(tmp_path / "nope")


def test_truncated_data(tmp_path):
    good = idx_bytes(np.zeros((6, 28, 28)))
    write_idx_dir(tmp_path / "d", **{"train-images-idx3-ubyte": good[:-100]})
    with pytest.raises(
        sparseae.SparseAEError,
        match=r"train-images-idx3-ubyte\.gz: expected 4704 data bytes .*got 4604 \(the file is truncated\)",
    ):
        sparseae.load_mnist(tmp_path / "d")


def test_truncated_gzip(tmp_path):
    write_idx_dir(tmp_path / "d")
    path = tmp_path / "d" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(
        sparseae.SparseAEError, match=r"expected a complete gzip file, got a damaged or truncated one.*Download the file again"
    ):
        sparseae.load_mnist(tmp_path / "d")


def test_wrong_magic(tmp_path):
    write_idx_dir(tmp_path / "d", **{"train-labels-idx1-ubyte": b"PK\x03\x04 not idx"})
    with pytest.raises(sparseae.SparseAEError, match=r"train-labels.*magic bytes.*got first bytes 504b0304"):
        sparseae.load_mnist(tmp_path / "d")


def test_image_label_count_mismatch(tmp_path):
    write_idx_dir(tmp_path / "d", **{"train-labels-idx1-ubyte": idx_bytes(np.zeros(5))})
    with pytest.raises(
        sparseae.SparseAEError, match=r"expected one label per image in train-images-idx3-ubyte\.gz \(6\), got 5 labels"
    ):
        sparseae.load_mnist(tmp_path / "d")


def test_checksum_mismatch(tmp_path):
    write_idx_dir(tmp_path / "d")
    with pytest.raises(
        sparseae.SparseAEError,
        match=r"expected uncompressed bytes with sha256 0{64}, got sha256 [0-9a-f]{64}\. The file is corrupted",
    ):
        sparseae.load_mnist(tmp_path / "d", sha256={"train-images-idx3-ubyte": "0" * 64})


def test_subset_keeps_labels_and_config(mnist):
    sub = mnist.subset(100, 10)
    assert len(sub.train) == 100 and len(sub.test_labels) == 10
    assert sub.config == sparseae.DataConfig("mnist", train_limit=100, test_limit=10)
    with pytest.raises(sparseae.SparseAEError, match="expected a positive number of samples, got 0"):
        mnist.subset(0)


def test_dataset_from_array_holds_out_blocks_and_checks_values():
    x = np.arange(3000 * 4, dtype=np.float64).reshape(3000, 4)
    data = sparseae.Dataset.from_array(x, np.arange(3000) % 7, test_fraction=0.2)
    assert data.train.dtype == torch.float32 and len(data.train) + len(data.test) == 3000
    assert len(data.test) == 600  # 1,000 blocks of 3 rows, 200 held out
    seen = torch.cat([data.train[:, 0], data.test[:, 0]]).div(4).long().sort().values
    assert torch.equal(seen, torch.arange(3000))  # every row in exactly one split
    assert torch.equal(data.test_labels, (data.test[:, 0] / 4).long() % 7)  # labels follow their rows
    one_per_row = r"array: expected a non-empty array with one sample per row.*x\.reshape\(-1, 1\)"
    with pytest.raises(sparseae.SparseAEError, match=one_per_row):
        sparseae.Dataset.from_array(np.zeros(10))
    with pytest.raises(sparseae.SparseAEError, match="embeddings: expected numbers .float, int or bool., got dtype <U1"):
        sparseae.Dataset.from_array(np.array([["a", "b"]] * 4), name="embeddings")
    bad = x.copy()
    bad[17, 2] = np.inf
    nan = "expected finite numbers, got NaN or infinity in 1 row.s., the first at row 17"
    with pytest.raises(sparseae.SparseAEError, match=nan):
        sparseae.Dataset.from_array(bad)


def test_uint64_samples_beyond_int64_keep_their_values(tmp_path):
    # Found by the fuzzer: uint64 went through int64 and wrapped round to negative.
    np.savez(tmp_path / "u.npz", x=np.array([[2**63], [2**64 - 1]], dtype=np.uint64))
    data = sparseae.load_data(sparseae.DataConfig(str(tmp_path / "u.npz"), test_fraction=0.5))
    assert (torch.cat([data.train, data.test]) >= 2**63).all()

"""``sparseae encode --format sparse``: the codes' non-zeros as .safetensors or .npz, read back by `load_codes`."""

import json
import re

import numpy as np
import pytest
import torch
from safetensors import safe_open

import sparseae
from sparseae.cli import main
from sparseae.errors import SparseAEError
from sparseae.io import load_codes, save_codes, write_tensors


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    path = tmp_path_factory.mktemp("codes") / "rows.npy"
    np.save(path, np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32))
    return path


@pytest.fixture(scope="module")
def run_dir(rows):
    """A 64-latent TopK SAE (k 4) trained for one epoch on 300 rows of 8 features."""
    out = rows.parent / "run"
    argv = ["train", "--data", str(rows), "--model", "dense", "--n-latents", "64", "--k", "4", "--aux-k", "0"]
    assert main([*argv, "--epochs", "1", "--batch-size", "64", "--out", str(out), "--quiet"]) == 0
    return out


def encode(run_dir, rows, out, *flags) -> int:
    return main(["encode", str(run_dir), "--input", str(rows), "--output", str(out), *flags, "--quiet"])


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_sparse_codes_read_back_equal_to_the_dense_ones(run_dir, rows, tmp_path, suffix, capsys):
    assert encode(run_dir, rows, tmp_path / "dense.npy") == 0
    dense = np.load(tmp_path / "dense.npy")  # (300, 64)
    assert encode(run_dir, rows, tmp_path / f"codes{suffix}", "--format", "sparse") == 0
    assert f"codes: {tmp_path / f'codes{suffix}'} (300, 64), 1,200 non-zeros (L0 4.00)" in capsys.readouterr().out
    codes = load_codes(tmp_path / f"codes{suffix}")
    assert codes.layout == torch.sparse_csr and codes.shape == (300, 64)
    assert codes.values().numel() == int((dense != 0).sum()) == 300 * 4  # nothing but the non-zeros
    assert torch.equal(codes.to_dense(), torch.from_numpy(dense))
    expected = sparseae.load(run_dir).encode(torch.from_numpy(np.load(rows)))
    torch.testing.assert_close(codes.to_dense(), expected.detach(), atol=1e-6, rtol=1e-6)
    # 4 of 64 per row: (4 + 4) bytes per non-zero against 64 x 4 bytes per row, plus headers.
    assert (tmp_path / f"codes{suffix}").stat().st_size < (tmp_path / "dense.npy").stat().st_size / 4


def test_the_safetensors_layout(run_dir, rows, tmp_path):
    assert encode(run_dir, rows, tmp_path / "c.safetensors", "--format", "sparse") == 0
    with safe_open(tmp_path / "c.safetensors", framework="pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    assert set(tensors) == {"indptr", "indices", "values"}
    assert metadata == {"format": "csr", "shape": "[300, 64]"}
    assert tensors["indptr"].shape == (301,) and tensors["indices"].shape == tensors["values"].shape == (1200,)
    assert tensors["indices"].dtype == torch.int32 and tensors["values"].dtype == torch.float32


def test_the_npz_is_scipys_csr_layout(run_dir, rows, tmp_path):
    assert encode(run_dir, rows, tmp_path / "c.npz", "--format", "sparse") == 0
    with np.load(tmp_path / "c.npz", allow_pickle=False) as f:
        assert sorted(f.files) == ["data", "format", "indices", "indptr", "shape"]
        assert f["format"].item() == b"csr" and f["shape"].tolist() == [300, 64]
    scipy_sparse = pytest.importorskip("scipy.sparse")
    matrix = scipy_sparse.load_npz(tmp_path / "c.npz")
    assert matrix.format == "csr" and matrix.nnz == 1200
    np.testing.assert_array_equal(matrix.toarray(), load_codes(tmp_path / "c.npz").to_dense().numpy())


def test_load_codes_reads_a_matrix_scipy_wrote(tmp_path):
    scipy_sparse = pytest.importorskip("scipy.sparse")
    matrix = scipy_sparse.random(30, 50, density=0.1, format="csr", dtype=np.float32, random_state=0)
    scipy_sparse.save_npz(tmp_path / "m.npz", matrix)  # compressed, as scipy writes by default
    np.testing.assert_array_equal(load_codes(tmp_path / "m.npz").to_dense().numpy(), matrix.toarray())


def test_save_codes_round_trip_and_a_dense_input(tmp_path):
    code = torch.tensor([[0.0, 1.5, 0.0], [0.0, 0.0, 0.0], [2.0, 0.0, 3.0]])
    for name in ("a.npz", "a.safetensors"):
        save_codes(tmp_path / name, code)  # dense: converted
        back = load_codes(tmp_path / name)
        assert torch.equal(back.to_dense(), code) and torch.equal(back.crow_indices(), torch.tensor([0, 1, 1, 3]))


def test_format_dense_is_the_default_and_out_is_a_synonym(run_dir, rows, tmp_path):
    assert main(["encode", str(run_dir), "--input", str(rows), "--out", str(tmp_path / "c.npy"), "--quiet"]) == 0
    assert np.load(tmp_path / "c.npy").shape == (300, 64)


def test_overwrite_a_sparse_file(run_dir, rows, tmp_path, capsys):
    target = tmp_path / "c.npz"
    target.write_bytes(b"keep me")
    assert encode(run_dir, rows, target, "--format", "sparse") == 2
    assert "expected a path that does not exist yet" in capsys.readouterr().err and target.read_bytes() == b"keep me"
    assert encode(run_dir, rows, target, "--format", "sparse", "--overwrite") == 0
    assert load_codes(target).shape == (300, 64)


@pytest.mark.parametrize(
    ("name", "flags", "message"),
    [
        (
            "codes.npy",
            ["--format", "sparse"],
            r"--output: expected a path ending in \.safetensors or \.npz \(--format sparse\), got .*codes\.npy\. "
            r"Name the file CODES\.safetensors or CODES\.npz, or pass --format dense for CODES\.npy\.",
        ),
        (
            "codes.npz",
            [],
            r"--output: expected a path ending in \.npy \(--format dense\), got .*codes\.npz\. "
            r"Name the file CODES\.npy, or pass --format sparse for CODES\.safetensors or CODES\.npz\.",
        ),
        ("codes.npz", ["--format", "csr"], r"argument --format: invalid choice: 'csr'"),
    ],
)
def test_a_suffix_that_does_not_fit_the_format(run_dir, rows, tmp_path, capsys, name, flags, message):
    assert encode(run_dir, rows, tmp_path / name, *flags) == 2
    err = capsys.readouterr().err
    assert "sparseae: error: " in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2
    assert re.search(message, err), err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_load_codes_errors(tmp_path):
    with pytest.raises(SparseAEError, match=r"codes\.npy: expected a sparse code file ending in \.safetensors or \.npz"):
        load_codes(tmp_path / "codes.npy")
    np.savez(tmp_path / "dense.npz", x=np.zeros((3, 4), np.float32))
    with pytest.raises(SparseAEError, match=r"expected a CSR matrix as scipy\.sparse\.save_npz writes it .* got arrays x"):
        load_codes(tmp_path / "dense.npz")
    np.savez(tmp_path / "coo.npz", format=np.array(b"coo"), shape=np.array([2, 2]), data=np.ones(1), row=[0], col=[0])
    with pytest.raises(SparseAEError, match=r"got format 'coo'\. Write it with"):
        load_codes(tmp_path / "coo.npz")
    with pytest.raises(SparseAEError, match=r"missing\.npz: expected a \.npz file, got no such file"):
        load_codes(tmp_path / "missing.npz")
    write_tensors(tmp_path / "model.safetensors", {"w": torch.zeros(2)})
    with pytest.raises(SparseAEError, match=r"expected sparse codes: tensors indptr, indices, values .* got tensors w"):
        load_codes(tmp_path / "model.safetensors")
    bad = {"indptr": torch.tensor([0, 2, 1]), "indices": torch.tensor([0]), "values": torch.ones(1)}
    write_tensors(tmp_path / "bad.safetensors", bad, {"format": "csr", "shape": json.dumps([2, 3])})
    with pytest.raises(SparseAEError, match=r"expected a consistent CSR matrix .* The file is damaged"):
        load_codes(tmp_path / "bad.safetensors")

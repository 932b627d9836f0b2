"""``encode(x, sparse=True)``: the dense code's non-zeros as CSR, and nothing else, for every kind of constraint."""

import math

import pytest
import torch

import sparseae
from sparseae import kernels
from sparseae.models import DenseAutoencoder, DenseConfig
from sparseae.models.base import cat_csr
from sparseae.sparsity import build_sparsity


def dense(sparsity: str = "topk", n_latents: int = 64, **params) -> DenseAutoencoder:
    torch.manual_seed(0)
    constraint = build_sparsity(sparsity, **params)
    return DenseAutoencoder(DenseConfig(input_shape=(20,), n_latents=n_latents), constraint, preprocess="norm").eval()


def assert_same_code(sparse: torch.Tensor, code: torch.Tensor) -> None:
    """``sparse`` holds exactly the non-zeros of the dense ``code``: the same positions, values, and no zeros."""
    assert sparse.layout == torch.sparse_csr and sparse.shape == code.shape
    nnz = int((code != 0).sum())
    # Storage: nnz values and column indices, one row pointer per row (+1), nothing of size B x n.
    assert sparse.values().shape == (nnz,) and sparse.col_indices().shape == (nnz,)
    assert sparse.crow_indices().shape == (len(code) + 1,)
    assert (sparse.values() != 0).all()
    rows = torch.repeat_interleave(torch.arange(len(code)), sparse.crow_indices().diff())
    assert torch.equal(torch.stack([rows, sparse.col_indices()]), (code != 0).nonzero().T)  # row-major, ascending
    torch.testing.assert_close(sparse.values(), code[code != 0], atol=1e-6, rtol=1e-6)


def test_topk_on_the_dense_model_goes_through_the_kernels_without_the_dense_code(monkeypatch):
    model = dense("topk", k=8)
    x = torch.randn(700, 20) * 3
    code = model.encode(x)  # (700, 64), the plain path
    calls = []
    real = kernels.topk_encode
    monkeypatch.setattr(kernels, "topk_encode", lambda *a, **kw: calls.append(a[0].shape) or real(*a, **kw))

    def no_dense(*_):
        raise AssertionError("the sparse path computed the dense pre-activations")

    monkeypatch.setattr(model, "pre_activations", no_dense)
    sparse = model.encode(x, sparse=True)
    assert calls == [(700, 20)]
    assert_same_code(sparse, code)
    assert sparse.values().numel() == 700 * 8  # exactly k per row here


def test_topk_zeros_among_the_k_are_not_stored():
    model = dense("topk", k=8)
    with torch.no_grad():
        model.encoder.bias[4:] = -50.0  # 60 of the 64 latents are never positive: every row keeps fewer than k
    x = torch.randn(300, 20)
    code = model.encode(x)
    counts = (code != 0).sum(1)
    assert counts.max() <= 4 and counts.min() < 4  # most of the k are zero after the ReLU
    sparse = model.encode(x, sparse=True)
    assert_same_code(sparse, code)
    assert torch.equal(sparse.crow_indices().diff(), counts)


def test_topk_in_eval_keeps_alpha_times_k():
    model = dense("topk", k=4, alpha=2.0)
    x = torch.randn(50, 20)
    sparse = model.encode(x, sparse=True)
    assert_same_code(sparse, model.encode(x))
    assert sparse.values().numel() == 50 * 8


def test_without_the_kernels_the_dense_code_is_filtered():
    model = dense("topk", k=8).double()  # the kernels take float32 weights only
    x = torch.randn(40, 20, dtype=torch.float64)
    assert_same_code(model.encode(x, sparse=True), model.encode(x))


def test_batchtopk_in_eval_a_varying_count_per_row():
    model = dense("batchtopk", k=8)
    x = torch.randn(200, 20) * 3
    model.sparsity.threshold.fill_(float(model.encode(x).detach().flatten().kthvalue(200 * 64 - 200 * 8).values))
    code = model.encode(x)
    counts = (code != 0).sum(1)
    assert counts.min() < counts.max()
    assert_same_code(model.encode(x, sparse=True), code)


def test_batchtopk_in_training_mode_selects_over_the_batch():
    model = dense("batchtopk", k=8).train()
    x = torch.randn(64, 20)
    code = model.encode(x)
    assert_same_code(model.encode(x, sparse=True), code)


@pytest.mark.parametrize("name, params", [("l1", {"weight": 1e-3}), ("jumprelu", {"init_threshold": 0.5})])
def test_l1_and_jumprelu_a_varying_count_per_row(name, params):
    model = dense(name, **params)
    x = torch.randn(300, 20)
    code = model.encode(x)
    counts = (code != 0).sum(1)
    assert 0 < counts.float().mean() < 64 and counts.min() < counts.max()
    assert_same_code(model.encode(x, sparse=True), code)


def test_the_conv_mnist_model(mnist):
    model = sparseae.mnist_conv().eval()
    x = mnist.test[:100]
    with torch.no_grad():
        model.to_code.bias -= 0.3  # an untrained L1 code is dense; make it sparse
    code = model.encode(x)
    assert 0 < int((code != 0).sum()) < code.numel()
    assert_same_code(model.encode(x, sparse=True), code)


def test_the_default_is_the_dense_differentiable_code():
    model = dense("topk", k=8).train()
    x = torch.randn(10, 20)
    code = model.encode(x)
    assert code.layout == torch.strided and code.requires_grad
    torch.testing.assert_close(code, model.sparsity(model.pre_activations(model.preprocess(x))))
    sparse = model.encode(x, sparse=True)
    assert not sparse.requires_grad


@pytest.mark.parametrize("name, params", [("topk", {"k": 8}), ("l1", {"weight": 1e-3})])
def test_encode_all_joins_sparse_batches(name, params, monkeypatch):
    model = dense(name, **params).train()
    x = torch.randn(1030, 20).numpy()
    expected = model.encode_all(x, batch_size=256)  # (1030, 64) dense
    seen = []
    encode = model.encode
    monkeypatch.setattr(
        model, "encode", lambda chunk, sparse=False: seen.append((len(chunk), sparse)) or encode(chunk, sparse=sparse)
    )
    sparse = model.encode_all(x, batch_size=256, sparse=True)
    # Batch by batch, each encoded sparse: no dense code of all 1,030 rows is ever made.
    assert seen == [(256, True)] * 4 + [(6, True)]
    assert_same_code(sparse, expected)
    nnz = int((expected != 0).sum())
    stored = sum(t.numel() * t.element_size() for t in (sparse.values(), sparse.col_indices(), sparse.crow_indices()))
    assert stored == nnz * (4 + 8) + (1030 + 1) * 8  # float32 values, int64 indices and row pointers
    assert model.training  # encoded in eval mode, and left as it was


def test_cat_csr_stacks_rows():
    a, b = torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 3.0]]), torch.tensor([[0.0, 0.0, 4.0]])
    joined = cat_csr([a.to_sparse_csr(), b.to_sparse_csr()], 3)
    assert torch.equal(joined.to_dense(), torch.cat([a, b]))
    assert torch.equal(joined.crow_indices(), torch.tensor([0, 1, 3, 4]))
    empty = cat_csr([], 3)
    assert empty.shape == (0, 3) and empty.values().numel() == 0


def test_sizes_of_a_topk_code_against_the_dense_one():
    model = dense("topk", n_latents=512, k=16)
    sparse = model.encode(torch.randn(100, 20), sparse=True)
    dense_bytes = 100 * 512 * 4
    sparse_bytes = sum(t.numel() * t.element_size() for t in (sparse.values(), sparse.col_indices(), sparse.crow_indices()))
    assert sparse_bytes == 100 * 16 * 12 + 101 * 8
    assert math.isclose(sparse_bytes / dense_bytes, (16 * 12 + 8) / (512 * 4), rel_tol=0.01)

"""The report's one pass over the held-out rows against the plain reference: the whole code in memory."""

import pytest
import torch

import sparseae
from sparseae.report.scan import BANDS, HIST_EDGES, histogram, quantile_examples, scan, strongest, top_examples, values_at


@pytest.fixture(scope="module")
def model_and_rows():
    torch.manual_seed(0)
    model = sparseae.build_preset("dense", (12,), sparseae.build_sparsity("topk", k=3), seed=0, n_latents=20)
    x = torch.randn(500, 12)
    return model, x, model.encode_all(x)  # the reference: (500, 20) at once


@pytest.mark.parametrize("batch", [7, 64, 1000])  # chunks that split the rows unevenly, evenly, not at all
def test_one_pass_equals_the_whole_code(model_and_rows, batch):
    model, x, code = model_and_rows
    found = scan(model, x, top=6, sample=16, batch=batch)
    assert found.n == 500
    assert torch.equal(found.count, (code != 0).sum(0))
    torch.testing.assert_close(found.total, code.double().sum(0))
    for j in range(code.shape[1]):
        values, rows = code[:, j].topk(6)
        top = top_examples(found, j)  # (values differ in the last bits: a matmul's sums depend on the batch size)
        assert [r for r, _ in top] == rows[values != 0].tolist()
        torch.testing.assert_close(torch.tensor([v for _, v in top]), values[values != 0])
        active = code[:, j][code[:, j] != 0].abs()
        bins = (torch.bucketize(active, HIST_EDGES) - 1).clamp(0, len(HIST_EDGES) - 2)
        assert torch.equal(found.hist[j], torch.bincount(bins, minlength=len(HIST_EDGES) - 1))
        # The sample is of distinct rows where the latent is non-zero, with their exact values.
        kept = found.sample_rows[:, j][found.sample_values[:, j] != 0]
        assert len(kept) == min(16, int(found.count[j])) and len(set(kept.tolist())) == len(kept)
        torch.testing.assert_close(found.sample_values[:, j][found.sample_values[:, j] != 0], code[kept, j])


def test_quantile_bands_and_histogram(model_and_rows):
    model, x, code = model_and_rows
    found = scan(model, x, top=6, sample=200, batch=50)
    j = int((code != 0).sum(0).argmax())
    bands = quantile_examples(found, j)
    assert [name for name, _ in bands] == [f"{round(lo * 100)}-{round(hi * 100)}%" for lo, hi in BANDS]
    values = [v for _, examples in bands for _, v in examples]
    assert values == sorted(values)  # bands from low to high, each in order
    for _, examples in bands:
        for r, v in examples:
            assert v == pytest.approx(float(code[r, j]), rel=1e-5) and v != 0
    hist = histogram(found, j)
    assert sum(hist["counts"]) == int(found.count[j]) and len(hist["edges"]) == len(hist["counts"]) + 1


def test_a_dead_latent_has_no_examples(model_and_rows):
    model, x, _ = model_and_rows
    found = scan(model, x[:1], top=3, sample=4)
    dead = int((found.count == 0).nonzero()[0])
    assert top_examples(found, dead) == [] and quantile_examples(found, dead) == []
    assert histogram(found, dead) == {"edges": [], "counts": []}


def test_values_at_and_strongest(model_and_rows):
    model, x, code = model_and_rows
    rows, latents = torch.tensor([3, 499, 3, 42, 7]), torch.tensor([0, 5, 19, 2, 2])
    torch.testing.assert_close(values_at(model, x, rows, latents, batch=2), code[rows, latents])
    for r, pairs in zip([3, 42], strongest(model, x, torch.tensor([3, 42]), k=5), strict=True):
        values, ids = code[r].topk(5)
        assert [j for j, _ in pairs] == ids[values != 0].tolist()
        torch.testing.assert_close(torch.tensor([v for _, v in pairs]), values[values != 0])


class _Chunked:
    """Rows that may be read only ``limit`` at a time, as a stream larger than memory is."""

    def __init__(self, x, limit):
        self.x, self.limit, self.shape = x, limit, x.shape

    def __len__(self):
        return len(self.x)

    def __getitem__(self, rows):
        assert len(self.x[rows]) <= self.limit, "read more rows at once than one chunk"
        return self.x[rows]


def test_the_pass_reads_one_chunk_at_a_time(model_and_rows):
    model, x, code = model_and_rows
    found = scan(model, _Chunked(x, 32), top=4, sample=8, batch=32)
    assert torch.equal(found.count, (code != 0).sum(0))
    assert found.top_values.shape == (4, 20) and found.sample_values.shape == (8, 20)  # kept state: fixed, whatever N

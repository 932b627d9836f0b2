"""What every latent does on the held-out data, in one pass with bounded memory.

The code of the whole test split, ``(N, n_latents)``, can be far larger than memory
(a 16,384-latent SAE on 100,000 tokens is 6.5 GB), so it is never held: each chunk of
rows is encoded, folded into running statistics, and dropped. What is kept per latent
is a fixed size whatever ``N`` is: the ``top`` largest activations (with their rows), a
uniform sample of ``sample`` non-zero activations (the examples from quantile bands are
drawn from it), the count and sum of activations, and a histogram on fixed log-spaced bins.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from sparseae.models import Autoencoder

HIST_EDGES = torch.logspace(-4, 4, 65)
"""Bin edges of |activation| for every latent's histogram: 8 decades, 8 bins each (the ends take what lies beyond)."""
BANDS = ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 0.95), (0.95, 1.0))
"""Quantile bands of a latent's non-zero activations that examples are shown from."""


class FeatureScan(NamedTuple):
    """Running statistics of every latent over ``n`` rows."""

    n: int
    """Rows seen."""
    count: Tensor
    """``(L,)`` int64: rows where the latent is non-zero."""
    total: Tensor
    """``(L,)`` float64: sum of its activations."""
    top_values: Tensor
    """``(top, L)``: its largest activations, largest first (-inf where fewer rows were seen)."""
    top_rows: Tensor
    """``(top, L)`` int64: the rows of ``top_values`` (-1 where none)."""
    sample_values: Tensor
    """``(sample, L)``: a uniform sample of its non-zero activations (rows in ``sample_rows``, -1 where fewer)."""
    sample_rows: Tensor
    """``(sample, L)`` int64."""
    hist: Tensor
    """``(L, len(HIST_EDGES) - 1)`` int64: counts of |non-zero activation| per `HIST_EDGES` bin."""


def _merge(values: Tensor, rows: Tensor, keys: Tensor, new_values: Tensor, base: int, largest: bool) -> tuple[Tensor, ...]:
    """The ``len(keys)`` best of ``[kept, chunk]`` by key per column: (keys, values, rows), each ``(K, L)``."""
    k = len(keys)
    best, index = torch.cat([keys, new_values if largest else _keys_of(new_values)]).topk(k, dim=0, largest=largest)
    old = index < k
    kept_rows = rows.gather(0, index.clamp(max=k - 1))
    new_rows = index - k + base
    cat_values = torch.cat([values, new_values])
    return best, cat_values.gather(0, index), torch.where(old, kept_rows, new_rows)


def _keys_of(chunk: Tensor) -> Tensor:
    # A random key per non-zero entry, +inf for zeros: the `sample` smallest keys are a uniform sample without replacement.
    keys = torch.rand(chunk.shape)
    return keys.masked_fill_(chunk == 0, float("inf"))


@torch.no_grad()
def scan(model: Autoencoder, x: Any, top: int = 20, sample: int = 64, batch: int = 256, progress: bool = False) -> FeatureScan:
    """One pass over the rows of ``x`` (a tensor or a row stream, ``(N, *input_shape)``), ``batch`` rows at a time."""
    n, n_latents = len(x), model.n_latents
    device = next(model.parameters()).device
    count = torch.zeros(n_latents, dtype=torch.int64)
    total = torch.zeros(n_latents, dtype=torch.float64)
    hist = torch.zeros(n_latents * (len(HIST_EDGES) - 1), dtype=torch.int64)
    top_values = torch.full((top, n_latents), float("-inf"))
    top_rows = torch.full((top, n_latents), -1, dtype=torch.int64)
    sample_keys = torch.full((sample, n_latents), float("inf"))
    sample_values = torch.zeros(sample, n_latents)
    sample_rows = torch.full((sample, n_latents), -1, dtype=torch.int64)
    was_training = model.training
    model.eval()
    try:
        for base in tqdm(range(0, n, batch), desc="features", unit="batch", disable=not progress, leave=False):
            chunk = torch.as_tensor(x[base : base + batch], dtype=torch.float32).to(device)
            code = model.encode(chunk).float().cpu()  # (B, L)
            active = code != 0
            count += active.sum(0)
            total += code.double().sum(0)
            rows, cols = active.nonzero(as_tuple=True)
            bins = (torch.bucketize(code[rows, cols].abs(), HIST_EDGES) - 1).clamp(0, len(HIST_EDGES) - 2)
            hist.index_add_(0, cols * (len(HIST_EDGES) - 1) + bins, torch.ones_like(bins))
            _, top_values, top_rows = _merge(top_values, top_rows, top_values, code, base, largest=True)
            sample_keys, sample_values, sample_rows = _merge(sample_values, sample_rows, sample_keys, code, base, largest=False)
    finally:
        model.train(was_training)
    return FeatureScan(n, count, total, top_values, top_rows, sample_values, sample_rows, hist.view(n_latents, -1))


def quantile_examples(scan: FeatureScan, latent: int, per_band: int = 3) -> list[tuple[str, list[tuple[int, float]]]]:
    """Examples from each of `BANDS` of one latent's non-zero activations: (band name, [(row, value)])."""
    rows, values = scan.sample_rows[:, latent], scan.sample_values[:, latent]
    keep = (rows >= 0) & (values != 0)
    values, rows = values[keep], rows[keep]
    if len(values) == 0:
        return []
    values, order = values.sort()
    rows = rows[order]
    out = []
    for lo, hi in BANDS:
        a, b = int(lo * len(values)), max(int(hi * len(values)), int(lo * len(values)) + 1)
        if a >= len(values):
            break
        picks = torch.linspace(a, min(b, len(values)) - 1, per_band).round().long().unique().tolist()
        out.append((f"{round(lo * 100)}-{round(hi * 100)}%", [(int(rows[i]), float(values[i])) for i in picks]))
    return out


def top_examples(scan: FeatureScan, latent: int) -> list[tuple[int, float]]:
    """The rows where one latent is largest, with its value, largest first (non-zero values only)."""
    pairs = zip(scan.top_rows[:, latent].tolist(), scan.top_values[:, latent].tolist(), strict=True)
    return [(r, v) for r, v in pairs if r >= 0 and v != 0 and v != float("-inf")]


def histogram(scan: FeatureScan, latent: int) -> dict[str, Any]:
    """One latent's histogram trimmed to the bins it uses: edges (|activation|, log-spaced) and counts."""
    counts = scan.hist[latent]
    used = counts.nonzero().flatten()
    if len(used) == 0:
        return {"edges": [], "counts": []}
    a, b = int(used[0]), int(used[-1]) + 1
    return {"edges": [float(f"{e:.3g}") for e in HIST_EDGES[a : b + 1].tolist()], "counts": counts[a:b].tolist()}


@torch.no_grad()
def values_at(model: Autoencoder, x: Any, rows: Tensor, latents: Tensor, batch: int = 256) -> Tensor:
    """``code[rows[i], latents[i]]`` for each pair, ``(P,)``; each distinct row is encoded once, ``batch`` at a time."""
    out = torch.zeros(len(rows))
    if len(rows) == 0:
        return out
    device = next(model.parameters()).device
    unique, inverse = torch.unique(rows, return_inverse=True)
    order = inverse.argsort()
    starts = torch.searchsorted(inverse[order], torch.arange(0, len(unique) + batch, batch)).tolist()
    was_training = model.training
    model.eval()
    try:
        for i, begin in enumerate(range(0, len(unique), batch)):
            code = model.encode(torch.as_tensor(x[unique[begin : begin + batch]], dtype=torch.float32).to(device)).float().cpu()
            pairs = order[starts[i] : starts[i + 1]]
            out[pairs] = code[inverse[pairs] - begin, latents[pairs]]
    finally:
        model.train(was_training)
    return out


@torch.no_grad()
def strongest(model: Autoencoder, x: Any, rows: Tensor, k: int = 10) -> list[list[tuple[int, float]]]:
    """For each of ``rows``: its ``k`` largest non-zero latents, (latent, value), largest first."""
    if len(rows) == 0:
        return []
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        code = model.encode(torch.as_tensor(x[rows], dtype=torch.float32).to(device)).float().cpu()
    finally:
        model.train(was_training)
    values, index = code.topk(min(k, code.shape[1]), dim=1)
    pairs = (zip(i.tolist(), v.tolist(), strict=True) for i, v in zip(index, values, strict=True))
    return [[(j, v) for j, v in row if v != 0] for row in pairs]

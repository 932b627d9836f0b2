"""Sparse kernels for TopK codes: only the k selected latents of each row are touched after the encoder's matmul.

A dense TopK autoencoder spends up to five matmuls of ``B x d x n`` per step:
the encoder's forward and its two gradients, the decoder's forward and its two.
With k of n latents active, only the encoder's forward is needed in full:

- `topk_encode` computes the pre-activations in blocks of rows, keeps each
  block's top k while it is still in cache (the full ``(B, n)`` matrix is never
  stored), and its backward scatters the k gradients per row into the weight
  gradient (``k / n`` of the dense cost);
- `sparse_decode` sums the k selected decoder columns per row
  (``embedding_bag``), and its backward takes the k dot products per row that
  the code's gradient needs (a sampled matmul) and scatters the rows of the
  output gradient into the decoder's weight gradient.

The encoder's matmul runs in ``dtype`` (bfloat16 halves it on CPUs with
AVX-512-BF16 or AMX, and on GPUs); everything after it, and every gradient, is
float32. In float32, ``screen`` gives the choice of the k to a cheaper matmul
(`screen_dtype`: bfloat16 where the CPU has bfloat16 dot products): its
``k + margin`` largest pre-activations per row are the candidates, rescored in
float32, and the k largest of those kept, so that the values, the gradients and
(unless a latent of the float32 top k falls below the margin in bfloat16) the
selection are the float32 ones at about half the matmul's cost.
``tests/test_kernels.py`` checks both against the dense reference.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

BLOCK_ROWS = 512
"""Rows of pre-activations computed at a time: 512 x 16,384 float32 is 32 MiB, about an L3 cache."""


def screen_margin(k: int) -> int:
    """Candidates beyond the k that a screened selection rescores: on real activations (all-MiniLM-L6-v2's
    residual stream, 32,768 rows each at k 16, 32 and 64) the float32 top k lay within the bfloat16
    top ``k + 5`` (k 16 and 32) and ``k + 9`` (k 64) of every row; the margin is three times that or more."""
    return max(16, k // 2)


def screen_dtype(device: torch.device) -> torch.dtype | None:
    """The precision that pays for screening a float32 TopK on ``device``: bfloat16 on CPUs with AVX-512-BF16
    or AMX (twice float32's matmul rate), else None (elsewhere a bfloat16 matmul is no faster, or untested)."""
    if device.type != "cpu":
        return None
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return torch.bfloat16 if any(getattr(torch.cpu, name, lambda: False)() for name in checks) else None


class SparseCode(NamedTuple):
    """The k largest latents of each row: ``values`` (ReLU'd) and their ``indices``, both ``(B, k)``, indices ascending."""

    values: Tensor
    indices: Tensor


def _csr(indices: Tensor, values: Tensor, n: int) -> Tensor:
    """A ``(B, n)`` CSR matrix with ``values[r, j]`` at column ``indices[r, j]`` (ascending in each row)."""
    rows, k = indices.shape
    crow = torch.arange(0, rows * k + 1, k, device=indices.device)
    return torch.sparse_csr_tensor(crow, indices.reshape(-1), values.reshape(-1), (rows, n), check_invariants=False)


def scatter_rows(indices: Tensor, weights: Tensor, rows: Tensor, n: int) -> Tensor:
    """``out[j] = sum of weights[r, i] * rows[r]`` over the ``(r, i)`` with ``indices[r, i] = j``: ``(n, rows.shape[1])``.

    The weight gradient of a layer whose output is sparse: the dense ``G.T @ rows``
    with ``G`` zero outside ``indices``. The ``B * k`` entries are sorted by latent
    (cheaper than the transposed product) and each latent's rows summed as one bag of
    ``embedding_bag`` (its weighted sum is about twice as fast on CPU as a CSR matrix
    times ``rows``); a latent without entries gets zeros.
    """
    flat = indices.reshape(-1)
    order = flat.argsort(stable=True)
    offsets = torch.zeros(n + 1, dtype=torch.long, device=flat.device)
    torch.cumsum(torch.bincount(flat, minlength=n), 0, out=offsets[1:])
    per_entry = weights.reshape(-1)[order].to(rows.dtype)
    with torch.autocast(rows.device.type, enabled=False):
        bags = order // indices.shape[1]  # the row of each entry, latent by latent
        return F.embedding_bag(bags, rows, offsets, mode="sum", per_sample_weights=per_entry, include_last_offset=True)


def gather_dots(indices: Tensor, rows: Tensor, table: Tensor) -> Tensor:
    """``out[r, i] = rows[r] . table[:, indices[r, i]]``, ``(B, k)``: the entries of ``rows @ table`` at ``indices``."""
    mask = _csr(indices, torch.ones(indices.shape, dtype=rows.dtype, device=rows.device), table.shape[1])
    return torch.sparse.sampled_addmm(mask, rows, table.to(rows.dtype), beta=0.0).values().view(indices.shape)


def _sorted(values: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
    indices, order = indices.sort(dim=-1)
    return values.gather(-1, order), indices


class _TopKEncode(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
        center: Tensor,
        k: int,
        aux: Tensor | None,
        aux_k: int,
        aux_rows: int,
        aux_dense: bool,
        dtype: torch.dtype,
        screen: torch.dtype | None,
        block: int,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        xc = x - center  # (B, d)
        screen = screen if dtype == torch.float32 else None
        w, b = weight.to(screen or dtype), bias.to(screen or dtype)
        rows, n = len(x), len(weight)
        aux_dense = aux_dense and aux is not None
        aux_k = (len(aux) if aux_dense else min(aux_k, len(aux))) if aux is not None else 0
        aux_rows = min(aux_rows, rows)
        # Screened, the blocks give candidates (k + margin per row) that are rescored in float32 below.
        top = min(n, k + screen_margin(k)) if screen else k
        aux_top = min(len(aux), aux_k + screen_margin(aux_k)) if screen and aux_k and not aux_dense else aux_k
        values = torch.empty(rows, top, dtype=torch.float32, device=x.device)
        indices = torch.empty(rows, top, dtype=torch.long, device=x.device)
        aux_values = torch.empty(aux_rows, aux_top, dtype=torch.float32, device=x.device)
        aux_indices = torch.empty(aux_rows, aux_top, dtype=torch.long, device=x.device)
        buffer = torch.empty(min(block, rows), n, dtype=w.dtype, device=x.device)  # reused: no fresh pages per block
        with torch.autocast(x.device.type, enabled=False):
            for i in range(0, rows, block):
                pre = buffer[: min(block, rows - i)]
                torch.addmm(b, xc[i : i + block].to(w.dtype), w.T, out=pre)  # (block, n): stays in cache
                v, j = pre.topk(top, dim=-1, sorted=False)
                values[i : i + block], indices[i : i + block] = v, j
                if aux_k and i < aux_rows and not (screen and aux_dense):
                    chosen = pre[: aux_rows - i].index_select(1, aux)  # (rows of the block, len(aux))
                    if aux_dense:
                        aux_values[i : i + block] = chosen
                    else:
                        v, j = chosen.topk(aux_top, dim=-1, sorted=False)
                        aux_values[i : i + block], aux_indices[i : i + block] = v, aux[j]
            if screen:  # float32 values of the candidates, and the k largest of them
                values, indices = _rescore(xc, weight, bias, indices, k)
                if aux_dense:
                    aux_values = torch.addmm(bias[aux], xc[:aux_rows], weight[aux].T)  # (aux_rows, len(aux))
                elif aux_k:
                    aux_values, aux_indices = _rescore(xc[:aux_rows], weight, bias, aux_indices, aux_k)
        code = _sorted(values.relu_(), indices)
        if aux_dense:  # every aux latent's pre-activation, in the order of aux
            extra = aux_values, aux_indices.copy_(aux.expand(aux_rows, -1))
        else:
            extra = _sorted(aux_values.relu_(), aux_indices)
        ctx.aux_dense = aux_dense
        ctx.save_for_backward(xc, weight, *code, *extra)
        ctx.mark_non_differentiable(code[1], extra[1])
        return (*code, *extra)

    @staticmethod
    def backward(ctx: Any, grad_values: Tensor, _: Tensor, grad_aux: Tensor, __: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        xc, weight, values, indices, aux_values, aux_indices = ctx.saved_tensors
        n = weight.shape[0]
        # The main code and the AuxK code (on the first aux_rows rows) as one list of (row, latent, gradient).
        parts = [(indices, grad_values.float() * (values > 0))]  # the ReLU's gradient
        if aux_indices.numel() and not ctx.aux_dense:
            parts.append((aux_indices, grad_aux.float() * (aux_values > 0)))
        grad_bias = torch.zeros(n, device=xc.device)
        grad_weight = None
        grad_x = torch.zeros_like(xc) if ctx.needs_input_grad[0] else None
        for j, g in parts:
            grad_bias.index_add_(0, j.reshape(-1), g.reshape(-1))  # column sums of G
            if ctx.needs_input_grad[1]:
                part = scatter_rows(j, g, xc[: len(j)].float(), n)
                grad_weight = part if grad_weight is None else grad_weight.add_(part)
            if grad_x is not None:
                grad_x[: len(j)] += F.embedding_bag(j, weight, per_sample_weights=g, mode="sum")
        if aux_indices.numel() and ctx.aux_dense:  # dense over the aux latents: matmuls over their rows of the weight
            aux, g = aux_indices[0], grad_aux.float()  # (m,), (aux_rows, m)
            grad_bias.index_add_(0, aux, g.sum(0))
            if grad_weight is not None:
                grad_weight.index_add_(0, aux, g.T @ xc[: len(g)].float())
            if grad_x is not None:
                grad_x[: len(g)] += g @ weight[aux].float()
        grad_center = -(grad_bias @ weight) if ctx.needs_input_grad[3] else None  # the rows' G @ weight, summed
        return grad_x, grad_weight, grad_bias if ctx.needs_input_grad[2] else None, grad_center, *(None,) * 8


def _rescore(xc: Tensor, weight: Tensor, bias: Tensor, candidates: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k largest float32 pre-activations among each row's ``candidates`` ``(rows, m)``: values and latents."""
    candidates = candidates.sort(dim=-1).values  # a CSR row's columns ascending, as gather_dots' mask wants them
    exact = gather_dots(candidates, xc.float(), weight.T) + bias[candidates]
    v, j = exact.topk(k, dim=-1, sorted=False)
    return v, candidates.gather(1, j)


def topk_encode(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    k: int,
    center: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    *,
    aux: Tensor | None = None,
    aux_k: int = 0,
    aux_rows: int | None = None,
    aux_dense: bool = False,
    screen: torch.dtype | None = None,
    block: int = BLOCK_ROWS,
) -> tuple[SparseCode, SparseCode]:
    """``relu(topk((x - center) @ weight.T + bias, k))`` without storing the pre-activations.

    ``weight`` is the encoder's ``(n, d)``; ``dtype`` the matmul's precision. The
    ReLU zeroes negative values among the k (their gradient is zero, as in the
    dense reference). With ``aux`` (indices of latents, e.g. the dead ones) the
    second code holds the ``aux_k`` largest pre-activations among them (AuxK) of
    each of the first ``aux_rows`` rows (all rows if None); otherwise it is empty.
    With ``aux_dense``, it holds every one of the ``aux`` latents' pre-activations
    instead, ``(aux_rows, len(aux))`` in the order of ``aux`` (no top k, no ReLU: the
    caller selects), and their gradient flows back as dense matmuls over those latents'
    rows of ``weight``: cheaper than the sparse path while the aux latents are few.
    With ``screen`` (and ``dtype`` float32) the blocks' matmul runs in that precision to choose
    ``k + screen_margin(k)`` candidates per row (``aux_k + screen_margin(aux_k)`` for AuxK), whose
    float32 pre-activations are then computed and the largest kept (the aux latents' pre-activations,
    with ``aux_dense``, are computed in float32 outright).
    """
    center = x.new_zeros(()) if center is None else center
    aux_rows = len(x) if aux_rows is None else aux_rows
    args = (x, weight, bias, center, k, aux, aux_k, aux_rows, aux_dense, dtype, screen, block)
    values, indices, aux_values, aux_indices = _TopKEncode.apply(*args)
    return SparseCode(values, indices), SparseCode(aux_values, aux_indices)


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, values: Tensor, indices: Tensor, weight: Tensor, col_values: Tensor, cols: Tensor
    ) -> tuple[Tensor, Tensor]:
        table = weight.T.contiguous()  # (n, d): row j is latent j's atom (free when stored latent-major)
        with torch.autocast(values.device.type, enabled=False):
            out = F.embedding_bag(indices, table, per_sample_weights=values.to(table.dtype), mode="sum")
            atoms = table[cols]  # (m, d): the columns' atoms, for the dense part
            col_out = col_values.to(table.dtype) @ atoms
        ctx.save_for_backward(values, indices, table, col_values, cols, atoms)
        return out, col_out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, grad_col_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        values, indices, table, col_values, cols, atoms = ctx.saved_tensors
        grad_out = grad_out.to(table.dtype).contiguous()
        grad_values = gather_dots(indices, grad_out, table.T) if ctx.needs_input_grad[0] else None
        grad_col_values = grad_col_out.to(table.dtype) @ atoms.T if ctx.needs_input_grad[3] else None
        grad_weight = None
        if ctx.needs_input_grad[2]:
            grad_weight = scatter_rows(indices, values, grad_out, table.shape[0])  # (n, d)
            if len(cols):  # into the same gradient: no second (n, d) tensor to add
                grad_weight.index_add_(0, cols, col_values.to(table.dtype).T @ grad_col_out.to(table.dtype))
            grad_weight = grad_weight.T  # the layout of a latent-major weight: autograd accumulates it without a copy
        return grad_values, None, grad_weight, grad_col_values, None


def sparse_decode(code: SparseCode, weight: Tensor) -> Tensor:
    """``dense(code) @ weight.T`` for a decoder ``weight`` of shape ``(d, n)``, touching only the selected columns.

    Fastest when ``weight`` is stored latent-major (``weight.T`` contiguous, as the
    dense model keeps its decoder). Runs in the weight's precision (float32 under
    bfloat16 autocast: with k of n columns it costs little).
    """
    return sparse_decode_with_columns(code, weight, code.values.new_zeros(0, 0), code.indices.new_zeros(0))[0]


def sparse_decode_with_columns(code: SparseCode, weight: Tensor, col_values: Tensor, cols: Tensor) -> tuple[Tensor, Tensor]:
    """`sparse_decode(code, weight)`, and ``col_values @ weight[:, cols].T`` (a dense code over the latents ``cols``,
    ``(rows, len(cols))``) in the same pass: both gradients land in one ``weight`` gradient (AuxK over few dead latents)."""
    return _SparseDecode.apply(code.values, code.indices, weight, col_values, cols)


def to_csr(code: SparseCode, n: int) -> Tensor:
    """The ``(B, n)`` code as a CSR matrix (no gradient)."""
    return _csr(code.indices, code.values.detach(), n)


def densify(code: SparseCode, n: int) -> Tensor:
    """The ``(B, n)`` dense code."""
    return code.values.new_zeros(len(code.values), n).scatter_(-1, code.indices, code.values)


def fired(code: Tensor) -> Tensor:
    """Which latents are non-zero in some row of ``code`` (dense or CSR), ``(n,)`` bool."""
    if code.layout == torch.sparse_csr:
        out = torch.zeros(code.shape[1], dtype=torch.bool, device=code.device)
        return out.index_fill_(0, code.col_indices()[code.values() != 0], True)
    return (code != 0).any(0)


def active_per_row(code: Tensor) -> Tensor:
    """Non-zeros per row of ``code`` (dense or CSR), ``(B,)`` float."""
    if code.layout == torch.sparse_csr:
        return (code.values() != 0).view(code.shape[0], -1).sum(1).float()
    return (code != 0).sum(1).float()

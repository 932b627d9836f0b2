"""The sparse TopK kernels (:mod:`sparseae.kernels`) against a dense reference, and the speed switches around them.

The reference is the plain computation, written here: ``pre = (x - center) @ W.T + b``,
the top k of each row, ReLU, scattered into a dense ``(B, n)`` code, ``recon = code @ W_dec.T``.
The kernels must give the same codes, reconstructions and gradients; the dense model must
give the same outputs, losses, gradients and dead-latent counts with ``kernels="auto"`` as
with ``"reference"``; and training must end in the same place with either, and nearly
the same place in bfloat16.
"""

from __future__ import annotations

import copy
import functools
import platform

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import sparseae
import sparseae.training as train_module
from sparseae import kernels, runtime
from sparseae.cli import main
from sparseae.errors import SparseAEError
from sparseae.models import DenseAutoencoder, DenseConfig
from sparseae.models.dense import DENSE_AUX_FACTOR
from sparseae.sparsity import build_sparsity
from sparseae.sparsity.topk import TopK

B, D, N, K = 50, 24, 96, 6  # B is not a multiple of the block size (7) used below
ATOL = 1e-5


def reference_topk(
    x: Tensor, weight: Tensor, bias: Tensor, k: int, center: Tensor, aux: Tensor | None = None, aux_k: int = 0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Dense ``(B, n)`` code and AuxK code, and their ascending ``(B, k)`` indices: the function the kernel computes."""
    pre = (x - center) @ weight.T + bias  # (B, n)
    values, indices = pre.topk(k, dim=-1)
    code = torch.zeros_like(pre).scatter(-1, indices, values.relu())
    if aux is None:
        return code, torch.zeros_like(pre), indices.sort(-1).values, indices[:, :0]
    outside = torch.ones(pre.shape[1], dtype=torch.bool)
    outside[aux] = False
    values, aux_indices = pre.masked_fill(outside, -torch.inf).topk(min(aux_k, len(aux)), dim=-1)
    aux_code = torch.zeros_like(pre).scatter(-1, aux_indices, values.relu())
    return code, aux_code, indices.sort(-1).values, aux_indices.sort(-1).values


def problem(shift: float = 0.0, latent_major: bool = True, seed: int = 0) -> dict[str, Tensor]:
    """Encoder, decoder, inputs and the random weights of a loss linear in the code and the reconstruction."""
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(N, D, generator=g).T if latent_major else torch.randn(D, N, generator=g)  # (D, N)
    return {
        "x": torch.randn(B, D, generator=g),
        "weight": torch.randn(N, D, generator=g) / D**0.5,
        "bias": 0.3 * torch.randn(N, generator=g) + shift,
        "center": 0.2 * torch.randn(D, generator=g),
        "w_dec": w_dec,
        # Loss weights on the reconstruction and the code, / B as in a mean: gradients of order 1.
        "r": torch.randn(B, D, generator=g) / B,
        "gv": torch.randn(B, N, generator=g) / B,
        "r_aux": torch.randn(B, D, generator=g) / B,
        "gv_aux": torch.randn(B, N, generator=g) / B,
    }


def leaves(p: dict[str, Tensor], x_grad: bool) -> dict[str, Tensor]:
    names = ["weight", "bias", "center", "w_dec"] + (["x"] if x_grad else [])
    return {name: p[name].clone().requires_grad_(name in names) for name in ("x", "weight", "bias", "center", "w_dec")}


# Cases: (AuxK latents, aux_k, bias shift, block, x requires grad, latent-major W_dec, AuxK rows (None: all)).
AUX = torch.arange(0, N, 2)[:40]  # 40 of the 96 latents; some of them also win the main top k
CASES = {
    "plain": (None, 0, 0.0, 7, True, True, None),
    "plain-one-block": (None, 0, 0.0, kernels.BLOCK_ROWS, True, True, None),
    "auxk-smaller-than-the-set": (AUX, 8, 0.0, 7, True, True, None),
    "auxk-larger-than-the-set": (AUX, 64, 0.0, 7, True, True, None),
    "negative-values-among-the-k": (AUX, 8, -1.2, 7, True, True, None),
    "no-x-grad-column-major-decoder": (AUX, 8, 0.0, 7, False, False, None),
    "auxk-on-the-first-17-rows": (AUX, 8, 0.0, 7, True, True, 17),  # ends inside the third block
}


@pytest.mark.parametrize("screen", [None, torch.bfloat16], ids=["float32", "screened"])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_topk_encode_and_sparse_decode_equal_the_dense_reference(case, screen):
    aux, aux_k, shift, block, x_grad, latent_major, aux_rows = case
    rows = B if aux_rows is None else aux_rows
    p = problem(shift, latent_major)
    ref, ker = leaves(p, x_grad), leaves(p, x_grad)

    code, aux_code, indices, aux_indices = reference_topk(
        ref["x"], ref["weight"], ref["bias"], K, ref["center"], aux=aux, aux_k=aux_k
    )
    recon = code @ ref["w_dec"].T
    loss = (recon * p["r"]).sum() + (code * p["gv"]).sum()
    aux_code, aux_indices = aux_code[:rows], aux_indices[:rows]
    if aux is not None:
        loss = loss + (aux_code @ ref["w_dec"].T * p["r_aux"][:rows]).sum() + (aux_code * p["gv_aux"][:rows]).sum()
    loss.backward()

    got, got_aux = kernels.topk_encode(
        ker["x"],
        ker["weight"],
        ker["bias"],
        K,
        ker["center"],
        aux=aux,
        aux_k=aux_k,
        aux_rows=aux_rows,
        screen=screen,
        block=block,
    )
    got_recon = kernels.sparse_decode(got, ker["w_dec"])
    got_loss = (got_recon * p["r"]).sum() + (got.values * p["gv"].gather(1, got.indices)).sum()
    if aux is not None:
        got_loss = got_loss + (kernels.sparse_decode(got_aux, ker["w_dec"]) * p["r_aux"][:rows]).sum()
        got_loss = got_loss + (got_aux.values * p["gv_aux"][:rows].gather(1, got_aux.indices)).sum()
    got_loss.backward()

    assert torch.equal(got.indices, indices)
    torch.testing.assert_close(got.values, code.gather(1, indices), atol=ATOL, rtol=0)
    torch.testing.assert_close(kernels.densify(got, N), code, atol=ATOL, rtol=0)
    torch.testing.assert_close(got_recon, recon, atol=ATOL, rtol=0)
    assert got_aux.indices.shape == got_aux.values.shape == (rows, 0 if aux is None else min(aux_k, len(aux)))
    assert torch.equal(got_aux.indices, aux_indices)
    if aux is not None:
        assert torch.isin(got_aux.indices, aux).all()
        torch.testing.assert_close(kernels.densify(got_aux, N), aux_code, atol=ATOL, rtol=0)
        assert torch.isin(got.indices, aux).any(), "the case should have latents in both codes"
    if shift < 0:  # not vacuous: ReLU zeroes some of the k, and their gradient must be zero as in the reference
        assert 0 < (code.gather(1, indices) == 0).float().mean() < 1
    for name in ("weight", "bias", "center", "w_dec") + (("x",) if x_grad else ()):
        assert ker[name].grad.dtype == torch.float32, name
        torch.testing.assert_close(ker[name].grad, ref[name].grad, atol=ATOL, rtol=0, msg=name)
    if not x_grad:
        assert ker["x"].grad is None


@pytest.mark.parametrize("x_grad", [True, False], ids=["x-grad", "no-x-grad"])
@pytest.mark.parametrize("aux_rows", [None, 17], ids=["every-row", "first-17-rows"])
def test_dense_aux_columns_equal_the_dense_reference(aux_rows, x_grad):
    # aux_dense: the aux latents' raw pre-activations come out of the encoder's pass, and the decoder
    # takes them as a dense code over their columns; all gradients land in the one weight gradient each.
    rows = B if aux_rows is None else aux_rows
    p = problem(shift=-0.3)
    ref, ker = leaves(p, x_grad), leaves(p, x_grad)

    code, _, indices, _ = reference_topk(ref["x"], ref["weight"], ref["bias"], K, ref["center"])
    dead_pre = ((ref["x"] - ref["center"]) @ ref["weight"].T + ref["bias"])[:rows, AUX]  # (rows, m)
    aux_recon = dead_pre.relu() @ ref["w_dec"][:, AUX].T
    loss = (code @ ref["w_dec"].T * p["r"]).sum() + (aux_recon * p["r_aux"][:rows]).sum()
    loss = loss + (dead_pre * p["gv_aux"][:rows, : len(AUX)]).sum()  # a gradient on the raw values too
    loss.backward()

    got, got_aux = kernels.topk_encode(
        ker["x"], ker["weight"], ker["bias"], K, ker["center"], aux=AUX, aux_k=8, aux_rows=aux_rows, aux_dense=True, block=7
    )
    assert got_aux.values.shape == (rows, len(AUX)) and torch.equal(got_aux.indices, AUX.expand(rows, -1))
    torch.testing.assert_close(got_aux.values, dead_pre, atol=ATOL, rtol=0)
    decoded, got_aux_recon = kernels.sparse_decode_with_columns(got, ker["w_dec"], got_aux.values.relu(), AUX)
    got_loss = (decoded * p["r"]).sum() + (got_aux_recon * p["r_aux"][:rows]).sum()
    got_loss = got_loss + (got_aux.values * p["gv_aux"][:rows, : len(AUX)]).sum()
    got_loss.backward()

    assert torch.equal(got.indices, indices)
    torch.testing.assert_close(got_aux_recon, aux_recon, atol=ATOL, rtol=0)
    for name in ("weight", "bias", "center", "w_dec") + (("x",) if x_grad else ()):
        torch.testing.assert_close(ker[name].grad, ref[name].grad, atol=ATOL, rtol=0, msg=name)
    assert ker["w_dec"].grad.T.is_contiguous()  # the latent-major layout: accumulated without a copy


def test_latents_that_only_win_with_negative_values_get_no_gradient():
    p = problem()
    x, weight, bias = p["x"], p["weight"].clone().requires_grad_(), p["bias"].clone()
    bias[:10] = 50.0  # latents 0-9 win every row
    bias[10:] = -50.0  # and the rest are negative wherever they are picked
    bias.requires_grad_()
    code, _ = kernels.topk_encode(x, weight, bias, 12, p["center"], block=7)
    assert (code.values[:, 10:] == 0).all() and (code.values[:, :10] > 0).all()
    (code.values * p["gv"][:, :12]).sum().backward()
    assert (weight.grad[10:] == 0).all() and (bias.grad[10:] == 0).all()
    assert (weight.grad[:10] != 0).any()


def test_without_a_center_the_encoder_sees_x_itself():
    p = problem()
    got, _ = kernels.topk_encode(p["x"], p["weight"], p["bias"], K)
    code, _, indices, _ = reference_topk(p["x"], p["weight"], p["bias"], K, torch.zeros(D))
    assert torch.equal(got.indices, indices)
    torch.testing.assert_close(kernels.densify(got, N), code, atol=ATOL, rtol=0)


def test_bfloat16_matmul_selects_the_same_latents_where_they_are_well_separated():
    p = problem(shift=1.0)  # positive pre-activations: the ReLU's mask does not flip within bfloat16's error
    x, center = p["x"], p["center"]
    pre = (x - center) @ p["weight"].T + p["bias"]  # (B, N), float32
    ordered = pre.sort(-1, descending=True).values
    # bfloat16 keeps 8 bits: inputs and weights are rounded by up to 0.4% each. Measured: the
    # pre-activations here differ from float32 by at most ~0.02 (of values up to ~6).
    separated = (ordered[:, K - 1] - ordered[:, K] > 0.1) & (ordered[:, K - 1] > 0.1)
    rows = separated.nonzero().squeeze(1)
    assert len(rows) >= 15, "enough rows should be well separated for the test to mean something"  # 19 of 50

    ref, ker = leaves({**p, "x": x[rows]}, True), leaves({**p, "x": x[rows]}, True)
    code, _, indices, _ = reference_topk(ref["x"], ref["weight"], ref["bias"], K, ref["center"])
    ((code @ ref["w_dec"].T * p["r"][rows]).sum() + (code * p["gv"][rows]).sum()).backward()
    got, _ = kernels.topk_encode(ker["x"], ker["weight"], ker["bias"], K, ker["center"], torch.bfloat16, block=7)
    recon = kernels.sparse_decode(got, ker["w_dec"])
    ((recon * p["r"][rows]).sum() + (got.values * p["gv"][rows].gather(1, got.indices)).sum()).backward()

    assert torch.equal(got.indices, indices)
    assert got.values.dtype == recon.dtype == torch.float32
    torch.testing.assert_close(got.values, code.gather(1, indices), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(recon, code @ ref["w_dec"].T, rtol=2e-2, atol=5e-2)
    for name in ("weight", "bias", "center", "x", "w_dec"):
        grad = ker[name].grad
        assert grad.dtype == torch.float32 and torch.isfinite(grad).all(), name
    # The loss is linear in the code: with the same latents selected, the encoder's gradients
    # do not depend on the values, and the backward is float32, so they match the reference.
    for name in ("weight", "bias", "center", "x"):
        torch.testing.assert_close(ker[name].grad, ref[name].grad, atol=ATOL, rtol=0, msg=name)
    torch.testing.assert_close(ker["w_dec"].grad, ref["w_dec"].grad, rtol=2e-2, atol=5e-2)


def test_bfloat16_matmul_on_all_rows_picks_near_top_latents_with_their_values():
    p = problem()
    pre = (p["x"] - p["center"]) @ p["weight"].T + p["bias"]  # (B, N)
    got, _ = kernels.topk_encode(p["x"], p["weight"], p["bias"], K, p["center"], torch.bfloat16, block=7)
    kth = pre.topk(K, dim=-1).values[:, -1:]
    picked = pre.gather(1, got.indices)
    assert (picked >= kth - 0.05).all()  # what bfloat16 may swap is within its error of the k-th
    torch.testing.assert_close(got.values, picked.relu(), rtol=2e-2, atol=2e-2)
    assert (got.values - picked.relu()).abs().max() > 1e-3  # the matmul did run in bfloat16 (float32: ~1e-6)


@pytest.mark.parametrize("aux_dense", [False, True], ids=["auxk-sparse", "auxk-dense"])
def test_a_screened_choice_is_the_float32_one_where_bfloat16_alone_picks_other_latents(aux_dense):
    g = torch.Generator().manual_seed(3)
    rows, d, n, k, aux_k = 512, 64, 2048, 16, 32
    x, weight = torch.randn(rows, d, generator=g), torch.randn(n, d, generator=g) / d**0.5
    bias, center = 0.1 * torch.randn(n, generator=g), torch.zeros(d)
    aux = torch.arange(0, n, 3)  # 683 latents
    code, aux_code, indices, aux_indices = reference_topk(x, weight, bias, k, center, aux=aux, aux_k=aux_k)
    alone, alone_aux = kernels.topk_encode(x, weight, bias, k, center, torch.bfloat16, aux=aux, aux_k=aux_k)
    differ = (alone.indices != indices).any(1)
    assert differ.sum() >= 20, "bfloat16 alone should swap latents at the k-th place in some rows"  # 68 of 512
    assert (alone_aux.indices != aux_indices).any(1).sum() >= 20  # AuxK's choice too: 71 of 512 (the margin needed: 4)
    screened = {"aux": aux, "aux_k": aux_k, "aux_dense": aux_dense, "screen": torch.bfloat16}
    got, got_aux = kernels.topk_encode(x, weight, bias, k, center, **screened)
    assert torch.equal(got.indices, indices)
    torch.testing.assert_close(got.values, code.gather(1, indices), atol=ATOL, rtol=0)  # float32 values
    pre = (x - center) @ weight.T + bias
    if aux_dense:  # every aux latent's float32 pre-activation, in the order of aux
        assert torch.equal(got_aux.indices, aux.expand(rows, -1))
        torch.testing.assert_close(got_aux.values, pre[:, aux], atol=ATOL, rtol=0)
    else:
        assert torch.equal(got_aux.indices, aux_indices)
        torch.testing.assert_close(got_aux.values, aux_code.gather(1, aux_indices), atol=ATOL, rtol=0)


def test_screening_is_offered_on_cpus_with_bfloat16_dot_products_only():
    has = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert kernels.screen_dtype(torch.device("cpu")) == (torch.bfloat16 if has else None)
    assert kernels.screen_dtype(torch.device("meta")) is None
    assert kernels.screen_margin(32) == 16 and kernels.screen_margin(64) == 32 and kernels.screen_margin(4) == 16


def test_sparse_helpers_equal_their_dense_definitions():
    g = torch.Generator().manual_seed(1)
    indices = torch.randn(B, N, generator=g).topk(K, dim=-1).indices.sort(-1).values  # (B, K) ascending
    weights, rows, table = torch.randn(B, K, generator=g), torch.randn(B, D, generator=g), torch.randn(D, N, generator=g)
    weights[:5] = 0.0  # rows whose values are all zero: present in the CSR, but not fired and not active
    weights[5, :2] = 0.0
    dense = torch.zeros(B, N).scatter(-1, indices, weights)
    code = kernels.SparseCode(weights, indices)
    torch.testing.assert_close(kernels.scatter_rows(indices, weights, rows, N), dense.T @ rows, atol=ATOL, rtol=0)
    torch.testing.assert_close(kernels.gather_dots(indices, rows, table), (rows @ table).gather(1, indices), atol=ATOL, rtol=0)
    assert torch.equal(kernels.densify(code, N), dense)
    csr = kernels.to_csr(code, N)
    assert csr.layout == torch.sparse_csr and csr.shape == (B, N) and torch.equal(csr.to_dense(), dense)
    assert torch.equal(kernels.fired(csr), kernels.fired(dense)) and torch.equal(kernels.fired(dense), (dense != 0).any(0))
    assert torch.equal(kernels.active_per_row(csr), kernels.active_per_row(dense))
    assert kernels.active_per_row(csr)[:6].tolist() == [0, 0, 0, 0, 0, K - 2]


# --- the dense model: kernels "auto" against "reference" ---


def dense_topk(seed: int = 0, sparsity: object = None, **config) -> DenseAutoencoder:
    torch.manual_seed(seed)
    config = {"input_shape": (32,), "n_latents": 128, "aux_k": 16, "dead_window": 64, **config}
    return DenseAutoencoder(DenseConfig(**config), sparsity or build_sparsity("topk", k=8))


def auto_and_reference(model: DenseAutoencoder) -> tuple[DenseAutoencoder, DenseAutoencoder]:
    auto, ref = copy.deepcopy(model), copy.deepcopy(model)
    ref.forward = functools.partial(ref.forward, kernels="reference")  # what the trainer passes with kernels="reference"
    assert auto.uses_kernels() and not ref.uses_kernels("reference")
    return auto, ref


MODEL_CONFIGS = {
    "median-bias": {},
    "no-pre-bias": {"pre_bias": "none"},
    "sigmoid-weight-decay": {"output_activation": "sigmoid", "weight_decay": 1e-3},
    "preprocessed": {"preprocess": "standardize"},
    "auxk-on-a-quarter-of-the-rows": {"aux_fraction": 0.25},  # 12 of 48
    # 40 dead from the first step: at most DENSE_AUX_FACTOR x aux_k (dense matmuls over the dead
    # columns) with aux_k 64, more (the sparse kernels) with aux_k 4.
    "auxk-dense-over-the-dead-fewer-than-aux-k": {"aux_k": 64},
    "auxk-through-the-sparse-kernels": {"aux_k": 4},
    "auxk-sparse-kernels-on-a-quarter-of-the-rows": {"aux_k": 4, "aux_fraction": 0.25},
}


@pytest.mark.parametrize("config", MODEL_CONFIGS.values(), ids=MODEL_CONFIGS.keys())
def test_dense_model_training_steps_equal_with_kernels_auto_and_reference(config, monkeypatch):
    config = dict(config)
    preprocess = config.pop("preprocess", None)
    torch.manual_seed(0)
    x = torch.randn(4, 48, 32) + 0.5  # four batches of 48
    model = dense_topk(**config)
    if preprocess:
        model = DenseAutoencoder(model.config, build_sparsity("topk", k=8), preprocess)
    model.initialise(x.flatten(0, 1))
    with torch.no_grad():
        model.samples_since_fired[:40] = 10_000  # dead: AuxK runs from the first step
    auto, ref = auto_and_reference(model)
    dead_sets = []  # the AuxK latents the sparse kernels were given, and whether as dense columns
    encode = kernels.topk_encode
    seen = lambda *a, **kw: dead_sets.append((kw["aux"], kw["aux_dense"])) or encode(*a, **kw)  # noqa: E731
    monkeypatch.setattr(kernels, "topk_encode", seen)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (auto, ref)]
    aux_losses = []
    for batch in x:
        outs = []
        for m, opt in zip((auto, ref), optimizers, strict=True):
            out = m(batch)
            loss = F.mse_loss(out.recon, out.target) + out.penalty + out.aux
            opt.zero_grad()
            loss.backward()
            outs.append((out, loss))
        (a, a_loss), (r, r_loss) = outs
        aux_losses.append(r.aux.item())
        assert a.code.layout == torch.sparse_csr and r.code.layout == torch.strided
        torch.testing.assert_close(a.code.to_dense(), r.code, atol=ATOL, rtol=0)
        torch.testing.assert_close(a.recon, r.recon, atol=ATOL, rtol=0)
        torch.testing.assert_close(a.aux, r.aux, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(a_loss, r_loss, atol=1e-6, rtol=1e-5)
        for (name, pa), pr in zip(auto.named_parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(pa.grad, pr.grad, atol=ATOL, rtol=0, msg=name)
        assert torch.equal(auto.samples_since_fired, ref.samples_since_fired)
        for m, opt in zip((auto, ref), optimizers, strict=True):
            m.before_step()
            opt.step()
            m.after_step()
    assert all(a > 0 for a in aux_losses[:2]), aux_losses  # AuxK ran
    sparse_path = 40 > DENSE_AUX_FACTOR * model.config.aux_k
    aux, aux_dense = dead_sets[0]
    assert aux is not None and len(aux) >= 40 and aux_dense == (not sparse_path), dead_sets[0]
    assert auto.W_dec.T.is_contiguous()


def test_auxk_dead_set_counts_samples_before_the_batch_in_both_paths():
    # dead_window 64, batches of 48: a never-firing latent has 0, 48, 96 samples behind it at
    # batches 1, 2, 3, so it is dead (>= 64 before the batch) from batch 3, not from batch 2.
    model = dense_topk(dead_window=64)
    with torch.no_grad():
        model.encoder.bias[100:] = -100.0  # latents 100-127 never fire
    for m in auto_and_reference(model):
        auxes = [m(torch.randn(48, 32)).aux.item() for _ in range(3)]
        assert auxes[0] == auxes[1] == 0 and auxes[2] > 0, auxes
        assert (m.samples_since_fired[100:] == 144).all()


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_dense_model_eval_code_is_dense_and_equal(alpha):
    auto, ref = auto_and_reference(dense_topk(sparsity=build_sparsity("topk", k=8, alpha=alpha)))
    x = torch.randn(37, 32)
    with torch.no_grad():
        a, r = auto.eval()(x), ref.eval()(x)
    assert a.code.layout == torch.strided and a.code.shape == (37, 128)
    assert (a.code != 0).sum(1).max() == round(8 * alpha)
    torch.testing.assert_close(a.code, r.code, atol=ATOL, rtol=0)
    torch.testing.assert_close(a.recon, r.recon, atol=ATOL, rtol=0)
    assert a.aux.item() == r.aux.item() == 0
    assert torch.equal(auto.samples_since_fired, torch.zeros(128, dtype=torch.long))  # eval counts nothing


class MyTopK(TopK):
    """A user's subclass: it may change forward, so the kernels (which implement TopK itself) must not run."""

    def forward(self, pre: Tensor) -> Tensor:
        return super().forward(pre) * 2


def test_uses_kernels_only_for_topk_itself_and_kernels_auto():
    assert dense_topk().uses_kernels()
    for sparsity in (build_sparsity("batchtopk", k=8), build_sparsity("l1"), MyTopK(k=8)):
        model = dense_topk(sparsity=sparsity)
        assert not model.uses_kernels(), sparsity
    subclassed = dense_topk(sparsity=MyTopK(k=8)).eval()
    x = torch.randn(5, 32)
    with torch.no_grad():
        assert torch.equal(subclassed(x).code, subclassed.encode(x))  # the subclass's forward ran (values doubled)
    assert not dense_topk().uses_kernels("reference")


# --- training ---


@pytest.fixture(scope="module")
def blobs() -> sparseae.Dataset:
    """2,560 samples in 48 dimensions, each a sparse mix of 96 directions (5% active) plus noise."""
    g = torch.Generator().manual_seed(1)
    atoms = torch.randn(96, 48, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    coef = torch.rand(2560, 96, generator=g) * (torch.rand(2560, 96, generator=g) < 0.05)
    return sparseae.Dataset.from_array(coef @ atoms + 0.05 * torch.randn(2560, 48, generator=g) + 1.0)


def blob_model(**config) -> DenseAutoencoder:
    torch.manual_seed(0)
    k = config.pop("k", 8)
    config = {"input_shape": (48,), "n_latents": 256, "aux_k": 32, "dead_window": 256, **config}
    return DenseAutoencoder(DenseConfig(**config), build_sparsity("topk", k=k))


COMPARED = ("train_loss", "train_recon", "train_aux", "test_mse", "test_fvu", "test_l0", "test_dead_units")


@pytest.fixture(scope="module")
def blob_runs(blobs) -> dict[tuple[str, str], sparseae.TrainResult]:
    runs = {}
    for kernels_, precision in (("auto", "float32"), ("reference", "float32"), ("auto", "bfloat16")):
        config = sparseae.TrainConfig(epochs=3, batch_size=128, kernels=kernels_, precision=precision)
        runs[kernels_, precision] = sparseae.train(blob_model(), blobs, config, progress=False)
    return runs


def test_training_with_kernels_auto_ends_where_reference_does(blob_runs):
    auto, ref = blob_runs["auto", "float32"], blob_runs["reference", "float32"]
    # Measured: weights within 2.4e-7, metrics within 4e-9 after 3 epochs (54 steps).
    for (name, a), r in zip(auto.model.state_dict().items(), ref.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=0, msg=name)
    assert auto.model.W_dec.T.is_contiguous()
    for a, r in zip(auto.metrics, ref.metrics, strict=True):
        for key in COMPARED:
            assert a[key] == pytest.approx(r[key], abs=1e-6), (a["epoch"], key)
    assert all(r["train_aux"] > 0 for r in ref.metrics)  # AuxK ran in every epoch
    # It learned after the first epoch: 0.489 -> 0.455 (with the encoder's scale fitted at initialisation
    # the first epoch ends lower than it used to: 0.64 -> 0.51 without the fit).
    assert ref.metrics[-1]["test_fvu"] < 0.95 * ref.metrics[0]["test_fvu"]


def test_bfloat16_training_reaches_the_float32_fvu(blob_runs):
    bf16, f32 = blob_runs["auto", "bfloat16"], blob_runs["auto", "float32"]
    # Measured: 0.4708 against 0.4713 (0.1%) before the encoder's scale was fitted at initialisation.
    assert bf16.metrics[-1]["test_fvu"] == pytest.approx(f32.metrics[-1]["test_fvu"], rel=0.03)
    assert bf16.metrics[-1]["test_fvu"] != f32.metrics[-1]["test_fvu"]  # autocast did run
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())


@pytest.mark.slow
def test_bfloat16_training_of_the_conv_model_reaches_the_float32_mse(mnist):
    data = mnist.subset(3072, 500)
    mse = {}
    for precision in ("float32", "bfloat16"):
        config = sparseae.TrainConfig(epochs=1, seed=4, batch_size=64, lr=3e-3, precision=precision)
        mse[precision] = sparseae.train(sparseae.mnist_conv(seed=4), data, config, progress=False).metrics[-1]["test_mse"]
    # Measured: 0.05385 (float32) vs 0.05392 (bfloat16), 0.13% apart; seeds 3 and 5 0.05% and 0.10%,
    # and at most 1.4% on 4,096 digits. An untrained model is at ~0.11.
    assert mse["float32"] < 0.07
    assert mse["bfloat16"] == pytest.approx(mse["float32"], rel=0.05)
    assert mse["bfloat16"] != mse["float32"]  # autocast did run


def test_progress_bar_reads_the_sparse_code_and_dead_counts_match_the_reference(blobs, monkeypatch):
    shown: dict[str, list[dict]] = {"auto": [], "reference": []}
    real_postfix = train_module.Trainer.postfix

    def recording_postfix(self, loss, code):
        postfix = real_postfix(self, loss, code)
        shown[self.config.kernels].append({**postfix, "layout": code.layout})
        return postfix

    monkeypatch.setattr(train_module.Trainer, "postfix", recording_postfix)
    metrics = {}
    for kernels_ in ("auto", "reference"):
        # 512 latents, k 4, 2 epochs: many latents are dead on the test split and between bar updates.
        config = sparseae.TrainConfig(epochs=2, batch_size=64, kernels=kernels_)
        metrics[kernels_] = sparseae.train(blob_model(n_latents=512, k=4), blobs, config, progress=True).metrics
    assert shown["auto"] and all(p["layout"] == torch.sparse_csr for p in shown["auto"])
    assert [(p["L0"], p["dead"]) for p in shown["auto"]] == [(p["L0"], p["dead"]) for p in shown["reference"]]
    assert any(p["dead"] > 0 for p in shown["auto"])
    assert [m["test_dead_units"] for m in metrics["auto"]] == [m["test_dead_units"] for m in metrics["reference"]]
    assert metrics["auto"][-1]["test_dead_units"] > 0


def test_resume_mid_epoch_with_fused_adam_and_latent_major_decoder_is_bit_identical(blobs, tmp_path, monkeypatch):
    config = sparseae.TrainConfig(epochs=2, batch_size=128, seed=5, checkpoint_every=5, kernels="auto")
    full = sparseae.train(blob_model(), blobs, config, tmp_path / "full", progress=False)

    real_save = train_module.Trainer.save_checkpoint
    saved = []

    def crash_after_second_checkpoint(self, epoch, batch, step):
        real_save(self, epoch, batch, step)
        saved.append(step)
        if len(saved) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module.Trainer, "save_checkpoint", crash_after_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        sparseae.train(blob_model(), blobs, config, tmp_path / "cut", progress=False)
    monkeypatch.undo()
    assert saved == [5, 10] and train_module.read_metrics(tmp_path / "cut") == []  # cut mid-epoch 1 (18 steps)

    jobs = []
    real_load = train_module.Trainer.load_checkpoint

    def keep_job(self, tensors, meta):
        jobs.append(self)
        return real_load(self, tensors, meta)

    monkeypatch.setattr(train_module.Trainer, "load_checkpoint", keep_job)
    resumed = sparseae.resume(tmp_path / "cut", data=blobs, progress=False)
    optimizer = jobs[0].optimizer
    assert optimizer.defaults["fused"]
    w_dec = resumed.model.W_dec
    assert w_dec.T.is_contiguous()
    for name in ("exp_avg", "exp_avg_sq"):  # loaded contiguous (d, n) from the file, re-laid-out like the parameter
        assert optimizer.state[w_dec][name].stride() == w_dec.stride(), name

    assert [r["epoch"] for r in resumed.metrics] == [1, 2]
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    for a, b in zip(full.metrics, resumed.metrics, strict=True):
        assert {k: a[k] for k in COMPARED} == {k: b[k] for k in COMPARED}


# --- runtime, CLI, storage ---


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_on_glibc_is_true_and_idempotent():
    assert runtime.keep_freed_memory() is True
    assert runtime.keep_freed_memory() is True
    assert torch.ones(1 << 20).sum().item() == 1 << 20  # large allocations still work


def test_cli_train_help_lists_precision_and_kernels(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--precision {float32,bfloat16}" in out and "--kernels {auto,exact,reference}" in out


BAD_FLAGS = [("--precision", "float16", "'float32', 'bfloat16'"), ("--kernels", "fast", "'auto', 'exact', 'reference'")]


@pytest.mark.parametrize(("flag", "value", "choices"), BAD_FLAGS)
def test_cli_bad_precision_or_kernels_exits_2_in_one_line(flag, value, choices, capsys):
    assert main(["train", flag, value, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: expected one of {choices}, got '{value}'" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_records_precision_and_kernels_in_the_run(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(300, 24)).astype(np.float32))
    argv = ["train", "--data", str(tmp_path / "x.npy"), "--model", "dense", "--n-latents", "64", "--k", "4", "--aux-k", "8"]
    argv += ["--steps", "2", "--quiet", "--out", str(tmp_path / "r")]
    assert main([*argv, "--precision", "bfloat16", "--kernels", "reference"]) == 0
    train = sparseae.rundir.read_config(tmp_path / "r")["train"]
    assert train["precision"] == "bfloat16" and train["kernels"] == "reference"


def test_decoder_stays_latent_major_through_save_load_and_to(tmp_path):
    model = dense_topk()
    assert model.W_dec.shape == (32, 128) and model.W_dec.T.is_contiguous()
    assert model.to("cpu").W_dec.T.is_contiguous()
    sparseae.save_model(model, tmp_path / "m")
    loaded = sparseae.load(tmp_path / "m")
    assert loaded.W_dec.T.is_contiguous()
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # A state dict with a contiguous (d, n) decoder (as files hold it) loads into the latent-major layout.
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    fresh = dense_topk(seed=1)
    fresh.load_state_dict(state)
    assert fresh.W_dec.T.is_contiguous() and torch.equal(fresh.W_dec, model.W_dec)
    x = torch.randn(9, 32)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x).recon, model.eval()(x).recon)


def test_auxk_on_a_fraction_of_the_rows_is_the_loss_of_those_rows():
    """aux_fraction 0.25: the AuxK loss of a batch equals that of its first quarter with every row used."""
    torch.manual_seed(0)
    x = torch.randn(48, 32) + 0.5
    quarter, whole = dense_topk(aux_fraction=0.25), dense_topk()
    for m in (quarter, whole):
        m.initialise(x)
        with torch.no_grad():
            m.samples_since_fired[:40] = 10_000
    whole.load_state_dict(quarter.state_dict())
    aux_quarter = quarter(x).aux
    out = whole(x[:12])
    torch.testing.assert_close(aux_quarter, out.aux, atol=1e-6, rtol=1e-5)
    assert aux_quarter > 0
    with pytest.raises(SparseAEError, match=r"aux_fraction: expected a number in \(0, 1\], got 0"):
        DenseConfig(aux_fraction=0)


@pytest.mark.parametrize(
    "kernels_, precision", [("auto", "float32"), ("exact", "float32"), ("reference", "float32"), ("auto", "bfloat16")]
)
def test_the_trainer_passes_kernels_and_precision_to_the_model(kernels_, precision, monkeypatch):
    seen = []
    forward = DenseAutoencoder.forward

    def spy(self, x, **kwargs):
        seen.append(kwargs)
        return forward(self, x, **kwargs)

    monkeypatch.setattr(DenseAutoencoder, "forward", spy)
    data = sparseae.Dataset("blobs", torch.randn(64, 32), torch.randn(16, 32))
    sparseae.train(
        dense_topk(), data, sparseae.TrainConfig(steps=2, batch_size=32, kernels=kernels_, precision=precision), progress=False
    )
    dtype = torch.bfloat16 if precision == "bfloat16" else None
    assert seen[:2] == [{"kernels": kernels_, "dtype": dtype}] * 2  # the two steps; evaluation calls it plainly


@pytest.mark.parametrize("kernels_", ["auto", "exact"])
def test_auto_screens_the_choice_where_the_cpu_pays_for_it_and_exact_never(kernels_, monkeypatch):
    screens = []
    encode = kernels.topk_encode
    monkeypatch.setattr(kernels, "topk_encode", lambda *a, **kw: screens.append(kw.get("screen")) or encode(*a, **kw))
    model = dense_topk()
    x = torch.randn(48, 32)
    model.initialise(x)
    auto = model(x, kernels=kernels_)
    exact = model(x, kernels="exact")
    assert screens[0] == (kernels.screen_dtype(x.device) if kernels_ == "auto" else None) and screens[1] is None
    torch.testing.assert_close(auto.code.to_dense(), exact.code.to_dense(), atol=ATOL, rtol=0)

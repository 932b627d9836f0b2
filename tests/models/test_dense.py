import pytest
import torch

import sparseae
from sparseae.models import DenseAutoencoder, DenseConfig
from sparseae.models.dense import geometric_median
from sparseae.sparsity import build_sparsity


def dense(**config) -> DenseAutoencoder:
    torch.manual_seed(0)
    sparsity = config.pop("sparsity", build_sparsity("topk", k=4))
    return DenseAutoencoder(DenseConfig(**{"input_shape": (20,), "n_latents": 16, **config}), sparsity)


def test_tied_initialisation_and_unit_norm_columns():
    model = dense()
    torch.testing.assert_close(model.W_dec.norm(dim=0), torch.ones(16))
    assert torch.equal(model.encoder.weight, model.W_dec.T)
    untied = dense(tied_init=False, unit_norm_decoder=False)
    assert not torch.equal(untied.encoder.weight, untied.W_dec.T)


def test_unit_norm_decoder_survives_a_step_and_the_parallel_gradient_is_removed():
    model = dense()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x = torch.randn(32, 20)
    out = model(x)
    ((out.recon - x).square().mean() + out.aux).backward()
    model.before_step()
    parallel = (model.W_dec.grad * model.W_dec).sum(0)
    torch.testing.assert_close(parallel, torch.zeros(16), atol=1e-6, rtol=0)
    optimizer.step()
    model.after_step()
    torch.testing.assert_close(model.W_dec.norm(dim=0), torch.ones(16))


def test_geometric_median_ignores_an_outlier():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(99, 3), torch.full((1, 3), 1000.0)])
    assert x.mean(0).norm() > 10
    assert geometric_median(x).norm() < 0.5
    # Three points on a line: the median is the middle one.
    line = torch.tensor([[0.0], [1.0], [10.0]])
    assert geometric_median(line).item() == pytest.approx(1.0, abs=1e-3)


def test_prepare_sets_the_pre_encoder_bias():
    x = torch.randn(200, 20) + 5
    model = dense(pre_bias="mean")
    model.prepare(x)
    torch.testing.assert_close(model.b_pre.data, x.mean(0))
    model = dense(pre_bias="zeros")
    model.prepare(x)
    assert torch.equal(model.b_pre.data, torch.zeros(20))


def test_prepare_fits_the_encoder_scale_by_least_squares():
    x = torch.randn(300, 20) * 3 + 1
    model = dense(pre_bias="mean", n_latents=64)
    unscaled = model.encoder.weight.clone()
    model.prepare(x)
    scale = model.encoder.weight / unscaled
    s = scale[0, 0].item()
    torch.testing.assert_close(scale, torch.full_like(scale, s))  # one factor for the whole encoder
    # By hand: the TopK code of the unscaled encoder, decoded without the bias, against x - b_pre.
    pre = (x - x.mean(0)) @ unscaled.T
    values, indices = pre.topk(4, dim=1)
    decoded = torch.zeros_like(pre).scatter_(1, indices, values.relu()) @ model.W_dec.T
    target = x - x.mean(0)
    assert s == pytest.approx(((decoded * target).sum() / decoded.square().sum()).item(), rel=1e-5)
    assert 0.05 < s < 1  # the transposed decoder overshoots: the fit shrinks it

    def init_error(factor: float) -> float:
        with torch.no_grad():
            model.encoder.weight.copy_(unscaled * s * factor)
            return (model(x).recon - x).square().sum().item()

    best = init_error(1.0)
    assert best < init_error(1.1) and best < init_error(0.9) and best < 0.95 * init_error(1 / s)


def test_encoder_scale_is_left_alone_where_the_fit_does_not_apply():
    x = torch.randn(300, 20) * 3
    for model in (
        dense(fit_encoder_scale=False),
        dense(sparsity=build_sparsity("batchtopk", k=4)),  # its code depends on a running threshold
        dense(sparsity=build_sparsity("l1", weight=1e-3)),
    ):
        model.prepare(x)
        assert torch.equal(model.encoder.weight, model.W_dec.T), model.sparsity
    untied = dense(tied_init=False)
    before = untied.encoder.weight.clone()
    untied.prepare(x)
    assert torch.equal(untied.encoder.weight, before)


def test_auxk_trains_dead_latents_only():
    model = dense(aux_k=2, dead_window=64)
    x = torch.randn(32, 20)
    assert model(x).aux.item() == 0  # 32 samples seen: nothing dead yet
    with torch.no_grad():
        model.samples_since_fired.zero_()
        model.samples_since_fired[:5] = 10_000  # latents 0-4 have not fired for a long time
        model.encoder.bias[5:] = 10.0  # latents 5-15 win every TopK slot, so 0-4 stay dead
    out = model(x)
    assert out.aux.item() > 0
    model.zero_grad()
    out.aux.backward()
    rows_with_grad = model.encoder.weight.grad.abs().sum(1) != 0
    assert rows_with_grad[:5].any() and not rows_with_grad[5:].any()


def test_a_latent_silent_for_a_whole_epoch_is_dead_on_small_data():
    model = dense(aux_k=2, dead_window=1_000_000)
    with torch.no_grad():
        model.samples_since_fired[:5] = 200  # five latents silent for 200 samples
    assert not model._dead().any()  # far inside the million-sample window
    model.set_epoch_rows(500)
    assert not model._dead().any()
    model.set_epoch_rows(200)  # an epoch of 200 rows: they missed every row of it
    assert model._dead().tolist() == [True] * 5 + [False] * 11
    assert model(torch.randn(8, 20)).aux.item() > 0


def test_training_tells_the_model_its_epoch_length():
    x = torch.randn(96, 20)
    model = dense(aux_k=2, dead_window=1_000_000)
    sparseae.train(model, sparseae.Dataset("x", x, x[:16]), sparseae.TrainConfig(epochs=1, batch_size=32), progress=False)
    assert model.epoch_rows == 96


def test_no_auxk_loss_without_dead_latents():
    model = dense(aux_k=2, dead_window=10_000)
    assert model(torch.randn(8, 20)).aux.item() == 0


def test_weight_decay_is_half_lambda_sum_of_squared_weights():
    model = dense(weight_decay=0.01, sparsity=build_sparsity("kl"))
    model.eval()
    expected = 0.005 * (model.encoder.weight.square().sum() + model.W_dec.square().sum())
    assert model(torch.randn(4, 20)).aux.item() == pytest.approx(expected.item(), rel=1e-5)


def test_dense_model_on_images_keeps_their_shape(mnist):
    model = sparseae.build_preset("dense", mnist.sample_shape, seed=0, n_latents=64)
    assert model.reconstruct(mnist.test[:3]).shape == (3, 1, 28, 28)
    assert model.sparsity.name == "topk" and model.config.aux_k == 256


def test_a_dead_window_of_none_is_8192_samples_or_40_firings_of_an_average_latent():
    # DEAD_FIRINGS (40) x n_latents / k where longer than 8,192: 40 x 4096 / 16 = 10,240 at k 16.
    assert dense(dead_window=None, n_latents=4096, sparsity=build_sparsity("topk", k=16)).dead_window() == 10_240
    assert dense(dead_window=None, n_latents=4096, sparsity=build_sparsity("batchtopk", k=16)).dead_window() == 10_240
    assert dense(dead_window=None, n_latents=4096, sparsity=build_sparsity("topk", k=32)).dead_window() == 8192  # 5,120
    assert dense(dead_window=None).dead_window() == 8192  # 40 x 16 / 4 = 160
    assert dense(dead_window=None, sparsity=build_sparsity("l1")).dead_window() == 8192  # no k
    assert dense(dead_window=500).dead_window() == 500
    model = dense(dead_window=None, aux_k=2, n_latents=4096, sparsity=build_sparsity("topk", k=16))
    with torch.no_grad():
        model.samples_since_fired[:3] = torch.tensor([10_239, 10_240, 100_000])
    assert model._dead()[:3].tolist() == [False, True, True]
    model.set_epoch_rows(100)  # an epoch shorter than the window: a silent epoch is enough
    assert model._dead()[:3].tolist() == [True, True, True]
    with pytest.raises(sparseae.SparseAEError, match=r"dead_window: expected an integer >= 1, got 0"):
        DenseConfig(dead_window=0)

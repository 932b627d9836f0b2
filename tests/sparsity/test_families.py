"""Each constraint family trained briefly on the real MNIST, doing its job (300 steps each)."""

import pytest

import sparseae
from sparseae.sparsity import build_sparsity

pytestmark = pytest.mark.slow

ADAM = {"optimizer": "adam", "adam_eps": 1e-8}


@pytest.fixture(scope="module")
def data(mnist):
    return mnist.subset(None, 2000)


def fit(data, preset, name, steps=300, train=None, **params):
    model = sparseae.build_preset(preset, data.sample_shape, build_sparsity(name, **params), seed=0,
                                  **({"n_latents": 256} if preset == "dense" else {}))  # fmt: skip
    before = sparseae.evaluate(model, data.test)
    result = sparseae.train(model, data, sparseae.TrainConfig(steps=steps, **(train or ADAM)), progress=False)
    return before, result.metrics[-1]


def test_topk_l0_equals_k(data):
    before, after = fit(data, "dense", "topk", k=16)
    assert after["test_l0"] == pytest.approx(16, abs=0.05)
    assert after["test_mse"] < 0.4 * before["mse"]


def test_batchtopk_mean_l0_is_near_k_at_inference(data):
    before, after = fit(data, "dense", "batchtopk", k=16)
    assert 11 < after["test_l0"] < 21 and before["l0"] > 100
    assert after["test_mse"] < 0.4 * before["mse"]


def test_jumprelu_l0_penalty_prunes(data):
    train = {**ADAM, "lr": 1e-2}  # thresholds learn in log space: a short run needs a larger step
    _, free = fit(data, "dense", "jumprelu", train=train, l0_coef=0.0, init_threshold=0.1, bandwidth=0.05)
    _, pruned = fit(data, "dense", "jumprelu", train=train, l0_coef=1e-3, init_threshold=0.1, bandwidth=0.05)
    assert pruned["test_l0"] < 0.25 * free["test_l0"], (pruned, free)
    assert pruned["test_mse"] < 0.05


def test_wta_keeps_every_unit_alive(data):
    before, after = fit(data, "dense", "wta", rate=0.05)
    assert after["test_dead_units"] == 0 and after["test_mse"] < 0.4 * before["mse"]


def test_kl_pulls_mean_activation_to_rho(data):
    train = {"loss": "half_sse", "lr": 3e-3}
    _, kl = fit(data, "classic", "kl", train=train, rho=0.1, beta=3.0)
    _, free = fit(data, "classic", "kl", train=train, rho=0.1, beta=0.0)
    assert abs(kl["test_mean_activation"] - 0.1) < 0.04 and free["test_mean_activation"] > 0.3, (kl, free)


def test_conv_model_takes_any_constraint(data):
    before, after = fit(data, "mnist-conv", "topk", steps=150, train={}, k=8)
    assert after["test_l0"] <= 8 and after["test_mse"] < 0.7 * before["mse"]

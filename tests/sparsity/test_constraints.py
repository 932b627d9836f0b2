"""Contract tests over every registered constraint and model, and exact tests per constraint."""

import math

import pytest
import torch

import sparseae
from sparseae.models import ConvAutoencoder, ConvConfig, DenseAutoencoder, DenseConfig
from sparseae.sparsity import Sparsity, build_sparsity, get_sparsity, list_sparsities, register

# Small hyperparameters that fit the small models below.
SMALL = {"topk": {"k": 4}, "batchtopk": {"k": 4}}


def small_models(name: str) -> dict[str, sparseae.Autoencoder]:
    def sparsity():
        return build_sparsity(name, **SMALL.get(name, {}))

    return {
        "conv": ConvAutoencoder(ConvConfig(image_size=8, channels=(4,), n_latents=12), sparsity()),
        "dense": DenseAutoencoder(DenseConfig(input_shape=(1, 8, 8), n_latents=12, aux_k=3, dead_window=1), sparsity()),
    }


@pytest.mark.parametrize("kind", ["conv", "dense"])
@pytest.mark.parametrize("name", list_sparsities())
def test_contract_shapes_gradients_and_save_load(name, kind, tmp_path):
    torch.manual_seed(0)
    model = small_models(name)[kind]
    x = torch.rand(16, 1, 8, 8)
    out = model(x)
    assert out.recon.shape == x.shape and out.code.shape == (16, 12)
    assert out.penalty.shape == () and out.aux.shape == ()
    # Gradients reach every parameter.
    (out.recon.square().mean() + out.penalty + out.aux).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    # Save/load round trip: same config, same state, same codes.
    model.eval()
    sparseae.save_model(model, tmp_path)
    loaded = sparseae.load(tmp_path)
    assert loaded.describe() == model.describe()
    assert torch.equal(loaded.encode(x), model.encode(x))
    torch.testing.assert_close(loaded.reconstruct(x), model.reconstruct(x))


@pytest.mark.parametrize("name", list_sparsities())
def test_every_constraint_maps_shapes_and_gives_a_scalar_penalty(name):
    # The bare constraint with its default hyperparameters (the models above use SMALL ones).
    sparsity = build_sparsity(name)
    sparsity.setup(64)
    pre = torch.randn(8, 64)
    code = sparsity(pre)
    assert code.shape == (8, 64) and sparsity.penalty(code, pre).shape == ()
    assert build_sparsity(name, **sparsity.get_params()).get_params() == sparsity.get_params()


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(
        sparseae.SparseAEError,
        match=r"sparsity: expected one of batchtopk, jumprelu, kl, l1, none, topk, wta, "
        r"or module:ClassName for your own, got 'topq'",
    ):
        get_sparsity("topq")


def test_unknown_hyperparameter():
    with pytest.raises(sparseae.SparseAEError, match=r"expected hyperparameters among weight, got k"):
        build_sparsity("l1", k=3)


def test_duplicate_registration_is_rejected():
    with pytest.raises(ValueError, match="already registered"):
        register("l1")(type("Other", (Sparsity,), {}))


BAD = [
    ("topk", {"k": 0}, "topk k: expected an integer >= 1, got 0"),
    ("topk", {"k": 2.5}, "topk k: expected an integer >= 1, got 2.5"),
    ("batchtopk", {"k": -1}, "batchtopk k: expected an integer >= 1, got -1"),
    ("batchtopk", {"threshold_momentum": 1.0}, "threshold_momentum: expected a number strictly between 0 and 1, got 1.0"),
    ("kl", {"rho": 1.5}, r"kl rho: expected a number strictly between 0 and 1, got 1\.5"),
    ("kl", {"rho": 0}, "kl rho: expected a number strictly between 0 and 1, got 0"),
    ("kl", {"beta": -3}, "kl beta: expected a finite number >= 0, got -3"),
    ("l1", {"weight": -1}, "l1 weight: expected a finite number >= 0, got -1"),
    ("l1", {"weight": -1e-4}, r"l1 weight: expected a finite number >= 0, got -0\.0001"),
    ("l1", {"weight": float("nan")}, "l1 weight: expected a finite number >= 0, got nan"),
    ("l1", {"weight": float("inf")}, "l1 weight: expected a finite number >= 0, got inf"),
    ("l1", {"weight": "0.1"}, r"l1 weight: expected a finite number >= 0, got '0\.1'"),
    ("jumprelu", {"l0_coef": -1}, "jumprelu l0_coef: expected a finite number >= 0, got -1"),
    ("jumprelu", {"bandwidth": 0}, "jumprelu bandwidth: expected a finite number > 0, got 0"),
    ("wta", {"rate": 0}, "wta rate: expected a number strictly between 0 and 1, got 0"),
]


@pytest.mark.parametrize(("name", "params", "message"), BAD)
def test_bad_hyperparameters(name, params, message):
    with pytest.raises(sparseae.SparseAEError, match=message):
        build_sparsity(name, **params)


def test_every_constraint_has_a_bad_hyperparameter_case():
    with_params = {n for n in list_sparsities() if get_sparsity(n).hyperparameters()}
    assert with_params <= {name for name, _, _ in BAD}


def test_k_larger_than_the_code():
    with pytest.raises(sparseae.SparseAEError, match=r"topk k: expected k at most the code size \(12\), got k = 13"):
        DenseAutoencoder(DenseConfig(input_shape=(4,), n_latents=12), build_sparsity("topk", k=13))


def test_none_has_no_penalty():
    assert build_sparsity("none").penalty(torch.ones(3, 4), torch.ones(3, 4)).item() == 0


def test_l1_penalty_is_keras_activity_regularizer():
    # Keras: l1(w) adds w * sum(|code|) / batch_size. Here 1e-4 * (1+2+0+3 + 4+0+0+0) / 2 = 5e-4.
    code = torch.tensor([[1.0, 2.0, 0.0, 3.0], [4.0, 0.0, 0.0, 0.0]])
    assert build_sparsity("l1", weight=1e-4).penalty(code, code).item() == pytest.approx(5e-4, rel=1e-6)


def test_l1_code_is_relu_of_preactivations():
    pre = torch.tensor([[-1.0, 0.5], [2.0, -3.0]])
    assert torch.equal(build_sparsity("l1")(pre), torch.tensor([[0.0, 0.5], [2.0, 0.0]]))


def test_kl_penalty_and_gradient_by_hand():
    kl = build_sparsity("kl", rho=0.1, beta=3.0)
    code = torch.tensor([[0.2, 0.5], [0.4, 0.1]], requires_grad=True)  # rho_hat = (0.3, 0.3)
    penalty = kl.penalty(code, code)
    one = 0.1 * math.log(0.1 / 0.3) + 0.9 * math.log(0.9 / 0.7)  # KL(0.1 || 0.3) = 0.116322
    assert penalty.item() == pytest.approx(3 * 2 * one, rel=1e-5)
    penalty.backward()
    # Ng: d/d code_ij = beta * (-rho / rho_hat + (1 - rho) / (1 - rho_hat)) / B
    expected = 3 * (-0.1 / 0.3 + 0.9 / 0.7) / 2
    torch.testing.assert_close(code.grad, torch.full((2, 2), expected))


def test_kl_code_is_sigmoid():
    pre = torch.tensor([[0.0, 2.0]])
    torch.testing.assert_close(build_sparsity("kl")(pre), torch.sigmoid(pre))


def test_topk_keeps_exactly_k_per_row_and_alpha_k_at_encode_time():
    topk = build_sparsity("topk", k=3, alpha=2.0)
    topk.setup(10)
    pre = torch.randn(5, 10).abs() + 0.1  # all positive: the k kept are non-zero
    code = topk(pre)
    assert ((code != 0).sum(1) == 3).all()
    assert torch.equal(code[code != 0], pre[code != 0])  # kept values pass unchanged
    assert (code.max(1).values == pre.max(1).values).all()
    topk.eval()
    assert ((topk(pre) != 0).sum(1) == 6).all()


def test_batchtopk_mean_l0_is_k_and_threshold_is_used_at_inference():
    torch.manual_seed(0)
    btk = build_sparsity("batchtopk", k=3)
    btk.setup(10)
    pre = torch.randn(8, 10).abs() + 0.01
    code = btk(pre)
    counts = (code != 0).sum(1)
    assert counts.sum() == 8 * 3 and counts.float().mean() == 3 and counts.min() != counts.max()
    assert btk.threshold == code[code != 0].min()  # first batch: the smallest kept activation
    btk.eval()
    torch.testing.assert_close(btk(pre), pre * (pre > btk.threshold))


def test_jumprelu_passes_above_threshold_and_thresholds_move():
    jump = build_sparsity("jumprelu", l0_coef=1.0, init_threshold=0.5, bandwidth=0.2)
    jump.setup(2)
    pre = torch.tensor([[0.45, 0.9], [0.55, 0.1]], requires_grad=True)
    code = jump(pre)
    torch.testing.assert_close(code, torch.tensor([[0.0, 0.9], [0.55, 0.0]]))
    # L0 = (1 + 1) / 2 examples = 1 per example.
    penalty = jump.penalty(code, pre)
    assert penalty.item() == pytest.approx(1.0)
    before = jump.log_threshold.detach().clone()
    optimizer = torch.optim.SGD(jump.parameters(), lr=0.1)
    (code.sum() + penalty).backward()
    # Unit 0 has two pre-activations within the kernel (|z - 0.5| < 0.1): d penalty / d theta_0 = -(1/0.2) * 2 / 2.
    assert pre.grad.tolist() == [[0.0, 1.0], [1.0, 0.0]]
    optimizer.step()
    assert jump.log_threshold[0] > before[0]  # the L0 penalty pushes the threshold up
    assert jump.log_threshold[1] == before[1]  # no pre-activation near unit 1's threshold


def test_wta_keeps_the_stated_fraction_per_unit():
    wta = build_sparsity("wta", rate=0.25)
    pre = torch.randn(20, 6).abs() + 0.01
    code = wta(pre)
    assert ((code != 0).sum(0) == 5).all()  # ceil(0.25 * 20) per unit
    assert torch.equal(code.max(0).values, pre.max(0).values)
    wta.eval()
    torch.testing.assert_close(wta(pre), pre)  # plain ReLU at encode time

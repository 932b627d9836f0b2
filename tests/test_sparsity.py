import pytest
import torch

import sparseae
from sparseae.sparsity import Sparsity, build_sparsity, get_sparsity, list_sparsities, register


def test_l1_penalty_is_keras_activity_regularizer():
    # Keras: l1(w) adds w * sum(|code|) / batch_size. Here 1e-4 * (1+2+0+3 + 4+0+0+0) / 2 = 5e-4.
    code = torch.tensor([[1.0, 2.0, 0.0, 3.0], [4.0, 0.0, 0.0, 0.0]])
    assert build_sparsity("l1", weight=1e-4).penalty(code, code).item() == pytest.approx(5e-4, rel=1e-6)


def test_l1_code_is_relu_of_preactivations():
    pre = torch.tensor([[-1.0, 0.5], [2.0, -3.0]])
    assert torch.equal(build_sparsity("l1")(pre), torch.tensor([[0.0, 0.5], [2.0, 0.0]]))


def test_none_has_no_penalty():
    assert build_sparsity("none").penalty(torch.ones(3, 4), torch.ones(3, 4)).item() == 0


@pytest.mark.parametrize("name", list_sparsities())
def test_every_constraint_maps_shapes_and_gives_a_scalar_penalty(name):
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


@pytest.mark.parametrize("weight", [-1e-4, float("nan"), float("inf"), "0.1"])
def test_bad_weight(weight):
    with pytest.raises(sparseae.SparseAEError, match=r"l1 weight: expected a finite number >= 0"):
        build_sparsity("l1", weight=weight)


def test_duplicate_registration_is_rejected():
    with pytest.raises(ValueError, match="already registered"):
        register("l1")(type("Other", (Sparsity,), {}))

import pytest
import torch

from sparseae import metrics


def test_hand_computed_values():
    x = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    recon = torch.tensor([[0.0, 0.5], [1.0, 1.0]])
    assert metrics.mse(x, recon) == pytest.approx(0.25 / 4)
    # mean sample (0.5, 1.0): total squared deviation 0.25 + 0.25 = 0.5; error 0.25
    assert metrics.fvu(x, recon) == pytest.approx(0.5)
    code = torch.tensor([[0.0, 2.0, 0.0], [1.0, 3.0, 0.0]])
    assert metrics.l0(code) == 1.5
    assert metrics.frac_zero(code) == pytest.approx(3 / 6)
    assert metrics.dead_units(code) == 1
    assert metrics.mean_activation(code) == pytest.approx(1.0)
    assert metrics.activation_frequency(code).tolist() == [0.5, 1.0, 0.0]
    assert metrics.dense_units(code) == 2 and metrics.dense_units(code, threshold=0.5) == 1
    # |recon|^2 = 0.25 + 1 + 1 = 2.25; <recon, x> = 0.5 + 1 + 1 = 2.5
    assert metrics.relative_reconstruction_bias(x, recon) == pytest.approx(0.9)
    assert metrics.relative_reconstruction_bias(x, 0.5 * x) == pytest.approx(0.5)


def test_accumulator_equals_the_pure_functions():
    torch.manual_seed(0)
    x, recon = torch.rand(50, 1, 4, 4), torch.rand(50, 1, 4, 4)
    code = torch.relu(torch.randn(50, 6) - 0.5)
    code[:, 2] = 0
    acc = metrics.Accumulator()
    for i in range(0, 50, 16):
        acc.update(x[i : i + 16], recon[i : i + 16], code[i : i + 16])
    result = acc.result()
    assert result["mse"] == pytest.approx(metrics.mse(x, recon))
    assert result["fvu"] == pytest.approx(metrics.fvu(x, recon))
    assert result["l0"] == pytest.approx(metrics.l0(code))
    assert result["frac_zero"] == pytest.approx(metrics.frac_zero(code))
    assert result["mean_activation"] == pytest.approx(metrics.mean_activation(code))
    assert result["dead_units"] == metrics.dead_units(code) == 1
    assert result["dense_units"] == metrics.dense_units(code)
    assert result["relative_reconstruction_bias"] == pytest.approx(metrics.relative_reconstruction_bias(x, recon))


def test_linear_probe_separable_and_chance():
    torch.manual_seed(0)
    labels = torch.arange(300) % 3
    centres = torch.tensor([[5.0, 0.0], [0.0, 5.0], [-5.0, -5.0]])
    codes = centres[labels] + torch.randn(300, 2)
    assert metrics.linear_probe(codes[:200], labels[:200], codes[200:], labels[200:]) == 1.0
    noise = torch.randn(300, 2)
    assert metrics.linear_probe(noise[:200], labels[:200], noise[200:], labels[200:]) < 0.6


@pytest.mark.slow
def test_linear_probe_on_mnist_pixels_is_near_the_known_92_percent(mnist):
    accuracy = metrics.linear_probe(mnist.train[:20000], mnist.train_labels[:20000], mnist.test, mnist.test_labels)
    assert 0.88 < accuracy < 0.95

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

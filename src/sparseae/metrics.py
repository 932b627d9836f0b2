"""Metrics of a sparse autoencoder, as pure functions of tensors.

Shapes: ``x`` and ``recon`` are ``(N, ...)`` (flattened per sample here),
``code`` is ``(N, n_latents)``. A code unit is *active* when it is non-zero.
"""

from __future__ import annotations

import torch
from torch import Tensor

DENSE_FREQUENCY = 0.1
"""A latent active on more than this fraction of inputs is *dense*."""


def mse(x: Tensor, recon: Tensor) -> float:
    """Mean squared error over every element (Keras' ``mse`` on images)."""
    return (x - recon).double().square().mean().item()


def fvu(x: Tensor, recon: Tensor) -> float:
    """Fraction of variance unexplained: ``sum ||x - recon||^2 / sum ||x - mean(x)||^2``.

    ``mean(x)`` is the per-feature mean over these samples, so FVU = 1 - R^2
    (explained variance) pooled over features; 0 is perfect, 1 is no better
    than predicting the mean sample.
    """
    x, recon = x.flatten(1).double(), recon.flatten(1).double()
    return ((x - recon).square().sum() / (x - x.mean(0)).square().sum()).item()


def l0(code: Tensor) -> float:
    """Mean number of active units per sample."""
    return (code != 0).sum(1).double().mean().item()


def frac_zero(code: Tensor) -> float:
    """Fraction of code entries that are exactly zero."""
    return (code == 0).double().mean().item()


def mean_activation(code: Tensor) -> float:
    """Mean code value over samples and units."""
    return code.double().mean().item()


def activation_frequency(code: Tensor) -> Tensor:
    """Per unit, the fraction of samples on which it is active, ``(n_latents,)``."""
    return (code != 0).double().mean(0)


def dead_units(code: Tensor) -> int:
    """Units never active on these samples."""
    return int((code != 0).sum(0).eq(0).sum().item())


def dense_units(code: Tensor, threshold: float = DENSE_FREQUENCY) -> int:
    """Units active on more than ``threshold`` of these samples."""
    return int((activation_frequency(code) > threshold).sum().item())


def relative_reconstruction_bias(x: Tensor, recon: Tensor) -> float:
    """``gamma = sum ||recon||^2 / sum <recon, x>``, the scale that best maps ``recon / gamma`` onto ``x``.

    1 means no systematic shrinkage; below 1 the reconstructions are too small,
    as an L1 penalty makes them (Wright & Sharkey 2024; SAEBench's definition).
    """
    x, recon = x.flatten(1).double(), recon.flatten(1).double()
    return (recon.square().sum() / (recon * x).sum()).item()


def linear_probe(
    train_codes: Tensor, train_labels: Tensor, test_codes: Tensor, test_labels: Tensor, l2: float = 1e-4, steps: int = 100
) -> float:
    """Test accuracy of a multinomial logistic regression fitted on the training codes.

    The codes are standardised with the training split's statistics; the fit
    minimises cross-entropy + ``l2 * ||W||^2`` with L-BFGS (full batch, in float64).
    Hand-written rather than scikit-learn's LogisticRegression: scikit-learn is an optional
    extra, and torch's L-BFGS on the codes already in memory is the same model.
    """
    train, test = train_codes.flatten(1).double(), test_codes.flatten(1).double()
    mean, std = train.mean(0), train.std(0).clamp(min=1e-6)
    train, test = (train - mean) / std, (test - mean) / std
    n_classes = int(max(train_labels.max(), test_labels.max())) + 1
    linear = torch.nn.Linear(train.shape[1], n_classes, dtype=torch.float64)
    torch.nn.init.zeros_(linear.weight)
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(train), train_labels) + l2 * linear.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        return (linear(test).argmax(1) == test_labels).double().mean().item()


class Accumulator:
    """The metrics above over a data set, fed batch by batch, without keeping the codes.

    ``result()`` equals the pure functions applied to the concatenated batches
    (up to float rounding); a test checks it.
    """

    def __init__(self) -> None:
        self.n = 0
        self.elements = 0
        self.sq_err = 0.0
        self.nonzero = 0
        self.code_sum = 0.0
        self.code_entries = 0
        self.recon_sq = 0.0
        self.recon_dot_x = 0.0
        self.x_sum: Tensor | None = None
        self.x_sq_sum: Tensor | None = None
        self.active: Tensor | None = None

    @torch.no_grad()
    def update(self, x: Tensor, recon: Tensor, code: Tensor) -> None:
        x, recon = x.flatten(1).double(), recon.flatten(1).double()
        self.n += len(x)
        self.elements += x.numel()
        self.sq_err += (x - recon).square().sum().item()
        self.recon_sq += recon.square().sum().item()
        self.recon_dot_x += (recon * x).sum().item()
        self.x_sum = x.sum(0) if self.x_sum is None else self.x_sum + x.sum(0)
        self.x_sq_sum = x.square().sum(0) if self.x_sq_sum is None else self.x_sq_sum + x.square().sum(0)
        active = (code != 0).sum(0)
        self.active = active if self.active is None else self.active + active
        self.nonzero += int(active.sum().item())
        self.code_sum += code.double().sum().item()
        self.code_entries += code.numel()

    def result(self) -> dict[str, float]:
        assert self.n > 0 and self.x_sum is not None and self.x_sq_sum is not None and self.active is not None
        total_var = (self.x_sq_sum - self.x_sum.square() / self.n).sum().item()
        return {
            "mse": self.sq_err / self.elements,
            "fvu": self.sq_err / total_var if total_var > 0 else float("nan"),
            "l0": self.nonzero / self.n,
            "mean_activation": self.code_sum / self.code_entries,
            "frac_zero": 1.0 - self.nonzero / self.code_entries,
            "dead_units": int(self.active.eq(0).sum().item()),
            "dense_units": int((self.active > DENSE_FREQUENCY * self.n).sum().item()),
            "relative_reconstruction_bias": self.recon_sq / self.recon_dot_x if self.recon_dot_x else float("nan"),
        }

"""Scoring a model: test metrics, the linear probe, and the reconstructions picture."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from sparseae.data import Dataset
from sparseae.errors import check
from sparseae.metrics import Accumulator, linear_probe
from sparseae.models import Autoencoder
from sparseae.pictures.images import save_image_grid


@torch.no_grad()
def evaluate(
    model: Autoencoder, x: Tensor, batch_size: int = 1000, device: torch.device | str | None = None, progress: bool = False
) -> dict[str, float]:
    """Test metrics of ``model`` on samples ``x``: mse, fvu, l0, mean_activation, frac_zero, dead_units.

    See [`sparseae.metrics`][sparseae.metrics] for the definitions.
    """
    model.check_input(tuple(x.shape[1:]), "evaluation data")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    acc = Accumulator()
    for i in tqdm(range(0, len(x), batch_size), desc="evaluating", disable=not progress, leave=False):
        batch = x[i : i + batch_size].to(device)
        out = model(batch)
        acc.update(out.target, out.recon, out.code)
    model.train(was_training)
    return acc.result()


def probe(model: Autoencoder, data: Dataset, batch_size: int = 1000) -> float:
    """Linear-probe accuracy: logistic regression on the training codes, scored on the test codes.

    See `sparseae.metrics.linear_probe`; needs labelled data.
    """
    check(
        data.train_labels is not None and data.test_labels is not None,
        f"{data.name} data",
        expected="labels for a linear probe",
        got="no labels",
        fix="Probe only labelled data sets such as MNIST.",
    )
    train, test = model.encode_all(data.train, batch_size), model.encode_all(data.test, batch_size)
    return linear_probe(train, data.train_labels, test, data.test_labels)


def save_reconstructions(model: Autoencoder, x: Tensor, path: Path, n: int = 10) -> Path | None:
    """Write the first ``n`` samples above their reconstructions, for image data."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        return None
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        recon = model.reconstruct(x[:n].to(device))
    model.train(was_training)
    return save_image_grid(path, [x[:n], recon])

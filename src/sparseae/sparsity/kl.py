"""KL-divergence sparsity on a sigmoid code (Ng, CS294A "Sparse autoencoder" notes)."""

from __future__ import annotations

import torch
from torch import Tensor

from sparseae import distributed
from sparseae.sparsity.base import Sparsity, check_open_unit, check_weight, register


@register("kl")
class KL(Sparsity):
    """Sigmoid code; penalty ``beta * sum_j KL(rho || rho_hat_j)``.

    ``rho_hat_j`` is the mean activation of unit j over the batch (the global batch
    under torchrun, with the gradient one process would get), and
    ``KL(rho || r) = rho log(rho / r) + (1 - rho) log((1 - rho) / (1 - r))``,
    the divergence between Bernoulli variables of means rho and r. It is zero
    when every unit fires with mean rho, and grows fast as a unit's mean leaves it.

    Args:
        rho: Target mean activation of each unit, in (0, 1); Ng uses 0.01 (image patches) and 0.1 (MNIST).
        beta: Weight of the penalty; Ng uses 3.
    """

    def __init__(self, rho: float = 0.05, beta: float = 3.0):
        super().__init__()
        self.rho = check_open_unit(rho, "kl rho")
        self.beta = check_weight(beta, "kl beta")

    def forward(self, pre: Tensor) -> Tensor:
        return torch.sigmoid(pre)

    def penalty(self, code: Tensor, pre: Tensor) -> Tensor:
        total, rows = code.sum(0), len(code)  # (n_latents,)
        if self.training and distributed.active():  # the global batch's mean; evaluation stays per rank
            total, rows = distributed.all_sum_grad(total), distributed.batch_total(rows, code.device)
        rho_hat = (total / rows).clamp(1e-7, 1 - 1e-7)  # (n_latents,)
        rho = self.rho
        kl = rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))
        return self.beta * kl.sum()

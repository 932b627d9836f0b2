"""Your own sparsity constraints: this one file is all it takes.

    sparseae train --model dense --sparsity examples.my_constraints:MyKL --rho 0.05 --beta 3
    sparseae train --sparsity examples.my_constraints:half_norm --weight 1e-3

(run from the repository root, or put this file's folder on PYTHONPATH).
"""

import torch

import sparseae


class MyKL(sparseae.Sparsity):
    """Ng's KL sparsity, written by hand: a sigmoid code whose units should fire with mean rho.

    Args:
        rho: Target mean activation of each unit.
        beta: Weight of the penalty.
    """

    def __init__(self, rho: float = 0.05, beta: float = 3.0):
        super().__init__()
        self.rho, self.beta = rho, beta

    def forward(self, pre):  # (B, n_latents) -> (B, n_latents)
        return torch.sigmoid(pre)

    def penalty(self, code, pre):  # -> scalar
        q = code.mean(0).clamp(1e-7, 1 - 1e-7)  # mean activation of each unit over the batch
        p = self.rho
        return self.beta * (p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))).sum()


@sparseae.penalty
def half_norm(code, weight: float = 1e-3):
    """A pure penalty on a ReLU code: weight * sum(sqrt(code)) per example (an L1/2 quasi-norm)."""
    return weight * code.clamp(min=1e-12).sqrt().sum() / len(code)

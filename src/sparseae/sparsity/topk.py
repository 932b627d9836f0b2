"""TopK: keep the k largest activations of each example (Makhzani & Frey 2013; Gao et al. 2024)."""

from __future__ import annotations

import torch
from torch import Tensor

from sparseae.sparsity.base import Sparsity, check_k, check_positive_int, check_weight, register


@register("topk")
class TopK(Sparsity):
    """Per example, the k largest pre-activations pass through a ReLU; all others are zero.

    The code has at most k non-zeros per row (fewer where some of the k are
    negative). No penalty: sparsity is exact by construction.

    Args:
        k: Active units per example during training.
        alpha: At encode time (eval mode) keep ``round(alpha * k)`` units, as in the
            k-sparse autoencoder (alpha >= 1 gives denser features for classifiers).
    """

    scale_equivariant = True

    def __init__(self, k: int = 32, alpha: float = 1.0):
        super().__init__()
        self.k = check_positive_int(k, "topk k")
        self.alpha = check_weight(alpha, "topk alpha")

    def setup(self, n_latents: int) -> None:
        check_k(self.k, n_latents, "topk k")
        self.n_latents = n_latents

    def active(self) -> int:
        """Units kept per example in the current mode."""
        k = self.k if self.training else max(1, round(self.alpha * self.k))
        return min(k, self.n_latents)

    def units_per_row(self) -> float | None:
        return float(self.k)

    def sparse_k(self) -> int | None:
        # The kernels compute TopK.forward: a subclass that changes forward has a code of its own.
        return self.active() if type(self).forward is TopK.forward else None

    def forward(self, pre: Tensor) -> Tensor:
        values, indices = pre.topk(self.active(), dim=-1, sorted=False)  # (B, k)
        return torch.zeros_like(pre).scatter_(-1, indices, torch.relu(values))

"""No constraint: a plain ReLU autoencoder, for comparison."""

from __future__ import annotations

import torch
from torch import Tensor

from sparseae.sparsity.base import Sparsity, register


@register("none")
class NoSparsity(Sparsity):
    """ReLU code, no penalty: the baseline every constraint is compared with."""

    def forward(self, pre: Tensor) -> Tensor:
        return torch.relu(pre)

"""Lifetime sparsity: winner-take-all across the batch (Makhzani & Frey 2015, FC-WTA)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sparseae.sparsity.base import Sparsity, check_open_unit, register


@register("wta")
class WTA(Sparsity):
    """During training each unit keeps only its largest ``rate`` fraction of activations in the batch.

    Every unit fires on ``ceil(rate * B)`` examples of each batch (if positive):
    no unit can die, and none can fire on everything. At encode time (eval mode)
    the code is the plain ReLU, as in the paper's FC-WTA.

    Args:
        rate: Fraction of the batch each unit keeps, in (0, 1); the paper uses 0.05.
    """

    def __init__(self, rate: float = 0.05):
        super().__init__()
        self.rate = check_open_unit(rate, "wta rate")

    def forward(self, pre: Tensor) -> Tensor:
        relu = torch.relu(pre)
        if not self.training:
            return relu
        keep = math.ceil(self.rate * len(pre))
        values, indices = relu.topk(keep, dim=0, sorted=False)  # (keep, n_latents)
        return torch.zeros_like(relu).scatter_(0, indices, values)

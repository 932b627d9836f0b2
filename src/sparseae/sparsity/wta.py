"""Lifetime sparsity: winner-take-all across the batch (Makhzani & Frey 2015, FC-WTA)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sparseae import distributed
from sparseae.sparsity.base import Sparsity, check_open_unit, register


@register("wta")
class WTA(Sparsity):
    """During training each unit keeps only its largest ``rate`` fraction of activations in the batch.

    Every unit fires on ``ceil(rate * B)`` examples of each batch (if positive; the
    global batch under torchrun):
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
        if distributed.active():
            return self._forward_distributed(relu)
        keep = math.ceil(self.rate * len(pre))
        values, indices = relu.topk(keep, dim=0, sorted=False)  # (keep, n_latents)
        return torch.zeros_like(relu).scatter_(0, indices, values)

    def _forward_distributed(self, relu: Tensor) -> Tensor:
        """Each unit's selection over the global batch: every rank's candidates are gathered to find its cut."""
        keep = math.ceil(self.rate * distributed.batch_total(len(relu), relu.device))
        local = relu.topk(min(keep, len(relu)), dim=0, sorted=False).values  # (<= keep, n_latents)
        candidates = distributed.all_gather(local)  # (>= keep, n_latents): the ranks' rows add up to the batch
        cut = candidates.topk(keep, dim=0, sorted=False).values.amin(0)  # (n_latents,)
        return relu * (relu >= cut)  # ties at the cut aside, each unit's keep largest of the global batch

"""BatchTopK: keep the batch's n*k largest activations (Bussmann et al. 2024)."""

from __future__ import annotations

import torch
from torch import Tensor

from sparseae.sparsity.base import Sparsity, check_k, check_open_unit, check_positive_int, register


@register("batchtopk")
class BatchTopK(Sparsity):
    """Over a batch of n examples, the n*k largest (positive) activations survive.

    The mean L0 over the batch is k, but an example may use more or fewer units.
    At inference a single global threshold replaces the batch: the running
    average of the smallest activation kept in each training batch, so encoding
    one example does not depend on the others.

    Args:
        k: Mean active units per example.
        threshold_momentum: Weight of the past in the running threshold, in (0, 1).
    """

    threshold: Tensor

    def __init__(self, k: int = 32, threshold_momentum: float = 0.99):
        super().__init__()
        self.k = check_positive_int(k, "batchtopk k")
        self.threshold_momentum = check_open_unit(threshold_momentum, "batchtopk threshold_momentum")
        self.register_buffer("threshold", torch.tensor(-1.0))  # < 0: not estimated yet

    def setup(self, n_latents: int) -> None:
        check_k(self.k, n_latents, "batchtopk k")

    def forward(self, pre: Tensor) -> Tensor:
        relu = torch.relu(pre)
        if not self.training:
            return relu * (relu > self.threshold.clamp(min=0))
        flat = relu.flatten()
        values, indices = flat.topk(min(self.k * len(pre), flat.numel()), sorted=False)
        code = torch.zeros_like(flat).scatter_(0, indices, values).view_as(pre)
        with torch.no_grad():
            kept = values[values > 0]
            if kept.numel():
                low = kept.min()
                m = self.threshold_momentum
                self.threshold.copy_(low if self.threshold < 0 else m * self.threshold + (1 - m) * low)
        return code

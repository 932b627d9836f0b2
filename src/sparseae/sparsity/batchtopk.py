"""BatchTopK: keep the batch's n*k largest activations (Bussmann et al. 2024)."""

from __future__ import annotations

import torch
from torch import Tensor

from sparseae import distributed
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

    def units_per_row(self) -> float | None:
        return float(self.k)

    def forward(self, pre: Tensor) -> Tensor:
        relu = torch.relu(pre)
        if not self.training:
            return relu * (relu > self.threshold.clamp(min=0))
        if distributed.active():
            return self._forward_distributed(relu)
        flat = relu.flatten()
        values, indices = flat.topk(min(self.k * len(pre), flat.numel()), sorted=False)
        code = torch.zeros_like(flat).scatter_(0, indices, values).view_as(pre)
        with torch.no_grad():
            kept = values[values > 0]
            if kept.numel():
                self._update_threshold(kept.min())
        return code

    def _update_threshold(self, low: Tensor) -> None:
        m = self.threshold_momentum
        self.threshold.copy_(low if self.threshold < 0 else m * self.threshold + (1 - m) * low)

    def _forward_distributed(self, relu: Tensor) -> Tensor:
        """The selection over the global batch: each rank's candidates are gathered to find the cut."""
        n = distributed.batch_total(len(relu), relu.device)
        flat = relu.flatten()
        keep = self.k * n
        candidates = distributed.all_gather(flat.topk(min(keep, flat.numel()), sorted=False).values)
        cut = candidates.topk(min(keep, candidates.numel()), sorted=False).values.min()
        code = relu * (relu >= cut)  # ties at the cut aside, the global batch's keep largest
        with torch.no_grad():
            kept = code[code > 0]
            local_low = kept.min() if kept.numel() else relu.new_tensor(torch.inf)
            low = -distributed.all_max(-local_low)
            if torch.isfinite(low):
                self._update_threshold(low)
        return code

"""L1 activity penalty on a ReLU code, with Keras semantics."""

from __future__ import annotations

import torch
from torch import Tensor

from sparseae.sparsity.base import Sparsity, check_weight, register


@register("l1")
class L1(Sparsity):
    """ReLU code with an L1 activity penalty, exactly as Keras applies one.

    Keras' ``activity_regularizer=regularizers.l1(w)`` adds ``w * sum(|code|)``
    over the whole batch, divided by the batch size, to the loss (Keras 3,
    ``keras/src/layers/layer.py``; tf.keras did the same in ``base_layer.py``).
    So the penalty is ``weight * sum_ij |code_ij| / B``: a per-example sum over
    units, averaged over examples. It does not shrink with the code size.

    Args:
        weight: Penalty weight ``w``; the Keras blog model uses ``l1(10e-5)`` = 1e-4.
    """

    def __init__(self, weight: float = 1e-4):
        super().__init__()
        self.weight = check_weight(weight, "l1 weight")

    def forward(self, pre: Tensor) -> Tensor:
        return torch.relu(pre)

    def penalty(self, code: Tensor, pre: Tensor) -> Tensor:
        return self.weight * code.abs().sum() / code.shape[0]

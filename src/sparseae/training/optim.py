"""The optimizers: Adam as Keras computes it, and a fast step for parameters stored transposed."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from sparseae.models import Autoencoder
from sparseae.training.config import TrainConfig


class KerasAdam(torch.optim.Adam):
    """Adam with Keras' placement of epsilon.

    Keras updates ``w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)``;
    torch divides by ``sqrt(v) / sqrt(1 - b2^t) + eps`` instead. The two agree when
    torch's epsilon is ``eps / sqrt(1 - b2^t)``, which this sets before each step:
    30x larger than ``eps`` at step 1, equal to it after a few thousand steps.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-7,
        fused: bool | None = None,
    ):
        super().__init__(params, lr=lr, betas=betas, eps=eps, fused=fused)
        for group in self.param_groups:
            group["keras_eps"] = eps

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        for group in self.param_groups:
            state = self.state.get(group["params"][0], {})
            t = int(state["step"]) + 1 if "step" in state else 1
            group["eps"] = group["keras_eps"] / math.sqrt(1 - group["betas"][1] ** t)
        return super().step(closure)


class TransposedStep:
    """Steps parameters stored transposed (the dense model's latent-major decoder) through their contiguous transpose.

    Fused Adam is several times slower on a transposed tensor than on a contiguous one
    (docs/performance.md); the update is elementwise, so stepping ``p.T`` (with its gradient and moments
    transposed alike) is the same update. Outside `step` every tensor has
    its parameter's own shape, so checkpoints are unchanged.
    """

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.params = [p for g in optimizer.param_groups for p in g["params"] if p.dim() == 2 and p.mT.is_contiguous()
                       and not p.is_contiguous()]  # fmt: skip
        self.state = optimizer.state

    def __enter__(self) -> None:
        self._flip()

    def __exit__(self, *exc: object) -> None:
        self._flip()

    def _flip(self) -> None:
        for p in self.params:
            grad, p.grad = p.grad, None
            p.data = p.data.mT
            p.grad = None if grad is None else grad.mT
            state = self.state.get(p, {})
            for name, value in state.items():
                if isinstance(value, Tensor) and value.dim() == 2:
                    state[name] = value.mT


def make_optimizer(model: Autoencoder, config: TrainConfig) -> torch.optim.Adam:
    # Fused Adam updates each parameter in one pass (docs/performance.md: against foreach on large dictionaries).
    devices = {p.device.type for p in model.parameters()}
    fused = config.kernels != "reference" and devices <= {"cpu", "cuda"} or None
    betas = (config.adam_beta1, config.adam_beta2)
    params: Any = model.parameters()
    bias = model.encoder_bias()
    if config.encoder_bias_lr_scale != 1 and bias is not None:  # its own group; one group otherwise, as before
        scale = config.encoder_bias_lr_scale
        params = [{"params": [p for p in model.parameters() if p is not bias]},
                  {"params": [bias], "lr": config.lr * scale, "lr_scale": scale}]  # fmt: skip
    if config.optimizer == "keras-adam":
        return KerasAdam(params, lr=config.lr, betas=betas, eps=config.adam_eps, fused=fused)
    return torch.optim.Adam(params, lr=config.lr, betas=betas, eps=config.adam_eps, fused=fused)

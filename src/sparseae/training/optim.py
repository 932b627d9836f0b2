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
    params = param_groups(model, config)
    if config.optimizer == "keras-adam":
        return KerasAdam(params, lr=config.lr, betas=betas, eps=config.adam_eps, fused=fused)
    return torch.optim.Adam(params, lr=config.lr, betas=betas, eps=config.adam_eps, fused=fused)


def param_groups(model: Autoencoder, config: TrainConfig) -> Any:
    """The optimizer's parameters: one group, or with `TrainConfig.encoder_lr_scale`,
    `TrainConfig.encoder_bias_lr_scale` and `TrainConfig.decoder_lr_scale` the encoder's weights, its
    bias and the decoder's weights in groups of their own, each with its multiple of lr as ``lr_scale``
    (which the trainer applies to the schedule's rate)."""
    bias = model.encoder_bias()
    scaled = [
        (config.encoder_lr_scale, model.encoder_weights()),
        (config.encoder_bias_lr_scale, [] if bias is None else [bias]),
        (config.decoder_lr_scale, model.decoder_weights()),
    ]
    scaled = [(scale, params) for scale, params in scaled if scale != 1 and params]
    if not scaled:
        return model.parameters()  # one group: checkpoints as before these options
    apart = {id(p) for _, params in scaled for p in params}
    rest = [p for p in model.parameters() if id(p) not in apart]
    return [{"params": rest}] + [{"params": params, "lr": config.lr * scale, "lr_scale": scale} for scale, params in scaled]

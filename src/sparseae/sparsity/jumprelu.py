"""JumpReLU: a learned threshold per unit, an L0 penalty, straight-through gradients (Rajamanoharan et al. 2024)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from sparseae.sparsity.base import Sparsity, check_positive, check_weight, register


def _rectangle(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """``z * H(z - t)``; d/dz = H(z - t); d/dt = -(t / eps) K((z - t) / eps), K the rectangle kernel."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, t: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(z, t)
        ctx.eps = eps
        return z * (z > t)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        z, t = ctx.saved_tensors
        grad_z = grad * (z > t)
        grad_t = -(t / ctx.eps) * _rectangle((z - t) / ctx.eps) * grad
        return grad_z, grad_t.sum(0), None


class _Step(torch.autograd.Function):
    """``H(z - t)``; d/dz = 0; d/dt = -(1 / eps) K((z - t) / eps)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, t: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(z, t)
        ctx.eps = eps
        return (z > t).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, None]:
        z, t = ctx.saved_tensors
        grad_t = -(1.0 / ctx.eps) * _rectangle((z - t) / ctx.eps) * grad
        return None, grad_t.sum(0), None


@register("jumprelu")
class JumpReLU(Sparsity):
    """``code_j = pre_j`` where ``pre_j > theta_j``, else 0, with a learned threshold ``theta_j > 0``.

    The penalty is ``l0_coef * mean over examples of #{j : pre_j > theta_j}``. The step
    has no gradient, so the thresholds learn through straight-through estimators
    that use a rectangle kernel of width ``bandwidth`` around each threshold.

    The thresholds are learned as ``log theta``, so an optimizer step moves them by a
    fixed factor: with Adam at lr 1e-3 a few hundred steps barely move them (the
    paper trains for billions of tokens); short runs want lr ~1e-2.

    Args:
        l0_coef: Weight of the L0 penalty.
        init_threshold: Starting threshold of every unit.
        bandwidth: Width of the kernel in the straight-through estimator.
    """

    def __init__(self, l0_coef: float = 1e-3, init_threshold: float = 1e-3, bandwidth: float = 1e-3):
        super().__init__()
        self.l0_coef = check_weight(l0_coef, "jumprelu l0_coef")
        self.init_threshold = check_positive(init_threshold, "jumprelu init_threshold")
        self.bandwidth = check_positive(bandwidth, "jumprelu bandwidth")

    def setup(self, n_latents: int) -> None:
        self.log_threshold = nn.Parameter(torch.full((n_latents,), math.log(self.init_threshold)))

    @property
    def threshold(self) -> Tensor:
        return self.log_threshold.exp()  # (n_latents,)

    def forward(self, pre: Tensor) -> Tensor:
        return _JumpReLU.apply(pre, self.threshold, self.bandwidth)

    def penalty(self, code: Tensor, pre: Tensor) -> Tensor:
        return self.l0_coef * _Step.apply(pre, self.threshold, self.bandwidth).sum() / len(pre)

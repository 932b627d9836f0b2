"""Input preprocessing fitted on the training data and kept inside the model.

A model's `Preprocessing` is fitted once, before training, on a sample of the
training inputs; its fitted values are buffers of the model, saved and loaded with its
weights. So ``model.encode(raw)`` after ``sparseae.load`` gives the codes the model was
trained to give, and ``model.reconstruct(raw)`` comes back in the raw inputs' units.

Steps, applied in the order given (each fitted on the output of the ones before):

- ``center``: remove each sample's own mean over its features (per-patch mean removal).
- ``standardize``: per feature, subtract the training mean and divide by the training
  standard deviation (features that never vary are left unscaled).
- ``norm``: scale every input by one constant so that the training inputs' mean squared
  norm equals their dimension d (the average norm is then about sqrt(d)), as in current
  SAE practice, so that hyperparameters such as the learning rate carry across models.
- ``zca``: ZCA whitening, ``W = U diag(1 / sqrt(lambda + eps)) U^T`` after subtracting the
  training mean, with ``eps = zca_eps * mean(lambda)`` (a relative regulariser, so one
  value suits data of any scale; Ng's notes use a small absolute epsilon instead).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sparseae.errors import SparseAEError, check

STEPS = ("center", "standardize", "norm", "zca")
ZCA_EPS = 1e-2


def parse_steps(steps: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """Preprocessing steps from ``"center,zca"`` or a sequence, checked."""
    if steps is None:
        return ()
    items = [s.strip() for s in steps.split(",")] if isinstance(steps, str) else list(steps)
    items = [s for s in items if s and s != "none"]
    for step in items:
        check(
            step in STEPS,
            "preprocess",
            expected=f"steps among {', '.join(STEPS)} (comma-separated), or none",
            got=repr(step),
            fix="For example --preprocess norm, or --preprocess center,zca.",
        )
    check(len(set(items)) == len(items), "preprocess", expected="each step once", got=",".join(items), fix="Drop the repeat.")
    return tuple(items)


class Preprocessing(nn.Module):
    """Fitted steps that map raw inputs ``(B, *shape)`` to what the autoencoder sees, and back.

    Args:
        steps: Step names, applied in order (see the module docstring).
        shape: Shape of one input sample; steps work on its flattened features.
    """

    def __init__(self, steps: tuple[str, ...] | str | None, shape: tuple[int, ...]):
        super().__init__()
        self.steps, self.shape = parse_steps(steps), tuple(shape)
        d = math.prod(self.shape)
        self.d = d
        if "standardize" in self.steps:
            self.register_buffer("mean", torch.zeros(d))
            self.register_buffer("std", torch.ones(d))
        if "norm" in self.steps:
            self.register_buffer("scale", torch.ones(()))
        if "zca" in self.steps:
            self.register_buffer("zca_mean", torch.zeros(d))
            self.register_buffer("whiten", torch.eye(d))  # (d, d), symmetric
            self.register_buffer("colour", torch.eye(d))  # its inverse

    def extra_repr(self) -> str:
        return ",".join(self.steps) or "none"

    @torch.no_grad()
    def fit(self, x: Tensor) -> Preprocessing:
        """Fit every step on ``x`` (raw training inputs ``(N, *shape)``); returns self."""
        if not self.steps:
            return self
        check(
            len(x) >= 2,
            "preprocessing sample",
            expected="at least 2 training inputs to fit on",
            got=len(x),
            fix="Train on more data.",
        )
        z = x.reshape(x.shape[0], -1).double()
        for step in self.steps:
            if step == "standardize":
                mean, std = z.mean(0), z.std(0)
                std = torch.where(std > 1e-8 * std.max().clamp_min(1e-30), std, torch.ones_like(std))
                self.mean.copy_(mean), self.std.copy_(std)
            elif step == "norm":
                ms = z.square().sum(1).mean()
                if ms <= 0:
                    raise SparseAEError(
                        "preprocess norm", expected="inputs that are not all zero", got="only zeros", fix="Check the data."
                    )
                self.scale.copy_(torch.sqrt(self.d / ms))
            elif step == "zca":
                mean = z.mean(0)
                cov = (z - mean).T @ (z - mean) / (len(z) - 1)
                eigvals, eigvecs = torch.linalg.eigh(cov)
                eigvals = eigvals.clamp_min(0)
                eps = ZCA_EPS * eigvals.mean().clamp_min(1e-12)
                self.zca_mean.copy_(mean)
                self.whiten.copy_(eigvecs @ torch.diag((eigvals + eps).rsqrt()) @ eigvecs.T)
                self.colour.copy_(eigvecs @ torch.diag((eigvals + eps).sqrt()) @ eigvecs.T)
            z = self._step(step, z)
        return self

    def _step(self, step: str, z: Tensor) -> Tensor:  # (B, d) -> (B, d)
        if step == "center":
            return z - z.mean(1, keepdim=True)
        if step == "standardize":
            return (z - self.mean.to(z.dtype)) / self.std.to(z.dtype)
        if step == "norm":
            return z * self.scale.to(z.dtype)
        return (z - self.zca_mean.to(z.dtype)) @ self.whiten.to(z.dtype)

    def forward(self, x: Tensor) -> Tensor:
        """Raw inputs ``(B, *shape)`` -> preprocessed inputs, same shape."""
        if not self.steps:
            return x
        z = x.reshape(x.shape[0], -1)
        for step in self.steps:
            z = self._step(step, z)
        return z.reshape(x.shape)

    def inverse(self, y: Tensor, x: Tensor) -> Tensor:
        """Preprocessed values ``y`` back in the raw units of inputs ``x`` (both ``(B, *shape)``).

        ``center`` cannot be undone from ``y`` alone: each sample's own mean is taken from ``x``.
        """
        if not self.steps:
            return y
        z = y.reshape(y.shape[0], -1)
        means = {}
        if "center" in self.steps:
            # The per-sample mean removed by 'center', seen at its place in the chain.
            w = x.reshape(x.shape[0], -1)
            for step in self.steps:
                if step == "center":
                    means[step] = w.mean(1, keepdim=True)
                w = self._step(step, w)
        for step in reversed(self.steps):
            if step == "center":
                z = z + means[step]
            elif step == "standardize":
                z = z * self.std.to(z.dtype) + self.mean.to(z.dtype)
            elif step == "norm":
                z = z / self.scale.to(z.dtype)
            else:
                z = z @ self.colour.to(z.dtype) + self.zca_mean.to(z.dtype)
        return z.reshape(y.shape)

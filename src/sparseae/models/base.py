"""The model extension point: encoder -> sparsity -> decoder, and the model registry."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from sparseae._config import to_dict
from sparseae.errors import SparseAEError
from sparseae.preprocess import Preprocessing
from sparseae.sparsity import Sparsity


class ModelOutput(NamedTuple):
    """What a forward pass returns."""

    recon: Tensor
    """Reconstruction of ``target``, the input's shape."""
    code: Tensor
    """Sparse code, ``(B, n_latents)``."""
    penalty: Tensor
    """Scalar sparsity penalty for this batch, added to the loss."""
    aux: Tensor
    """Scalar auxiliary loss of the model (AuxK, weight decay), added to the loss."""
    target: Tensor
    """What ``recon`` reconstructs: the input after the model's preprocessing (the input itself without any)."""


class Autoencoder(nn.Module):
    """An encoder to pre-activations, a sparsity constraint, a decoder.

    Subclasses set ``config_class``, build their layers from ``config`` and
    implement `pre_activations` and `decode`. The trainer also
    calls `prepare` once before training, and `before_step` /
    `after_step` around every optimizer step.

    ``preprocess`` names input transforms fitted on the training data before training
    (see `sparseae.preprocess`); they are part of the model: saved with it and
    applied by `encode`, undone by `reconstruct`.
    """

    kind: str = ""
    """Registry name, set by `register_model`; saved in ``cfg.json``."""
    config_class: type
    input_fields: tuple[str, ...] = ()
    """Config fields that the data decides (e.g. the image size); not user settings."""

    def __init__(self, config: Any, sparsity: Sparsity, preprocess: str | tuple[str, ...] | None = None):
        super().__init__()
        self.config = config
        self.sparsity = sparsity
        sparsity.setup(config.n_latents)
        self.preprocess = Preprocessing(preprocess, self.input_shape)

    @property
    def n_latents(self) -> int:
        return self.config.n_latents

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample."""
        raise NotImplementedError

    def check_input(self, sample_shape: tuple[int, ...], what: str) -> None:
        """Raise a clear error unless samples of ``sample_shape`` fit this model."""
        if tuple(sample_shape) != self.input_shape:
            width, want = math.prod(sample_shape), math.prod(self.input_shape)
            raise SparseAEError(
                what,
                expected=f"samples of the model's input shape {self.input_shape} ({want} values each)",
                got=f"shape {tuple(sample_shape)} ({width} values each)",
                fix="Use data of the kind the model was trained on, or train a model for this data.",
            )

    def pre_activations(self, x: Tensor) -> Tensor:
        """Encoder output before the constraint, ``(B, n_latents)``."""
        raise NotImplementedError

    def decode(self, code: Tensor) -> Tensor:
        """Reconstruction from a code ``(B, n_latents)``."""
        raise NotImplementedError

    def encode(self, x: Tensor) -> Tensor:
        """The sparse code of raw inputs ``x``, ``(B, n_latents)``."""
        return self.sparsity(self.pre_activations(self.preprocess(x)))

    def forward(self, x: Tensor, *, kernels: str = "auto", dtype: torch.dtype | None = None) -> ModelOutput:
        """Preprocess, encode, constrain, decode: everything the loss needs, for raw inputs ``x``.

        Args:
            x: Raw inputs, ``(B, *input_shape)``.
            kernels: 'auto': faster kernels where the model has them (the dense model's sparse
                TopK path); 'reference': plain PyTorch operations. The trainer passes
                `TrainConfig.kernels`.
            dtype: The precision of the fast kernels' matmuls (bfloat16 under
                `TrainConfig.precision="bfloat16"`); plain operations follow autocast.
        """
        x = self.preprocess(x)
        pre = self.pre_activations(x)
        code = self.sparsity(pre)
        recon = self.decode(code)
        return ModelOutput(recon, code, self.sparsity.penalty(code, pre), self.auxiliary_loss(x, pre, code, recon), x)

    def auxiliary_loss(self, x: Tensor, pre: Tensor, code: Tensor, recon: Tensor) -> Tensor:
        """Extra loss terms of the model itself; zero by default."""
        return recon.new_zeros(())

    def initialise(self, x: Tensor) -> None:
        """Before training: fit the preprocessing on raw training inputs ``x``, then `prepare` on them preprocessed."""
        self.preprocess.fit(x)
        self.prepare(self.preprocess(x))

    def prepare(self, x: Tensor) -> None:
        """Data-dependent initialisation from a sample of (preprocessed) training inputs; nothing by default."""

    def set_epoch_rows(self, rows: int) -> None:
        """Told by the trainer, before each training run (and resume), how many rows one epoch has; ignored by default."""

    def before_step(self) -> None:
        """After the backward pass, before the optimizer step (e.g. edit gradients)."""

    def after_step(self) -> None:
        """After the optimizer step (e.g. renormalise weights)."""

    @torch.no_grad()
    def encode_all(self, x: Any, batch_size: int = 1000) -> Tensor:
        """The codes of every sample of ``x`` (tensor or array, ``(N, *input_shape)``), in eval mode, on the CPU."""
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        try:
            codes = []
            for i in range(0, len(x), batch_size):
                chunk = x[i : i + batch_size]
                chunk = chunk if isinstance(chunk, Tensor) else torch.from_numpy(np.array(chunk, dtype=np.float32))
                codes.append(self.encode(chunk.float().to(device)).cpu())
        finally:
            self.train(was_training)
        return torch.cat(codes)  # (N, n_latents)

    def reconstruct(self, x: Tensor) -> Tensor:
        """``decode(encode(x))``, in the raw inputs' units (the preprocessing undone)."""
        return self.preprocess.inverse(self.decode(self.encode(x)), x)

    def describe(self) -> dict[str, Any]:
        """Everything needed to rebuild this model (weights aside); saved as ``cfg.json``."""
        return {
            "kind": self.kind,
            "config": to_dict(self.config),
            "sparsity": {"name": self.sparsity.name, "params": self.sparsity.get_params()},
            "preprocess": list(self.preprocess.steps),
        }


_MODELS: dict[str, type[Autoencoder]] = {}

M = TypeVar("M", bound=type[Autoencoder])


def register_model(kind: str) -> Callable[[M], M]:
    """Class decorator: make a model class loadable by ``kind``."""

    def add(cls: M) -> M:
        if kind in _MODELS:
            raise ValueError(f"model kind {kind!r} is already registered by {_MODELS[kind].__qualname__}")
        cls.kind = kind
        _MODELS[kind] = cls
        return cls

    return add


def get_model_class(kind: str) -> type[Autoencoder]:
    try:
        return _MODELS[kind]
    except KeyError:
        raise SparseAEError(
            "model kind",
            expected=f"one of {', '.join(sorted(_MODELS))}",
            got=repr(kind),
            fix="The file may come from a newer sparseae: upgrade it.",
        ) from None

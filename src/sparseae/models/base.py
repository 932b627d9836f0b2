"""The model extension point: encoder -> sparsity -> decoder, and the model registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from torch import Tensor, nn

from sparseae._config import to_dict
from sparseae.errors import SparseAEError
from sparseae.sparsity import Sparsity


class ModelOutput(NamedTuple):
    """What a forward pass returns."""

    recon: Tensor
    """Reconstruction, the input's shape."""
    code: Tensor
    """Sparse code, ``(B, n_latents)``."""
    penalty: Tensor
    """Scalar sparsity penalty for this batch, added to the loss."""


class Autoencoder(nn.Module):
    """An encoder to pre-activations, a sparsity constraint, a decoder.

    Subclasses set ``config_class``, build their layers from ``config`` and
    implement :meth:`pre_activations` and :meth:`decode`.
    """

    kind: str = ""
    """Registry name, set by :func:`register_model`; saved in ``cfg.json``."""
    config_class: type

    def __init__(self, config: Any, sparsity: Sparsity):
        super().__init__()
        self.config = config
        self.sparsity = sparsity

    @property
    def n_latents(self) -> int:
        return self.config.n_latents

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample."""
        raise NotImplementedError

    def pre_activations(self, x: Tensor) -> Tensor:
        """Encoder output before the constraint, ``(B, n_latents)``."""
        raise NotImplementedError

    def decode(self, code: Tensor) -> Tensor:
        """Reconstruction from a code ``(B, n_latents)``."""
        raise NotImplementedError

    def encode(self, x: Tensor) -> Tensor:
        """The sparse code of ``x``, ``(B, n_latents)``."""
        return self.sparsity(self.pre_activations(x))

    def forward(self, x: Tensor) -> ModelOutput:
        code = self.encode(x)
        return ModelOutput(self.decode(code), code, self.sparsity.penalty(code))

    def reconstruct(self, x: Tensor) -> Tensor:
        """``decode(encode(x))``."""
        return self.decode(self.encode(x))

    def describe(self) -> dict[str, Any]:
        """Everything needed to rebuild this model (weights aside); saved as ``cfg.json``."""
        return {
            "kind": self.kind,
            "config": to_dict(self.config),
            "sparsity": {"name": self.sparsity.name, "params": self.sparsity.get_params()},
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

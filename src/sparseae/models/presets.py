"""Named, ready-made models: what ``sparseae train --model NAME`` builds."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from sparseae.errors import SparseAEError
from sparseae.models.base import Autoencoder
from sparseae.models.conv import ConvAutoencoder, ConvConfig
from sparseae.sparsity import Sparsity, build_sparsity

Preset = Callable[[tuple[int, ...], Sparsity], Autoencoder]

_PRESETS: dict[str, Preset] = {}


def _preset(name: str) -> Callable[[Preset], Preset]:
    def add(fn: Preset) -> Preset:
        _PRESETS[name] = fn
        return fn

    return add


@_preset("mnist-conv")
def _mnist_conv(sample_shape: tuple[int, ...], sparsity: Sparsity) -> Autoencoder:
    """The Keras blog's convolutional sparse autoencoder, sized to the images."""
    if len(sample_shape) != 3 or sample_shape[1] != sample_shape[2]:
        raise SparseAEError(
            "mnist-conv model",
            expected="square images of shape (channels, size, size)",
            got=f"samples of shape {sample_shape}",
            fix="Use image data such as MNIST, or another model.",
        )
    return ConvAutoencoder(ConvConfig(in_channels=sample_shape[0], image_size=sample_shape[1]), sparsity)


@contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Draw from a generator seeded with ``seed`` (if given), leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        yield


def list_presets() -> list[str]:
    return sorted(_PRESETS)


def build_preset(
    name: str,
    sample_shape: tuple[int, ...],
    sparsity: Sparsity,
    seed: int | None = None,
) -> Autoencoder:
    """The preset ``name`` for samples of ``sample_shape``; initialised from ``seed`` if given."""
    if name not in _PRESETS:
        raise SparseAEError(
            "model",
            expected=f"one of {', '.join(list_presets())}",
            got=repr(name),
            fix="Pick a listed model.",
        )
    with seeded(seed):
        return _PRESETS[name](sample_shape, sparsity)


def mnist_conv(weight: float = 1e-4, *, seed: int | None = 0, **config: Any) -> ConvAutoencoder:
    """The classic convolutional sparse autoencoder for MNIST (Keras blog), 130,017 parameters.

    Args:
        weight: L1 activity penalty weight on the 32-unit code (Keras ``l1(10e-5)``);
            0 gives the same model without the penalty.
        seed: Seeds the initialisation (``None``: use the global RNG).
        **config: Overrides of :class:`ConvConfig` fields, e.g. ``padding="torch"``.
    """
    with seeded(seed):
        return ConvAutoencoder(ConvConfig(**config), build_sparsity("l1", weight=weight))

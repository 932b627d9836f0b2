"""Models: an encoder, a sparsity constraint, a decoder."""

from sparseae.models.base import Autoencoder, ModelOutput, get_model_class, register_model
from sparseae.models.conv import ConvAutoencoder, ConvConfig
from sparseae.models.dense import DenseAutoencoder, DenseConfig
from sparseae.models.presets import build_preset, get_preset, list_presets, mnist_conv

__all__ = [
    "Autoencoder",
    "ConvAutoencoder",
    "ConvConfig",
    "DenseAutoencoder",
    "DenseConfig",
    "ModelOutput",
    "build_preset",
    "get_preset",
    "get_model_class",
    "list_presets",
    "mnist_conv",
    "register_model",
]

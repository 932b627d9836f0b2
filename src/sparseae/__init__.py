"""sparseae: train, evaluate and explore sparse autoencoders.

A model is an encoder, a pluggable sparsity constraint and a decoder:

    import sparseae

    data = sparseae.load_mnist()
    model = sparseae.mnist_conv()                 # the Keras blog's model, L1 1e-4
    result = sparseae.train(model, data, sparseae.TrainConfig(epochs=5), out="runs/demo")
    codes = model.encode(data.test[:8])           # (8, 32)
    model = sparseae.load("runs/demo")            # the same model back
"""

from sparseae._version import __version__  # noqa: F401  (the one place it is written)
from sparseae.data import DataConfig, Dataset, load_data, load_mnist
from sparseae.data.activations import ActivationConfig
from sparseae.errors import SparseAEError
from sparseae.interop.hub import load
from sparseae.io import save_model
from sparseae.models import Autoencoder, ConvAutoencoder, ConvConfig, DenseAutoencoder, DenseConfig, build_preset, mnist_conv
from sparseae.sparsity import Sparsity, build_sparsity, list_sparsities, penalty, register
from sparseae.training import TrainConfig, TrainResult, evaluate, probe, read_metrics, resume, sweep, train

__all__ = [
    "ActivationConfig",
    "Autoencoder",
    "ConvAutoencoder",
    "ConvConfig",
    "DataConfig",
    "DenseAutoencoder",
    "DenseConfig",
    "Dataset",
    "SparseAEError",
    "Sparsity",
    "TrainConfig",
    "TrainResult",
    "build_preset",
    "build_sparsity",
    "evaluate",
    "list_sparsities",
    "load",
    "load_data",
    "load_mnist",
    "mnist_conv",
    "penalty",
    "probe",
    "read_metrics",
    "register",
    "resume",
    "save_model",
    "sweep",
    "train",
]

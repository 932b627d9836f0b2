"""Data sets: MNIST (shipped), MNIST-layout IDX directories, in-memory tensors."""

from sparseae.data.dataset import DataConfig, Dataset
from sparseae.data.idx import read_idx
from sparseae.data.mnist import load_mnist


def load_data(config: DataConfig) -> Dataset:
    """The data set ``config`` describes."""
    data = load_mnist(None if config.source == "mnist" else config.source)
    return data.subset(config.train_limit, config.test_limit)


__all__ = ["DataConfig", "Dataset", "load_data", "load_mnist", "read_idx"]

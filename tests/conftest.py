import pytest
import torch

import sparseae


@pytest.fixture(scope="session")
def mnist() -> sparseae.Dataset:
    """The full shipped MNIST, loaded (and checksum-verified) once per session."""
    return sparseae.load_mnist()


@pytest.fixture(scope="session")
def small(mnist: sparseae.Dataset) -> sparseae.Dataset:
    """2,048 training and 512 test digits: enough for fast training tests."""
    return mnist.subset(2048, 512)


@pytest.fixture(autouse=True)
def _one_thread_set_seed():
    torch.manual_seed(0)
    yield

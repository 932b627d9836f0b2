"""Which device to compute on: one picker for training, evaluation and language models."""

from __future__ import annotations

import torch

from sparseae import distributed
from sparseae.errors import SparseAEError, check


def pick_device(name: str) -> torch.device:
    """``auto`` -> CUDA (this rank's GPU under torchrun), then MPS, then CPU; otherwise the named device, if it is there."""
    if name == "auto":
        if distributed.local_device() is not None:
            return distributed.local_device()
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SparseAEError(
            "device", expected="auto, cpu, cuda, cuda:N or mps", got=repr(name), fix="Pick one of those."
        ) from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    check(
        available.get(device.type, False),
        "device",
        expected="a device this machine has",
        got=f"{name!r} (not available here)",
        fix="Use --device auto to pick what is there.",
    )
    return device

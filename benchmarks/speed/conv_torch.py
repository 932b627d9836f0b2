"""Speed worker: the Keras blog's conv MNIST autoencoder as a typical user writes it in plain PyTorch.

nn.Sequential layers (NCHW, eager, torch's default initialisation), a
DataLoader over a TensorDataset (shuffle, batch 128), Adam (torch's defaults),
MSE plus the L1 activity penalty on the 32-unit code as Keras adds it
(``l1 * sum|code| / batch``). Measures training samples/s per epoch (the
training pass only) and the test MSE after each epoch. Needs only torch and
numpy (``requirements-torch.txt``); ``suite.py`` starts it:

    benchmarks/.venvs/torch/bin/python benchmarks/speed/conv_torch.py \
        --config '{"epochs": 1, "seed": 0, "threads": 2, "train_limit": 6000}' --out /tmp/torch.json
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import numpy as np
import torch
from protocol import conv_result, read_config, write_result
from torch import nn

MNIST = Path(__file__).resolve().parents[2] / "src" / "sparseae" / "data" / "mnist_files"
DEFAULTS = {"epochs": 3, "seed": 0, "threads": 2, "batch_size": 128, "lr": 1e-3, "l1": 1e-4, "mnist": str(MNIST)}


def read_images(folder: Path, name: str) -> torch.Tensor:
    """MNIST images as float32 in [0, 1], shape (N, 1, 28, 28)."""
    raw = gzip.decompress((folder / f"{name}-images-idx3-ubyte.gz").read_bytes())
    return torch.from_numpy(np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 1, 28, 28).astype("float32") / 255.0)


def build() -> tuple[nn.Sequential, nn.Sequential]:
    encoder = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # (B, 16, 14, 14)
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, 7, 7)
        nn.Flatten(), nn.Linear(7 * 7 * 32, 32), nn.ReLU(),           # (B, 32): the code
    )  # fmt: skip
    decoder = nn.Sequential(
        nn.Linear(32, 7 * 7 * 32), nn.ReLU(), nn.Unflatten(1, (32, 7, 7)),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),                                        # (B, 32, 7, 7)
        nn.ConvTranspose2d(32, 32, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),  # (B, 32, 14, 14)
        nn.ConvTranspose2d(32, 16, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),  # (B, 16, 28, 28)
        nn.ConvTranspose2d(16, 1, 3, padding=1), nn.ReLU(),                                # (B, 1, 28, 28)
    )  # fmt: skip
    return encoder, decoder


@torch.no_grad()
def evaluate(encoder: nn.Module, decoder: nn.Module, x_test: torch.Tensor) -> dict[str, float]:
    encoder.eval(), decoder.eval()
    sq, active = 0.0, []
    for batch in x_test.split(1000):
        code = encoder(batch)
        sq += float(((decoder(code) - batch) ** 2).sum())
        active.append(code != 0)
    encoder.train(), decoder.train()
    active = torch.cat(active)
    return {
        "test_mse": sq / x_test.numel(),
        "test_l0": float(active.sum(1).float().mean()),
        "test_dead_units": int((active.sum(0) == 0).sum()),
    }


def main() -> None:
    cfg, out = read_config(__doc__.splitlines()[0], DEFAULTS)
    torch.set_num_threads(int(cfg["threads"]))
    torch.manual_seed(int(cfg["seed"]))
    folder = Path(cfg["mnist"] or MNIST)
    x_train, x_test = read_images(folder, "train"), read_images(folder, "t10k")
    if cfg.get("train_limit"):
        x_train = x_train[: int(cfg["train_limit"])]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_train), batch_size=int(cfg["batch_size"]), shuffle=True)
    encoder, decoder = build()
    params = [*encoder.parameters(), *decoder.parameters()]
    assert sum(p.numel() for p in params) == 130_017
    optimizer = torch.optim.Adam(params, lr=cfg["lr"])
    l1 = float(cfg["l1"])
    epochs = []
    for epoch in range(1, int(cfg["epochs"]) + 1):
        start = time.perf_counter()
        for (x,) in loader:
            code = encoder(x)
            loss = nn.functional.mse_loss(decoder(code), x) + l1 * code.abs().sum() / x.shape[0]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        elapsed = time.perf_counter() - start
        epochs.append({"epoch": epoch, "epoch_time_s": elapsed, "samples_per_s": len(x_train) / elapsed})
        epochs[-1].update(evaluate(encoder, decoder, x_test))
        print(json.dumps(epochs[-1]), flush=True)
    notes = (
        "plain PyTorch: nn.Sequential, NCHW, eager, default init, DataLoader(TensorDataset, shuffle=True), "
        "torch.optim.Adam defaults"
    )
    write_result(out, conv_result("pytorch", f"torch {torch.__version__}", epochs, torch.get_num_threads(), len(x_train), notes))


if __name__ == "__main__":
    main()

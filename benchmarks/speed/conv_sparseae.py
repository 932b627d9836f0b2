"""Speed worker: the Keras blog's conv MNIST autoencoder in sparseae, trained by `sparseae.train`.

What `sparseae train --recipe RECIPE` runs: `mnist_conv(seed, recipe=RECIPE)` (L1 1e-4
on the code), batch 128, Adam as Keras computes it (recipe "keras": 1e-3; "default": the
preset's 2e-3, decayed, unless "lr" is given), data in memory as one tensor shuffled there,
and the config's "precision" ("float32" or "bfloat16") and "kernels" ("auto" or "reference").
Epoch time is the trainer's own record (the training pass, without the evaluation); test MSE
is over every pixel of the 10,000 test digits.

    .venv/bin/python benchmarks/speed/conv_sparseae.py --config '{"epochs": 1, "train_limit": 6000}' --out /tmp/s.json
"""

from __future__ import annotations

import torch
from protocol import conv_result, read_config, write_result

import sparseae
from sparseae.data import Dataset

DEFAULTS = {"epochs": 3, "seed": 0, "threads": 2, "batch_size": 128, "lr": 1e-3, "l1": 1e-4, "mnist": None,
            "precision": "float32", "kernels": "auto", "train_limit": None, "recipe": "keras"}  # fmt: skip


def main() -> None:
    cfg, out = read_config(__doc__.splitlines()[0], DEFAULTS)
    torch.set_num_threads(int(cfg["threads"]))
    data = sparseae.load_mnist()
    if cfg["train_limit"]:
        data = Dataset(data.name, data.train[: int(cfg["train_limit"])], data.test)
    recipe = cfg["recipe"]
    model = sparseae.mnist_conv(float(cfg["l1"]), seed=int(cfg["seed"]), recipe=recipe)
    config = sparseae.TrainConfig.for_preset(
        "mnist-conv",
        recipe,
        epochs=int(cfg["epochs"]),
        batch_size=int(cfg["batch_size"]),
        seed=int(cfg["seed"]),
        precision=cfg["precision"],
        kernels=cfg["kernels"],
        **({} if cfg["lr"] is None else {"lr": float(cfg["lr"])}),
    )
    result = sparseae.train(model, data, config, progress=False)
    epochs = [{"epoch": r["epoch"], "epoch_time_s": r["epoch_time_s"], "samples_per_s": r["samples_per_s"],
               "test_mse": r["test_mse"], "test_l0": r["test_l0"], "test_dead_units": r["test_dead_units"]}
              for r in result.metrics]  # fmt: skip
    notes = f"sparseae.train, recipe {recipe}, precision {cfg['precision']}, kernels {cfg['kernels']}, torch {torch.__version__}"
    write_result(out, conv_result("sparseae", sparseae.__version__, epochs, torch.get_num_threads(), len(data.train), notes))


if __name__ == "__main__":
    main()

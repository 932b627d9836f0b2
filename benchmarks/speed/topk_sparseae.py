"""Speed worker: sparseae's dense TopK SAE, trained by the step `sparseae.train` runs for every batch.

The model is what `sparseae train --model dense --sparsity topk` builds (pre-encoder
bias at the geometric median, tied initialisation, unit-norm decoder with the
parallel gradient removed, AuxK with k_aux = d_in / 2 as sparsify and SAELens
use), trained with Adam (torch's, eps 1e-8, as the peers) at a constant rate. Each
step is the trainer's own (`Trainer.step`: autocast, loss, backward, the non-finite
check, gradient projection, fused Adam, renormalisation). The geometric median is
fitted on the first batch before the clock starts (the trainer does it once
before the first step). Config keys beyond the common ones: "kernels" ("auto" or
"reference": the plain dense path, for comparison).

    .venv/bin/python benchmarks/speed/topk_sparseae.py \
        --config '{"train": "train.npy", "test": "test.npy", "steps": 40, "warmup": 3}' --out sparseae.json
"""

from __future__ import annotations

import numpy as np
import torch
from topk_common import Config, Worker, batch, run

import sparseae
from sparseae.models import DenseAutoencoder, DenseConfig
from sparseae.sparsity import build_sparsity
from sparseae.training import TrainConfig, Trainer


def build(cfg: Config) -> Worker:
    kernels = cfg.extra.get("kernels", "auto")
    window = ((cfg.dead_window_steps or 0) + 1) * cfg.batch_size if cfg.dead_window_steps is not None else 10_000_000
    model = DenseAutoencoder(
        DenseConfig(input_shape=(cfg.d_in,), n_latents=cfg.n_latents, aux_k=cfg.d_in // 2, aux_coef=cfg.aux_k_coef,
                    dead_window=window),
        build_sparsity("topk", k=cfg.k),
    )  # fmt: skip
    train = TrainConfig(lr=cfg.lr, optimizer="adam", adam_eps=1e-8, precision=cfg.precision, kernels=kernels)
    model.initialise(batch(np.load(cfg.train, mmap_mode="r"), 0, cfg.batch_size))
    job = Trainer(model, train, None, torch.device("cpu"))
    job.begin_epoch()
    steps = iter(range(1, cfg.steps + 1))

    def step(x: torch.Tensor) -> torch.Tensor:
        job.step(x, next(steps))
        return job.sums[3].detach().clone()  # the running AuxK sum: non-zero once AuxK has been active

    @torch.no_grad()
    def encode_decode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        was = model.training  # topk_common's curve evaluates mid-run: training resumes after
        model.eval()
        out = model(x)
        model.train(was)
        return out.recon, out.code

    notes = (f"sparseae Trainer.step (the trainer's step), kernels={kernels}, precision={cfg.precision}; "
             f"DenseAutoencoder aux_k={cfg.d_in // 2}, dead after {window} rows without firing")  # fmt: skip
    return Worker(step, encode_decode, notes)


if __name__ == "__main__":
    run("sparseae", sparseae.__version__, build)

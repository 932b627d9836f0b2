"""Training metrics every N optimizer steps (`TrainConfig.metrics_every`): the lines of `RUN/metrics-steps.jsonl`.

Each line averages the steps since the line before, so that a run of one epoch still
has curves. The running sums travel in every checkpoint, so a resumed run writes the
lines an uninterrupted one would (their ``samples_per_s`` aside).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from sparseae import distributed, kernels

_KEYS = ("train_loss", "train_recon", "train_penalty", "train_aux", "l0")


class StepWindow:
    """The steps since the last line: their loss terms and L0 summed over rows, the latents that fired, rows, skips."""

    def __init__(self, n_latents: int, device: torch.device):
        self.sums = torch.zeros(len(_KEYS), device=device)  # (5,) the _KEYS, times rows
        self.fired = torch.zeros(n_latents, dtype=torch.bool, device=device)
        self.seen = self.skipped = 0
        self.seconds, self.since = 0.0, time.perf_counter()

    def add(self, terms: Tensor, code: Tensor, fired: Tensor) -> None:
        """A step's mean ``terms`` (loss, recon, penalty, aux), its ``code`` and the latents that fired in it."""
        rows = code.shape[0]  # (B, n_latents), dense or CSR (the sparse TopK kernels')
        l0 = kernels.active_per_row(code).sum()
        self.sums += torch.cat([terms.detach().float() * rows, l0[None]])
        self.fired |= fired
        self.seen += rows

    def line(self, step: int, epoch: int, lr: float) -> dict[str, Any]:
        """The record of the window that ends at ``step`` (summed over ranks under torchrun), and a fresh window."""
        sums, fired, seen = self.sums, self.fired, self.seen
        if distributed.active():
            sums, fired = distributed.all_sum(sums), distributed.all_max(fired.to(torch.uint8)).bool()
            seen = int(distributed.all_sum(torch.tensor(seen, device=sums.device)))
        means = (sums / seen).tolist() if seen else [None] * len(_KEYS)
        seconds = self.seconds + time.perf_counter() - self.since
        dead = int((~fired).sum())
        record = {"step": step, "epoch": epoch, "lr": lr, **dict(zip(_KEYS, means, strict=True)),
                  "dead_latents": dead, "dead_fraction": dead / len(fired), "skipped_steps": self.skipped,
                  "samples_per_s": round(seen / seconds, 1) if seconds > 0 else None}  # fmt: skip
        self.sums.zero_()
        self.fired.zero_()
        self.seen = self.skipped = 0
        self.seconds, self.since = 0.0, time.perf_counter()
        return record

    def state(self) -> dict[str, Tensor]:
        seconds = self.seconds + time.perf_counter() - self.since
        return {"sums": self.sums, "fired": self.fired, "seen": torch.tensor(self.seen), "skipped": torch.tensor(self.skipped),
                "seconds": torch.tensor(seconds, dtype=torch.float64)}  # fmt: skip

    def load_state(self, tensors: dict[str, Tensor]) -> None:
        if not tensors:  # a checkpoint from before the first step
            return
        self.sums, self.fired = tensors["sums"].to(self.sums), tensors["fired"].to(self.fired)
        self.seen, self.skipped, self.seconds = int(tensors["seen"]), int(tensors["skipped"]), float(tensors["seconds"])
        self.since = time.perf_counter()


def postfix(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """What the progress bar shows of the lines of one step, one per model trained."""
    if len(lines) > 1:
        return {"models": len(lines), "loss": " ".join(_format(r["train_loss"], ".3g") for r in lines)}
    (line,) = lines
    return {"loss": _format(line["train_loss"], ".4g"), "L0": _format(line["l0"], ".1f"), "dead": line["dead_latents"],
            "lr": f"{line['lr']:.3g}"}  # fmt: skip


def _format(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)

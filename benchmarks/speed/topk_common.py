"""Shared scaffold of the TopK SAE speed workers (topk_sparseae.py, topk_sparsify.py, topk_saelens.py).

Each worker builds its library's SAE and training step and hands them to `run`,
which does everything that must be identical across contenders: argument
parsing, seeding and threads, reading the batches, the timing loop, the
held-out evaluation (FVU, dead fraction, L0), peak RSS and RESULT.json. Imports
only the standard library, numpy and torch, so every contender's venv can use
it. A worker is started as

    python benchmarks/speed/topk_X.py --config '<json>' --out RESULT.json

with the config keys of `DEFAULTS` (see `Config`). The API, for a new worker::

    from topk_common import Config, Worker, run

    def build(cfg: Config) -> Worker:
        model = ...                     # built after torch.manual_seed(cfg.seed)
        def step(x):                    # x: (batch_size, d_in) float32, a fresh copy
            ...                         # forward, loss, backward, optimizer step, zero_grad
            return aux_loss.detach()    # or None; a nonzero value counts as an AuxK-active step
        @torch.no_grad()
        def encode_decode(x):           # x: (<=4096, d_in) float32; called under no_grad in float32
            return recon, codes         # recon (n, d_in); codes dense (n, n_latents) or (values, indices) (n, k)
        return Worker(step, encode_decode, notes="what the step calls")

    if __name__ == "__main__":
        run("my-lib", my_lib.__version__, build)

RESULT.json holds the keys the suite reads (contender, version, torch, precision,
threads, steps, warmup, step_s, rows_per_s, fvu, dead_fraction, l0, peak_rss_mb,
notes) plus auxk_active_steps (steps whose returned AuxK loss was nonzero, i.e.
some latent counted as dead; null when the step returns None) and
dead_window_steps. Two optional config keys beyond the suite's: aux_k_coef
(1/32) and dead_window_steps (1; null for each library's own default). Three
more for benchmarks/real: cycle (false; true: the steps go round train.npy
again, epoch after epoch, in the same order), curve_every (null; N: every N
steps and after the last, FVU on the first curve_rows held-out rows, with the
training seconds so far, in RESULT.json's "curve"; evaluation time is not
counted) and curve_rows (4096).

Timing: each step is `time.perf_counter()` around `step(x)` only (the batch
slice is read from the memory-mapped train.npy and copied to a tensor before
the clock starts); rows_per_s = batch_size * (steps - warmup) / sum(step_s[warmup:]).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

DEFAULTS = {"d_in": 768, "n_latents": 16_384, "k": 32, "batch_size": 4096, "steps": 40, "warmup": 3, "lr": 5e-4, "seed": 0,
            "threads": 2, "precision": "float32", "aux_k_coef": 1 / 32, "dead_window_steps": 1, "cycle": False,
            "curve_every": None, "curve_rows": 4096}  # fmt: skip
EVAL_BATCH = 4096

Codes = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Config:
    """One worker run; the JSON given to --config, with `DEFAULTS` for the missing keys."""

    train: str
    """Path of the (N, d_in) float32 training array; step i uses rows [i*B, (i+1)*B)."""
    test: str
    """Path of the held-out (M, d_in) float32 array for FVU, dead fraction and L0."""
    d_in: int
    n_latents: int
    k: int
    batch_size: int
    steps: int
    """Training steps in all, warmup included."""
    warmup: int
    """Leading steps left out of rows_per_s (still trained on and recorded in step_s)."""
    lr: float
    """Adam's learning rate, constant (no warmup or decay schedule for anyone)."""
    seed: int
    threads: int
    precision: str
    """"float32", or "bfloat16" for autocast of forward and loss on float32 master weights."""
    aux_k_coef: float
    """Weight of the AuxK loss relative to the reconstruction loss (1/32 as in Gao et al.)."""
    dead_window_steps: int | None
    """A latent is dead (AuxK target) after firing in none of the last dead_window_steps + 1 batches.
    Each library's own default (sparsify 10M tokens, SAELens 1000 steps) never triggers in a
    40-step run, so the benchmark uses 1 for both; null means the library's own default."""
    cycle: bool
    """Go round train.npy again when the steps need more rows than it has (epochs, in the same row order)."""
    curve_every: int | None
    """Every this many steps (and after the last), held-out FVU on the first curve_rows rows; null: none."""
    curve_rows: int
    """Held-out rows for the curve (the final evaluation uses them all)."""
    extra: dict = field(default_factory=dict)
    """Keys beyond these, for the one worker that reads them (e.g. sparseae's "kernels")."""

    @classmethod
    def from_json(cls, text: str) -> Config:
        raw = {**DEFAULTS, **json.loads(text)}
        names = {f.name for f in fields(cls)} - {"extra"}
        extra = {key: raw.pop(key) for key in sorted(set(raw) - names)}
        if extra:
            print(f"topk_common: config keys beyond the common ones: {sorted(extra)}", file=sys.stderr)
        missing = sorted(names - set(raw))
        if missing:
            raise SystemExit(f"config is missing {missing} (paths of the .npy arrays)")
        if raw["precision"] not in ("float32", "bfloat16"):
            raise SystemExit(f"precision must be 'float32' or 'bfloat16', got {raw['precision']!r}")
        return cls(**{name: raw[name] for name in names}, extra=extra)

    @property
    def autocast(self) -> bool:
        return self.precision == "bfloat16"


class Worker(NamedTuple):
    """What a contender hands to `run`."""

    step: Callable[[torch.Tensor], torch.Tensor | None]
    """One whole training step on a (batch_size, d_in) float32 batch; may return the AuxK loss (detached)."""
    encode_decode: Callable[[torch.Tensor], tuple[torch.Tensor, Codes]]
    """(n, d_in) -> (reconstruction (n, d_in), codes: dense (n, n_latents) or (values, indices) each (n, k))."""
    notes: str
    """Which of the library's functions the step calls, and its AuxK / dead-latent settings."""


def autocast(cfg: Config):
    """The CPU bfloat16 autocast context when cfg.precision asks for it, else a no-op context."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.autocast)


def batch(array: np.ndarray, start: int, size: int) -> torch.Tensor:
    """Rows [start, start + size) of a memory-mapped array as a fresh float32 tensor."""
    return torch.from_numpy(np.array(array[start : start + size], dtype=np.float32, copy=True))


@torch.no_grad()
def evaluate(encode_decode: Callable[[torch.Tensor], tuple[torch.Tensor, Codes]], test: np.ndarray, n_latents: int) -> dict:
    """Held-out FVU, dead fraction (latents with no nonzero code on the whole set) and L0 (mean nonzeros per row)."""
    rows, d_in = test.shape
    sse = torch.zeros((), dtype=torch.float64)
    col_sum = torch.zeros(d_in, dtype=torch.float64)
    col_sq = torch.zeros(d_in, dtype=torch.float64)
    fired = torch.zeros(n_latents, dtype=torch.bool)
    nonzeros = 0
    for start in range(0, rows, EVAL_BATCH):
        x = batch(test, start, EVAL_BATCH)  # (n, d_in)
        recon, codes = encode_decode(x)
        recon = recon.float()
        sse += (x - recon).double().pow(2).sum()
        col_sum += x.double().sum(0)
        col_sq += x.double().pow(2).sum(0)
        if isinstance(codes, tuple):
            values, indices = codes  # (n, k) each
            active = values != 0
            fired[indices[active]] = True
        else:
            active = codes != 0  # (n, n_latents)
            fired |= active.any(0)
        nonzeros += int(active.sum())
    total_var = (col_sq - col_sum.pow(2) / rows).sum()  # sum((x - x.mean(0))^2)
    return {"fvu": float(sse / total_var), "dead_fraction": float(1.0 - fired.float().mean()), "l0": nonzeros / rows}


def run(contender: str, version: str, build: Callable[[Config], Worker], argv: list[str] | None = None) -> dict:
    """Parse --config/--out, train with `build(cfg)`'s step, evaluate, write and return RESULT.json's dict."""
    parser = argparse.ArgumentParser(description=f"TopK SAE speed worker: {contender}")
    parser.add_argument("--config", required=True, help="JSON object; keys and defaults in topk_common.DEFAULTS")
    parser.add_argument("--out", required=True, type=Path, help="where to write the result JSON")
    args = parser.parse_args(argv)
    cfg = Config.from_json(args.config)

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    train = np.load(cfg.train, mmap_mode="r")
    test = np.load(cfg.test, mmap_mode="r")
    need = cfg.batch_size if cfg.cycle else cfg.steps * cfg.batch_size
    if train.ndim != 2 or train.shape[1] != cfg.d_in or train.shape[0] < need:
        raise SystemExit(
            f"{cfg.train}: expected at least ({need}, {cfg.d_in}) rows for {cfg.steps} steps, got {train.shape}"
            + ("" if cfg.cycle else "; set cycle to go round it more than once")
        )
    if test.ndim != 2 or test.shape[1] != cfg.d_in:
        raise SystemExit(f"{cfg.test}: expected (M, {cfg.d_in}), got {test.shape}")

    worker = build(cfg)
    step_s: list[float] = []
    aux: list[torch.Tensor | None] = []
    curve: list[dict] = []
    usable = train.shape[0] - train.shape[0] % cfg.batch_size  # whole batches only, when cycling
    for i in range(cfg.steps):
        x = batch(train, i * cfg.batch_size % usable if cfg.cycle else i * cfg.batch_size, cfg.batch_size)  # (B, d_in)
        t0 = time.perf_counter()
        aux.append(worker.step(x))
        step_s.append(time.perf_counter() - t0)
        if cfg.curve_every and ((i + 1) % cfg.curve_every == 0 or i + 1 == cfg.steps):
            point = evaluate(worker.encode_decode, test[: cfg.curve_rows], cfg.n_latents)
            curve.append({"step": i + 1, "train_s": sum(step_s), **point})
    timed = sum(step_s[cfg.warmup :])
    aux_values = [float(a) for a in aux if a is not None]

    metrics = evaluate(worker.encode_decode, test, cfg.n_latents)
    result = {
        "contender": contender,
        "version": version,
        "torch": torch.__version__,
        "precision": cfg.precision,
        "threads": cfg.threads,
        "steps": cfg.steps,
        "warmup": cfg.warmup,
        "step_s": step_s,
        "rows_per_s": cfg.batch_size * (cfg.steps - cfg.warmup) / timed if timed > 0 else None,
        **metrics,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "notes": worker.notes,
        "auxk_active_steps": sum(v != 0 for v in aux_values) if aux_values else None,
        "dead_window_steps": cfg.dead_window_steps,
        **({"curve": curve, "curve_rows": min(cfg.curve_rows, len(test))} if cfg.curve_every else {}),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result

"""Worker: sparseae's dense TopK SAE at its defaults, trained by ``sparseae.train`` itself.

What a user gets from ``sparseae.train`` on in-memory arrays: the model is
``sparseae.build_preset("dense", (d_in,), build_sparsity("topk", k=k),
n_latents=n, seed=seed)`` (every other model field at the preset's defaults),
and the training config is ``TrainConfig.for_preset("dense", batch_size=B,
steps=S, seed=seed, device="cpu")``: learning rate, optimizer, schedules,
initialisation and AuxK are whatever sparseae's defaults are when this runs, so
the benchmark follows them without an edit. ``train`` shuffles the rows itself
(its own epoch order) and evaluates on the held-out split after each epoch.

For ablations, the config key "variant" overrides any of it:
``{"model": {DenseConfig fields}, "sparsity": {topk fields}, "train": {TrainConfig fields}}``.

Measured like topk_common.run measures the peers: step_s is the wall time of
each ``Trainer.step`` call (the trainer's whole step); train_s is the whole
``sparseae.train`` call less its per-epoch evaluations (so it also holds the
data-dependent initialisation and the batch gathering); with curve_every, the
held-out FVU on the first curve_rows rows every N steps, evaluation untimed.
The final FVU, dead fraction and L0 come from topk_common.evaluate on the whole
held-out array, as for every contender. Runs in the project's .venv::

    .venv/bin/python benchmarks/real/topk_sparseae_defaults.py --config '{"train": ..., "test": ..., "d_in": 384,
        "n_latents": 6144, "k": 32, "steps": 256}' --out RESULT.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "speed"))
from topk_common import Config, evaluate  # noqa: E402 - benchmarks/speed/topk_common.py

import sparseae  # noqa: E402
from sparseae import training  # noqa: E402
from sparseae.training import schedules, trainer  # noqa: E402

VARIANT_KEYS = {"model", "sparsity", "train"}


def build(cfg: Config, variant: dict) -> tuple[sparseae.Autoencoder, sparseae.TrainConfig]:
    """The model and training config a user gets from the dense preset, with `variant`'s overrides."""
    unknown = sorted(set(variant) - VARIANT_KEYS)
    if unknown:
        raise SystemExit(f"variant: unknown keys {unknown}; use {sorted(VARIANT_KEYS)}, e.g. "
                         '{"train": {"lr": 4e-4, "optimizer": "adam"}, "model": {"aux_k": 128}}')  # fmt: skip
    sparsity = sparseae.build_sparsity("topk", **{"k": cfg.k, **variant.get("sparsity", {})})
    model = sparseae.build_preset("dense", (cfg.d_in,), sparsity, seed=cfg.seed,
                                  **{"n_latents": cfg.n_latents, **variant.get("model", {})})  # fmt: skip
    fields = {"batch_size": cfg.batch_size, "steps": cfg.steps, "seed": cfg.seed, "device": "cpu",
              **({"precision": cfg.precision} if cfg.precision != "float32" else {}), **variant.get("train", {})}  # fmt: skip
    return model, sparseae.TrainConfig.for_preset("dense", **fields)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="JSON object; keys of topk_common.DEFAULTS, plus 'variant'")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    cfg = Config.from_json(args.config)
    variant = cfg.extra.get("variant") or {}
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    train_x = torch.from_numpy(np.load(cfg.train))  # (N, d_in)
    test_np = np.load(cfg.test, mmap_mode="r")
    data = sparseae.Dataset("real", train_x, torch.from_numpy(np.array(test_np)))
    model, train_cfg = build(cfg, variant)

    def encode_decode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        was = model.training
        model.eval()
        out = model(x)
        model.train(was)
        return out.recon, out.code  # (n, d_in), (n, n_latents)

    step_s: list[float] = []
    curve: list[dict] = []
    evals = {"s": 0.0}
    step, evaluate_between_epochs = training.Trainer.step, trainer.evaluate

    def timed_step(job, x, number):
        t0 = time.perf_counter()
        result = step(job, x, number)
        step_s.append(time.perf_counter() - t0)
        if cfg.curve_every and (len(step_s) % cfg.curve_every == 0 or len(step_s) == cfg.steps):
            t1 = time.perf_counter()
            with torch.no_grad():
                point = evaluate(encode_decode, test_np[: cfg.curve_rows], cfg.n_latents)
            curve.append({"step": len(step_s), "train_s": sum(step_s), **point})
            evals["s"] += time.perf_counter() - t1
        return result

    def timed_evaluate(*a, **k):
        t1 = time.perf_counter()
        result = evaluate_between_epochs(*a, **k)
        evals["s"] += time.perf_counter() - t1
        return result

    training.Trainer.step, trainer.evaluate = timed_step, timed_evaluate
    start = time.perf_counter()
    sparseae.train(model, data, train_cfg, progress=False)
    train_s = time.perf_counter() - start - evals["s"]
    training.Trainer.step, trainer.evaluate = step, evaluate_between_epochs

    with torch.no_grad():
        metrics = evaluate(encode_decode, test_np, cfg.n_latents)
        curve_fvu = evaluate(encode_decode, test_np[: cfg.curve_rows], cfg.n_latents)["fvu"]
    timed = sum(step_s[cfg.warmup :])
    result = {
        "contender": "sparseae" + (" variant" if variant else " defaults"),
        "version": sparseae.__version__,
        "torch": torch.__version__,
        "precision": train_cfg.precision,
        "threads": cfg.threads,
        "steps": len(step_s),
        "warmup": cfg.warmup,
        "step_s": step_s,
        "rows_per_s": cfg.batch_size * (len(step_s) - cfg.warmup) / timed if timed > 0 else None,
        "train_s": train_s,
        "rows_per_s_whole": cfg.batch_size * len(step_s) / train_s,
        **metrics,
        "fvu_curve_rows": curve_fvu,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "notes": "sparseae.train(build_preset('dense', topk k, n_latents, seed), Dataset(train, test), "
        "TrainConfig(**dense preset train_defaults, batch_size, steps, seed, device='cpu', **variant['train'])); "
        "step_s times each Trainer.step",
        "variant": variant,
        "model_config": model.describe(),
        "train_config": dataclasses.asdict(train_cfg),
        "lr_run": train_cfg.lr * schedules.long_run(len(step_s), train_cfg.batch_size, train_cfg.lr_long_run),
        "curve": curve,
        "curve_rows": min(cfg.curve_rows, len(test_np)),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()

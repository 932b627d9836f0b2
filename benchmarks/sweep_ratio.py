"""How much a sweep saves: N models trained in one pass against N separate runs.

Dense TopK SAEs (512 latents, k = 10, 25, 50, 100) on the full MNIST, same
settings both ways; the two ways alternate for --rounds rounds so that machine
noise hits both. Writes benchmarks/results/sweep_ratio.{json,md}.

    .venv/bin/python benchmarks/sweep_ratio.py --epochs 2 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import sparseae
from machine import cpu_name

KS = (10, 25, 50, 100)


def models(data: sparseae.Dataset) -> dict[str, sparseae.Autoencoder]:
    return {f"k={k}": sparseae.build_preset("dense", data.sample_shape, sparseae.build_sparsity("topk", k=k), seed=0,
                                            n_latents=512) for k in KS}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    data = sparseae.load_mnist()
    config = sparseae.TrainConfig(epochs=args.epochs, optimizer="adam", adam_eps=1e-8)
    times: dict[str, list[float]] = {"separate": [], "sweep": []}
    fvu: dict[str, dict[str, float]] = {}
    for _ in range(args.rounds):
        for way in ("separate", "sweep"):
            start = time.perf_counter()
            if way == "separate":
                results = {name: sparseae.train(m, data, config, progress=False) for name, m in models(data).items()}
            else:
                results = sparseae.sweep(models(data), data, config, progress=False)
            times[way].append(time.perf_counter() - start)
            fvu[way] = {name: r.metrics[-1]["test_fvu"] for name, r in results.items()}
            print(way, f"{times[way][-1]:.1f}s", flush=True)
    ratio = statistics.median(times["sweep"]) / statistics.median(times["separate"])
    machine = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__}
    summary = {"machine": machine, "epochs": args.epochs, "ks": KS, "seconds": times, "ratio": ratio, "final_fvu": fvu}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep_ratio.json").write_text(json.dumps(summary, indent=1) + "\n")
    table = (
        f"4 dense TopK SAEs (512 latents, k = {', '.join(map(str, KS))}), full MNIST, {args.epochs} epochs; "
        f"{machine['cpu']}, {machine['threads']} threads, torch {machine['torch']}.\n\n"
        "| way | seconds (each round) | median |\n| --- | --- | --- |\n"
        + "".join(f"| {w} | {', '.join(f'{t:.1f}' for t in ts)} | {statistics.median(ts):.1f} |\n" for w, ts in times.items())
        + f"\nsweep / separate = {ratio:.2f}; the same models and results both ways "
        f"(final FVU equal: {fvu['sweep'] == fvu['separate']}).\n"
    )
    (args.out / "sweep_ratio.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()

"""Which Keras default matters for the MNIST conv model? Padding placement vs Adam's epsilon.

Trains the Keras blog model on the full MNIST (batch 128) under four settings,
seeds interleaved so that machine noise hits all alike, and writes
``benchmarks/results/keras_defaults.{json,md}``: test MSE, L0 and dead units
after each epoch, seconds per epoch and samples/s.

    .venv/bin/python benchmarks/keras_defaults.py --epochs 5 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import sparseae
from machine import cpu_name

SETTINGS = {
    "keras (tf padding, keras-adam eps 1e-7)": dict(padding="tf", optimizer="keras-adam", adam_eps=1e-7),
    "tf padding, torch adam eps 1e-8": dict(padding="tf", optimizer="adam", adam_eps=1e-8),
    "torch padding, keras-adam eps 1e-7": dict(padding="torch", optimizer="keras-adam", adam_eps=1e-7),
    "torch port (torch padding, torch adam eps 1e-8)": dict(padding="torch", optimizer="adam", adam_eps=1e-8),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    data = sparseae.load_mnist()
    results = []
    for seed in args.seeds:
        for name, s in SETTINGS.items():
            model = sparseae.mnist_conv(seed=seed, padding=s["padding"])
            config = sparseae.TrainConfig(epochs=args.epochs, seed=seed, optimizer=s["optimizer"], adam_eps=s["adam_eps"])
            start = time.perf_counter()
            result = sparseae.train(model, data, config, progress=False)
            results.append({"setting": name, "seed": seed, "wall_s": time.perf_counter() - start, "metrics": result.metrics})
            last = result.metrics[-1]
            print(f"seed {seed} {name}: test mse {last['test_mse']:.5f} dead {last['test_dead_units']}", flush=True)
    machine = {
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "sparseae": sparseae.__version__,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "keras_defaults.json").write_text(json.dumps({"machine": machine, "runs": results}, indent=1))
    (args.out / "keras_defaults.md").write_text(_table(results, args.epochs, machine))
    print(_table(results, args.epochs, machine))


def _table(results: list[dict], epochs: int, machine: dict) -> str:
    lines = [
        f"Keras MNIST conv model, full MNIST, batch 128, {epochs} epochs; {machine['cpu']}, "
        f"{machine['threads']} threads, torch {machine['torch']}.",
        "",
        "| setting | seeds | test MSE ep 1 | test MSE ep 5 | dead units ep 1 | dead units ep 5 | L0 ep 5 | s/epoch | samples/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in SETTINGS:
        runs = [r for r in results if r["setting"] == name]
        first = [r["metrics"][0] for r in runs]
        last = [r["metrics"][min(4, epochs - 1)] for r in runs]
        steady = [m for r in runs for m in r["metrics"][1:]] or first

        def span(values: list[float], fmt: str) -> str:
            return f"{statistics.mean(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"

        lines.append(
            f"| {name} | {len(runs)} "
            f"| {span([m['test_mse'] for m in first], '.4f')} | {span([m['test_mse'] for m in last], '.4f')} "
            f"| {', '.join(str(m['test_dead_units']) for m in first)} | {', '.join(str(m['test_dead_units']) for m in last)} "
            f"| {span([m['test_l0'] for m in last], '.1f')} | {span([m['epoch_time_s'] for m in steady], '.1f')} "
            f"| {statistics.mean(m['samples_per_s'] for m in steady):.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

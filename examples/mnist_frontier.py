"""The ready sweep: sparsity constraints compared on MNIST at matched L0, with their frontier.

    .venv/bin/python examples/mnist_frontier.py [--epochs 5]

A dense SAE with 512 latents per model; each constraint family is one sweep
(one pass over the data for its three models) aimed at L0 near 10, 25 and 50.
`kl` and `wta` are left out: a sigmoid code is never exactly zero, and WTA
encodes densely, so neither has an L0 to match. Writes runs/frontier/,
runs/frontier/compare.html, docs/images/mnist-frontier.svg and
docs/results/mnist-frontier.md.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import sparseae
from sparseae.report.html import comparison_rows, frontier_chart, write_comparison

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {  # constraint: (hyperparameter, values aimed at L0 ~ 10, 25, 50; other hyperparameters; training overrides)
    "topk": ("k", [10, 25, 50], {}, {}),
    "batchtopk": ("k", [10, 25, 50], {}, {}),
    "jumprelu": ("l0_coef", [5e-4, 1.5e-4, 5e-5], {"init_threshold": 0.1, "bandwidth": 0.05}, {"lr": 1e-2}),
    "l1": ("weight", [2e-3, 1e-3, 4e-4], {}, {}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "frontier")
    parser.add_argument("--only", nargs="+", choices=list(FAMILIES), help="Retrain these families; keep the other runs in --out.")
    parser.add_argument("--render", action="store_true", help="Train nothing: write the page, picture and table from --out.")
    args = parser.parse_args()
    if args.render:
        args.only = []
    data = sparseae.load_mnist()
    for name in FAMILIES if args.only is None else args.only:
        for old in args.out.glob(f"{name}-*"):
            shutil.rmtree(old)  # this script's own earlier runs of the family it retrains
    for name, (param, values, fixed, train) in FAMILIES.items():
        if args.only is not None and name not in args.only:
            continue
        models = {
            f"{name}-{param}={v}": sparseae.build_preset(
                "dense", data.sample_shape, sparseae.build_sparsity(name, **{param: v, **fixed}), seed=0, n_latents=512
            )
            for v in values
        }
        config = sparseae.TrainConfig.for_preset("dense", epochs=args.epochs, **train)  # what `--model dense` trains with
        start = time.perf_counter()
        sparseae.sweep(models, data, config, args.out, progress=False)
        print(f"{name}: {time.perf_counter() - start:.0f}s", flush=True)
    runs = sorted(
        (p for p in args.out.iterdir() if (p / "config.json").is_file()),
        key=lambda p: (list(FAMILIES).index(p.name.split("-")[0]), p.name),
    )
    write_comparison(runs, args.out / "compare.html")
    rows = comparison_rows(runs)
    (ROOT / "docs" / "images").mkdir(parents=True, exist_ok=True)
    (ROOT / "docs" / "images" / "mnist-frontier.svg").write_text(frontier_chart(rows))
    recipe = sparseae.TrainConfig.for_preset("dense")
    # The dead window of the preset's rule (`dead_window=None`): the same at every k here (512 latents).
    windows = {sparseae.build_preset("dense", (1,), sparseae.build_sparsity("topk", k=k), n_latents=512).dead_window()
               for k in FAMILIES["topk"][1]}  # fmt: skip
    head = (
        f"Dense SAE, 512 latents, full MNIST, {args.epochs} epochs, batch {recipe.batch_size}, seed 0, the dense preset's "
        f"training: Adam (beta1 {recipe.adam_beta1:g}) lr {recipe.lr:g} (JumpReLU 1e-2), {recipe.lr_decay} decay over the "
        f"last {recipe.lr_decay_fraction:.0%} of the steps, AuxK dead window "
        f"{', '.join(f'{w:,}' for w in sorted(windows))} samples."
    )
    lines = [head, "", "| constraint | setting | test L0 | test FVU | test MSE | dead latents |", "| --- " * 6 + "|"]
    for r in rows:
        setting = r["run"].split("-", 1)[1]
        figures = f"{r['test_l0']:.1f} | {r['test_fvu']:.3f} | {r['test_mse']:.4f} | {r['test_dead_units']}"
        lines.append(f"| {r['sparsity']} | {setting} | {figures} |")
    (ROOT / "docs" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "docs" / "results" / "mnist-frontier.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

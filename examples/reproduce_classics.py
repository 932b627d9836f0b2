"""Reproduce three classic sparse-autoencoder results and save their pictures.

    .venv/bin/pip install scikit-learn pillow   # the sample photographs and the classifier
    .venv/bin/python examples/reproduce_classics.py [--only patches|mnist|ksparse]

1. Ng's natural-image exercise (CS294A): 8x8 patches, 64-25 sigmoid network,
   rho 0.01, beta 3, weight decay 1e-4 -> oriented edge detectors.
2. Ng's MNIST exercise: 784-196, rho 0.1, beta 3, weight decay 3e-3 -> pen strokes.
3. k-sparse MNIST (Makhzani & Frey 2013): 1000 latents, k = 25, encoded with
   alpha*k = 75 -> accuracy of a logistic regression on the codes.

Writes docs/images/{patches,ng-mnist,ksparse}-features.png and
docs/results/classics.json (figures and the settings that gave them).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import sparseae
from sparseae.data.patches import load_patches
from sparseae.report import save_feature_grid
from sparseae.sparsity import build_sparsity

ROOT = Path(__file__).resolve().parents[1]
IMAGES, RESULTS = ROOT / "docs" / "images", ROOT / "docs" / "results"


def natural_patches(n: int = 10_000, size: int = 8, seed: int = 0) -> np.ndarray:
    """Random grayscale patches of scikit-learn's two sample photographs, normalised as in Ng's ``sampleIMAGES.m``.

    The raw patches come from :func:`sparseae.data.patches.load_patches` (both of its splits,
    shape ``(n, size * size)`` here). Each patch's mean is removed, values are clipped to +-3
    standard deviations and [-1, 1] is mapped to [0.1, 0.9] for the sigmoid output. (Ng's
    photographs were whitened beforehand; these are not, so the edges come out smoother.)
    """
    raw = load_patches(patch_size=size, n_patches=n, mode="gray", seed=seed)
    out = torch.cat([raw.train, raw.test]).flatten(1).double().numpy()  # (n, size * size)
    out -= out.mean(1, keepdims=True)
    limit = 3 * out.std()
    return (np.clip(out, -limit, limit) / limit + 1) * 0.4 + 0.1


def classic(data: sparseae.Dataset, n_latents: int, rho: float, weight_decay: float, epochs: int, lr: float, batch: int):
    model = sparseae.build_preset(
        "classic",
        data.sample_shape,
        build_sparsity("kl", rho=rho, beta=3.0),
        seed=0,
        n_latents=n_latents,
        weight_decay=weight_decay,
    )
    config = sparseae.TrainConfig(epochs=epochs, loss="half_sse", lr=lr, batch_size=batch)
    return sparseae.train(model, data, config, progress=False)


def patches() -> dict:
    x = torch.tensor(natural_patches(), dtype=torch.float32).view(-1, 1, 8, 8)
    data = sparseae.Dataset("patches", x[:9000], x[9000:])
    result = classic(data, 25, 0.01, 1e-4, epochs=100, lr=1e-2, batch=100)
    save_feature_grid(result.model, IMAGES / "patches-features.png", columns=5, scale=8, weights="encoder")
    return {"settings": "10,000 8x8 patches (9,000 train), 64-25, rho 0.01, beta 3, weight decay 1e-4, "
            "half-SSE loss, Adam lr 1e-2, batch 100, 100 epochs; picture: encoder weights (Ng's W1)",
            "final": result.metrics[-1]}  # fmt: skip


def ng_mnist() -> dict:
    data = sparseae.load_mnist()
    result = classic(data, 196, 0.1, 3e-3, epochs=10, lr=3e-3, batch=128)
    save_feature_grid(result.model, IMAGES / "ng-mnist-features.png", n=100, columns=10, scale=2, weights="encoder")
    return {"settings": "60,000 MNIST digits, 784-196, rho 0.1, beta 3, weight decay 3e-3, half-SSE loss, "
            "Adam lr 3e-3, batch 128, 10 epochs; picture: encoder weights (Ng's W1)", "final": result.metrics[-1]}  # fmt: skip


def ksparse() -> dict:
    from sklearn.linear_model import LogisticRegression

    data = sparseae.load_mnist()
    sparsity = build_sparsity("topk", k=25, alpha=3.0)
    model = sparseae.build_preset("dense", data.sample_shape, sparsity, seed=0, n_latents=1000)
    config = sparseae.TrainConfig.for_preset("dense", epochs=20, batch_size=128)  # the dense recipe
    result = sparseae.train(model, data, config, progress=False)
    save_feature_grid(result.model, IMAGES / "ksparse-features.png", n=100, columns=10, scale=2)
    with torch.no_grad():
        train_codes, test_codes = (model.encode(x).numpy() for x in (data.train, data.test))
    scores = {}
    for name, (a, b) in {
        "codes": (train_codes, test_codes),
        "pixels": (data.train.flatten(1).numpy(), data.test.flatten(1).numpy()),
    }.items():
        start = time.perf_counter()
        clf = LogisticRegression(max_iter=500).fit(a, data.train_labels.numpy())
        scores[name] = {"accuracy": float(clf.score(b, data.test_labels.numpy())), "seconds": time.perf_counter() - start}
    return {"settings": f"dense SAE 784-1000, TopK k=25 (alpha*k = 75 at encode time), pre-encoder bias, unit-norm tied "
            f"decoder, the dense recipe (encoder scale fitted at init, AuxK 256 with a {model.dead_window():,}-sample "
            f"dead window, Adam lr {config.lr:.2g} with beta1 {config.adam_beta1:g}, decayed linearly over the last 20%), "
            "batch 128, 20 epochs; "
            "scikit-learn LogisticRegression(max_iter=500)",
            "final": result.metrics[-1], "linear_probe": scores}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["patches", "mnist", "ksparse"])
    args = parser.parse_args()
    IMAGES.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "classics.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for name, fn in {"patches": patches, "mnist": ng_mnist, "ksparse": ksparse}.items():
        if args.only in (None, name):
            start = time.perf_counter()
            results[name] = {**fn(), "seconds": round(time.perf_counter() - start, 1), "torch": torch.__version__}
            print(name, json.dumps(results[name], indent=1), flush=True)
    path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

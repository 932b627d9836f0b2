"""Synthetic data for the TopK SAE speed comparison: sparse sums of a fixed random dictionary.

A dictionary of ``n_atoms`` random unit-norm atoms in ``d_in`` dimensions
(fixed by ``seed``); each row is the sum of ``active`` atoms drawn uniformly at
random with exponential(1) magnitudes, plus Gaussian noise of ``noise`` times
the signal's per-coordinate standard deviation. Writes ``train.npy`` and
``test.npy`` (float32) to ``benchmarks/.cache/topk-<hash of the parameters>/``
and reuses them when they are there (the folder is written under a temporary
name and renamed, so a half-written one is never used). Prints, and writes to
--out, the two paths. Needs numpy only; ``suite.py`` runs it:

    .venv/bin/python benchmarks/speed/topk_data.py --config '{"train_rows": 176128}' --out /tmp/data.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

CACHE = Path(__file__).resolve().parents[1] / ".cache"
DEFAULTS = {"d_in": 768, "n_atoms": 16_384, "active": 20, "noise": 0.05, "train_rows": 43 * 4096, "test_rows": 8192,
            "seed": 0}  # fmt: skip
VERSION = 1  # bump when the recipe changes, so that old caches are not reused
CHUNK = 2048


def write_rows(path: Path, rows: int, atoms: np.ndarray, cfg: dict, rng: np.random.Generator) -> None:
    """`rows` rows of sparse atom sums plus noise, written chunk by chunk to the .npy file `path`."""
    d_in, active = atoms.shape[1], int(cfg["active"])
    # Unit-norm atoms, exponential(1) magnitudes (E[m^2] = 2): per-coordinate variance active * 2 / d_in.
    sigma = float(cfg["noise"]) * np.sqrt(active * 2.0 / d_in)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, d_in))
    for start in range(0, rows, CHUNK):
        n = min(CHUNK, rows - start)
        idx = rng.integers(0, len(atoms), size=(n, active))  # (n, active)
        mag = rng.exponential(1.0, size=(n, active)).astype(np.float32)  # (n, active)
        x = np.einsum("na,nad->nd", mag, atoms[idx])  # (n, d_in)
        x += rng.normal(0.0, sigma, size=x.shape).astype(np.float32)
        out[start : start + n] = x
    out.flush()
    del out


def make(cfg: dict) -> dict:
    """Create (or find) the cached data for `cfg`; return the paths and the parameters."""
    params = {key: cfg[key] for key in DEFAULTS} | {"version": VERSION}
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(cfg.get("cache", CACHE)) / f"topk-{digest}"
    cached = (folder / "meta.json").exists()
    start = time.perf_counter()
    if not cached:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        root = np.random.SeedSequence(int(cfg["seed"]))
        dict_seed, train_seed, test_seed = root.spawn(3)
        atoms = np.random.default_rng(dict_seed).standard_normal((int(cfg["n_atoms"]), int(cfg["d_in"])))
        atoms = (atoms / np.linalg.norm(atoms, axis=1, keepdims=True)).astype(np.float32)  # (n_atoms, d_in)
        write_rows(tmp / "train.npy", int(cfg["train_rows"]), atoms, cfg, np.random.default_rng(train_seed))
        write_rows(tmp / "test.npy", int(cfg["test_rows"]), atoms, cfg, np.random.default_rng(test_seed))
        (tmp / "meta.json").write_text(json.dumps(params, indent=1) + "\n")
        try:
            tmp.rename(folder)
        except OSError:  # another process finished the same data first
            shutil.rmtree(tmp, ignore_errors=True)
    return {
        "train": str(folder / "train.npy"),
        "test": str(folder / "test.npy"),
        "params": params,
        "cached": cached,
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="{}", help="JSON object, see DEFAULTS")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = make({**DEFAULTS, **json.loads(args.config)})
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""The worker side of the suite's protocol, for the conv and ceiling workers (standard library only).

A worker is started as ``python WORKER.py --config '<json>' --out RESULT.json``:
:func:`read_config` merges the JSON over the worker's defaults, :func:`conv_result`
builds a conv worker's record from its epochs, :func:`write_result` writes it.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
from pathlib import Path
from typing import Any


def read_config(description: str, defaults: dict[str, Any]) -> tuple[dict[str, Any], Path]:
    """The worker's config (``defaults`` updated by --config) and its --out path."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="JSON object; keys and defaults in the worker's DEFAULTS")
    parser.add_argument("--out", type=Path, required=True, help="where to write the result JSON")
    args = parser.parse_args()
    return {**defaults, **json.loads(args.config)}, args.out


def conv_result(contender: str, version: str, epochs: list[dict], threads: int, train_samples: int, notes: str) -> dict:
    """A conv worker's record: steady samples/s is the median over epochs 2 and later (epoch 1 if alone)."""
    steady = [e["samples_per_s"] for e in epochs[1:]] or [epochs[0]["samples_per_s"]]
    return {
        "contender": contender,
        "version": version,
        "epochs": epochs,
        "steady_samples_per_s": statistics.median(steady),
        "test_mse": epochs[-1]["test_mse"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": threads,
        "train_samples": train_samples,
        "notes": notes,
    }


def write_result(path: Path, result: dict) -> None:
    path.write_text(json.dumps(result, indent=1) + "\n")

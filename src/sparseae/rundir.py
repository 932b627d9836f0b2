"""The run directory: what ``sparseae train`` writes, and the one place that knows its file names.

Training creates and fills it; the report, export, evaluation and the CLI read it:

    config.json             model, training and data settings (enough to resume)
    metrics.jsonl           one JSON line per epoch
    metrics-steps.jsonl     one JSON line per --metrics-every steps (when set)
    checkpoint.safetensors  model + optimizer + RNG state after the last finished epoch (or --checkpoint-every step)
    checkpoint-prev.safetensors  the one before, used when the latest is damaged
    model.safetensors       the latest model, with cfg.json: ``sparseae.load(RUN)``
    cfg.json
    reconstructions.png     test samples above their reconstructions
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sparseae._config import from_dict, to_dict
from sparseae._version import __version__
from sparseae.checkpoint import CHECKPOINT_FILE
from sparseae.data import DataConfig, Dataset, load_data
from sparseae.errors import SparseAEError
from sparseae.io import FORMAT, atomic_write, disk_error, read_json, write_json
from sparseae.models import Autoencoder

CONFIG_FILE, METRICS_FILE, STEP_METRICS_FILE = "config.json", "metrics.jsonl", "metrics-steps.jsonl"
RECONSTRUCTIONS_FILE = "reconstructions.png"
__all__ = ["CHECKPOINT_FILE", "CONFIG_FILE", "METRICS_FILE", "RECONSTRUCTIONS_FILE", "STEP_METRICS_FILE"]


def create(run_dir: Path, model: Autoencoder, train: Any, data: Dataset) -> Path:
    """Create a run directory (refusing one that holds files) and write its ``config.json``.

    ``train`` is the training config (a dataclass), written as the ``train`` entry.
    """
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise SparseAEError(
            str(run_dir),
            expected="a new or empty run directory",
            got="a file" if not run_dir.is_dir() else "a directory that already holds files",
            fix="Choose another --out, or continue that run with --resume.",
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except (NotADirectoryError, FileExistsError):
        raise SparseAEError(
            str(run_dir),
            expected="a new or empty run directory",
            got="a path inside a file",
            fix="Choose another --out.",
        ) from None
    except OSError as e:  # a read-only file system, no permission, a full disk
        raise disk_error(run_dir, e) from None
    write_config(
        run_dir,
        {
            "sparseae_version": __version__,
            "model": {"format": FORMAT, **model.describe()},
            "train": to_dict(train),
            "data": to_dict(data.config) if data.config else None,
        },
    )
    return run_dir


def write_config(run_dir: Path, run: dict[str, Any]) -> None:
    """Write (or replace, atomically) a run's ``config.json``."""
    write_json(run_dir / CONFIG_FILE, run)


def read_config(run_dir: Path) -> dict[str, Any]:
    """The ``config.json`` of a run directory, checked to be one."""
    if not (run_dir / CONFIG_FILE).is_file():
        raise SparseAEError(
            str(run_dir),
            expected=f"a run directory (with {CONFIG_FILE})",
            got="no such directory" if not run_dir.exists() else f"a directory without {CONFIG_FILE}",
            fix="Pass a directory written by `sparseae train`.",
        )
    run = read_json(run_dir / CONFIG_FILE)
    if not isinstance(run, dict) or not {"model", "train", "data"} <= set(run):
        raise SparseAEError(
            str(run_dir / CONFIG_FILE),
            expected="a run config with model, train and data entries",
            got=f"keys {sorted(run) if isinstance(run, dict) else type(run).__name__}",
            fix="The file is not a sparseae run config.",
        )
    return run


def load_run_data(run_dir: Path, run: dict[str, Any], fix: str) -> Dataset:
    """The data set a run was trained on, as its ``config.json`` records it."""
    if run["data"] is None:
        raise SparseAEError(
            str(run_dir), expected="a run whose data sparseae can load again", got="a run trained on in-memory data", fix=fix
        )
    return load_data(from_dict(DataConfig, run["data"], f"{run_dir / CONFIG_FILE} data"))


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl`` (empty before its first epoch ends)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_step_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run's ``metrics-steps.jsonl`` (empty without one); a line cut short by a crash is left out."""
    path = Path(run_dir) / STEP_METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def keep_until(path: Path, records: list[dict[str, Any]], step: int) -> list[dict[str, Any]]:
    """Rewrite ``path`` with the ``records`` of steps up to ``step`` (a resume writes the later ones again); returns them."""
    kept = [r for r in records if r["step"] <= step]
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept).encode())
    return kept

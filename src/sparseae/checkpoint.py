"""Checkpoints that survive crashes, and the lock that keeps one writer per run directory.

A checkpoint is one safetensors file: the model, the optimizer state, the random-number
state and the place in the data (epoch, batch, step), with a sha256 of every tensor's
bytes in its metadata. Writing one first writes the new checkpoint in full to a
temporary file (flush, fsync), then hard-links the current one to
``checkpoint-prev.safetensors``, then renames the new one over
``checkpoint.safetensors``. So ``checkpoint.safetensors`` exists at every instant after
the first save (a reader or a resume never finds it missing), the previous one is kept,
and `load_latest` falls back to it when the latest is truncated or corrupt. A
failed write (a full disk) leaves both as they were.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from sparseae.errors import SparseAEError
from sparseae.io import disk_error, read_tensors, replace_keeping_previous, serialize_tensors

log = logging.getLogger("sparseae")

CHECKPOINT_FILE, PREVIOUS_FILE, LOCK_FILE = "checkpoint.safetensors", "checkpoint-prev.safetensors", ".lock"


def digest(tensors: dict[str, Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of ``tensors``, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def check_finite(tensors: dict[str, Tensor]) -> None:
    """Refuse NaN or infinite values: a diverged model is never written."""
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise SparseAEError(
                f"checkpoint tensor {name}",
                expected="finite values",
                got="NaN or infinity",
                fix="Training diverged (learning rate too high, or NaN/inf in the data) and nothing more was written; "
                "start again with a lower --lr or clean data.",
            )


def save(run_dir: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Path:
    """Write a checkpoint of ``tensors`` and JSON-ready ``meta``, keeping the previous one."""
    check_finite(tensors)
    path = run_dir / CHECKPOINT_FILE
    metadata = {"sparseae": json.dumps(meta), "sha256": digest(tensors)}
    replace_keeping_previous(path, serialize_tensors(tensors, metadata), run_dir / PREVIOUS_FILE)
    return path


def read(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors and metadata of one checkpoint, verified against its checksum."""
    tensors, metadata = read_tensors(path)
    try:
        meta = json.loads(metadata["sparseae"])
        expected = metadata["sha256"]
    except (KeyError, json.JSONDecodeError):
        raise SparseAEError(
            str(path),
            expected="a sparseae checkpoint (metadata with its state and checksum)",
            got="a safetensors file without them",
            fix="Start the run again in a new directory.",
        ) from None
    actual = digest(tensors)
    if actual != expected:
        got = f"a checksum mismatch ({actual})"
        raise SparseAEError(str(path), expected=f"tensors with sha256 {expected}", got=got, fix="The file is damaged.")
    return tensors, meta


def latest_meta(run_dir: Path) -> dict[str, Any] | None:
    """The state (epoch, batch, step) in the latest checkpoint's header (its tensors are not read); None if unreadable."""
    try:
        with safe_open(run_dir / CHECKPOINT_FILE, framework="pt") as f:
            return json.loads((f.metadata() or {})["sparseae"])
    except Exception:  # missing, damaged: no usable checkpoint to name
        return None


def load_latest(run_dir: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The newest checkpoint of ``run_dir`` that reads back intact (the latest, else the previous one)."""
    problems = []
    for name in (CHECKPOINT_FILE, PREVIOUS_FILE):
        path = run_dir / name
        if not path.exists():
            problems.append(f"{name}: missing")
            continue
        try:
            result = read(path)
        except SparseAEError as e:
            problems.append(f"{name}: {e.got}")
            log.warning("%s is unusable (%s); trying the previous checkpoint", path, e.got)
            continue
        if name == PREVIOUS_FILE and (run_dir / CHECKPOINT_FILE).exists():
            log.warning("resuming from the previous checkpoint, %s", path)
        return result
    raise SparseAEError(
        str(run_dir),
        expected=f"a readable {CHECKPOINT_FILE} (or {PREVIOUS_FILE})",
        got="; ".join(problems) if any("missing" not in p for p in problems) else "none (the run stopped before its first one)",
        fix="Start the run again in a new directory.",
    )


class RunLock:
    """An exclusive lock on a directory for as long as a process writes into it.

    ``fcntl.flock`` on ``DIR/.lock``: the kernel releases it when the process dies, so a
    killed run never leaves a stale lock behind. Where ``fcntl`` does not exist
    (Windows) the lock is a no-op. ``kind`` and ``fix`` word the refusal: a run
    directory (``--out``) by default, or e.g. an activation cache. Not the filelock package:
    on Unix it wraps the same ``flock``, which is a few lines here, without a dependency.
    """

    def __init__(self, directory: Path, kind: str = "run directory", fix: str = "choose another --out"):
        self.path, self.fd, self.kind, self.fix = directory / LOCK_FILE, -1, kind, fix

    def __enter__(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:  # a read-only directory, or one that vanished
            raise disk_error(self.path, e) from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            self.fd = -1
            raise SparseAEError(
                str(self.path.parent),
                expected=f"a {self.kind} no other process is writing to",
                got=f"one locked by {holder}",
                fix=f"Wait for that run to finish (or stop it), or {self.fix}.",
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"pid {os.getpid()}".encode(), 0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # releases the flock
            self.fd = -1

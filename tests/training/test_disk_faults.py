"""Faults on disk: a full disk, a read-only directory, a shard that vanishes, two writers of one cache.

Each test injects the fault for real where it can: a small tmpfs (mounted by the test; it
needs root, as CI and these project machines have, and is skipped elsewhere) that is
filled up, or remounted read-only, at the moment a given file is written. Afterwards it
checks the files: the error names the file and says what to free, the files written
before are intact and readable, no temporary file is left behind, and training resumes
to the same weights as an uninterrupted run once the space is back.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import sparseae
from sparseae import checkpoint, cli, io, rundir
from sparseae.data import DataConfig, load_data
from sparseae.data.shards import ShardReader, write_shards
from sparseae.errors import DiskError, SparseAEError
from sparseae.training import trainer

SRC = str(Path(sparseae.__file__).resolve().parents[1])
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)}
D = 16
CONFIG = sparseae.TrainConfig(epochs=2, batch_size=64, optimizer="adam", checkpoint_every=4, seed=1)
"""8 steps per epoch on 512 rows: checkpoints at steps 4, 8 (the epoch's end), 12 and 16."""


class SmallDisk:
    """A tmpfs of ``size`` bytes mounted at ``root``, which a test can fill, free and make read-only."""

    def __init__(self, root: Path, size: int):
        self.root, self.filler = root, root / f".filler-{uuid.uuid4().hex}"
        root.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(root)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.decode().strip()}")

    def fill(self) -> None:
        """Write a filler file until the disk is full."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
        finally:
            os.close(fd)
        assert self.filler.stat().st_size > 0

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def read_only(self, on: bool) -> None:
        mode = "ro" if on else "rw"
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self.root)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.root)], check=False)


@pytest.fixture
def disk(tmp_path) -> Iterator[SmallDisk]:
    small = SmallDisk(tmp_path / "disk", 8 << 20)
    yield small
    small.unmount()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> sparseae.Dataset:
    """512 training and 128 test rows, loadable again from the run's config (resume needs that)."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "rows.npy"
    np.save(path, rng.standard_normal((640, D)).astype(np.float32))
    return load_data(DataConfig(source=str(path), test_limit=128))


def _model() -> sparseae.Autoencoder:
    return sparseae.build_preset("dense", (D,), sparseae.build_sparsity("topk", k=4), seed=0, n_latents=32)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The final checkpoint of the same run, uninterrupted, on an ordinary disk."""
    run = tmp_path_factory.mktemp("reference") / "run"
    sparseae.train(_model(), data, CONFIG, run, progress=False)
    return checkpoint.read(run / checkpoint.CHECKPOINT_FILE)[0]


def _contents(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}


def _check_intact(run: Path) -> None:
    """No temporary file left; every file that is there reads back whole."""
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")], sorted(p.name for p in run.iterdir())
    if (run / checkpoint.CHECKPOINT_FILE).exists():
        checkpoint.read(run / checkpoint.CHECKPOINT_FILE)  # checksum verified
    if (run / checkpoint.PREVIOUS_FILE).exists():
        checkpoint.read(run / checkpoint.PREVIOUS_FILE)
    for line in (run / rundir.METRICS_FILE).read_text().splitlines() if (run / rundir.METRICS_FILE).exists() else []:
        json.loads(line)
    if (run / "model.safetensors").exists():
        sparseae.load(run)


# Where the disk fills: (function of sparseae.training.trainer it goes through, which call of it, the file it writes).
WRITES = {
    "checkpoint-mid-epoch": ("checkpoint_save", 2, checkpoint.CHECKPOINT_FILE),  # step 8's: the epoch's end
    "checkpoint-of-epoch-2": ("checkpoint_save", 3, checkpoint.CHECKPOINT_FILE),  # step 12's, within epoch 2
    "metrics-line": ("append_text", 1, rundir.METRICS_FILE),
    "model": ("save_model", 2, "model.safetensors"),
}


def _fault_at(monkeypatch, name: str, call: int, fault) -> None:
    """Make the ``call``-th use of ``name`` (as training calls it) meet ``fault()`` first."""
    if name == "checkpoint_save":
        target, attr = checkpoint, "save"
    else:
        target, attr = trainer, name
    real, calls = getattr(target, attr), [0]

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            fault()
        return real(*args, **kwargs)

    monkeypatch.setattr(target, attr, wrapped)


@pytest.mark.parametrize("where", list(WRITES))
def test_a_full_disk_keeps_what_was_written_and_resume_finishes_the_run(where, disk, data, reference, monkeypatch):
    name, call, file = WRITES[where]
    run = disk.root / "run"
    _fault_at(monkeypatch, name, call, disk.fill)
    with pytest.raises(DiskError) as raised:
        sparseae.train(_model(), data, CONFIG, run, progress=False)
    message = str(raised.value)
    assert message.startswith(f"{run / file}: expected room on the disk to write it, got a full disk (No space left on device)")
    assert f"Free space on the disk that holds {run}" in message and "the files written before are intact" in message
    assert f"Then continue with `sparseae train --resume {run}`." in message
    _check_intact(run)
    before = _contents(run)

    monkeypatch.undo()
    with pytest.raises(SparseAEError, match="full disk"):  # still full: resuming fails again, breaking nothing
        sparseae.resume(run, progress=False)
    _check_intact(run)
    after = _contents(run)
    assert {k: v for k, v in after.items() if "checkpoint" in k} == {k: v for k, v in before.items() if "checkpoint" in k}

    disk.free()
    sparseae.resume(run, progress=False)
    final = checkpoint.read(run / checkpoint.CHECKPOINT_FILE)[0]
    assert sorted(final) == sorted(reference)
    assert all(torch.equal(final[k], reference[k]) for k in final), "resumed weights differ from the uninterrupted run's"
    assert [r["epoch"] for r in rundir.read_metrics(run)] == [1, 2]


def test_a_half_written_metrics_line_is_cut_back(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n')
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(DiskError, match=r"metrics\.jsonl: expected room on the disk to write it, got a full disk"):
        io.append_text(path, '{"epoch": 2}\n')
    monkeypatch.undo()
    assert path.read_text() == '{"epoch": 1}\n'


def test_checkpoint_safetensors_exists_at_every_instant_of_a_save(tmp_path, monkeypatch):
    """Every rename and link inside a save: the latest checkpoint is always there and whole."""
    run = tmp_path
    tensors = {"w": torch.arange(4.0)}
    checkpoint.save(run, tensors, {"step": 1})
    seen = []

    def observe(*args, **kwargs):
        seen.append(checkpoint.read(run / checkpoint.CHECKPOINT_FILE)[1]["step"])  # never missing, never half

    for name in ("replace", "link"):
        real = getattr(os, name)

        def spy(*args, _real=real, **kwargs):
            observe()
            result = _real(*args, **kwargs)
            observe()
            return result

        monkeypatch.setattr(os, name, spy)
    checkpoint.save(run, {"w": torch.arange(5.0)}, {"step": 2})
    checkpoint.save(run, {"w": torch.arange(6.0)}, {"step": 3})
    monkeypatch.undo()
    assert seen and set(seen) == {1, 2, 3}, seen
    assert checkpoint.read(run / checkpoint.CHECKPOINT_FILE)[1]["step"] == 3
    assert checkpoint.read(run / checkpoint.PREVIOUS_FILE)[1]["step"] == 2


def test_without_hard_links_the_previous_checkpoint_is_copied(tmp_path, monkeypatch):
    checkpoint.save(tmp_path, {"w": torch.zeros(3)}, {"step": 1})

    def no_links(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    checkpoint.save(tmp_path, {"w": torch.ones(3)}, {"step": 2})
    assert checkpoint.read(tmp_path / checkpoint.PREVIOUS_FILE)[1]["step"] == 1
    assert checkpoint.read(tmp_path / checkpoint.CHECKPOINT_FILE)[1]["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.PREVIOUS_FILE, checkpoint.CHECKPOINT_FILE]


def _read_only(monkeypatch, root: Path):
    """From now on, creating or writing a file under ``root`` fails as on a read-only file system.

    (A tmpfs cannot be remounted read-only while the run holds its lock file open, so the
    writes are refused here, as the kernel would refuse them.)
    """
    real_open, real_mkstemp = os.open, tempfile.mkstemp
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def refuse(path):
        if Path(path).resolve().is_relative_to(root):
            raise OSError(errno.EROFS, "Read-only file system", str(path))

    def guarded_open(path, flags, *args, **kwargs):
        if flags & writing:
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def guarded_mkstemp(*args, dir=None, **kwargs):
        refuse(Path(dir) / "new")
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)
    monkeypatch.setattr(tempfile, "mkstemp", guarded_mkstemp)


def test_a_run_directory_that_turns_read_only_is_a_clear_error_and_resumes(tmp_path, data, reference, monkeypatch):
    run = tmp_path / "run"
    _fault_at(monkeypatch, "checkpoint_save", 3, lambda: _read_only(monkeypatch, run.resolve()))
    with pytest.raises(DiskError) as raised:
        sparseae.train(_model(), data, CONFIG, run, progress=False)
    assert str(raised.value).startswith(
        f"{run / checkpoint.CHECKPOINT_FILE}: expected a directory this process may write to, "
        "got one it may not (Read-only file system). Make"
    )
    assert f"Then continue with `sparseae train --resume {run}`." in str(raised.value)
    assert cli.main(["train", "--resume", str(run), "--quiet"]) == 2  # still read-only: refused at the lock
    monkeypatch.undo()
    _check_intact(run)
    assert checkpoint.read(run / checkpoint.CHECKPOINT_FILE)[1]["step"] == 8
    sparseae.resume(run, progress=False)
    final = checkpoint.read(run / checkpoint.CHECKPOINT_FILE)[0]
    assert all(torch.equal(final[k], reference[k]) for k in final)


def test_a_new_run_on_a_read_only_disk_exits_2_without_a_traceback(disk, data, capsys):
    disk.read_only(True)
    out = disk.root / "run"
    code = cli.main(["train", "--model", "dense", "--data", data.config.source, "--n-latents", "8", "--k", "2",
                     "--epochs", "1", "--quiet", "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"sparseae: error: {out}: expected a directory this process may write to, got one it may not (Read-only" in err


# --- activation caches -------------------------------------------------------------------------


def _rows(n_batches: int, fault_before: int | None = None, fault=None) -> Iterator[torch.Tensor]:
    for i in range(n_batches):
        if i == fault_before:
            fault()
        yield torch.full((100, D), float(i))


def test_a_full_disk_while_caching_leaves_no_half_cache_and_names_the_shard(disk):
    out = disk.root / "cache"
    with pytest.raises(DiskError) as raised:
        write_shards(_rows(6, fault_before=4, fault=disk.fill), out, rows_per_shard=100)
    assert str(raised.value).startswith(f"{out / 'shard-00004.safetensors'}: expected room on the disk to write it")
    assert str(raised.value).endswith("the 4 shard(s) written so far were removed: write the cache again.")
    assert not out.exists(), "a half-written cache was left behind"
    disk.free()
    write_shards(_rows(6), out, rows_per_shard=100)  # the same directory works once there is room
    assert len(ShardReader(out)) == 600


def test_a_cache_interrupted_in_an_existing_directory_is_emptied_not_removed(tmp_path):
    out = tmp_path / "cache"
    out.mkdir()

    def interrupt():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_shards(_rows(5, fault_before=3, fault=interrupt), out, rows_per_shard=100)
    assert out.is_dir() and [p.name for p in out.iterdir() if p.name != ".lock"] == []
    write_shards(_rows(2), out, rows_per_shard=100)
    assert len(ShardReader(out)) == 200


def test_a_second_process_caching_into_the_same_directory_is_refused(tmp_path):
    out = tmp_path / "cache"
    holder = None

    def second_writer():
        nonlocal holder
        holder = subprocess.run(
            [sys.executable, "-c", "import sys, torch; from sparseae.data.shards import write_shards; "
             "write_shards([torch.zeros(3, 4)], sys.argv[1])", str(out)],
            capture_output=True, text=True, env=ENV,
        )  # fmt: skip

    write_shards(_rows(3, fault_before=2, fault=second_writer), out, rows_per_shard=100)
    assert holder is not None and holder.returncode != 0
    assert (
        f"SparseAEError: {out}: expected a shard directory no other process is writing to, got one locked by pid {os.getpid()}."
        in holder.stderr
    ), holder.stderr
    assert len(ShardReader(out)) == 300  # the first writer's cache is whole


def test_a_shard_that_disappears_mid_run_is_a_clear_error_and_the_run_resumes(tmp_path, monkeypatch):
    cache = write_shards(_rows(8), tmp_path / "cache", rows_per_shard=100)  # 800 rows, 8 shards
    config = DataConfig(source=str(cache), load="stream", test_limit=100, shuffle_buffer=128)
    train_config = dataclasses.replace(CONFIG, epochs=1, checkpoint_every=2)
    moved = tmp_path / "moved.safetensors"
    victim = cache / "shard-00002.safetensors"
    _fault_at(monkeypatch, "checkpoint_save", 1, lambda: victim.rename(moved))
    run = tmp_path / "run"
    with pytest.raises(SparseAEError) as raised:
        sparseae.train(_model(), load_data(config), train_config, run, progress=False)
    assert str(raised.value).startswith(f"{victim}: expected the file to stay in place while it is read, got ")
    monkeypatch.undo()
    _check_intact(run)
    moved.rename(victim)
    result = sparseae.resume(run, progress=False)
    assert [r["epoch"] for r in result.metrics] == [1]

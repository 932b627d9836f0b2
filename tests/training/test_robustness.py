"""Runs that survive abuse: SIGKILL and resume, damaged checkpoints, the run lock, non-finite steps, no unpickling.

The kill test starts ``sparseae train`` in a subprocess that stops itself (SIGSTOP) at a
point drawn from a seeded generator (before a given step, or right after a given
checkpoint), SIGKILLs it there and resumes, again and again; the final weights must equal
an uninterrupted run's bit for bit. Stopping at a state rather than polling for it makes the
test the same on an idle machine and on one whose cores are busy with other work.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

import sparseae
from sparseae import checkpoint, cli
from sparseae.data import DataConfig, load_data
from sparseae.io import read_tensors
from sparseae.training import epoch_order, read_metrics

SRC = str(Path(sparseae.__file__).resolve().parents[1])
# One thread per subprocess: the kill test runs two at once, and oversubscribed OpenMP threads crawl on a busy machine.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p), "OMP_NUM_THREADS": "1"}
CHECKPOINT, PREVIOUS, MODEL = checkpoint.CHECKPOINT_FILE, checkpoint.PREVIOUS_FILE, "model.safetensors"
TIMING = ("epoch_time_s", "samples_per_s")  # wall-clock fields: different in every run
D = 64  # features per row
STEPS_PER_EPOCH = 57  # 3,600 training rows of the `rows` file in batches of 64


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> Path:
    """4,000 rows (3,600 train, 400 test) that are sparse mixtures of 96 random atoms plus noise, as a .npy."""
    rng = np.random.default_rng(0)
    atoms = rng.standard_normal((96, D)).astype(np.float32)
    codes = (rng.random((4000, 96)) < 0.05) * rng.exponential(1.0, (4000, 96))
    x = (codes @ atoms + 0.05 * rng.standard_normal((4000, D))).astype(np.float32)
    path = tmp_path_factory.mktemp("rows") / "rows.npy"
    np.save(path, x)
    return path


@pytest.fixture(scope="module")
def x(rows) -> Tensor:
    return torch.from_numpy(np.load(rows))


@pytest.fixture(scope="module")
def small(rows) -> sparseae.Dataset:
    """1,024 training rows (16 steps of 64) and 256 test rows, loadable again by `resume` from the run's config."""
    return load_data(DataConfig(source=str(rows), train_limit=1024, test_limit=256))


def _dense(**fields: Any) -> sparseae.Autoencoder:
    """A small TopK SAE whose AuxK is active (latents die after 500 samples without firing)."""
    fields = {"n_latents": 128, "dead_window": 500, **fields}
    return sparseae.build_preset("dense", (D,), sparseae.build_sparsity("topk", k=8), seed=0, **fields)


CONFIG = sparseae.TrainConfig(epochs=2, batch_size=64, optimizer="adam", adam_eps=1e-8, checkpoint_every=5, seed=3)


@pytest.fixture(scope="module")
def finished(small, tmp_path_factory) -> Path:
    """A finished 2-epoch run: checkpoint.safetensors at step 32, checkpoint-prev.safetensors at step 30."""
    run = tmp_path_factory.mktemp("finished") / "run"
    sparseae.train(_dense(), small, CONFIG, run, progress=False)
    return run


@pytest.fixture
def run(finished, tmp_path) -> Path:
    """A copy of the finished run, for a test to damage."""
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


# --- helpers -------------------------------------------------------------------------------------


def _train_args(data: Path, out: Path) -> list[str]:
    return ["--model", "dense", "--data", str(data), "--n-latents", "256", "--k", "8", "--aux-k", "32",
            "--dead-window", "1000", "--batch-size", "64", "--epochs", "2", "--checkpoint-every", "3",
            "--seed", "7", "--quiet", "--out", str(out)]  # fmt: skip


def _start(*args: str, stop: str | None = None) -> subprocess.Popen:
    """`sparseae train ARGS` in the background; with ``stop``, it stops itself there (see :data:`_STOPPING`)."""
    command = [sys.executable, "-m", "sparseae.cli", "train", *args]
    if stop is not None:
        command = [sys.executable, "-c", _STOPPING, stop, "train", *args]
    return subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


_STOPPING = """
import os, signal, sys
from sparseae import checkpoint, cli, training
where, at = sys.argv[1].split(":")
at = int(at)
save, step = checkpoint.save, training.Trainer.step

def save_then_stop(run_dir, tensors, meta):
    path = save(run_dir, tensors, meta)
    if where == "after-checkpoint" and meta["step"] >= at:
        os.kill(os.getpid(), signal.SIGSTOP)
    return path

def stop_then_step(self, x, n):
    if where == "before-step" and n >= at:
        os.kill(os.getpid(), signal.SIGSTOP)
    return step(self, x, n)

checkpoint.save, training.Trainer.step = save_then_stop, stop_then_step
sys.exit(cli.main(sys.argv[2:]))
"""
"""A ``sparseae`` process that stops itself (SIGSTOP) ``before-step:N`` (the N-th optimizer step, 1-based)
or ``after-checkpoint:N`` (right after writing the first checkpoint of step N or later)."""


def _stopped(proc: subprocess.Popen, what: str) -> None:
    """Wait until ``proc`` has stopped itself; fail if it ends first. The deadline only guards against a hang."""
    deadline = time.monotonic() + 600
    while True:
        try:
            state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, IndexError):
            state = "?"
        if state == "T":
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before {what}:\n{proc.communicate()[1]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"not stopped at {what} after 600 s:\n{proc.communicate()[1]}")
        time.sleep(0.01)


def _checkpoint_step(run: Path) -> int:
    """The step of RUN's latest checkpoint, read from its header (-1 before the first)."""
    try:
        with open(run / CHECKPOINT, "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    except (OSError, ValueError):
        return -1
    return json.loads(header["__metadata__"]["sparseae"])["step"]


def _epochs_recorded(run: Path) -> int:
    """Whole lines in RUN/metrics.jsonl (a line being written is not counted)."""
    try:
        return (run / "metrics.jsonl").read_text().count("\n")
    except FileNotFoundError:
        return 0


def _kill_stopped(proc: subprocess.Popen, what: str) -> None:
    """SIGKILL ``proc`` once it has stopped itself at ``what``."""
    _stopped(proc, what)
    proc.kill()
    err = proc.communicate()[1]
    assert proc.returncode == -signal.SIGKILL, f"not killed at {what} (exit {proc.returncode}):\n{err}"


def _assert_same_tensors(a: dict[str, Tensor], b: dict[str, Tensor], what: str) -> None:
    assert sorted(a) == sorted(b), what
    for name in a:
        assert torch.equal(a[name], b[name]), f"{what}: {name} differs"


def _without_timing(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def _all_finite(tensors: dict[str, Tensor]) -> bool:
    return all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())


# --- 1. SIGKILL and resume -----------------------------------------------------------------------


def test_sigkill_and_resume_again_and_again_ends_bit_identical(rows, tmp_path):
    run, draw = tmp_path / "cut", random.Random(1234)
    reference = _start(*_train_args(rows, tmp_path / "full"))  # uninterrupted, same seed; runs alongside
    try:
        first, second = draw.randrange(6, 41), draw.randrange(STEPS_PER_EPOCH + 6, 2 * STEPS_PER_EPOCH - 15)  # clear of the ends
        kills = [f"before-step:{first}", f"after-checkpoint:{STEPS_PER_EPOCH}", f"before-step:{second}"]
        killed_at = []
        for i, stop in enumerate(kills):
            args = _train_args(rows, run) if i == 0 else ["--resume", str(run), "--quiet"]
            _kill_stopped(_start(*args, stop=stop), stop)
            killed_at.append(_checkpoint_step(run))
        every = 3  # --checkpoint-every of _train_args: the last checkpoint before a step
        assert killed_at == [(first - 1) // every * every, STEPS_PER_EPOCH, (second - 1) // every * every], killed_at

        last = subprocess.run([sys.executable, "-m", "sparseae.cli", "train", "--resume", str(run), "--quiet"],
                              env=ENV, capture_output=True, text=True, timeout=600)  # fmt: skip
        assert last.returncode == 0, last.stderr
        err = reference.communicate(timeout=600)[1]
        assert reference.returncode == 0, err
    finally:
        if reference.poll() is None:  # a failure above: do not leave it running
            reference.kill()
            reference.communicate()

    _assert_same_tensors(read_tensors(run / MODEL)[0], read_tensors(tmp_path / "full" / MODEL)[0], "model.safetensors")
    _assert_same_tensors(read_tensors(run / CHECKPOINT)[0], read_tensors(tmp_path / "full" / CHECKPOINT)[0], "checkpoint")
    cut, full = read_metrics(run), read_metrics(tmp_path / "full")
    assert [r["epoch"] for r in cut] == [1, 2], cut
    assert _without_timing(cut) == _without_timing(full)


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_kill_around_an_epochs_checkpoint_loses_no_epoch(small, tmp_path, monkeypatch, when):
    # Windows the subprocess kills above would hit only by luck: the epoch's record is in
    # metrics.jsonl and its checkpoint is not yet written ("before"), or just written ("after").
    save = checkpoint.save

    def die_around_save(run_dir, tensors, meta):
        epoch_end = meta["epoch"] == 1 and meta["batch"] == 0
        if epoch_end and when == "before":
            raise KeyboardInterrupt  # what SIGKILL leaves on disk: nothing more is written
        path = save(run_dir, tensors, meta)
        if epoch_end:
            raise KeyboardInterrupt
        return path

    config = dataclasses.replace(CONFIG, checkpoint_every=5)
    monkeypatch.setattr(checkpoint, "save", die_around_save)
    with pytest.raises(KeyboardInterrupt):
        sparseae.train(_dense(), small, config, tmp_path / "run", progress=False)
    monkeypatch.setattr(checkpoint, "save", save)
    assert _checkpoint_step(tmp_path / "run") == (15 if when == "before" else 16)
    assert [r["epoch"] for r in read_metrics(tmp_path / "run")] == [1]  # the record comes first

    sparseae.resume(tmp_path / "run", progress=False)
    assert [r["epoch"] for r in read_metrics(tmp_path / "run")] == [1, 2]
    sparseae.train(_dense(), small, config, tmp_path / "reference", progress=False)
    _assert_same_tensors(read_tensors(tmp_path / "run" / MODEL)[0], read_tensors(tmp_path / "reference" / MODEL)[0], "model")


@pytest.mark.parametrize(
    ("interrupt_at", "saved"),
    [((0, 5), "the checkpoint of step 5 (batch 5 of epoch 1)"), ((1, 0), "the checkpoint of step 16 (the end of epoch 1)")],
)
def test_ctrl_c_says_which_checkpoint_was_saved_and_resume_continues_there(small, tmp_path, monkeypatch, capsys, interrupt_at,
                                                                          saved):  # fmt: skip
    run = tmp_path / "run"
    monkeypatch.setattr(checkpoint, "save", _ctrl_c_after(checkpoint.save, interrupt_at))
    with pytest.raises(KeyboardInterrupt, match=re.escape(f"{run} holds {saved}: `sparseae train --resume {run}` continues")):
        sparseae.train(_dense(), small, CONFIG, run, progress=False)
    monkeypatch.undo()
    assert _checkpoint_step(run) == int(saved.split()[4])
    assert sparseae.resume(run, progress=False).metrics[-1]["step"] == 32


def _ctrl_c_after(save, at: tuple[int, int]):
    """``save``, then Ctrl-C once the checkpoint at (epoch, batch) ``at`` is written."""

    def save_then_ctrl_c(run_dir, tensors, meta):
        path = save(run_dir, tensors, meta)
        if (meta["epoch"], meta["batch"]) == at:
            raise KeyboardInterrupt
        return path

    return save_then_ctrl_c


def test_ctrl_c_in_the_cli_says_what_was_saved_and_exits_130(rows, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    monkeypatch.setattr(checkpoint, "save", _ctrl_c_after(checkpoint.save, (1, 0)))
    assert cli.main(["train", *_train_args(rows, run), "--checkpoint-every", "1000"]) == 130
    message = f"sparseae: interrupted; {run} holds the checkpoint of step 57 (the end of epoch 1): `sparseae train --resume"
    assert message in capsys.readouterr().err


def test_ctrl_c_before_the_first_checkpoint_says_nothing_was_saved(small, tmp_path, monkeypatch):
    def ctrl_c(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", ctrl_c)
    with pytest.raises(KeyboardInterrupt, match="holds no checkpoint yet .stopped before the first one.: start it again"):
        sparseae.train(_dense(), small, CONFIG, tmp_path / "run", progress=False)


# --- 2. damaged checkpoints ----------------------------------------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_a_tensor_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")  # after the header: tensor bytes only
    data[start + (len(data) - start) // 3] ^= 0xFF
    path.write_bytes(bytes(data))


def _garble_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[8:24] = b"\x00" * 16
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _flip_a_tensor_byte, _garble_header], ids=lambda f: f.__name__.strip("_"))
def test_a_damaged_checkpoint_falls_back_to_the_previous_one(run, damage, caplog):
    final, records = read_tensors(run / MODEL)[0], read_metrics(run)
    assert _checkpoint_step(run) == 32 and checkpoint.read(run / PREVIOUS)[1]["step"] == 30
    damage(run / CHECKPOINT)
    with caplog.at_level(logging.WARNING, logger="sparseae"):
        result = sparseae.resume(run, progress=False)
    assert "checkpoint.safetensors is unusable" in caplog.text
    _assert_same_tensors(read_tensors(run / MODEL)[0], final, "model.safetensors after the fallback")
    _assert_same_tensors(result.model.state_dict(), final, "the resumed model")
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]
    assert _without_timing(read_metrics(run)) == _without_timing(records)
    assert checkpoint.read(run / CHECKPOINT)[1]["step"] == 32  # whole again


def test_both_checkpoints_damaged_is_a_clear_error(run, capsys):
    _truncate(run / CHECKPOINT)
    _flip_a_tensor_byte(run / PREVIOUS)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"}
    message = (
        rf"{re.escape(str(run))}: expected a readable checkpoint\.safetensors \(or checkpoint-prev\.safetensors\), "
        r"got checkpoint\.safetensors: an unreadable one \([^;]+\); checkpoint-prev\.safetensors: [^;]+\. "
        r"Start the run again in a new directory\."
    )
    with pytest.raises(sparseae.SparseAEError, match=message):
        sparseae.resume(run, progress=False)
    assert cli.main(["train", "--resume", str(run), "--quiet"]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"} == before


# --- 3. the run lock -----------------------------------------------------------------------------


def test_a_second_writer_is_refused_while_a_run_trains_and_admitted_once_it_is_killed(rows, tmp_path, capsys):
    run = tmp_path / "run"
    proc = _start(*_train_args(rows, run), stop="after-checkpoint:3")  # holds the lock, stopped, until killed
    message = (
        rf"{re.escape(str(run))}: expected a run directory no other process is writing to, got one locked by pid {proc.pid}\. "
        r"Wait for that run to finish \(or stop it\), or choose another --out\."
    )
    try:
        _stopped(proc, "its first checkpoint")
        with pytest.raises(sparseae.SparseAEError, match=message):
            sparseae.resume(run, progress=False)
        assert cli.main(["train", "--resume", str(run), "--quiet"]) == 2
        assert re.search(message, capsys.readouterr().err)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    result = sparseae.resume(run, progress=False)  # the kernel dropped the dead process's lock
    assert [r["epoch"] for r in result.metrics] == [1, 2] and result.metrics[-1]["step"] == 2 * STEPS_PER_EPOCH
    assert (run / ".lock").read_text() == f"pid {os.getpid()}"


# --- 4. non-finite steps -------------------------------------------------------------------------


def _with_nan_rows(x: Tensor, n_train: int, nan_rows: list[int]) -> sparseae.Dataset:
    """An in-memory data set (no config: built directly, so nothing checked its values) with NaN training rows."""
    train = x[:n_train].clone()
    train[nan_rows] = float("nan")
    return sparseae.Dataset("with-nan", train, x[3600:3856].clone())


def _bad_batches(n: int, nan_rows: list[int], seed: int, epoch: int, batch_size: int = 64) -> list[int]:
    """The 0-based batches of an epoch that hold a NaN row."""
    order = epoch_order(n, seed, epoch)
    return [i for i, b in enumerate(order.split(batch_size)) if set(b.tolist()) & set(nan_rows)]


NAN_ROWS = [5, 400, 777]


def test_steps_on_nan_rows_are_skipped_and_counted(x, tmp_path):
    data = _with_nan_rows(x, 1024, NAN_ROWS)
    result = sparseae.train(_dense(pre_bias="zeros"), data, CONFIG, tmp_path / "run", progress=False)
    expected = [len(_bad_batches(1024, NAN_ROWS, CONFIG.seed, epoch)) for epoch in range(2)]
    assert all(n >= 1 for n in expected)
    assert [r["skipped_steps"] for r in result.metrics] == expected
    assert [r["skipped_steps"] for r in read_metrics(tmp_path / "run")] == expected
    assert _all_finite(result.model.state_dict()) and _all_finite(read_tensors(tmp_path / "run" / MODEL)[0])
    assert all(np.isfinite(v) for r in result.metrics for v in r.values())


def test_nan_rows_do_not_poison_the_data_dependent_initialisation(x):
    data = _with_nan_rows(x, 1024, NAN_ROWS)
    result = sparseae.train(_dense(), data, CONFIG, progress=False)  # pre_bias="median", the dense default
    assert [r["skipped_steps"] for r in result.metrics] == [len(_bad_batches(1024, NAN_ROWS, CONFIG.seed, e)) for e in (0, 1)]
    assert _all_finite(result.model.state_dict())


def test_bad_steps_in_a_row_are_counted_across_an_epochs_end(x):
    n, seed = 256, 3  # 4 steps per epoch
    order0, order1 = epoch_order(n, seed, 0), epoch_order(n, seed, 1)
    candidates = set(order0[128:].tolist()) & set(order1[:128].tolist())  # in the last 2 batches of epoch 1, the first 2 of 2
    nan_rows = []
    for order, wanted in ((order0, (2, 3)), (order1, (0, 1))):
        for b in wanted:
            nan_rows.append(min(candidates & set(order[64 * b : 64 * (b + 1)].tolist())))
    assert _bad_batches(n, nan_rows, seed, 0) == [2, 3] and _bad_batches(n, nan_rows, seed, 1) == [0, 1]
    config = sparseae.TrainConfig(epochs=3, batch_size=64, optimizer="adam", seed=seed, max_bad_steps=3)
    message = (
        r"training step 5: expected a finite loss and finite gradients, got NaN or infinity "
        r"\(or gradients beyond float32's range\) in 3 steps in a row, from step 3"
    )
    with pytest.raises(sparseae.SparseAEError, match=message):
        sparseae.train(_dense(pre_bias="zeros"), _with_nan_rows(x, n, nan_rows), config, progress=False)


def test_an_absurd_learning_rate_stops_naming_the_step_and_keeps_the_last_good_checkpoint(small, tmp_path):
    # lr 1e20: after the first step the weights are ~1e20 and the second step's loss is NaN.
    config = sparseae.TrainConfig(epochs=2, batch_size=64, lr=1e20, optimizer="adam", checkpoint_every=3, seed=3)
    message = (
        r"training step (\d+): expected a finite loss and finite gradients, got NaN or infinity "
        r"\(or gradients beyond float32's range\) in 10 steps in a row, from step (\d+)\. Start again with a lower "
        r"learning rate \(--lr 1e\+20 now\), or clean the data of NaN/inf; what the run wrote before is kept intact\."
    )
    with pytest.raises(sparseae.SparseAEError, match=message) as error:
        sparseae.train(_dense(), small, config, tmp_path / "run", progress=False)
    stop, first = map(int, re.search(message, str(error.value)).groups())
    assert stop == first + 9 and first >= 2
    tensors, meta = checkpoint.read(tmp_path / "run" / CHECKPOINT)  # checksum verified
    assert meta["step"] < stop and _all_finite(tensors)
    assert not (tmp_path / "run" / MODEL).exists() and read_metrics(tmp_path / "run") == []  # no epoch finished


def test_a_divergence_after_an_epoch_leaves_model_safetensors_finite(x, tmp_path):
    # One step per epoch, stopping at the first bad step: epoch 1 ends (model.safetensors written), step 2 diverges.
    data = sparseae.Dataset("one-batch", x[:64].clone(), x[3600:3856].clone())
    config = sparseae.TrainConfig(epochs=3, batch_size=64, lr=1e20, optimizer="adam", max_bad_steps=1, seed=3)
    with pytest.raises(
        sparseae.SparseAEError, match=r"training step 2: .* in 1 steps in a row, from step 2\. Start again with a lower learning"
    ):
        sparseae.train(_dense(), data, config, tmp_path / "run", progress=False)
    model = read_tensors(tmp_path / "run" / MODEL)[0]
    tensors, meta = checkpoint.read(tmp_path / "run" / CHECKPOINT)
    assert meta["step"] == 1 and _all_finite(model) and _all_finite(tensors)
    _assert_same_tensors(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, "model vs checkpoint")
    assert [r["epoch"] for r in read_metrics(tmp_path / "run")] == [1]


def test_max_bad_steps_0_switches_the_check_off(x, tmp_path):
    data = _with_nan_rows(x, 1024, NAN_ROWS)
    config = sparseae.TrainConfig(epochs=1, batch_size=64, optimizer="adam", seed=3, max_bad_steps=0)
    result = sparseae.train(_dense(pre_bias="zeros"), data, config, progress=False)
    assert result.metrics[0]["skipped_steps"] == 0
    assert not _all_finite(result.model.state_dict())  # the NaN batches were stepped on

    message = (
        r"checkpoint tensor model\.[\w.]+: expected finite values, got NaN or infinity\. "
        r"Training diverged \(learning rate too high, or NaN/inf in the data\) and nothing more was written"
    )
    with pytest.raises(sparseae.SparseAEError, match=message):  # a run directory still refuses non-finite weights
        sparseae.train(_dense(pre_bias="zeros"), data, config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / CHECKPOINT).exists() and not (tmp_path / "run" / MODEL).exists()


# --- 5. never unpickle ---------------------------------------------------------------------------


class _Plant:
    """Unpickling this runs ``open(marker, "w")``: code chosen by whoever wrote the file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def _objects(marker: Path) -> np.ndarray:
    array = np.empty((2, 2), dtype=object)
    array[...] = [[_Plant(marker)] * 2] * 2
    return array


def _write_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(_Plant(marker)))


def _write_torch_save(path: Path, marker: Path) -> None:
    torch.save(_Plant(marker), path)  # a zip holding data.pkl, as torch.save writes any object


def _write_npy(path: Path, marker: Path) -> None:
    with open(path, "wb") as f:
        np.save(f, _objects(marker), allow_pickle=True)


def _write_npz(path: Path, marker: Path) -> None:
    with open(path, "wb") as f:
        np.savez(f, x=_objects(marker))


# name -> (write a file at path that creates marker when unpickled, unpickle it the unsafe way -> what to close)
PAYLOADS: dict[str, tuple[Callable[[Path, Path], None], Callable[[Path], Any]]] = {
    "pickle": (_write_pickle, lambda path: [pickle.loads(path.read_bytes())]),
    "torch.save": (_write_torch_save, lambda path: [torch.load(path, weights_only=False)]),
    "npy-objects": (_write_npy, lambda path: np.load(path, allow_pickle=True).ravel()),
    "npz-objects": (_write_npz, lambda path: np.load(path, allow_pickle=True)["x"].ravel()),
}


def _plant(name: str, path: Path, marker: Path) -> None:
    """Write payload ``name`` at ``path``, after showing on a copy that unpickling it does create ``marker``."""
    write, unpickle = PAYLOADS[name]
    proof = path.with_name("proof.bin")  # torch.load reads a *.safetensors path with safetensors: a neutral name
    write(proof, marker)
    assert not marker.exists()
    for f in unpickle(proof):
        f.close()
    assert marker.exists(), "the payload is inert: the test could not fail"
    marker.unlink()
    proof.unlink()
    write(path, marker)


@pytest.mark.parametrize("payload", ["pickle", "torch.save"])
def test_a_pickle_as_model_safetensors_is_refused_unrun(run, payload, tmp_path):
    marker = tmp_path / "pwned"
    _plant(payload, run / MODEL, marker)
    with pytest.raises(sparseae.SparseAEError, match=r"model\.safetensors: expected a valid safetensors file, got an unreadable"):
        sparseae.load(run)
    assert cli.main(["eval", str(run), "--quiet"]) == 2
    assert not marker.exists()


@pytest.mark.parametrize("payload", ["pickle", "torch.save"])
def test_a_pickle_as_a_checkpoint_is_skipped_or_refused_unrun(run, payload, tmp_path):
    marker = tmp_path / "pwned"
    final = read_tensors(run / MODEL)[0]
    _plant(payload, run / CHECKPOINT, marker)
    sparseae.resume(run, progress=False)  # falls back to checkpoint-prev.safetensors
    assert not marker.exists()
    _assert_same_tensors(read_tensors(run / MODEL)[0], final, "model.safetensors after the fallback")

    _plant(payload, run / CHECKPOINT, marker)
    _plant(payload, run / PREVIOUS, marker)
    with pytest.raises(sparseae.SparseAEError, match=r"expected a readable checkpoint\.safetensors \(or checkpoint-prev"):
        sparseae.resume(run, progress=False)
    assert not marker.exists()


PT_REFUSED = r"expected tensors saved with torch\.save \(loaded with weights_only=True\), got a file that cannot be loaded safely"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize(
    ("payload", "suffix", "message"),
    [
        ("torch.save", ".pt", PT_REFUSED),
        ("pickle", ".pt", PT_REFUSED),
        ("torch.save", ".pth", PT_REFUSED),
        ("npy-objects", ".npy", r"expected numbers \(float, int or bool\), got dtype object"),
        ("npz-objects", ".npz", r"expected a \.npz file of numeric arrays, got unreadable"),
    ],
)
def test_a_pickle_as_a_data_file_is_refused_unrun(payload, suffix, message, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / f"data{suffix}"
    _plant(payload, path, marker)
    with pytest.raises(sparseae.SparseAEError, match=message):
        load_data(DataConfig(source=str(path)))
    assert not marker.exists()

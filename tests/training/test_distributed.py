"""torchrun with 2 CPU processes (gloo) trains the same model as 1 process with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sparseae.io import read_tensors

TOLERANCE = 1e-5
"""Largest weight difference allowed: the ranks' gradients are summed in another order than one
process sums its batch, so the two runs agree to float32 rounding, not bit for bit."""

HANG = 600
"""Seconds after which a run counts as hung: a deadline against a deadlock, not a speed limit, so it
lies far beyond any run here on a loaded machine (`make test-loaded`)."""

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")


@pytest.fixture(scope="module")
def structured(tmp_path_factory) -> Path:
    """Rows that are sparse combinations of 64 random atoms, plus noise."""
    rng = np.random.default_rng(0)
    atoms = rng.standard_normal((64, 32))
    codes = (rng.random((4096, 64)) < 0.05) * rng.random((4096, 64))
    path = tmp_path_factory.mktemp("ddp") / "rows.npy"
    np.save(path, (codes @ atoms + 0.01 * rng.standard_normal((4096, 32))).astype(np.float32))
    return path


def run(argv: list[str], processes: int, cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes == 1:
        cmd = [sys.executable, "-m", "sparseae", *argv]
    else:  # torchrun, exactly as the docs say to start it
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", "sparseae", *argv]  # fmt: skip
    # A session of its own, so that a hang can be killed with every worker torchrun started.
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _, err = proc.communicate(timeout=HANG)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} did not finish in {HANG} s:\n{err[-3000:]}")
    assert proc.returncode == 0, err[-3000:]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return read_tensors(run_dir / "model.safetensors")[0]


def assert_same_model(a: Path, b: Path, tolerance: float = TOLERANCE) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        diff = (wa[key].double() - wb[key].double()).abs().max().item()
        assert diff <= tolerance, f"{key} differs by {diff}"


CASES = {
    # an odd global batch: the ranks get 128 and 127 rows, weighted by their share
    "topk+auxk": ["--model", "dense", "--sparsity", "topk", "--k", "4", "--aux-k", "32", "--dead-window", "500",
                  "--batch-size", "255"],
    "batchtopk": ["--model", "dense", "--sparsity", "batchtopk", "--k", "4", "--batch-size", "256"],
    "jumprelu": ["--model", "dense", "--sparsity", "jumprelu", "--batch-size", "256"],
    # the mean activation of the global batch, with its all-reduced gradient; odd, so the shares differ
    "kl": ["--model", "dense", "--sparsity", "kl", "--batch-size", "255"],
    # each unit's ceil(0.05 * 255) = 13 largest over the global batch, not 7 of each rank's 128 or 127
    "wta": ["--model", "dense", "--sparsity", "wta", "--batch-size", "255"],
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_train_the_model_one_process_trains(structured, tmp_path, case):
    argv = ["train", "--data", str(structured), *CASES[case], "--n-latents", "128", "--epochs", "2", "--quiet"]
    run([*argv, "--out", str(tmp_path / "one")], 1, tmp_path)
    run([*argv, "--out", str(tmp_path / "two")], 2, tmp_path)
    assert_same_model(tmp_path / "one", tmp_path / "two")
    one = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert len(one) == len(two) == 2
    for a, b in zip(one, two, strict=True):  # the epoch's sums are reduced over the ranks
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["test_fvu"] == pytest.approx(b["test_fvu"], rel=1e-4, abs=1e-6)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    if case == "topk+auxk":
        assert max(r["train_aux"] for r in one) > 0  # AuxK was at work, so its reduced counts and scale were tested


@pytest.mark.slow
def test_the_conv_model_and_resume_under_torchrun(tmp_path):
    argv = ["train", "--train-limit", "1024", "--test-limit", "256", "--epochs", "2", "--batch-size", "128", "--quiet"]
    run([*argv, "--out", str(tmp_path / "one")], 1, tmp_path)
    run([*argv, "--out", str(tmp_path / "two")], 2, tmp_path)
    assert_same_model(tmp_path / "one", tmp_path / "two")

    # Back to the state after epoch 1 (the previous checkpoint), then resume with torchrun.
    again = tmp_path / "again"
    shutil.copytree(tmp_path / "two", again)
    (again / "checkpoint-prev.safetensors").replace(again / "checkpoint.safetensors")
    (again / "model.safetensors").unlink()
    run(["train", "--resume", str(again), "--quiet"], 2, tmp_path)
    assert_same_model(tmp_path / "two", again, tolerance=0.0)  # the same ranks replay the same steps
    assert len((again / "metrics.jsonl").read_text().splitlines()) == 2

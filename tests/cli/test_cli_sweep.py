"""``sparseae sweep``: a grid over any settings, each run equal to `sparseae train` with its settings."""

import pytest
import torch

import sparseae
from sparseae.cli import main
from sparseae.rundir import read_config

BASE = ["--model", "dense", "--n-latents", "32", "--steps", "10", "--train-limit", "1024", "--test-limit", "256", "--quiet"]


def run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    return code, capsys.readouterr()


def assert_same_model(a, b):
    for (key, x), y in zip(sparseae.load(a).state_dict().items(), sparseae.load(b).state_dict().values(), strict=True):
        assert torch.equal(x, y), key


def test_sweep_writes_runs_and_comparison(tmp_path, capsys):
    code, out = run(["sweep", *BASE, "--param", "k", "--values", "2, 6", "--out", str(tmp_path / "s")], capsys)
    assert code == 0
    assert "sweep: 2 models" in out.out and "k=2" in out.out and "L0     2.00" in out.out
    assert (tmp_path / "s" / "compare.html").read_text().count("<td>k=") == 2


def test_sweep_over_a_model_field(tmp_path, capsys):
    code, _ = run(["sweep", *BASE, "--param", "n-latents", "--values", "16,24", "--k", "4", "--out", str(tmp_path / "s")], capsys)
    assert code == 0
    assert sparseae.load(tmp_path / "s" / "n_latents=24").n_latents == 24


def test_grid_over_k_and_lr_equals_training_each_alone(tmp_path, capsys):
    grid = ["--param", "k", "--values", "2,6", "--param", "lr", "--values", "1e-4,3e-3"]
    code, out = run(["sweep", *BASE, *grid, "--out", str(tmp_path / "s")], capsys)
    assert code == 0 and "sweep: 4 models" in out.out
    names = ["k=2,lr=0.0001", "k=2,lr=0.003", "k=6,lr=0.0001", "k=6,lr=0.003"]
    assert sorted(p.name for p in (tmp_path / "s").iterdir() if p.is_dir()) == names
    assert (tmp_path / "s" / "compare.html").read_text().count("<td>k=") == 4
    assert read_config(tmp_path / "s" / "k=6,lr=0.003")["train"]["lr"] == 3e-3
    assert run(["train", *BASE, "--k", "6", "--lr", "3e-3", "--out", str(tmp_path / "alone")], capsys)[0] == 0
    assert_same_model(tmp_path / "s" / "k=6,lr=0.003", tmp_path / "alone")


def test_sweep_over_seed_equals_training_each_alone_on_the_same_batches(tmp_path, capsys):
    code, _ = run(["sweep", *BASE, "--seed", "5", "--param", "seed", "--values", "1,2", "--out", str(tmp_path / "s")], capsys)
    assert code == 0
    train = read_config(tmp_path / "s" / "seed=2")["train"]
    assert (train["seed"], train["data_seed"]) == (2, 5)
    alone = ["train", *BASE, "--seed", "2", "--data-seed", "5", "--out", str(tmp_path / "alone")]
    assert run(alone, capsys)[0] == 0
    assert_same_model(tmp_path / "s" / "seed=2", tmp_path / "alone")
    again = ["train", "--config", str(tmp_path / "s" / "seed=1" / "config.json"), "--out", str(tmp_path / "again"), "--quiet"]
    assert run(again, capsys)[0] == 0  # a run of a sweep trained again from its config.json: the same model
    assert_same_model(tmp_path / "s" / "seed=1", tmp_path / "again")
    assert not torch.equal(sparseae.load(tmp_path / "s" / "seed=1").W_dec, sparseae.load(tmp_path / "s" / "seed=2").W_dec)


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        (["--param", "kk", "--values", "1"], "--param: expected a hyperparameter of topk (k, alpha), a model field"),
        (["--param", "kk", "--values", "1"], "got 'kk'. Did you mean k?"),
        (["--param", "lrr", "--values", "1"], "Did you mean lr?"),
        (
            ["--param", "k", "--values", "2,x"],
            "--values of k: expected int, got 'x' (in '2,x'). Give comma-separated values of k.",
        ),
        (["--param", "lr", "--values", "1e-3,fast"], "--values of lr: expected float, got 'fast' (in '1e-3,fast')"),
        (["--param", "lr", "--values", "1e-3,-1"], "lr: expected"),
        (["--param", "batch-size", "--values", "64,128"], "--param: expected a setting that may differ between models"),
        (["--param", "k", "--values", "2", "--param", "lr"], "--values: expected one --values after each --param, got 2"),
        (["--param", "k", "--values", "2", "--param", "k", "--values", "4"], "--param: expected each setting once"),
        (["--param", "k", "--values", ","], "--values of k: expected one or more comma-separated values, got ','"),
    ],
)
def test_sweep_errors(grid, message, tmp_path, capsys):
    code, out = run(["sweep", *BASE, *grid, "--out", str(tmp_path / "s")], capsys)
    assert code == 2 and message in out.err and "Traceback" not in out.err
    assert not (tmp_path / "s").exists()

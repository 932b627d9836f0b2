"""A user's own constraint, from their own module: API, CLI, save/load, config file."""

import json
import sys
from pathlib import Path

import pytest

import sparseae
from sparseae.cli import main

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--train-limit", "2048", "--test-limit", "512", "--quiet"]


@pytest.fixture(autouse=True)
def _examples_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    yield
    for name in [m for m in sys.modules if m.startswith("examples")]:
        del sys.modules[name]


def test_hand_written_kl_trains_exactly_like_the_built_in_one(small):
    from examples.my_constraints import MyKL

    config = sparseae.TrainConfig(epochs=2, loss="half_sse", lr=3e-3)
    runs = []
    for sparsity in (MyKL(rho=0.05, beta=3.0), sparseae.build_sparsity("kl", rho=0.05, beta=3.0)):
        model = sparseae.build_preset("classic", small.sample_shape, sparsity, seed=0)
        runs.append(sparseae.train(model, small, config, progress=False).metrics[-1])
    assert runs[0]["test_mse"] == pytest.approx(runs[1]["test_mse"], rel=1e-4)
    assert runs[0]["test_mean_activation"] == pytest.approx(runs[1]["test_mean_activation"], rel=1e-4)


def test_cli_trains_saves_and_loads_a_user_constraint(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", "dense", "--n-latents", "64", "--steps", "20", "--out", str(out), *SMALL]
    assert main([*argv, "--sparsity", "examples.my_constraints:half_norm", "--weight", "0.01"]) == 0
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["sparsity"] == {"name": "examples.my_constraints:half_norm", "params": {"weight": 0.01}}
    model = sparseae.load(out)
    assert type(model.sparsity).__name__ == "half_norm" and model.sparsity.weight == 0.01


def test_penalty_function_value():
    from examples.my_constraints import half_norm

    constraint = half_norm(weight=0.5)
    code = constraint(sparseae.Dataset("x", *[__import__("torch").tensor([[4.0, -1.0], [9.0, 1.0]])] * 2).train)
    # relu -> [[4, 0], [9, 1]]; 0.5 * (2 + 0 + 3 + 1) / 2 = 1.5
    assert constraint.penalty(code, code).item() == pytest.approx(1.5, rel=1e-5)
    assert constraint.get_params() == {"weight": 0.5}


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nosuchmodule:Thing", r"expected module:ClassName naming an importable Sparsity subclass, got 'nosuchmodule:Thing'"),
        ("examples.my_constraints:Nope", r"got 'examples\.my_constraints:Nope' \(module 'examples\.my_constraints' has no"),
        (
            "examples.my_constraints:torch",
            r"expected a subclass of sparseae\.Sparsity, got 'examples\.my_constraints:torch', a module",
        ),
    ],
)
def test_bad_user_constraint_names(name, message):
    with pytest.raises(sparseae.SparseAEError, match=message):
        sparseae.build_sparsity(name)


def test_config_file_sets_flag_defaults_and_flags_win(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"model": "dense", "n-latents": 48, "k": 5, "steps": 10, "lr": 0.002}))
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--k", "6", "--out", str(out), *SMALL]) == 0
    run = json.loads((out / "config.json").read_text())
    assert run["model"]["config"]["n_latents"] == 48 and run["model"]["sparsity"]["params"]["k"] == 6
    assert run["train"]["steps"] == 10 and run["train"]["lr"] == 0.002


def test_config_file_with_an_unknown_key(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"epoks": 3}))
    assert main(["train", "--config", str(config), *SMALL]) == 2
    assert "c.json: key 'epoks': expected a flag of this command" in capsys.readouterr().err


def test_a_hyperparameter_that_clashes_with_a_flag(tmp_path, monkeypatch, capsys):
    (tmp_path / "clash.py").write_text(
        "import torch, sparseae\n"
        "class Clash(sparseae.Sparsity):\n"
        "    def __init__(self, lr: float = 0.1):\n"
        "        super().__init__()\n"
        "        self.lr = lr\n"
        "    def forward(self, pre):\n"
        "        return torch.relu(pre)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["train", "--sparsity", "clash:Clash", *SMALL]) == 2
    assert "hyperparameter 'lr': expected a name that is not already a flag of `sparseae train`" in capsys.readouterr().err

import pytest
import torch

import sparseae
from sparseae.cli import main


def family(data, ks=(4, 8)):
    return {f"k={k}": sparseae.build_preset("dense", data.sample_shape, sparseae.build_sparsity("topk", k=k), seed=0,
                                            n_latents=32) for k in ks}  # fmt: skip


def test_sweep_equals_separate_runs(small, tmp_path):
    config = sparseae.TrainConfig(epochs=2)
    swept = sparseae.sweep(family(small), small, config, tmp_path / "sweep", progress=False)
    for name, model in family(small).items():
        alone = sparseae.train(model, small, config, progress=False)
        for (key, a), b in zip(alone.model.state_dict().items(), swept[name].model.state_dict().values(), strict=True):
            assert torch.equal(a, b), (name, key)
        assert swept[name].metrics[-1]["test_fvu"] == alone.metrics[-1]["test_fvu"]
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == ["k=4", "k=8"]
    assert sparseae.load(tmp_path / "sweep" / "k=8").sparsity.k == 8


def test_cli_sweep_writes_runs_and_comparison(tmp_path, capsys):
    argv = ["sweep", "--model", "dense", "--n-latents", "32", "--param", "k", "--values", "2, 6", "--steps", "10",
            "--train-limit", "1024", "--test-limit", "256", "--out", str(tmp_path / "s"), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "sweep: 2 models" in out and "k=2" in out and "L0     2.00" in out
    page = (tmp_path / "s" / "compare.html").read_text()
    assert page.count("<td>k=") == 2


def test_cli_sweep_over_a_model_field(tmp_path, capsys):
    argv = ["sweep", "--model", "dense", "--param", "n-latents", "--values", "16,24", "--k", "4", "--steps", "5",
            "--train-limit", "512", "--test-limit", "128", "--out", str(tmp_path / "s"), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert sparseae.load(tmp_path / "s" / "n_latents=24").n_latents == 24


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--param", "kk", "--values", "1"], "--param: expected a hyperparameter of topk (k, alpha) or a model field"),
     (["--param", "k", "--values", "2,x"], "--values: expected int, got '2,x'")],
)  # fmt: skip
def test_cli_sweep_bad_param(extra, message, tmp_path, capsys):
    argv = [
        "sweep",
        "--model",
        "dense",
        "--steps",
        "2",
        "--train-limit",
        "256",
        "--test-limit",
        "64",
        "--out",
        str(tmp_path / "s"),
    ]
    try:
        code = main([*argv, *extra, "--quiet"])
    except SystemExit as e:
        code = e.code
    assert code == 2 and message in capsys.readouterr().err

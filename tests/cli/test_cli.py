import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import sparseae
from sparseae.cli import main
from sparseae.training import probe

SMALL = ["--train-limit", "512", "--test-limit", "256", "--epochs", "1", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *SMALL, "--out", str(out), "--seed", "2", "--weight", "0.0002"]) == 0
    return out


def test_train_writes_a_run_and_prints_its_figures(run_dir, capsys):
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["seed"] == 2 and config["model"]["sparsity"]["params"] == {"weight": 0.0002}
    assert (run_dir / "reconstructions.png").read_bytes()[:4] == b"\x89PNG"
    assert sparseae.load(run_dir).n_latents == 32


def test_a_run_trains_again_from_its_own_config_json(run_dir, tmp_path, capsys):
    again = tmp_path / "again"
    assert main(["train", "--config", str(run_dir / "config.json"), "--out", str(again), "--quiet"]) == 0
    assert json.loads((again / "config.json").read_text()) == json.loads((run_dir / "config.json").read_text())
    last = [json.loads((d / "metrics.jsonl").read_text().splitlines()[-1]) for d in (run_dir, again)]
    assert last[1]["test_mse"] == pytest.approx(last[0]["test_mse"], rel=1e-5)


def test_train_prints_run_and_metrics(tmp_path, capsys):
    assert main(["train", *SMALL, "--out", str(tmp_path / "r"), "--sparsity", "none", "--steps", "3"]) == 0
    out = capsys.readouterr().out
    assert f"run: {tmp_path / 'r'}" in out and "mse" in out and "dead_units" in out


def test_eval_recomputes_the_test_metrics(run_dir, capsys):
    assert main(["eval", str(run_dir), "--quiet"]) == 0
    out = capsys.readouterr().out
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    line = next(line for line in out.splitlines() if line.strip().startswith("mse"))
    assert float(line.split()[1]) == pytest.approx(last["test_mse"], rel=1e-5)


def test_eval_with_a_linear_probe(run_dir, capsys):
    assert main(["eval", str(run_dir), "--probe", "--quiet"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "linear_probe" in line)
    expected = probe(sparseae.load(run_dir), sparseae.load_mnist().subset(512, 256))
    assert float(line.split()[1]) == pytest.approx(expected, abs=1e-5)


def test_encode_default_and_from_file(run_dir, tmp_path, capsys):
    assert main(["encode", str(run_dir), "--output", str(tmp_path / "codes.npy"), "--quiet"]) == 0
    codes = np.load(tmp_path / "codes.npy")
    assert codes.shape == (256, 32) and codes.dtype == np.float32 and (codes >= 0).all()
    images = (sparseae.load_mnist().test[:256, 0].numpy() * 255).round().astype(np.uint8)  # (N, 28, 28) uint8
    np.save(tmp_path / "in.npy", images)
    assert (
        main(["encode", str(run_dir), "--input", str(tmp_path / "in.npy"), "--output", str(tmp_path / "c2.npy"), "--quiet"]) == 0
    )
    np.testing.assert_allclose(np.load(tmp_path / "c2.npy"), codes, atol=1e-5)


def test_encode_refuses_to_overwrite(run_dir, tmp_path, capsys):
    target = tmp_path / "codes.npy"
    target.write_bytes(b"keep me")
    assert main(["encode", str(run_dir), "--output", str(target), "--quiet"]) == 2
    assert "expected a path that does not exist yet" in capsys.readouterr().err and target.read_bytes() == b"keep me"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "nowhere"], "nowhere: expected a run or model directory"),
        (["train", "--batch-size", "0", *SMALL], "batch_size: expected an integer >= 1, got 0"),
        (["train", "--weight", "-1", *SMALL], "l1 weight: expected a finite number >= 0, got -1.0"),
        (["train", "--data", "no/such/dir", *SMALL], "no/such/dir' (no such file or directory). Check the path"),
        (["train", "--device", "cuda:7", *SMALL], "device: expected a device this machine has"),
    ],
)
def test_user_errors_exit_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2


def test_unknown_sparsity_lists_choices(capsys):
    assert main(["train", "--sparsity", "topq", *SMALL]) == 2
    err = capsys.readouterr().err
    assert (
        "sparsity: expected one of batchtopk, jumprelu, kl, l1, none, topk, wta, or module:ClassName for your own, got 'topq'"
        in err
    )


def test_unknown_model_lists_choices(capsys):
    assert main(["train", "--model", "convv"]) == 2
    assert re.search(r"invalid choice: 'convv' \(choose from '?classic'?, '?dense'?, '?mnist-conv'?\)", capsys.readouterr().err)


def test_real_cli_process_reports_without_traceback(run_dir, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "sparseae.cli", "train", "--out", str(run_dir), *SMALL], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "already holds files" in proc.stderr and "Traceback" not in proc.stderr
    debug = subprocess.run(
        [sys.executable, "-m", "sparseae.cli", "train", "--out", str(run_dir), "--debug", *SMALL], capture_output=True, text=True
    )
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_export_writes_onnx_saelens_and_hub_from_the_cli(run_dir, tmp_path, capsys):
    import json

    onnxruntime = pytest.importorskip("onnxruntime")
    assert main(["export", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "sae.onnx"), "--quiet"]) == 0
    x = sparseae.load_mnist().test[:5].numpy()
    session = onnxruntime.InferenceSession(str(tmp_path / "sae.onnx"))
    codes = session.run(None, {session.get_inputs()[0].name: x})[0]
    expected = sparseae.load(run_dir).encode(torch.from_numpy(x))
    np.testing.assert_allclose(codes, expected.detach().numpy(), atol=1e-5)

    assert main(["export", str(run_dir), "--format", "hub", "--out", str(tmp_path / "hub"), "--quiet"]) == 0
    assert "library_name: sparseae" in (tmp_path / "hub" / "README.md").read_text()
    assert torch.equal(
        sparseae.load(tmp_path / "hub").encode(torch.from_numpy(x)), sparseae.load(run_dir).encode(torch.from_numpy(x))
    )

    # The conv model has no SAELens layout: refused in one line, nothing written.
    assert main(["export", str(run_dir), "--format", "saelens", "--out", str(tmp_path / "sl")]) == 2
    assert "expected" in capsys.readouterr().err and not (tmp_path / "sl" / "cfg.json").exists()
    dense = tmp_path / "dense"
    argv = ["train", "--model", "dense", "--k", "4", "--n-latents", "32", *SMALL, "--out", str(dense), "--quiet"]
    assert main(argv) == 0
    assert main(["export", str(dense), "--format", "saelens", "--out", str(tmp_path / "sl2"), "--hook-name", "h", "--quiet"]) == 0
    cfg = json.loads((tmp_path / "sl2" / "cfg.json").read_text())
    assert cfg["d_sae"] == 32 and (tmp_path / "sl2" / "sae_weights.safetensors").is_file()


def test_resume_with_epochs_extends_a_finished_run_as_if_it_had_asked_for_them(tmp_path, capsys):
    short, whole = tmp_path / "short", tmp_path / "whole"
    base = ["train", *SMALL[:-3], "--quiet", "--seed", "1"]
    assert main([*base, "--epochs", "1", "--out", str(short)]) == 0
    assert main(["train", "--resume", str(short), "--epochs", "2", "--quiet"]) == 0
    assert main([*base, "--epochs", "2", "--out", str(whole)]) == 0
    assert json.loads((short / "config.json").read_text())["train"]["epochs"] == 2
    extended, uninterrupted = sparseae.read_metrics(short), sparseae.read_metrics(whole)
    assert [r["epoch"] for r in extended] == [1, 2]
    # A constant learning rate (the Keras recipe): the extension is the two-epoch run, step for step.
    assert extended[-1]["test_mse"] == pytest.approx(uninterrupted[-1]["test_mse"], rel=1e-6)
    capsys.readouterr()
    assert main(["train", "--resume", str(short), "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"--epochs 1: expected a length no shorter than what {short} has done (8 steps), got 4 steps." in err

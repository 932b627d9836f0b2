"""Sparse autoencoders on language-model activations, end to end: live from the model and from a cache, Python and CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import sparseae
from conftest import DOCS
from sparseae.cli import main
from sparseae.data import DataConfig, load_data
from sparseae.data.activations import ActivationConfig, ActivationStream, collect
from sparseae.errors import SparseAEError
from sparseae.training import read_metrics

pytest.importorskip("transformers")

TOKENS = 600


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n\n".join(DOCS * 12) + "\n")  # about 1,500 tokens
    return path


def lm_config(lm_dir: Path, corpus: Path, **kw) -> ActivationConfig:
    return ActivationConfig(
        **{"model": str(lm_dir), "module": "transformer.h.0", "text": str(corpus), "device": "cpu", "context_length": 32,
           "tokens": TOKENS, "batch_size": 4, **kw}
    )  # fmt: skip


def test_live_activations_train_a_dense_sae_from_python(lm_dir, corpus):
    data = load_data(DataConfig("lm", lm=lm_config(lm_dir, corpus), test_fraction=0.1))
    assert data.streamed and data.sample_shape == (32,) and len(data.test) == TOKENS // 10
    # The test split is the first rows of the text; training starts right after them.
    everything = torch.cat(list(collect(lm_config(lm_dir, corpus, tokens=TOKENS + len(data.test)))))
    torch.testing.assert_close(data.test, everything[: len(data.test)], atol=1e-6, rtol=0)
    train_rows = torch.cat(list(data.train.batches(64, seed=0, epoch=0)))
    assert len(train_rows) == TOKENS
    torch.testing.assert_close(train_rows.sum(0), everything[len(data.test) :].sum(0), atol=1e-3, rtol=1e-4)

    model = sparseae.build_preset("dense", data.sample_shape, sparseae.build_sparsity("topk", k=4), seed=0, n_latents=64,
                                  preprocess="norm")  # fmt: skip
    result = sparseae.train(model, data, sparseae.TrainConfig(epochs=4, batch_size=32, lr=3e-3), progress=False)
    fvu = [r["test_fvu"] for r in result.metrics]
    assert fvu[-1] < 0.8 * fvu[0], fvu


def test_cache_then_train_then_ce_loss_from_the_cli(lm_dir, corpus, tmp_path, capsys):
    flags = ["--lm-model", str(lm_dir), "--lm-module", "transformer.h.0", "--lm-text", str(corpus), "--lm-device", "cpu",
             "--lm-context-length", "32", "--lm-tokens", str(TOKENS)]  # fmt: skip
    cache = tmp_path / "cache"
    assert main(["cache-activations", *flags, "--out", str(cache), "--rows-per-shard", "256", "--quiet"]) == 0
    assert f"cached {TOKENS} rows of width 32" in capsys.readouterr().out
    assert len(list(cache.glob("shard-*.safetensors"))) == 3

    run = tmp_path / "run"
    argv = ["train", "--data", str(cache), "--model", "dense", "--sparsity", "topk", "--k", "4", "--n-latents", "64",
            "--epochs", "3", "--batch-size", "32", "--lr", "3e-3", "--out", str(run), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    metrics = read_metrics(run)
    assert metrics[-1]["test_fvu"] < metrics[0]["test_fvu"]
    capsys.readouterr()

    assert main(["eval", str(run), "--ce-loss", "--ce-batches", "4", "--quiet"]) == 0
    out = capsys.readouterr().out
    recovered = float(out.split("ce_loss_recovered")[1].split()[0])
    assert -1 < recovered <= 1.0001 and "ce_loss_clean" in out and "ce_loss_zero" in out


def test_live_activations_from_the_cli(lm_dir, corpus, tmp_path):
    run = tmp_path / "live"
    argv = ["train", "--data", "lm", "--lm-model", str(lm_dir), "--lm-module", "transformer.h.1", "--lm-text", str(corpus),
            "--lm-device", "cpu", "--lm-context-length", "32", "--lm-tokens", "300", "--model", "dense", "--sparsity", "topk",
            "--k", "4", "--n-latents", "32", "--epochs", "1", "--batch-size", "32", "--out", str(run), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert sparseae.load(run).input_shape == (32,)
    assert main(["eval", str(run), "--ce-loss", "--ce-batches", "2", "--quiet"]) == 0


def test_lm_source_needs_model_module_and_text(capsys):
    assert main(["train", "--data", "lm", "--lm-model", "gpt2", "--model", "dense"]) == 2
    assert "expected --lm-model, --lm-module and --lm-text, got no --lm-module, --lm-text" in capsys.readouterr().err
    with pytest.raises(SparseAEError, match="--data lm: expected the language model, module and text"):
        load_data(DataConfig("lm"))


def test_ce_loss_refuses_runs_not_on_activations(tmp_path, capsys):
    run = tmp_path / "mnist"
    assert main(["train", "--train-limit", "256", "--test-limit", "64", "--epochs", "1", "--out", str(run), "--quiet"]) == 0
    assert main(["eval", str(run), "--ce-loss"]) == 2
    assert "--ce-loss: expected a run trained on language-model activations" in capsys.readouterr().err


def test_stream_take_limits_tokens(lm_dir, corpus):
    stream = ActivationStream(lm_config(lm_dir, corpus))
    assert len(stream.take(100)) == 100
    assert sum(len(b) for b in stream.take(100).batches(16, 0, 0)) == 100


def test_cache_activations_for_two_modules_from_the_cli(lm_dir, corpus, tmp_path, capsys):
    # A glob: one forward pass, one cache per module under out/<module>/, one line each.
    flags = ["--lm-model", str(lm_dir), "--lm-module", "transformer.h.*", "--lm-text", str(corpus), "--lm-device", "cpu",
             "--lm-context-length", "32", "--lm-tokens", "256"]  # fmt: skip
    cache = tmp_path / "cache"
    assert main(["cache-activations", *flags, "--out", str(cache), "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    modules = sorted(p.name for p in cache.iterdir())
    assert len(modules) >= 2 and len(lines) == len(modules), (modules, lines)
    assert all(line.startswith("cached 256 rows of width 32 in ") for line in lines)
    assert [line.split(" in ")[1].split(" (")[0] for line in lines] == [str(cache / m) for m in modules]


@pytest.mark.parametrize("real_model", [False, True], ids=["tiny-gpt2", "minilm"])
def test_one_sae_per_module_from_one_pass_equals_training_each_alone(real_model, lm_dir, corpus, tmp_path, monkeypatch, request):
    from sparseae.data import loading

    passes = []
    real = loading._collect_per_module
    monkeypatch.setattr(loading, "_collect_per_module", lambda *a, **k: passes.append(1) or real(*a, **k))
    # The real MiniLM (BERT, d 384) on two of its layers, by a comma list; the tiny GPT-2 by a glob.
    model_dir, modules = (request.getfixturevalue("minilm_dir"), "encoder.layer.1,encoder.layer.4") if real_model else (
        lm_dir, "transformer.h.*")  # fmt: skip
    expected = ["encoder.layer.1", "encoder.layer.4"] if real_model else ["transformer.h.0", "transformer.h.1"]
    tokens = {"tokens": 300, "context_length": 64} if real_model else {}

    def lm_config(_dir, _corpus, **kw):  # this test's model in place of the tiny GPT-2
        return ActivationConfig(**{"model": str(model_dir), "text": str(corpus), "device": "cpu", "context_length": 32,
                                   "tokens": TOKENS, "batch_size": 4, **tokens, **kw})  # fmt: skip

    datas = loading.load_data_per_module(DataConfig("lm", lm=lm_config(lm_dir, corpus, module=modules), test_fraction=0.1))
    assert list(datas) == expected

    def dense(data):
        return sparseae.build_preset("dense", data.sample_shape, sparseae.build_sparsity("topk", k=4), seed=0, n_latents=32)

    config = sparseae.TrainConfig(epochs=2, batch_size=32, lr=3e-3)
    together = sparseae.sweep({m: dense(d) for m, d in datas.items()}, datas, config, tmp_path / "x", progress=False)
    # Over the text, for both modules at once: the test rows, the first row (sample_shape), the initialisation
    # sample and two epochs.
    assert len(passes) == 5
    for module in datas:
        alone_data = load_data(DataConfig("lm", lm=lm_config(lm_dir, corpus, module=module), test_fraction=0.1))
        assert torch.equal(alone_data.test, datas[module].test)
        alone = sparseae.train(dense(alone_data), alone_data, config, progress=False)
        for (key, a), b in zip(alone.model.state_dict().items(), together[module].model.state_dict().values(), strict=True):
            assert torch.equal(a, b), (module, key)
        assert together[module].metrics[-1]["test_fvu"] == alone.metrics[-1]["test_fvu"]
    assert not torch.equal(together[expected[0]].model.W_dec, together[expected[1]].model.W_dec)


def test_train_one_sae_per_module_from_the_cli(lm_dir, corpus, tmp_path, capsys):
    out = tmp_path / "x"
    argv = ["train", "--data", "lm", "--lm-model", str(lm_dir), "--lm-module", "transformer.h.*", "--lm-text", str(corpus),
            "--lm-device", "cpu", "--lm-context-length", "32", "--lm-tokens", "300", "--model", "dense", "--sparsity", "topk",
            "--k", "4", "--n-latents", "32", "--epochs", "1", "--batch-size", "32", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "modules: 2 models" in printed and "transformer.h.1" in printed
    assert (out / "compare.html").read_text().count("<td>transformer.h.") == 2
    for module in ("transformer.h.0", "transformer.h.1"):
        assert sparseae.load(out / module).input_shape == (32,)
        assert sparseae.rundir.read_config(out / module)["data"]["lm"]["module"] == module
    assert main(["eval", str(out / "transformer.h.1"), "--quiet"]) == 0  # a normal run: its data is that one module

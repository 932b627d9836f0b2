import dataclasses

import pytest
import torch

import sparseae
from sparseae.rundir import read_config


def dense(data, k=4, seed=0):
    return sparseae.build_preset("dense", data.sample_shape, sparseae.build_sparsity("topk", k=k), seed=seed, n_latents=32)


def family(data, ks=(4, 8)):
    return {f"k={k}": dense(data, k) for k in ks}


def assert_same(alone, swept, name):
    for (key, a), b in zip(alone.model.state_dict().items(), swept.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), (name, key)
    assert swept.metrics[-1]["test_fvu"] == alone.metrics[-1]["test_fvu"]


def test_sweep_equals_separate_runs(small, tmp_path):
    config = sparseae.TrainConfig(epochs=2)
    swept = sparseae.sweep(family(small), small, config, tmp_path / "sweep", progress=False)
    for name, model in family(small).items():
        assert_same(sparseae.train(model, small, config, progress=False), swept[name], name)
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == ["k=4", "k=8"]
    assert sparseae.load(tmp_path / "sweep" / "k=8").sparsity.k == 8


def test_sweep_over_lr_and_schedule_equals_separate_runs(small, tmp_path):
    config = sparseae.TrainConfig(steps=20, batch_size=128)  # 16 batches an epoch: two epochs
    configs = {
        "lr=0.001": config,
        "lr=0.003": dataclasses.replace(config, lr=3e-3),
        "lr=0.01,cosine": dataclasses.replace(config, lr=1e-2, lr_decay="cosine", lr_warmup=3, optimizer="adam"),
    }
    swept = sparseae.sweep({name: dense(small) for name in configs}, small, config, tmp_path, configs=configs, progress=False)
    for name, own in configs.items():
        assert_same(sparseae.train(dense(small), small, own, progress=False), swept[name], name)
        assert read_config(tmp_path / name)["train"]["lr"] == own.lr
    assert not torch.equal(swept["lr=0.001"].model.W_dec, swept["lr=0.003"].model.W_dec)


def test_sweep_over_seed_shares_the_data_order(small, tmp_path):
    config = sparseae.TrainConfig(steps=20, seed=7)
    seeds = (1, 2)
    configs = {f"seed={s}": dataclasses.replace(config, seed=s) for s in seeds}
    models = {f"seed={s}": dense(small, seed=s) for s in seeds}
    swept = sparseae.sweep(models, small, config, tmp_path, configs=configs, progress=False)
    for s in seeds:
        name = f"seed={s}"
        train = read_config(tmp_path / name)["train"]
        assert (train["seed"], train["data_seed"]) == (s, 7)  # its own initialisation, the sweep's batches
        own = dataclasses.replace(config, seed=s, data_seed=7)
        assert_same(sparseae.train(dense(small, seed=s), small, own, progress=False), swept[name], name)
    assert not torch.equal(swept["seed=1"].model.W_dec, swept["seed=2"].model.W_dec)


def test_data_seed_sets_the_order_apart_from_seed(small):
    a = sparseae.train(dense(small), small, sparseae.TrainConfig(steps=5, seed=0, data_seed=3), progress=False)
    b = sparseae.train(dense(small), small, sparseae.TrainConfig(steps=5, seed=3), progress=False)
    c = sparseae.train(dense(small), small, sparseae.TrainConfig(steps=5, seed=0), progress=False)
    assert torch.equal(a.model.W_dec, b.model.W_dec)  # same model and batches: seed alone seeds nothing else
    assert not torch.equal(a.model.W_dec, c.model.W_dec)


def test_sweep_refuses_configs_that_do_not_share_the_batches(small):
    config = sparseae.TrainConfig(steps=2)
    with pytest.raises(sparseae.SparseAEError, match=r"sweep config of 'b': batch_size: expected 128, as in the sweep's"):
        sparseae.sweep(family(small, (2, 4)) | {"b": dense(small)}, small, config,
                       configs={"b": dataclasses.replace(config, batch_size=64)}, progress=False)  # fmt: skip
    with pytest.raises(sparseae.SparseAEError, match=r"sweep configs: expected keys of the models \(k=2\), got 'x'"):
        sparseae.sweep(family(small, (2,)), small, config, configs={"x": config}, progress=False)
    with pytest.raises(sparseae.SparseAEError, match=r"sweep data: expected one data set per model \(k=2\), got 'x'"):
        sparseae.sweep(family(small, (2,)), {"x": small}, config, progress=False)

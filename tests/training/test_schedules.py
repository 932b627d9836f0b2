"""Training controls: learning-rate warm-up and decay, the penalty's warm-up, gradient clipping,
--expansion-factor, and metrics every N steps (RUN/metrics-steps.jsonl) across kill-and-resume.

The schedules are pure functions of the step; each is checked against numbers worked out
by hand, then in the trainer: the rate the optimizer reads at each step is the schedule's.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import sparseae
from sparseae import checkpoint, cli, training
from sparseae.io import read_tensors
from sparseae.rundir import STEP_METRICS_FILE, read_step_metrics
from sparseae.training import trainer
from sparseae.training.schedules import DECAYS, decay_steps, lr_at, penalty_scale_at

pytestmark = pytest.mark.usefixtures("one_torch_thread")

D = 16  # features per row
TIMING = ("samples_per_s",)  # wall-clock: different in every run


def _config(**fields) -> sparseae.TrainConfig:
    return sparseae.TrainConfig(lr=1e-3, **fields)


# --- the schedules, by hand --------------------------------------------------------------------


def test_no_schedule_is_exactly_lr_at_every_step():
    config = _config()
    assert [lr_at(s, 10, config) for s in range(1, 11)] == [1e-3] * 10
    assert [penalty_scale_at(s, config) for s in range(1, 11)] == [1.0] * 10


def test_lr_warmup_starts_at_lr_over_n_and_reaches_lr_at_step_n():
    config = _config(lr_warmup=4)
    assert [lr_at(s, 100, config) for s in (1, 2, 3, 4, 5, 100)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    assert lr_at(4, 100, config) == 1e-3  # exactly: the full rate once warm


def test_linear_decay_over_the_last_fraction():
    # 10 steps, the last half decays: steps 6..10 are 0, 1, 2, 3, 4 fifths of the way down.
    config = _config(lr_decay="linear", lr_decay_fraction=0.5)
    assert [lr_at(s, 10, config) for s in range(1, 11)] == pytest.approx([1e-3] * 6 + [8e-4, 6e-4, 4e-4, 2e-4], rel=1e-12)
    floor = dataclasses.replace(config, lr_decay_to=0.1)  # 1 - 0.9 p
    assert [lr_at(s, 10, floor) for s in (6, 7, 10)] == pytest.approx([1e-3, 8.2e-4, 2.8e-4], rel=1e-12)


def test_cosine_decay_by_hand_and_as_torch_anneals():
    config = _config(lr_decay="cosine", lr_decay_fraction=0.5)
    # p = 0.4: (1 + cos 72 deg) / 2 = (1 + 0.30901699) / 2; p = 0.8: (1 + cos 144 deg) / 2 = (1 - 0.80901699) / 2
    assert [lr_at(s, 10, config) for s in (5, 6, 8, 10)] == pytest.approx([1e-3, 1e-3, 6.5450850e-4, 0.95491503e-4], rel=1e-7)
    floor = dataclasses.replace(config, lr_decay_to=0.1)
    assert lr_at(10, 10, floor) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.095491503), rel=1e-7)

    # torch.optim.lr_scheduler.CosineAnnealingLR over the decay's D steps, stepped after each optimizer step
    total, config = 40, _config(lr_decay="cosine", lr_decay_fraction=0.25, lr_decay_to=0.1)
    span = decay_steps(total, 0.25)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    anneal = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=span, eta_min=1e-4)
    theirs = []
    for _ in range(span):
        theirs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        anneal.step()
    assert [lr_at(s, total, config) for s in range(total - span + 1, total + 1)] == pytest.approx(theirs, rel=1e-9)


def test_warmup_and_decay_multiply():
    config = _config(lr_warmup=4, lr_decay="linear", lr_decay_fraction=0.5)  # 4 steps: decay from step 3
    assert [lr_at(s, 4, config) for s in range(1, 5)] == pytest.approx([2.5e-4, 5e-4, 0.75 * 1e-3, 0.5 * 1e-3])


def test_decay_steps_round_and_a_decay_too_short_to_have_a_step_does_nothing():
    assert decay_steps(7, 0.2) == 1 and decay_steps(10, 0.25) == 2 and decay_steps(10, 0.04) == 0
    config = _config(lr_decay="cosine", lr_decay_fraction=0.04)
    assert [lr_at(s, 10, config) for s in range(1, 11)] == [1e-3] * 10


def test_the_decay_shapes_are_the_configs_choices():
    from typing import get_args, get_type_hints

    assert set(get_args(get_type_hints(sparseae.TrainConfig)["lr_decay"])) == {"none", *DECAYS}


def test_a_run_longer_than_lr_long_run_trains_at_sqrt_of_the_ratio_throughout():
    # Set for 100 samples, batch 10: 10 steps keep lr; 40 steps (400 samples) train at lr * sqrt(100 / 400).
    config = _config(lr_long_run=100, batch_size=10)
    assert [lr_at(s, 10, config) for s in (1, 10)] == [1e-3, 1e-3]
    assert [lr_at(s, 40, config) for s in (1, 20, 40)] == pytest.approx([5e-4] * 3, rel=1e-12)
    assert lr_at(1, 11, config) == pytest.approx(1e-3 * math.sqrt(100 / 110), rel=1e-12)  # just past N
    # With a warm-up and a decay on top: each factor multiplies.
    both = dataclasses.replace(config, lr_warmup=4, lr_decay="linear", lr_decay_fraction=0.5)
    assert [lr_at(s, 40, both) for s in (1, 21, 22, 40)] == pytest.approx([1.25e-4, 5e-4, 4.75e-4, 2.5e-5], rel=1e-12)
    assert lr_at(40, 40, _config(batch_size=10)) == 1e-3  # 0: lr whatever the length


def test_l1_warmup_starts_at_one_nth_of_the_penalty():
    config = _config(l1_warmup=4)
    assert [penalty_scale_at(s, config) for s in (1, 2, 4, 5)] == [0.25, 0.5, 1.0, 1.0]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("lr_warmup", -1, "lr_warmup: expected a number of steps >= 0, got -1"),
     ("l1_warmup", -2, "l1_warmup: expected a number of steps >= 0, got -2"),
     ("lr_decay_fraction", 0.0, r"lr_decay_fraction: expected a fraction of the run in \(0, 1\], got 0.0"),
     ("lr_decay_fraction", 1.5, r"lr_decay_fraction: expected a fraction of the run in \(0, 1\], got 1.5"),
     ("lr_decay_to", 2.0, r"lr_decay_to: expected a fraction of lr in \[0, 1\], got 2.0"),
     ("lr_long_run", -1, "lr_long_run: expected a number of training samples >= 0, got -1. 0 keeps lr whatever"),
     ("grad_clip", 0.0, "grad_clip: expected a finite number > 0, or unset, got 0.0. Leave it unset to not clip."),
     ("grad_clip", math.inf, "grad_clip: expected a finite number > 0, or unset, got inf"),
     ("metrics_every", 0, "metrics_every: expected an integer >= 1, or unset, got 0"),
     ("encoder_bias_lr_scale", 0.0, "encoder_bias_lr_scale: expected a finite number > 0, got 0.0. Pass a positive"),
     ("encoder_lr_scale", 0.0, "encoder_lr_scale: expected a finite number > 0, got 0.0. Pass a positive"),
     ("decoder_lr_scale", -1.0, "decoder_lr_scale: expected a finite number > 0, got -1.0. Pass a positive"),
     ("adam_beta1", 1.0, r"adam_beta1: expected a number in \[0, 1\), got 1.0. For example 0.9 or 0.999."),
     ("adam_beta2", -0.1, r"adam_beta2: expected a number in \[0, 1\), got -0.1")],
)  # fmt: skip
def test_bad_controls_are_refused(field, value, message):
    with pytest.raises(sparseae.SparseAEError, match=message):
        _config(**{field: value})


def test_the_defaults_change_nothing():
    config = sparseae.TrainConfig()
    assert (config.lr_warmup, config.lr_decay, config.lr_long_run, config.l1_warmup, config.grad_clip,
            config.metrics_every) == (0, "none", 0, 0, None, None)  # fmt: skip


# --- in the trainer ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data() -> sparseae.Dataset:
    """256 training rows (8 steps of 32) and 64 test rows, 16 wide: sparse mixtures of 24 atoms."""
    rng = np.random.default_rng(0)
    atoms = rng.standard_normal((24, D))
    codes = (rng.random((320, 24)) < 0.15) * rng.exponential(1.0, (320, 24))
    x = torch.from_numpy((codes @ atoms).astype(np.float32))
    return sparseae.Dataset("mixtures", x[:256], x[256:])


def _model(**fields) -> sparseae.Autoencoder:
    return sparseae.build_preset("dense", (D,), sparseae.build_sparsity("l1", weight=3e-2), seed=0, n_latents=48, **fields)


SCHEDULED = sparseae.TrainConfig(
    steps=20, batch_size=32, lr=3e-3, optimizer="adam", lr_warmup=4, lr_decay="cosine", lr_decay_fraction=0.4,
    l1_warmup=6, grad_clip=1.0, metrics_every=5, checkpoint_every=3, seed=2,
)  # fmt: skip
"""20 steps over 3 epochs (8, 8, 4) with every control on; checkpoints (every 3 steps) fall inside the windows of 5."""


def _spy_on_steps(monkeypatch) -> list[dict[str, float]]:
    """Per optimizer step: the learning rate and the global gradient norm the optimizer is handed."""
    seen: list[dict[str, float]] = []
    make = training.make_optimizer

    def make_spied(model, config):
        optimizer = make(model, config)
        step = optimizer.step

        def spied(*args, **kwargs):
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
            seen.append({"lr": optimizer.param_groups[0]["lr"], "grad_norm": norm})
            return step(*args, **kwargs)

        optimizer.step = spied
        return optimizer

    monkeypatch.setattr(trainer, "make_optimizer", make_spied)
    return seen


@pytest.mark.parametrize("optimizer", ["keras-adam", "adam"])
def test_the_optimizer_steps_with_the_schedules_rate(data, monkeypatch, optimizer):
    config = dataclasses.replace(SCHEDULED, optimizer=optimizer, checkpoint_every=None, metrics_every=None)
    seen = _spy_on_steps(monkeypatch)
    sparseae.train(_model(), data, config, progress=False)
    assert [s["lr"] for s in seen] == [lr_at(step, 20, config) for step in range(1, 21)]
    assert seen[0]["lr"] == 3e-3 / 4


@pytest.mark.parametrize("optimizer", ["keras-adam", "adam"])
def test_adam_betas_reach_the_optimizer(data, monkeypatch, optimizer):
    built = []
    make = training.make_optimizer
    monkeypatch.setattr(trainer, "make_optimizer", lambda model, config: built.append(make(model, config)) or built[-1])
    config = sparseae.TrainConfig(steps=2, batch_size=32, optimizer=optimizer, adam_beta1=0.5, adam_beta2=0.99)
    sparseae.train(_model(), data, config, progress=False)
    assert [g["betas"] for g in built[0].param_groups] == [(0.5, 0.99)]
    # beta2 decides Keras' bias-corrected epsilon too: eps / sqrt(1 - beta2^t) after 2 steps.
    if optimizer == "keras-adam":
        assert built[0].param_groups[0]["eps"] == pytest.approx(1e-7 / math.sqrt(1 - 0.99**2))


@pytest.mark.parametrize("kernels", ["auto", "reference"])
def test_grad_clip_bounds_the_gradient_the_optimizer_sees(data, monkeypatch, kernels):
    # The TopK model under kernels="auto" also runs fused Adam and steps its transposed decoder.
    topk = sparseae.build_preset("dense", (D,), sparseae.build_sparsity("topk", k=4), seed=0, n_latents=48)
    config = sparseae.TrainConfig(steps=10, batch_size=32, lr=1e-2, grad_clip=0.05, kernels=kernels)
    seen = _spy_on_steps(monkeypatch)
    sparseae.train(topk, data, config, progress=False)
    assert max(s["grad_norm"] for s in seen) <= 0.05 * (1 + 1e-5), seen
    assert max(s["grad_norm"] for s in seen) > 0.04  # it was clipped to the bound, not far below it

    seen.clear()
    topk = sparseae.build_preset("dense", (D,), sparseae.build_sparsity("topk", k=4), seed=0, n_latents=48)
    sparseae.train(topk, data, dataclasses.replace(config, grad_clip=None), progress=False)
    assert max(s["grad_norm"] for s in seen) > 0.1  # unclipped, the same steps go beyond it


def _record_rates(monkeypatch) -> list[list[float]]:
    """Each optimizer step's param-group learning rates, in order, appended to the returned list."""
    rates: list[list[float]] = []
    step = torch.optim.Adam.step
    monkeypatch.setattr(
        torch.optim.Adam, "step", lambda opt, *a, **k: rates.append([g["lr"] for g in opt.param_groups]) or step(opt, *a, **k)
    )
    return rates


def test_encoder_bias_lr_scale_steps_the_bias_at_its_multiple_of_the_schedules_rate(data, monkeypatch):
    built = []
    make = training.make_optimizer
    monkeypatch.setattr(trainer, "make_optimizer", lambda model, config: built.append(make(model, config)) or built[-1])
    step = torch.optim.Adam.step  # unrecorded, for the first-step check below
    rates = _record_rates(monkeypatch)  # (the other parameters' lr, the bias's lr) at each step
    topk = sparseae.build_preset("dense", (D,), sparseae.build_sparsity("topk", k=4), seed=0, n_latents=48)
    config = dataclasses.replace(SCHEDULED, checkpoint_every=None, metrics_every=None, encoder_bias_lr_scale=5.0)
    sparseae.train(topk, data, config, progress=False)
    groups = built[0].param_groups
    assert [p for p in groups[1]["params"]] == [topk.encoder.bias] and all(
        p is not topk.encoder.bias for p in groups[0]["params"]
    )
    expected = [lr_at(s, 20, config) for s in range(1, 21)]
    assert [r[0] for r in rates] == expected
    assert [r[1] for r in rates] == pytest.approx([5 * lr for lr in expected], rel=1e-12)

    # Adam's first step moves each parameter by about its rate: the bias 5x as far as the weights.
    moved = []

    def first_step(opt, *a, **k):
        bias, weight = (p.detach().clone() for p in (topk.encoder.bias, topk.encoder.weight))
        out = step(opt, *a, **k)
        moved.append([float((p.detach() - q).abs().max()) for p, q in ((topk.encoder.bias, bias), (topk.encoder.weight, weight))])
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", first_step)
    topk = sparseae.build_preset("dense", (D,), sparseae.build_sparsity("topk", k=4), seed=0, n_latents=48)
    one = sparseae.TrainConfig(steps=1, batch_size=32, lr=1e-3, optimizer="adam", encoder_bias_lr_scale=5.0)
    sparseae.train(topk, data, one, progress=False)
    assert moved[0] == pytest.approx([5e-3, 1e-3], rel=1e-3)


def test_without_encoder_bias_lr_scale_the_optimizer_has_one_group_and_each_model_names_its_bias(data):
    model = _model()
    assert len(training.make_optimizer(model, sparseae.TrainConfig()).param_groups) == 1  # checkpoints as before
    assert model.encoder_bias() is model.encoder.bias
    conv = sparseae.mnist_conv(seed=0)
    assert conv.encoder_bias() is conv.to_code.bias
    assert len(training.make_optimizer(conv, sparseae.TrainConfig(encoder_bias_lr_scale=2.0)).param_groups) == 2


def test_encoder_and_decoder_lr_scales_step_each_group_at_its_multiple_of_the_schedules_rate(data, monkeypatch):
    rates = _record_rates(monkeypatch)  # each group's lr at each step
    topk = sparseae.build_preset("dense", (D,), sparseae.build_sparsity("topk", k=4), seed=0, n_latents=48)
    scales = {"encoder_lr_scale": 0.5, "encoder_bias_lr_scale": 5.0, "decoder_lr_scale": 3.0}
    config = dataclasses.replace(SCHEDULED, checkpoint_every=None, metrics_every=None, **scales)
    groups = training.make_optimizer(topk, config).param_groups
    assert [[id(p) for p in g["params"]] for g in groups] == [
        [id(topk.b_pre)],
        [id(topk.encoder.weight)],
        [id(topk.encoder.bias)],
        [id(topk.W_dec)],
    ]
    sparseae.train(topk, data, config, progress=False)
    expected = [lr_at(s, 20, config) for s in range(1, 21)]
    assert [r[0] for r in rates] == expected
    assert [r[1:] for r in rates] == [pytest.approx([0.5 * lr, 5 * lr, 3 * lr], rel=1e-12) for lr in expected]


def test_the_conv_models_encoder_and_decoder_weights_are_its_layers_weights_and_no_bias():
    conv = sparseae.mnist_conv(seed=0)
    groups = training.make_optimizer(conv, sparseae.TrainConfig(encoder_lr_scale=0.5, decoder_lr_scale=3.0)).param_groups
    convs = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    encoder = [m.weight for m in conv.encoder if isinstance(m, convs)] + [conv.to_code.weight]
    decoder = [conv.from_code.weight] + [m.weight for m in conv.decoder if isinstance(m, convs)]
    assert (len(encoder), len(decoder)) == (3, 5)  # two conv layers and the code layer; the code -> 1568 layer and four
    assert [[id(p) for p in g["params"]] for g in groups[1:]] == [[id(p) for p in encoder], [id(p) for p in decoder]]
    assert [(g["lr"], g["lr_scale"]) for g in groups[1:]] == [(5e-4, 0.5), (3e-3, 3.0)]
    assert all(p.dim() == 1 for p in groups[0]["params"])  # the biases stay at lr
    assert len(groups[0]["params"]) + len(encoder) + len(decoder) == len(list(conv.parameters()))


def test_a_run_with_encoder_bias_lr_scale_resumes_bit_identical(data, tmp_path, monkeypatch):
    config = dataclasses.replace(SCHEDULED, encoder_bias_lr_scale=5.0)
    sparseae.train(_model(), data, config, tmp_path / "whole", progress=False)
    monkeypatch.setattr(checkpoint, "save", _interrupt(12, before_saving=False))
    with pytest.raises(KeyboardInterrupt):
        sparseae.train(_model(), data, config, tmp_path / "run", progress=False)
    monkeypatch.undo()
    sparseae.resume(tmp_path / "run", data=data, progress=False)
    resumed, whole = (
        read_tensors(tmp_path / "run" / "model.safetensors")[0],
        read_tensors(tmp_path / "whole" / "model.safetensors")[0],
    )
    for name in whole:
        assert torch.equal(resumed[name], whole[name]), name


def test_l1_warmup_scales_the_penalty_in_the_loss(data, tmp_path, monkeypatch):
    raw: list[float] = []
    penalty = type(sparseae.build_sparsity("l1", weight=3e-2)).penalty

    def recording(self, code, pre):
        value = penalty(self, code, pre)
        raw.append(float(value.detach()))
        return value

    monkeypatch.setattr(type(sparseae.build_sparsity("l1", weight=3e-2)), "penalty", recording)
    config = sparseae.TrainConfig(steps=6, batch_size=32, l1_warmup=4, metrics_every=1)
    sparseae.train(_model(), data, config, tmp_path / "run", progress=False)
    lines = read_step_metrics(tmp_path / "run")
    raw = raw[:6]  # the steps' penalties (evaluation follows)
    assert [r["train_penalty"] for r in lines] == pytest.approx([p * min(1, s / 4) for s, p in enumerate(raw, 1)], rel=1e-6)
    assert lines[0]["train_penalty"] == pytest.approx(raw[0] / 4, rel=1e-6)
    assert [r["train_loss"] for r in lines] == pytest.approx(
        [r["train_recon"] + r["train_penalty"] + r["train_aux"] for r in lines], rel=1e-6
    )


# --- metrics every N steps ---------------------------------------------------------------------


def test_metrics_every_writes_one_line_per_n_steps(data, tmp_path):
    result = sparseae.train(_model(), data, SCHEDULED, tmp_path / "run", progress=False)
    lines = read_step_metrics(tmp_path / "run")
    assert [r["step"] for r in lines] == [5, 10, 15, 20]
    assert [r["epoch"] for r in lines] == [1, 2, 2, 3]  # 8 steps per epoch
    assert [r["lr"] for r in lines] == [lr_at(s, 20, SCHEDULED) for s in (5, 10, 15, 20)]
    assert set(lines[0]) == {"step", "epoch", "lr", "train_loss", "train_recon", "train_penalty", "train_aux", "l0",
                             "dead_latents", "dead_fraction", "skipped_steps", "samples_per_s"}  # fmt: skip
    for r in lines:
        assert 0 < r["l0"] <= 48 and 0 <= r["dead_latents"] <= 48 and r["dead_fraction"] == r["dead_latents"] / 48
        assert r["train_loss"] > 0 and r["samples_per_s"] > 0 and r["skipped_steps"] == 0
    assert len(result.metrics) == 3  # the per-epoch records are as before


@pytest.mark.parametrize("kernels", ["auto", "reference"])
def test_step_metrics_of_the_sparse_topk_path(data, tmp_path, kernels):
    topk = sparseae.build_preset("dense", (D,), sparseae.build_sparsity("topk", k=4), seed=0, n_latents=48, aux_k=8)
    config = sparseae.TrainConfig(steps=10, batch_size=32, metrics_every=5, kernels=kernels)
    sparseae.train(topk, data, config, tmp_path / "run", progress=False)
    lines = read_step_metrics(tmp_path / "run")
    assert [r["step"] for r in lines] == [5, 10]
    assert all(3.5 < r["l0"] <= 4 and r["train_penalty"] == 0 for r in lines), lines


def test_a_default_run_writes_no_step_metrics_and_no_window_in_its_checkpoint(data, tmp_path):
    sparseae.train(_model(), data, sparseae.TrainConfig(epochs=1, batch_size=32), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / STEP_METRICS_FILE).exists()
    assert not [k for k in read_tensors(tmp_path / "run" / checkpoint.CHECKPOINT_FILE)[0] if k.startswith("steps.")]


def _interrupt(at: int, *, before_saving: bool):
    """``checkpoint.save`` that raises Ctrl-C at the checkpoint of step ``at``: before writing it, or once written."""
    save = checkpoint.save

    def interrupted(run_dir, tensors, meta):
        if meta["step"] == at and before_saving:
            raise KeyboardInterrupt
        path = save(run_dir, tensors, meta)
        if meta["step"] == at:
            raise KeyboardInterrupt
        return path

    return interrupted


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    sparseae.train(_model(), data, SCHEDULED, run, progress=False)
    return run


@pytest.mark.parametrize(
    ("at", "before_saving", "held", "lines_before"),
    [(12, True, 9, [5, 10]),  # line 10 was written after the checkpoint of step 9: dropped, and written again
     (12, False, 12, [5, 10]),  # a checkpoint in the middle of the window 11-15
     (16, False, 16, [5, 10, 15])],  # the end of epoch 2
)  # fmt: skip
def test_kill_and_resume_writes_each_line_once_and_ends_bit_identical(
    data, uninterrupted, tmp_path, monkeypatch, at, before_saving, held, lines_before
):
    run = tmp_path / "run"
    monkeypatch.setattr(checkpoint, "save", _interrupt(at, before_saving=before_saving))
    with pytest.raises(KeyboardInterrupt, match=f"holds the checkpoint of step {held}"):
        sparseae.train(_model(), data, SCHEDULED, run, progress=False)
    monkeypatch.undo()
    assert [r["step"] for r in read_step_metrics(run)] == lines_before

    sparseae.resume(run, data=data, progress=False)
    ours, theirs = read_step_metrics(run), read_step_metrics(uninterrupted)
    assert [r["step"] for r in ours] == [5, 10, 15, 20]
    strip = lambda lines: [{k: v for k, v in r.items() if k not in TIMING} for r in lines]  # noqa: E731
    assert strip(ours) == strip(theirs)
    resumed, reference = read_tensors(run / "model.safetensors")[0], read_tensors(uninterrupted / "model.safetensors")[0]
    for name in reference:
        assert torch.equal(resumed[name], reference[name]), name


def test_a_line_cut_short_by_a_crash_is_dropped_on_resume(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setattr(checkpoint, "save", _interrupt(12, before_saving=True))
    with pytest.raises(KeyboardInterrupt):
        sparseae.train(_model(), data, SCHEDULED, run, progress=False)
    monkeypatch.undo()
    with open(run / STEP_METRICS_FILE, "a") as f:
        f.write('{"step": 11, "epo')  # as a SIGKILL in the middle of a write leaves it
    sparseae.resume(run, data=data, progress=False)
    text = (run / STEP_METRICS_FILE).read_text()
    assert [json.loads(line)["step"] for line in text.splitlines()] == [5, 10, 15, 20]


def test_step_metrics_reach_tensorboard(data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = dataclasses.replace(SCHEDULED, tensorboard=True, checkpoint_every=None)
    sparseae.train(_model(), data, config, tmp_path / "run", progress=False)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("steps/train_loss")] == [5, 10, 15, 20]
    assert [e.value for e in events.Scalars("steps/lr")] == pytest.approx([lr_at(s, 20, config) for s in (5, 10, 15, 20)])


# --- --expansion-factor ------------------------------------------------------------------------


def test_expansion_factor_in_python():
    assert sparseae.build_preset("dense", (D,), expansion_factor=4).n_latents == 64
    assert sparseae.build_preset("classic", (8, 8), expansion_factor=0.5).n_latents == 32
    with pytest.raises(sparseae.SparseAEError, match=r"expansion_factor and n_latents: expected one of them, got both "
                       r"\(expansion_factor=8, n_latents=64\)\. Pass one: n_latents \(--n-latents\) .* expansion_factor "
                       r"\(--expansion-factor\)"):  # fmt: skip
        sparseae.build_preset("dense", (D,), expansion_factor=8, n_latents=64)
    with pytest.raises(sparseae.SparseAEError, match=r"expansion_factor: expected a model with a dense code \(dense, classic\)"):
        sparseae.build_preset("mnist-conv", (1, 28, 28), expansion_factor=2)
    with pytest.raises(sparseae.SparseAEError, match=r"expected a finite number > 0 that gives at least one latent, got 0.01"):
        sparseae.build_preset("dense", (D,), expansion_factor=0.01)


@pytest.fixture(scope="module")
def rows(data, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rows") / "rows.npy"
    np.save(path, torch.cat([data.train, data.test]).numpy())
    return path


TINY = ["--model", "dense", "--k", "4", "--aux-k", "0", "--batch-size", "64", "--epochs", "1", "--quiet"]


def test_expansion_factor_4_on_16_features_gives_64_latents(rows, tmp_path):
    assert cli.main(["train", "--data", str(rows), *TINY, "--expansion-factor", "4", "--out", str(tmp_path / "run")]) == 0
    assert sparseae.load(tmp_path / "run").n_latents == 64


def test_expansion_factor_with_n_latents_is_refused(rows, tmp_path, capsys):
    argv = ["train", "--data", str(rows), *TINY, "--expansion-factor", "4", "--n-latents", "32", "--out", str(tmp_path / "r")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "error: expansion_factor and n_latents: expected one of them, got both (expansion_factor=4, n_latents=32)" in err
    assert "--n-latents" in err and "--expansion-factor" in err
    assert not (tmp_path / "r").exists()


def test_n_latents_alone_and_its_default_are_as_before(rows, tmp_path, capsys):
    assert cli.main(["train", "--data", str(rows), *TINY, "--n-latents", "32", "--out", str(tmp_path / "a")]) == 0
    assert sparseae.load(tmp_path / "a").n_latents == 32
    assert cli.main(["train", "--data", str(rows), *TINY, "--out", str(tmp_path / "b")]) == 0
    assert sparseae.load(tmp_path / "b").n_latents == 1024
    with pytest.raises(SystemExit):
        cli.main(["train", "--model", "dense", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "Size of the code (the dictionary). (default: 1024)" in help_text
    assert "--expansion-factor EXPANSION_FACTOR Latents as a multiple of the input width" in help_text


def test_a_sweep_over_expansion_factor(rows, tmp_path):
    out = tmp_path / "sweep"
    argv = ["sweep", "--data", str(rows), *TINY, "--param", "expansion_factor", "--values", "1,2", "--out", str(out)]
    assert cli.main(argv) == 0
    assert [sparseae.load(out / f"expansion_factor={v}").n_latents for v in ("1.0", "2.0")] == [16, 32]


def test_the_training_flags_reach_the_run(rows, tmp_path):
    argv = ["train", "--data", str(rows), *TINY, "--n-latents", "32", "--out", str(tmp_path / "run"), "--lr-warmup", "2",
            "--lr-decay", "cosine", "--lr-decay-fraction", "0.5", "--l1-warmup", "3", "--grad-clip", "0.5",
            "--metrics-every", "2"]  # fmt: skip
    assert cli.main(argv) == 0
    train = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    expected = {"lr_warmup": 2, "lr_decay": "cosine", "lr_decay_fraction": 0.5, "l1_warmup": 3, "grad_clip": 0.5,
                "metrics_every": 2}  # fmt: skip
    assert {k: train[k] for k in expected} == expected
    assert [r["step"] for r in read_step_metrics(tmp_path / "run")] == [2, 4]  # 288 training rows: 5 steps of 64


# --- the dense preset's recipe -----------------------------------------------------------------


def test_the_dense_recipe_is_what_the_cli_python_and_sklearn_train_with(rows, data, tmp_path, monkeypatch, capsys):
    from sparseae import sklearn as sk
    from sparseae.models.presets import DENSE_DEAD_WINDOW, DENSE_TRAINING

    assert DENSE_TRAINING["lr_decay"] == "linear"
    assert DENSE_TRAINING["adam_beta1"] == 0.8 and sparseae.TrainConfig().adam_beta1 == 0.9  # torch's default elsewhere
    assert DENSE_TRAINING["encoder_bias_lr_scale"] == 5 and sparseae.TrainConfig().encoder_bias_lr_scale == 1
    assert (DENSE_TRAINING["encoder_lr_scale"], DENSE_TRAINING["decoder_lr_scale"]) == (0.67, 3)
    assert (sparseae.TrainConfig().encoder_lr_scale, sparseae.TrainConfig().decoder_lr_scale) == (1, 1)
    recipe = sparseae.TrainConfig.for_preset("dense", epochs=1, batch_size=64)
    assert {k: getattr(recipe, k) for k in DENSE_TRAINING} == DENSE_TRAINING
    assert (recipe.epochs, recipe.batch_size) == (1, 64)
    # The rate follows the batch size (square-root rule) unless one is given.
    assert recipe.lr == 2e-3  # sqrt(64 / 4096) = 1/8 of 4e-3, but not below the floor
    assert sparseae.TrainConfig.for_preset("dense", batch_size=4096).lr == 4e-3
    assert sparseae.TrainConfig.for_preset("dense", batch_size=16384).lr == pytest.approx(8e-3)
    assert sparseae.TrainConfig.for_preset("dense", batch_size=2048).lr == pytest.approx(4e-3 / math.sqrt(2))
    assert sparseae.TrainConfig.for_preset("dense", batch_size=1024).lr == pytest.approx(2e-3)
    assert sparseae.TrainConfig.for_preset("dense").lr == 2e-3  # batch 128: the floor
    assert sparseae.TrainConfig.for_preset("dense", lr=1e-2, batch_size=64).lr == 1e-2
    assert sparseae.TrainConfig.for_preset("mnist-conv", "keras") == sparseae.TrainConfig()  # the Keras recipe
    assert sparseae.TrainConfig.for_preset("classic").lr == 3e-3  # a fixed rate of its own
    assert sparseae.build_preset("dense", (D,)).config.dead_window == DENSE_DEAD_WINDOW

    argv = ["train", "--data", str(rows), "--model", "dense", "--k", "4", "--n-latents", "32", "--batch-size", "64",
            "--epochs", "1", "--quiet", "--out", str(tmp_path / "run")]  # fmt: skip
    assert cli.main(argv) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert {k: saved["train"][k] for k in DENSE_TRAINING} == DENSE_TRAINING
    assert saved["train"]["lr"] == 2e-3
    assert saved["model"]["config"]["dead_window"] == DENSE_DEAD_WINDOW
    assert cli.main([*argv[:-1], str(tmp_path / "run2"), "--lr", "0.01"]) == 0
    assert json.loads((tmp_path / "run2" / "config.json").read_text())["train"]["lr"] == 0.01
    with pytest.raises(SystemExit):
        cli.main(["train", "--model", "dense", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "(default: 0.004 at batch 4096, times sqrt(batch size / 4096), at least 0.002)" in help_text
    assert "Adam's decay rate of the running mean of gradients (beta1). (default: 0.8)" in help_text
    assert "0: lr whatever the length. (default: 1048576)" in help_text

    seen = []

    def record(model, data, config, progress):
        seen.append(config)
        return training.TrainResult(model, [], None)

    monkeypatch.setattr(sk, "train", record)
    sk.SparseAutoencoder(32, k=4, epochs=1, batch_size=2048, random_state=0).fit(data.train.numpy())
    assert {k: getattr(seen[0], k) for k in DENSE_TRAINING} == DENSE_TRAINING
    assert seen[0].lr == pytest.approx(4e-3 / math.sqrt(2))
    sk.SparseAutoencoder(32, k=4, epochs=1, learning_rate=1e-2, random_state=0).fit(data.train.numpy())
    assert seen[1].lr == 1e-2 and seen[1].lr_decay == "linear"

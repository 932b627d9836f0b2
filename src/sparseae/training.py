"""The training loop, for any sparseae model, and the run directory it writes.

A run directory holds::

    config.json             model, training and data settings (enough to resume)
    metrics.jsonl           one JSON line per epoch
    metrics-steps.jsonl     one JSON line per --metrics-every steps (when set)
    checkpoint.safetensors  model + optimizer + RNG state after the last finished epoch (or --checkpoint-every step)
    checkpoint-prev.safetensors  the one before, used when the latest is damaged
    model.safetensors       the latest model, with cfg.json: ``sparseae.load(RUN)``
    cfg.json
    reconstructions.png     test samples above their reconstructions
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

import sparseae
from sparseae import checkpoint, distributed, kernels, runtime, step_metrics
from sparseae._config import from_dict, to_dict
from sparseae.checkpoint import RunLock
from sparseae.data import DataConfig, Dataset, Stream, load_data
from sparseae.errors import DiskError, SparseAEError, check
from sparseae.io import append_text, atomic_write, disk_error, model_from_cfg, read_json, save_model, write_json
from sparseae.metrics import Accumulator, linear_probe
from sparseae.models import Autoencoder, get_preset
from sparseae.report import image_grid, save_image_grid
from sparseae.report.features import feature_tiles
from sparseae.schedules import lr_at, penalty_scale_at
from sparseae.step_metrics import STEP_METRICS_FILE, StepWindow, read_step_metrics

log = logging.getLogger("sparseae")

CONFIG_FILE, METRICS_FILE = "config.json", "metrics.jsonl"
CHECKPOINT_FILE = checkpoint.CHECKPOINT_FILE
RECONSTRUCTIONS_FILE = "reconstructions.png"
PREPARE_SAMPLES = 10_000
"""Training samples shown to ``model.prepare`` (data-dependent initialisation) before the first step."""


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Each field's docstring is its ``--help`` text."""

    epochs: int = 10
    """Passes over the training split."""
    steps: int | None = None
    """Train for exactly this many optimizer steps instead of whole epochs."""
    batch_size: int = 128
    """Samples per optimizer step."""
    lr: float = 1e-3
    """Adam learning rate."""
    optimizer: Literal["keras-adam", "adam"] = "keras-adam"
    """'keras-adam': Adam as Keras computes it (epsilon added before the bias
    correction, which damps the first steps); 'adam': torch.optim.Adam."""
    adam_eps: float = 1e-7
    """Adam epsilon; 1e-7 is Keras' default (PyTorch's is 1e-8)."""
    adam_beta1: float = 0.9
    """Adam's decay rate of the running mean of gradients (beta1)."""
    adam_beta2: float = 0.999
    """Adam's decay rate of the running mean of squared gradients (beta2); 0.99 forgets
    the large gradients of the first steps sooner."""
    loss: Literal["mse", "bce", "half_sse"] = "mse"
    """Reconstruction loss: 'mse' (mean over every element), 'bce' (binary cross-entropy,
    outputs clipped to [1e-7, 1-1e-7] as in Keras), or 'half_sse' (half the squared
    error summed over an example's features, averaged over examples: Ng's J)."""
    seed: int = 0
    """Seeds the data order (and the model's initialisation, from the CLI)."""
    device: str = "auto"
    """'auto' (CUDA, then Apple MPS, then CPU), or a torch device such as 'cpu', 'cuda:1'."""
    eval_batch_size: int = 1000
    """Samples per batch when evaluating on the test split."""
    tensorboard: bool = False
    """Also log each epoch's metrics and the feature grid to RUN/tensorboard (needs the tensorboard package)."""
    checkpoint_every: int | None = None
    """Also write a checkpoint every N optimizer steps within an epoch (one is always written
    after each epoch); --resume continues from the exact batch."""
    max_bad_steps: int = 10
    """A step whose loss or gradients are not finite is skipped; after this many in a row the
    run stops, naming the step (0 switches the check off, saving a sync per step)."""
    precision: Literal["float32", "bfloat16"] = "float32"
    """Precision of the forward pass: 'bfloat16' runs the matmuls and convolutions in bfloat16
    (autocast; about 2x faster on CPUs with AVX-512-BF16 or AMX and on recent GPUs), with
    float32 weights, optimizer and loss."""
    kernels: Literal["auto", "reference"] = "auto"
    """'auto': the fast paths (sparse TopK encoder backward and decoder, fused Adam);
    'reference': plain PyTorch operations, for checking them."""
    lr_warmup: int = 0
    """Warm the learning rate up linearly over the first N optimizer steps: step s uses
    lr * s / N (SAELens' lr_warm_up_steps); 0: the full rate from the first step."""
    lr_decay: Literal["none", "linear", "cosine"] = "none"
    """Decay the learning rate over the last --lr-decay-fraction of the run's steps,
    linearly or along a cosine (torch's CosineAnnealingLR), towards --lr-decay-to x lr."""
    lr_decay_fraction: float = 0.2
    """The share of the run's steps, at its end, that --lr-decay spans (in (0, 1])."""
    lr_decay_to: float = 0.0
    """Where --lr-decay ends, as a fraction of --lr (0: towards zero; reached just after the last step)."""
    l1_warmup: int = 0
    """Ramp the sparsity penalty's weight linearly from 1/N of its value at step 1 to all of it
    at step N (SAELens' l1_warm_up_steps); for any constraint with a penalty (l1, kl, jumprelu's
    L0 term, ...); 0: the full penalty from the first step."""
    grad_clip: float | None = None
    """Scale the gradients down so that their global L2 norm is at most this, before each
    optimizer step (torch.nn.utils.clip_grad_norm_); unset: no clipping."""
    metrics_every: int | None = None
    """Also write one line to RUN/metrics-steps.jsonl every N optimizer steps: lr, the training
    loss terms and L0 averaged over those steps, latents dead in them, samples/s (and to
    TensorBoard, and the progress bar); unset: per-epoch metrics only."""

    @classmethod
    def for_preset(cls, name: str, **fields: Any) -> TrainConfig:
        """The config ``sparseae train --model NAME`` trains with, with ``fields`` overriding it.

        ``TrainConfig()`` alone is the Keras blog's recipe (keras-adam, lr 1e-3); the
        ``dense`` preset trains with its own (:data:`sparseae.models.presets.DENSE_TRAINING`),
        its learning rate following the batch size unless ``lr`` is given (or is None),
        e.g. ``TrainConfig.for_preset("dense", epochs=5, batch_size=4096)`` trains at 4e-3.
        """
        preset = get_preset(name)
        fields = {**preset.train_defaults, **fields}
        if fields.get("lr") is None:
            fields.pop("lr", None)
            lr = preset.default_lr(fields.get("batch_size", cls.batch_size))
            if lr is not None:
                fields["lr"] = lr
        return cls(**fields)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            check(value >= 1, name, expected="an integer >= 1", got=value, fix=f"Pass a positive {name}.")
        check(
            self.checkpoint_every is None or self.checkpoint_every >= 1,
            "checkpoint_every",
            expected="an integer >= 1",
            got=self.checkpoint_every,
            fix="Leave it unset to checkpoint after each epoch only.",
        )
        check(
            self.max_bad_steps >= 0, "max_bad_steps", expected="an integer >= 0", got=self.max_bad_steps, fix="0 switches it off."
        )
        check(
            self.steps is None or self.steps >= 1,
            "steps",
            expected="an integer >= 1",
            got=self.steps,
            fix="Leave it unset to train by epochs.",
        )
        for name in ("lr", "adam_eps"):
            value = getattr(self, name)
            check(0 < value < math.inf, name, expected="a finite number > 0", got=value, fix=f"Pass a positive {name}.")
        for name in ("adam_beta1", "adam_beta2"):
            value = getattr(self, name)
            check(0 <= value < 1, name, expected="a number in [0, 1)", got=value, fix="For example 0.9 or 0.999.")
        for name in ("lr_warmup", "l1_warmup"):
            value = getattr(self, name)
            check(value >= 0, name, expected="a number of steps >= 0", got=value, fix="0 switches the warm-up off.")
        check(
            0 < self.lr_decay_fraction <= 1,
            "lr_decay_fraction",
            expected="a fraction of the run in (0, 1]",
            got=self.lr_decay_fraction,
            fix="For example 0.2: the last fifth of the steps.",
        )
        check(
            0 <= self.lr_decay_to <= 1,
            "lr_decay_to",
            expected="a fraction of lr in [0, 1]",
            got=self.lr_decay_to,
            fix="0 decays towards zero, 0.1 towards a tenth of lr.",
        )
        check(
            self.grad_clip is None or 0 < self.grad_clip < math.inf,
            "grad_clip",
            expected="a finite number > 0, or unset",
            got=self.grad_clip,
            fix="Leave it unset to not clip.",
        )
        check(
            self.metrics_every is None or self.metrics_every >= 1,
            "metrics_every",
            expected="an integer >= 1, or unset",
            got=self.metrics_every,
            fix="Leave it unset for per-epoch metrics only.",
        )


class TrainResult(NamedTuple):
    """What :func:`train` returns."""

    model: Autoencoder
    """The trained model, in eval mode."""
    metrics: list[dict[str, Any]]
    """One record per epoch (the lines of ``metrics.jsonl``)."""
    run_dir: Path | None
    """Where the run was written, if anywhere."""


def pick_device(name: str) -> torch.device:
    """``auto`` -> CUDA (this rank's GPU under torchrun), then MPS, then CPU; otherwise the named device, if it is there."""
    if name == "auto":
        if distributed.local_device() is not None:
            return distributed.local_device()
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SparseAEError(
            "device", expected="auto, cpu, cuda, cuda:N or mps", got=repr(name), fix="Pick one of those."
        ) from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    check(
        available.get(device.type, False),
        "device",
        expected="a device this machine has",
        got=f"{name!r} (not available here)",
        fix="Use --device auto to pick what is there.",
    )
    return device


def reconstruction_loss(kind: str, recon: Tensor, x: Tensor) -> Tensor:
    """'mse' and 'bce' average over elements, as Keras reduces an image batch; 'half_sse' is Ng's."""
    if kind == "bce":
        return F.binary_cross_entropy(recon.clamp(1e-7, 1 - 1e-7), x)
    if kind == "half_sse":
        return 0.5 * (recon - x).square().sum() / len(x)
    return F.mse_loss(recon, x)


class KerasAdam(torch.optim.Adam):
    """Adam with Keras' placement of epsilon.

    Keras updates ``w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)``;
    torch divides by ``sqrt(v) / sqrt(1 - b2^t) + eps`` instead. The two agree when
    torch's epsilon is ``eps / sqrt(1 - b2^t)``, which this sets before each step:
    30x larger than ``eps`` at step 1, equal to it after a few thousand steps.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-7,
        fused: bool | None = None,
    ):
        super().__init__(params, lr=lr, betas=betas, eps=eps, fused=fused)
        for group in self.param_groups:
            group["keras_eps"] = eps

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        for group in self.param_groups:
            state = self.state.get(group["params"][0], {})
            t = int(state["step"]) + 1 if "step" in state else 1
            group["eps"] = group["keras_eps"] / math.sqrt(1 - group["betas"][1] ** t)
        return super().step(closure)


class _Transposed:
    """Steps parameters stored transposed (the dense model's latent-major decoder) through their contiguous transpose.

    Fused Adam is ~5x slower on a transposed tensor than on a contiguous one; the
    update is elementwise, so stepping ``p.T`` (with its gradient and moments
    transposed alike) is the same update. Outside :meth:`step` every tensor has
    its parameter's own shape, so checkpoints are unchanged.
    """

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.params = [p for g in optimizer.param_groups for p in g["params"] if p.dim() == 2 and p.mT.is_contiguous()
                       and not p.is_contiguous()]  # fmt: skip
        self.state = optimizer.state

    def __enter__(self) -> None:
        self._flip()

    def __exit__(self, *exc: object) -> None:
        self._flip()

    def _flip(self) -> None:
        for p in self.params:
            grad, p.grad = p.grad, None
            p.data = p.data.mT
            p.grad = None if grad is None else grad.mT
            state = self.state.get(p, {})
            for name, value in state.items():
                if isinstance(value, Tensor) and value.dim() == 2:
                    state[name] = value.mT


def make_optimizer(model: Autoencoder, config: TrainConfig) -> torch.optim.Adam:
    # Fused Adam updates each parameter in one pass: ~4x faster than foreach for large dictionaries on CPU.
    devices = {p.device.type for p in model.parameters()}
    fused = config.kernels == "auto" and devices <= {"cpu", "cuda"} or None
    betas = (config.adam_beta1, config.adam_beta2)
    if config.optimizer == "keras-adam":
        return KerasAdam(model.parameters(), lr=config.lr, betas=betas, eps=config.adam_eps, fused=fused)
    return torch.optim.Adam(model.parameters(), lr=config.lr, betas=betas, eps=config.adam_eps, fused=fused)


@torch.no_grad()
def evaluate(
    model: Autoencoder, x: Tensor, batch_size: int = 1000, device: torch.device | str | None = None, progress: bool = False
) -> dict[str, float]:
    """Test metrics of ``model`` on samples ``x``: mse, fvu, l0, mean_activation, frac_zero, dead_units.

    See :mod:`sparseae.metrics` for the definitions.
    """
    model.check_input(tuple(x.shape[1:]), "evaluation data")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    acc = Accumulator()
    for i in tqdm(range(0, len(x), batch_size), desc="evaluating", disable=not progress, leave=False):
        batch = x[i : i + batch_size].to(device)
        out = model(batch)
        acc.update(out.target, out.recon, out.code)
    model.train(was_training)
    return acc.result()


def probe(model: Autoencoder, data: Dataset, batch_size: int = 1000) -> float:
    """Linear-probe accuracy: logistic regression on the training codes, scored on the test codes.

    See :func:`sparseae.metrics.linear_probe`; needs labelled data.
    """
    check(
        data.train_labels is not None and data.test_labels is not None,
        f"{data.name} data",
        expected="labels for a linear probe",
        got="no labels",
        fix="Probe only labelled data sets such as MNIST.",
    )
    train, test = model.encode_all(data.train, batch_size), model.encode_all(data.test, batch_size)
    return linear_probe(train, data.train_labels, test, data.test_labels)


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The shuffled sample order of one epoch: a function of (seed, epoch) alone, so resuming needs no state."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def train(
    model: Autoencoder,
    data: Dataset,
    config: TrainConfig = TrainConfig(),
    out: str | Path | None = None,
    *,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` on ``data.train`` with Adam, evaluating on ``data.test`` after each epoch.

    Args:
        model: Any sparseae model; it is trained in place.
        data: Train and test samples.
        config: Training settings.
        out: Run directory to write (must not hold a run already); ``None`` writes nothing.
        progress: Show a progress bar with the live loss.
    """
    _check_fits(model, data, "data")
    distributed.init_from_env()
    if out is None or not distributed.is_main():  # under torchrun only rank 0 writes the run
        return _fit(model, data, config, None, progress=progress and distributed.is_main())
    run_dir = _new_run_dir(Path(out), model, config, data)
    with RunLock(run_dir):
        return _fit(model, data, config, run_dir, progress=progress)


def _check_fits(model: Autoencoder, data: Dataset, what: str) -> None:
    model.check_input(data.sample_shape, what)


def _new_run_dir(run_dir: Path, model: Autoencoder, config: TrainConfig, data: Dataset) -> Path:
    """Create a run directory (refusing one that holds files) and write its ``config.json``."""
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise SparseAEError(
            str(run_dir),
            expected="a new or empty run directory",
            got="a file" if not run_dir.is_dir() else "a directory that already holds files",
            fix="Choose another --out, or continue that run with --resume.",
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except (NotADirectoryError, FileExistsError):
        raise SparseAEError(
            str(run_dir),
            expected="a new or empty run directory",
            got="a path inside a file",
            fix="Choose another --out.",
        ) from None
    except OSError as e:  # a read-only file system, no permission, a full disk
        raise disk_error(run_dir, e) from None
    write_json(
        run_dir / CONFIG_FILE,
        {
            "sparseae_version": sparseae.__version__,
            "model": {"format": sparseae.io.FORMAT, **model.describe()},
            "train": to_dict(config),
            "data": to_dict(data.config) if data.config else None,
        },
    )
    return run_dir


def resume(run_dir: str | Path, *, data: Dataset | None = None, progress: bool = True) -> TrainResult:
    """Continue a run from its last checkpoint; on the CPU the result equals an uninterrupted run.

    The latest checkpoint is used, or the previous one when the latest is damaged.
    ``data`` is needed only when the run was trained on in-memory data.
    """
    run_dir = Path(run_dir)
    run = read_run_config(run_dir)
    distributed.init_from_env()
    with RunLock(run_dir) if distributed.is_main() else contextlib.nullcontext():
        tensors, meta = checkpoint.load_latest(run_dir)
        config = from_dict(TrainConfig, run["train"], f"{run_dir / CONFIG_FILE} train")
        model = model_from_cfg(run["model"], f"{run_dir / CONFIG_FILE} model")
        if data is None:
            data = load_run_data(run_dir, run, fix="Pass the same data: sparseae.resume(run, data=...).")
        return _fit(model, data, config, run_dir, progress=progress and distributed.is_main(), state=(tensors, meta))


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The ``config.json`` of a run directory, checked to be one."""
    if not (run_dir / CONFIG_FILE).is_file():
        raise SparseAEError(
            str(run_dir),
            expected=f"a run directory (with {CONFIG_FILE})",
            got="no such directory" if not run_dir.exists() else f"a directory without {CONFIG_FILE}",
            fix="Pass a directory written by `sparseae train`.",
        )
    run = read_json(run_dir / CONFIG_FILE)
    if not isinstance(run, dict) or not {"model", "train", "data"} <= set(run):
        raise SparseAEError(
            str(run_dir / CONFIG_FILE),
            expected="a run config with model, train and data entries",
            got=f"keys {sorted(run) if isinstance(run, dict) else type(run).__name__}",
            fix="The file is not a sparseae run config.",
        )
    return run


def load_run_data(run_dir: Path, run: dict[str, Any], fix: str) -> Dataset:
    """The data set a run was trained on, as its ``config.json`` records it."""
    if run["data"] is None:
        raise SparseAEError(
            str(run_dir), expected="a run whose data sparseae can load again", got="a run trained on in-memory data", fix=fix
        )
    return load_data(from_dict(DataConfig, run["data"], f"{run_dir / CONFIG_FILE} data"))


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl`` (empty before its first epoch ends)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class _Job:
    """One model in training: its optimizer, running sums, history and run directory."""

    def __init__(self, model: Autoencoder, config: TrainConfig, run_dir: Path | None, device: torch.device):
        self.model, self.config, self.run_dir, self.device = model.to(device).train(), config, run_dir, device
        model.kernels = config.kernels
        if config.kernels == "auto" and device.type == "cpu":
            runtime.keep_freed_memory()
        self.optimizer = make_optimizer(model, config)
        self.transposed = _Transposed(self.optimizer) if config.kernels == "auto" else contextlib.nullcontext()
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bfloat16")
        # Under torchrun, DistributedDataParallel averages the gradients across ranks during
        # backward; buffers (e.g. AuxK's counts) are kept equal by reductions in the model.
        self.forward: Any = model
        if distributed.active():
            ids = [device.index] if device.type == "cuda" else None
            self.forward = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
        self.history: list[dict[str, Any]] = []
        self.bad_in_row = self.first_bad = 0
        self.total_steps = 0  # the run's length, which the learning-rate schedule needs; set by _run
        self.window = StepWindow(model.n_latents, device) if config.metrics_every else None
        self.writer = _tensorboard_writer(run_dir / "tensorboard") if config.tensorboard and run_dir is not None else None

    def begin_epoch(self) -> None:
        self.sums = torch.zeros(4, device=self.device)  # loss, recon, penalty, aux
        self.fired = torch.zeros(self.model.n_latents, dtype=torch.bool, device=self.device)  # since the bar's last update
        self.seen, self.busy, self.skipped = 0, 0.0, 0  # bad_in_row runs on across epochs

    def step(self, x: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """One optimizer step on batch ``x`` (global step number ``step``); returns the loss and the code.

        With ``max_bad_steps``, a step whose loss or gradients are not finite is skipped
        (no update); too many in a row stop the run before anything more is written.
        """
        start = time.perf_counter()
        model, optimizer = self.model, self.optimizer
        if len(x) == 0:  # a distributed epoch's tail, too short to share: skipped on every rank
            return torch.full((), torch.nan), x.new_zeros((0, model.n_latents))
        with self.autocast:
            out = self.forward(x)
        recon = reconstruction_loss(self.config.loss, out.recon.float(), out.target)
        scale = penalty_scale_at(step, self.config)
        penalty = out.penalty if scale == 1.0 else out.penalty * scale
        loss = recon + penalty + out.aux
        optimizer.zero_grad(set_to_none=True)
        if distributed.active():
            # Each rank's loss is a mean over its rows; weighted by its share of the global
            # batch (times the ranks, which DDP's averaging divides out) the gradient is the
            # one of the mean over the whole batch, even when the shares differ.
            share = len(x) * distributed.world() / distributed.batch_total(len(x), x.device)
            (loss * share).backward()
        else:
            loss.backward()
        if self.config.max_bad_steps and not self._finite(loss):
            self._bad_step(step)
            if self.window is not None:
                self.window.skipped += 1
            optimizer.zero_grad(set_to_none=True)
            self.busy += time.perf_counter() - start
            return loss, out.code
        self.bad_in_row = 0
        model.before_step()
        if self.config.grad_clip is not None:  # after before_step: the optimizer sees at most grad_clip
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.config.grad_clip)
        lr = lr_at(step, self.total_steps, self.config)  # a function of the step alone: a resumed run gets the same rates
        for group in optimizer.param_groups:
            group["lr"] = lr
        with self.transposed:
            optimizer.step()
        model.after_step()
        terms = torch.stack([loss, recon, penalty, out.aux]).detach()
        self.sums += terms * len(x)
        self.seen += len(x)
        fired = kernels.fired(out.code)
        self.fired |= fired
        if self.window is not None:
            self.window.add(terms, out.code, fired)
        self.busy += time.perf_counter() - start
        return loss, out.code

    def _finite(self, loss: Tensor) -> bool:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        norms = torch._foreach_norm(grads) if grads else []
        bad = (~torch.isfinite(torch.stack([loss.detach(), *norms])).all()).to(torch.uint8)
        return not bool(distributed.all_max(bad))  # one sync for all of them; every rank skips alike

    def _bad_step(self, step: int) -> None:
        self.skipped += 1
        self.bad_in_row += 1
        if self.bad_in_row == 1:
            self.first_bad = step
        log.warning("step %d: loss or gradients not finite; step skipped", step)
        if self.bad_in_row >= self.config.max_bad_steps:
            self._diverged(step)

    def _diverged(self, step: int) -> None:
        where = f"{self.run_dir}, " if self.run_dir else ""
        raise SparseAEError(
            f"{where}training step {step}",
            expected="a finite loss and finite gradients",
            got=f"NaN or infinity (or gradients beyond float32's range) in {self.bad_in_row} steps in a row, "
            f"from step {self.first_bad}",
            fix=f"Start again with a lower learning rate (--lr {self.config.lr:g} now), or clean the data of NaN/inf; "
            "what the run wrote before is kept intact.",
        )

    def state(self) -> dict[str, Tensor]:
        """The epoch's running sums, for a checkpoint within an epoch."""
        return {"sums": self.sums, "seen": torch.tensor(self.seen), "skipped": torch.tensor(self.skipped),
                "busy": torch.tensor(self.busy, dtype=torch.float64)}  # fmt: skip

    def load_state(self, tensors: dict[str, Tensor]) -> None:
        self.sums = tensors["sums"].to(self.device)
        self.seen, self.skipped, self.busy = int(tensors["seen"]), int(tensors["skipped"]), float(tensors["busy"])

    def postfix(self, loss: Tensor, code: Tensor) -> dict[str, Any]:
        dead = int((~self.fired).sum())
        self.fired.zero_()
        return {"loss": f"{loss.item():.4g}", "L0": f"{kernels.active_per_row(code).mean().item():.1f}", "dead": dead}

    def end_epoch(self, epoch: int, step: int, n_epochs: int, elapsed: float, data: Dataset, progress: bool) -> None:
        model = self.model
        if distributed.active():  # the epoch's sums over every rank's rows
            self.sums = distributed.all_sum(self.sums)
            self.seen = int(distributed.all_sum(torch.tensor(self.seen, device=self.device)))
        if self.seen == 0:  # every step of the epoch was skipped, fewer than max_bad_steps of them
            self._diverged(step)
        train_loss, train_recon, train_penalty, train_aux = (self.sums / self.seen).tolist()
        test = evaluate(model, data.test, self.config.eval_batch_size, self.device, progress)
        record = {
            "epoch": epoch,
            "step": step,
            "epoch_time_s": round(elapsed, 3),
            "samples_per_s": round(self.seen / elapsed, 1),
            "train_loss": train_loss,
            "train_recon": train_recon,
            "train_penalty": train_penalty,
            "train_aux": train_aux,
            "skipped_steps": self.skipped,
            **{f"test_{k}": v for k, v in test.items()},
            "n_latents": model.n_latents,
        }
        self.history.append(record)
        log.info(
            "%sepoch %d/%d  %.1fs  train loss %.5f  test mse %.5f  fvu %.4f  L0 %.2f  dead %d/%d",
            f"{self.run_dir.name}: " if self.run_dir else "", epoch, n_epochs, elapsed, train_loss,
            test["mse"], test["fvu"], test["l0"], test["dead_units"], model.n_latents,
        )  # fmt: skip
        if self.run_dir is not None:
            # The record goes before the checkpoint: a crash between them redoes the epoch on
            # resume (the record is dropped as newer than the checkpoint) instead of losing it.
            tensors, meta = self.checkpoint_state(epoch, 0, step)
            checkpoint.check_finite(tensors)  # nothing is written from a diverged model
            append_text(self.run_dir / METRICS_FILE, json.dumps(record) + "\n")
            checkpoint.save(self.run_dir, tensors, meta)
            save_model(model, self.run_dir)
            save_reconstructions(model, data.test, self.run_dir / RECONSTRUCTIONS_FILE)
        if self.writer is not None:
            for key, value in record.items():
                if key not in ("epoch", "step"):
                    self.writer.add_scalar(key, value, step)
            tiles = feature_tiles(model)
            if tiles is not None:
                grid = image_grid([tiles[i : i + 10] for i in range(0, min(len(tiles), 100), 10)])
                self.writer.add_image("features", grid, step, dataformats="HW" if grid.ndim == 2 else "HWC")
            self.writer.flush()

    def write_steps(self, step: int, epoch: int) -> dict[str, Any]:
        """The --metrics-every line of the steps up to ``step`` (in epoch ``epoch``, 1-based): appended to
        ``metrics-steps.jsonl`` (before any checkpoint of that step, as epochs' records are) and TensorBoard."""
        assert self.window is not None
        record = self.window.line(step, epoch, lr_at(step, self.total_steps, self.config))
        if self.run_dir is not None:
            append_text(self.run_dir / STEP_METRICS_FILE, json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key not in ("epoch", "step") and value is not None:
                    self.writer.add_scalar(f"steps/{key}", value, step)
        return record

    def save_checkpoint(self, epoch: int, batch: int, step: int) -> None:
        """Checkpoint after ``batch`` batches of epoch ``epoch`` (0-based; batch 0: the epoch's start), at global ``step``."""
        assert self.run_dir is not None
        checkpoint.save(self.run_dir, *self.checkpoint_state(epoch, batch, step))

    def checkpoint_state(self, epoch: int, batch: int, step: int) -> tuple[dict[str, Tensor], dict[str, Any]]:
        opt = self.optimizer.state_dict()
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        for index, state in opt["state"].items():
            tensors.update({f"optim.{index}.{k}": torch.as_tensor(v) for k, v in state.items()})
        tensors["rng.cpu"] = torch.get_rng_state()
        if batch:
            tensors.update({f"epoch.{k}": v for k, v in self.state().items()})
        if self.window is not None:  # a window of --metrics-every runs across checkpoints and epochs
            tensors.update({f"steps.{k}": v for k, v in self.window.state().items()})
        meta = {"epoch": epoch, "batch": batch, "step": step, "param_groups": opt["param_groups"]}
        return tensors, meta

    def load_checkpoint(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> tuple[int, int, int]:
        """Restore model, optimizer, RNG and the epoch's sums; returns (epoch, batch, step)."""
        model = self.model
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        state: dict[int, dict[str, Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value if name == "step" else value.to(self.device)
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        for param, saved in self.optimizer.state.items():
            for name, value in saved.items():  # the memory format of the parameter (channels-last): fused Adam needs it
                if value.shape == param.shape and value.stride() != param.stride():
                    saved[name] = torch.empty_like(param).copy_(value)
        torch.set_rng_state(tensors["rng.cpu"])
        self.resume_state = {k[6:]: v for k, v in tensors.items() if k.startswith("epoch.")}
        if self.window is not None:
            self.window.load_state({k[6:]: v for k, v in tensors.items() if k.startswith("steps.")})
        return meta["epoch"], meta.get("batch", 0), meta["step"]

    def result(self) -> TrainResult:
        return TrainResult(self.model.eval(), self.history, self.run_dir)


def _tensorboard_writer(path: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SparseAEError(
            "--tensorboard",
            expected="the tensorboard package installed",
            got="no tensorboard",
            fix="pip install tensorboard (or sparseae[tensorboard]).",
        ) from None
    return SummaryWriter(str(path))


def _fit(
    model: Autoencoder,
    data: Dataset,
    config: TrainConfig,
    run_dir: Path | None,
    *,
    progress: bool,
    state: tuple[dict[str, Tensor], dict[str, Any]] | None = None,
) -> TrainResult:
    run_dir = run_dir if distributed.is_main() else None  # under torchrun only rank 0 writes
    job = _Job(model, config, run_dir, pick_device(config.device))
    epoch = batch = step = 0
    if state is not None:
        epoch, batch, step = job.load_checkpoint(*state)
        if run_dir is not None:
            job.history = _keep_until(run_dir / METRICS_FILE, read_metrics(run_dir), step)
            if (run_dir / STEP_METRICS_FILE).exists():
                _keep_until(run_dir / STEP_METRICS_FILE, read_step_metrics(run_dir), step)
        log.info("resuming %s at epoch %d, batch %d (step %d)", run_dir, epoch + 1, batch, step)
    with _saying_what_is_saved([job]):
        _run([job], data, config, progress=progress, epoch=epoch, batch=batch, step=step, prepare=state is None)
    return job.result()


def _keep_until(path: Path, records: list[dict[str, Any]], step: int) -> list[dict[str, Any]]:
    """Rewrite ``path`` with the ``records`` of steps up to ``step`` (a resume writes the later ones again); returns them."""
    kept = [r for r in records if r["step"] <= step]
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept).encode())
    return kept


class Interrupted(KeyboardInterrupt):
    """Training was interrupted (Ctrl-C); the message says which checkpoint each run directory holds."""


@contextlib.contextmanager
def _saying_what_is_saved(jobs: list[_Job]) -> Iterator[None]:
    """Turn Ctrl-C into :class:`Interrupted` saying what was saved, and add how to resume to a failed write."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted("; ".join(_what_is_saved(job) for job in jobs)) from None
    except DiskError as e:
        runs = [job.run_dir for job in jobs if job.run_dir is not None and Path(e.what).parent == job.run_dir]
        if not runs:
            raise
        kept = f"the files written before are intact. Then continue with `sparseae train --resume {runs[0]}`"
        raise disk_error(Path(e.what), e.error, kept) from None


def _what_is_saved(job: _Job) -> str:
    if job.run_dir is None:
        return "nothing was written (no run directory)"
    meta = checkpoint.latest_meta(job.run_dir)  # what is on disk, whenever the interrupt came
    if meta is None:
        return f"{job.run_dir} holds no checkpoint yet (stopped before the first one): start it again with a new --out"
    epoch, batch, step = meta["epoch"], meta.get("batch", 0), meta["step"]
    at = f"the end of epoch {epoch}" if batch == 0 else f"batch {batch} of epoch {epoch + 1}"
    return f"{job.run_dir} holds the checkpoint of step {step} ({at}): `sparseae train --resume {job.run_dir}` continues there"


def _run(
    jobs: list[_Job], data: Dataset, config: TrainConfig, *, progress: bool, epoch: int, step: int, prepare: bool, batch: int = 0
) -> None:
    """Train every job on the same batches, in one pass over the data, from batch ``batch`` of epoch ``epoch``."""
    device = jobs[0].device
    n = len(data.train)
    steps_per_epoch = math.ceil(n / config.batch_size)
    total_steps = config.steps or config.epochs * steps_per_epoch
    n_epochs = math.ceil(total_steps / steps_per_epoch)
    if step >= total_steps:
        log.info("training had already finished (%d steps)", step)
        return
    for job in jobs:
        job.total_steps = total_steps
        job.model.set_epoch_rows(n)
    if prepare:
        torch.manual_seed(config.seed)
        if isinstance(data.train, Stream):
            sample = data.train.sample(PREPARE_SAMPLES, config.seed).to(device)
        else:
            sample = data.train[epoch_order(n, config.seed, -1)[:PREPARE_SAMPLES]].to(device)
        finite = torch.isfinite(sample.flatten(1)).all(1)
        if not finite.all():  # NaN rows must not set the initial biases; their steps are skipped later
            log.warning("%d of %d samples for initialisation are not finite; left out", int((~finite).sum()), len(sample))
            sample = sample[finite]
        for job in jobs:
            job.model.initialise(sample)
    for job in jobs:
        if job.window is not None:
            job.window.since = time.perf_counter()  # samples/s of training, not of the initialisation
    while step < total_steps:
        batches = _epoch_batches(data.train, config.batch_size, config.seed, epoch, start=batch, part=distributed.part())
        epoch_steps = min(steps_per_epoch - batch, total_steps - step)
        for job in jobs:
            job.begin_epoch()
            if batch:
                job.load_state(job.resume_state)
        bar = tqdm(total=steps_per_epoch, initial=batch, desc=f"epoch {epoch + 1}/{n_epochs}", disable=not progress, leave=False)
        shared = 0.0  # seconds spent on the batches themselves, shared by every job
        taken = 0
        for i in range(epoch_steps):
            start = time.perf_counter()
            x = next(batches, None)
            if x is None:  # a stream that ran short of its stated length (e.g. text with fewer tokens)
                break
            x = x.to(device, non_blocking=True)
            shared += time.perf_counter() - start
            outcomes = [job.step(x, step + taken + 1) for job in jobs]
            taken += 1
            bar.update()
            if config.metrics_every and (step + taken) % config.metrics_every == 0:
                lines = [job.write_steps(step + taken, epoch + 1) for job in jobs]
                if progress:
                    bar.set_postfix(step_metrics.postfix(lines))
            elif progress and not config.metrics_every and (i % 25 == 0 or i == epoch_steps - 1):
                if len(jobs) == 1:
                    bar.set_postfix(jobs[0].postfix(*outcomes[0]))
                else:
                    bar.set_postfix(models=len(jobs), loss=" ".join(f"{loss.item():.3g}" for loss, _ in outcomes))
            every = config.checkpoint_every
            if every and (step + taken) % every == 0 and batch + taken < steps_per_epoch and step + taken < total_steps:
                for job in jobs:
                    if job.run_dir is not None:
                        job.save_checkpoint(epoch, batch + taken, step + taken)
        bar.close()
        if taken == 0:
            raise SparseAEError("training data", expected="at least one batch per epoch", got="none", fix="Check the source.")
        step += taken
        epoch += 1
        batch = 0
        for job in jobs:
            job.end_epoch(epoch, step, n_epochs, job.busy + shared / len(jobs), data, progress)
    for job in jobs:
        if job.writer is not None:
            job.writer.close()


def _epoch_batches(
    x: Tensor | Stream, batch_size: int, seed: int, epoch: int, start: int = 0, part: tuple[int, int] = (0, 1)
) -> Iterator[Tensor]:
    """The shuffled batches of one epoch from batch ``start`` on (a tensor's by :func:`epoch_order`, a stream's by its buffer).

    ``part = (rank, world)``: this rank's share of each batch, an even split in rank
    order (a tensor reads only its rows; a stream is read whole on every rank).
    """
    rank, world = part

    def share(rows: Tensor) -> Tensor:  # a tail batch with fewer rows than ranks is left out on every rank
        return rows.tensor_split(world)[rank] if len(rows) >= world else rows[:0]

    if isinstance(x, Stream):
        for batch in itertools.islice(x.batches(batch_size, seed, epoch), start, None):  # a stream is read up to there
            yield share(batch)
        return
    order = epoch_order(len(x), seed, epoch)
    for i in range(start * batch_size, len(x), batch_size):
        yield x[share(order[i : i + batch_size])]


def sweep(
    models: dict[str, Autoencoder],
    data: Dataset,
    config: TrainConfig = TrainConfig(),
    out: str | Path | None = None,
    *,
    progress: bool = True,
) -> dict[str, TrainResult]:
    """Train several models on the same data in one pass: each batch is fed to every model.

    Every model gets its own optimizer and, under ``out``, its own run directory
    named by its key (a normal run: ``sparseae.load``, ``resume``, ``report`` work
    on it). Each run's ``epoch_time_s`` is its own compute plus its share of the
    time spent on the batches.
    """
    check(len(models) >= 1, "sweep", expected="at least one model", got=0, fix="Pass a dict of name -> model.")
    distributed.init_from_env()
    progress = progress and distributed.is_main()
    device = pick_device(config.device)
    jobs = []
    with contextlib.ExitStack() as locks:
        for name, model in models.items():
            _check_fits(model, data, f"data for sweep model {name!r}")
            run_dir = None if out is None or not distributed.is_main() else _new_run_dir(Path(out) / name, model, config, data)
            if run_dir is not None:
                locks.enter_context(RunLock(run_dir))
            jobs.append(_Job(model, config, run_dir, device))
        with _saying_what_is_saved(jobs):
            _run(jobs, data, config, progress=progress, epoch=0, step=0, prepare=True)
    return {name: job.result() for name, job in zip(models, jobs, strict=True)}


def save_reconstructions(model: Autoencoder, x: Tensor, path: Path, n: int = 10) -> Path | None:
    """Write the first ``n`` samples above their reconstructions, for image data."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        return None
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        recon = model.reconstruct(x[:n].to(device))
    model.train(was_training)
    return save_image_grid(path, [x[:n], recon])

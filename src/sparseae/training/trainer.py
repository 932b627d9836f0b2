"""One model in training: a `Trainer` steps it, sums its loss terms and writes its run directory."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from sparseae import checkpoint, distributed, kernels, runtime
from sparseae.data import Dataset
from sparseae.errors import SparseAEError
from sparseae.io import append_text, save_model
from sparseae.models import Autoencoder
from sparseae.pictures.features import feature_tiles
from sparseae.pictures.images import image_grid
from sparseae.rundir import METRICS_FILE, RECONSTRUCTIONS_FILE, STEP_METRICS_FILE
from sparseae.training.config import TrainConfig, TrainResult
from sparseae.training.evaluation import evaluate, save_reconstructions
from sparseae.training.optim import TransposedStep, make_optimizer
from sparseae.training.schedules import lr_at, penalty_scale_at
from sparseae.training.steps import StepWindow

log = logging.getLogger("sparseae")


class LossTerms(NamedTuple):
    """The terms of a step's loss (each a mean over the batch's rows); ``loss`` is the sum of the others."""

    loss: Any
    recon: Any
    """The reconstruction loss ([`TrainConfig.loss`][sparseae.training.TrainConfig.loss])."""
    penalty: Any
    """The sparsity penalty, scaled by the L1 warm-up."""
    aux: Any
    """The model's auxiliary loss (AuxK, weight decay)."""


def reconstruction_loss(kind: str, recon: Tensor, x: Tensor) -> Tensor:
    """'mse' and 'bce' average over elements, as Keras reduces an image batch; 'half_sse' is Ng's."""
    if kind == "bce":
        return F.binary_cross_entropy(recon.clamp(1e-7, 1 - 1e-7), x)
    if kind == "half_sse":
        return 0.5 * (recon - x).square().sum() / len(x)
    return F.mse_loss(recon, x)


class Trainer:
    """One model in training: its optimizer, running sums of the loss terms, history and run directory.

    [`train`][sparseae.training.train] and [`sweep`][sparseae.training.sweep] drive one or several
    through the same batches: `begin_epoch`, `step` per batch, `end_epoch`.
    """

    def __init__(self, model: Autoencoder, config: TrainConfig, run_dir: Path | None, device: torch.device):
        self.model, self.config, self.run_dir, self.device = model.to(device).train(), config, run_dir, device
        if config.kernels != "reference":
            runtime.quiet_sparse_warnings()
            if device.type == "cpu":
                runtime.keep_freed_memory()
        # What the fast kernels are told: plain operations follow the autocast around the forward pass.
        self.kernel_args = {"kernels": config.kernels, "dtype": torch.bfloat16 if config.precision == "bfloat16" else None}
        self.optimizer = make_optimizer(model, config)
        self.transposed = TransposedStep(self.optimizer) if config.kernels != "reference" else contextlib.nullcontext()
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bfloat16")
        # Under torchrun, DistributedDataParallel averages the gradients across ranks during
        # backward; buffers (e.g. AuxK's counts) are kept equal by reductions in the model.
        self.forward: Any = model
        if distributed.active():
            ids = [device.index] if device.type == "cuda" else None
            self.forward = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
        self.history: list[dict[str, Any]] = []
        self.bad_in_row = self.first_bad = 0
        self.total_steps = 0  # the run's length, which the learning-rate schedule needs; set by the loop
        self.window = StepWindow(model.n_latents, device) if config.metrics_every else None
        self.writer = _tensorboard_writer(run_dir / "tensorboard") if config.tensorboard and run_dir is not None else None

    def begin_epoch(self) -> None:
        self.sums = torch.zeros(len(LossTerms._fields), device=self.device)  # the LossTerms, summed over rows
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
            out = self.forward(x, **self.kernel_args)
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
            group["lr"] = lr * group.get("lr_scale", 1.0)  # the groups of optim.param_groups
        with self.transposed:
            optimizer.step()
        model.after_step()
        terms = torch.stack(LossTerms(loss, recon, penalty, out.aux)).detach()
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
        train = LossTerms(*(self.sums / self.seen).tolist())
        test = evaluate(model, data.test, self.config.eval_batch_size, self.device, progress)
        record = {
            "epoch": epoch,
            "step": step,
            "epoch_time_s": round(elapsed, 3),
            "samples_per_s": round(self.seen / elapsed, 1),
            **{f"train_{name}": value for name, value in train._asdict().items()},
            "skipped_steps": self.skipped,
            **{f"test_{k}": v for k, v in test.items()},
            "n_latents": model.n_latents,
        }
        self.history.append(record)
        log.info(
            "%sepoch %d/%d  %.1fs  train loss %.5f  test mse %.5f  fvu %.4f  L0 %.2f  dead %d/%d",
            f"{self.run_dir.name}: " if self.run_dir else "", epoch, n_epochs, elapsed, train.loss,
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

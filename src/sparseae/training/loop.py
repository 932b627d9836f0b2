"""The training loop: [`train`][sparseae.training.train], [`resume`][sparseae.training.resume] and
[`sweep`][sparseae.training.sweep] drive [`Trainer`][sparseae.training.Trainer]s through each epoch's
batches, checkpointing as they go and resuming exactly."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from sparseae import checkpoint, distributed, rundir
from sparseae._config import from_dict, to_dict
from sparseae.checkpoint import RunLock
from sparseae.data import Dataset, Stream
from sparseae.devices import pick_device
from sparseae.errors import DiskError, SparseAEError, check
from sparseae.io import disk_error, model_from_cfg
from sparseae.models import Autoencoder
from sparseae.rundir import CONFIG_FILE, METRICS_FILE, STEP_METRICS_FILE
from sparseae.training import steps
from sparseae.training.config import TrainConfig, TrainResult
from sparseae.training.trainer import Trainer

log = logging.getLogger("sparseae")

PREPARE_SAMPLES = 10_000
"""Training samples shown to ``model.prepare`` (data-dependent initialisation) before the first step."""


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
    run_dir = rundir.create(Path(out), model, config, data)
    with RunLock(run_dir):
        return _fit(model, data, config, run_dir, progress=progress)


def _check_fits(model: Autoencoder, data: Dataset, what: str) -> None:
    model.check_input(data.sample_shape, what)


def resume(
    run_dir: str | Path,
    *,
    data: Dataset | None = None,
    progress: bool = True,
    epochs: int | None = None,
    steps: int | None = None,
) -> TrainResult:
    """Continue a run from its last checkpoint; on the CPU the result equals an uninterrupted run.

    The latest checkpoint is used, or the previous one when the latest is damaged.
    ``data`` is needed only when the run was trained on in-memory data.

    Args:
        run_dir: The run directory.
        data: The run's data, when it was trained on in-memory data.
        progress: Show a progress bar.
        epochs: Extend (or finish) the run at this many epochs instead of its own; written to its
            ``config.json``. The learning-rate schedule follows the new length from here on.
        steps: Likewise in optimizer steps (unsets ``epochs``' role, as ``TrainConfig.steps`` does).
    """
    run_dir = Path(run_dir)
    run = rundir.read_config(run_dir)
    distributed.init_from_env()
    with RunLock(run_dir) if distributed.is_main() else contextlib.nullcontext():
        tensors, meta = checkpoint.load_latest(run_dir)
        config = from_dict(TrainConfig, run["train"], f"{run_dir / CONFIG_FILE} train")
        model = model_from_cfg(run["model"], f"{run_dir / CONFIG_FILE} model")
        if data is None:
            data = rundir.load_run_data(run_dir, run, fix="Pass the same data: sparseae.resume(run, data=...).")
        if epochs is not None or steps is not None:
            config = _extended(run_dir, run, config, meta["step"], len(data.train), epochs, steps)
        return _fit(model, data, config, run_dir, progress=progress and distributed.is_main(), state=(tensors, meta))


def _extended(
    run_dir: Path, run: dict[str, Any], config: TrainConfig, done: int, rows: int, epochs: int | None, steps: int | None
) -> TrainConfig:
    """``config`` with the run's new length, checked to be no shorter than what is done, and saved in ``config.json``."""
    fields = {"steps": steps} if steps is not None else {"epochs": epochs, "steps": None}
    new = dataclasses.replace(config, **fields)
    total = new.steps or new.epochs * math.ceil(rows / new.batch_size)
    if total < done:
        asked = f"--steps {steps}" if steps is not None else f"--epochs {epochs}"
        raise SparseAEError(
            asked,
            expected=f"a length no shorter than what {run_dir} has done ({done} steps)",
            got=f"{total} steps",
            fix="Ask for more epochs or steps than the run has, or leave the flag out to finish it as it was.",
        )
    if distributed.is_main():
        rundir.write_config(run_dir, {**run, "train": to_dict(new)})
    return new


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
    job = Trainer(model, config, run_dir, pick_device(config.device))
    epoch = batch = step = 0
    if state is not None:
        epoch, batch, step = job.load_checkpoint(*state)
        if run_dir is not None:
            job.history = rundir.keep_until(run_dir / METRICS_FILE, rundir.read_metrics(run_dir), step)
            if (run_dir / STEP_METRICS_FILE).exists():
                rundir.keep_until(run_dir / STEP_METRICS_FILE, rundir.read_step_metrics(run_dir), step)
        log.info("resuming %s at epoch %d, batch %d (step %d)", run_dir, epoch + 1, batch, step)
    with _saying_what_is_saved([job]):
        _run([job], data, config, progress=progress, epoch=epoch, batch=batch, step=step, prepare=state is None)
    return job.result()


class Interrupted(KeyboardInterrupt):
    """Training was interrupted (Ctrl-C); the message says which checkpoint each run directory holds."""


@contextlib.contextmanager
def _saying_what_is_saved(jobs: list[Trainer]) -> Iterator[None]:
    """Turn Ctrl-C into `Interrupted` saying what was saved, and add how to resume to a failed write."""
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


def _what_is_saved(job: Trainer) -> str:
    if job.run_dir is None:
        return "nothing was written (no run directory)"
    meta = checkpoint.latest_meta(job.run_dir)  # what is on disk, whenever the interrupt came
    if meta is None:
        return f"{job.run_dir} holds no checkpoint yet (stopped before the first one): start it again with a new --out"
    epoch, batch, step = meta["epoch"], meta.get("batch", 0), meta["step"]
    at = f"the end of epoch {epoch}" if batch == 0 else f"batch {batch} of epoch {epoch + 1}"
    return f"{job.run_dir} holds the checkpoint of step {step} ({at}): `sparseae train --resume {job.run_dir}` continues there"


def _run(
    jobs: list[Trainer],
    data: Dataset | list[Dataset],
    config: TrainConfig,
    *,
    progress: bool,
    epoch: int,
    step: int,
    prepare: bool,
    batch: int = 0,
) -> None:
    """Train every job on the same batches, in one pass over the data, from batch ``batch`` of epoch ``epoch``.

    ``data`` as a list: each job's own data, read in lockstep (e.g. one language-model module each,
    the same tokens in every batch); one iterator per distinct data set.
    """
    device = jobs[0].device
    datas = data if isinstance(data, list) else [data] * len(jobs)
    sources = list({id(d): d for d in datas}.values())
    n = len(datas[0].train)
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
        samples = {id(d): _prepare_sample(d, config.order_seed, device) for d in sources}
        for job, d in zip(jobs, datas, strict=True):
            torch.manual_seed(job.config.seed)  # each model's own, as if trained alone
            job.model.initialise(samples[id(d)])
    for job in jobs:
        if job.window is not None:
            job.window.since = time.perf_counter()  # samples/s of training, not of the initialisation
    while step < total_steps:
        batches = {
            id(d): epoch_batches(d.train, config.batch_size, config.order_seed, epoch, start=batch, part=distributed.part())
            for d in sources
        }
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
            xs = {key: next(it, None) for key, it in batches.items()}
            if any(x is None for x in xs.values()):  # a stream that ran short of its stated length (e.g. fewer tokens)
                break
            xs = {key: x.to(device, non_blocking=True) for key, x in xs.items()}
            shared += time.perf_counter() - start
            outcomes = [job.step(xs[id(d)], step + taken + 1) for job, d in zip(jobs, datas, strict=True)]
            taken += 1
            bar.update()
            if config.metrics_every and (step + taken) % config.metrics_every == 0:
                lines = [job.write_steps(step + taken, epoch + 1) for job in jobs]
                if progress:
                    bar.set_postfix(steps.postfix(lines))
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
        for job, d in zip(jobs, datas, strict=True):
            job.end_epoch(epoch, step, n_epochs, job.busy + shared / len(jobs), d, progress)
    for job in jobs:
        if job.writer is not None:
            job.writer.close()


def _prepare_sample(data: Dataset, seed: int, device: torch.device) -> Tensor:
    """The training samples that ``model.initialise`` sees: up to `PREPARE_SAMPLES`, the non-finite left out."""
    if isinstance(data.train, Stream):
        sample = data.train.sample(PREPARE_SAMPLES, seed).to(device)
    else:
        sample = data.train[epoch_order(len(data.train), seed, -1)[:PREPARE_SAMPLES]].to(device)
    finite = torch.isfinite(sample.flatten(1)).all(1)
    if not finite.all():  # NaN rows must not set the initial biases; their steps are skipped later
        log.warning("%d of %d samples for initialisation are not finite; left out", int((~finite).sum()), len(sample))
        sample = sample[finite]
    return sample


def epoch_batches(
    x: Tensor | Stream, batch_size: int, seed: int, epoch: int, start: int = 0, part: tuple[int, int] = (0, 1)
) -> Iterator[Tensor]:
    """The shuffled batches of one epoch from batch ``start`` on (a tensor's by `epoch_order`, a stream's by its buffer).

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


SHARED = ("epochs", "steps", "batch_size", "device", "checkpoint_every", "metrics_every")
"""The `TrainConfig` fields that every model of a sweep shares, as they all take the same batches
(so does the data order, ``TrainConfig.order_seed``); the others may differ per model."""


def sweep(
    models: dict[str, Autoencoder],
    data: Dataset | dict[str, Dataset],
    config: TrainConfig = TrainConfig(),
    out: str | Path | None = None,
    *,
    configs: dict[str, TrainConfig] | None = None,
    progress: bool = True,
) -> dict[str, TrainResult]:
    """Train several models on the same data in one pass: each batch is fed to every model.

    Every model gets its own optimizer and, under ``out``, its own run directory
    named by its key (a normal run: ``sparseae.load``, ``resume``, ``report`` work
    on it). Each run's ``epoch_time_s`` is its own compute plus its share of the
    time spent on the batches.

    ``configs`` gives a model its own training settings (by its key; the others train
    with ``config``): learning rate and its schedule, optimizer, loss, ``seed``... Those
    that shape the batches (``loop.SHARED``: epochs, steps, batch size...) must equal
    ``config``'s, and the data order is ``config``'s for every model: a model's own
    ``seed`` seeds its initialisation only (build the model with it), and its run records
    the shared order as ``data_seed``, so that it equals training it alone with that config.

    ``data`` by key gives each model its own samples, of one length, read in lockstep: e.g. the
    activations of several modules of a language model (`sparseae.data.load_data_per_module`),
    one forward pass feeding every model.
    """
    check(len(models) >= 1, "sweep", expected="at least one model", got=0, fix="Pass a dict of name -> model.")
    configs = _model_configs(models, config, configs or {})
    distributed.init_from_env()
    progress = progress and distributed.is_main()
    device = pick_device(config.device)
    if isinstance(data, dict):
        check(set(data) == set(models), "sweep data", expected=f"one data set per model ({', '.join(models)})",
              got=", ".join(map(repr, data)), fix="Key the data sets as the models.")  # fmt: skip
    datas = {name: data[name] if isinstance(data, dict) else data for name in models}
    lengths = {len(d.train) for d in datas.values()}
    check(len(lengths) == 1, "sweep data", expected="one training length for every model (their batches are read in lockstep)",
          got=", ".join(f"{name}: {len(d.train)}" for name, d in datas.items()), fix="Pass data of one length.")  # fmt: skip
    jobs = []
    with contextlib.ExitStack() as locks:
        for name, model in models.items():
            _check_fits(model, datas[name], f"data for sweep model {name!r}")
            own = configs[name]
            run_dir = (
                None if out is None or not distributed.is_main() else rundir.create(Path(out) / name, model, own, datas[name])
            )
            if run_dir is not None:
                locks.enter_context(RunLock(run_dir))
            jobs.append(Trainer(model, own, run_dir, device))
        with _saying_what_is_saved(jobs):
            _run(jobs, list(datas.values()), config, progress=progress, epoch=0, step=0, prepare=True)
    return {name: job.result() for name, job in zip(models, jobs, strict=True)}


def _model_configs(
    models: dict[str, Autoencoder], config: TrainConfig, configs: dict[str, TrainConfig]
) -> dict[str, TrainConfig]:
    """Each model's config (``config`` where ``configs`` has none), checked to share the batches of ``config``."""
    unknown = [name for name in configs if name not in models]
    check(not unknown, "sweep configs", expected=f"keys of the models ({', '.join(models)})", got=", ".join(map(repr, unknown)),
          fix="Name each config by its model's key.")  # fmt: skip
    out = {}
    for name in models:
        own = configs.get(name, config)
        if own.order_seed != config.order_seed and own.data_seed is None:
            own = dataclasses.replace(own, data_seed=config.order_seed)  # its seed is its own, the batches are shared
        for field in (*SHARED, "order_seed"):
            mine, shared = getattr(own, field), getattr(config, field)
            if mine != shared:
                raise SparseAEError(
                    f"sweep config of {name!r}: {field}",
                    expected=f"{shared!r}, as in the sweep's config (every model of a sweep takes the same batches)",
                    got=repr(mine),
                    fix=f"Sweep the models with different {field} separately.",
                )
        out[name] = own
    return out

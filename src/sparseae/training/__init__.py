"""Training: how to train (`config`), the optimizers (`optim`), one model's steps (`trainer`),
the loop over epochs (`loop`) and scoring (`evaluation`). The run directory it writes is
[`sparseae.rundir`][sparseae.rundir]."""

from sparseae.devices import pick_device
from sparseae.rundir import read_metrics
from sparseae.training.config import TrainConfig, TrainResult
from sparseae.training.evaluation import evaluate, probe, save_reconstructions
from sparseae.training.loop import PREPARE_SAMPLES, Interrupted, epoch_batches, epoch_order, resume, sweep, train
from sparseae.training.optim import KerasAdam, TransposedStep, make_optimizer
from sparseae.training.trainer import LossTerms, Trainer, reconstruction_loss

__all__ = [
    "PREPARE_SAMPLES",
    "Interrupted",
    "KerasAdam",
    "LossTerms",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TransposedStep",
    "epoch_batches",
    "epoch_order",
    "evaluate",
    "make_optimizer",
    "pick_device",
    "probe",
    "read_metrics",
    "reconstruction_loss",
    "resume",
    "save_reconstructions",
    "sweep",
    "train",
]

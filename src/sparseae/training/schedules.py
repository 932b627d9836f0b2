"""Learning-rate and penalty schedules: pure functions of the optimizer step.

Nothing here keeps state. The trainer asks for the rate of step ``s`` before that
step, so a resumed run gets the same rates as an uninterrupted one with nothing
saved for them. Steps are counted from 1, as the trainer numbers them.

With ``lr_warmup = W``, ``lr_decay`` over the last ``D = round(lr_decay_fraction * T)``
of ``T`` steps and ``lr_decay_to = f``, step ``s`` uses ``lr * length(T) * warm(s) * decay(s)``:

- ``length(T) = sqrt(min(1, N / (T * batch_size)))`` with ``lr_long_run = N``
  samples (1 when N is 0): a run of more than N samples trains at a lower rate throughout;

- ``warm(s) = min(1, s / W)``: step 1 uses ``lr / W``, step ``W`` on the full rate
  (SAELens' ``lr_warm_up_steps``);
- ``decay(s) = 1`` up to step ``T - D``; from there, with ``p = (s - (T - D) - 1) / D``
  (0 at the decay's first step, ``(D - 1) / D`` at the run's last), ``1 - (1 - f) p``
  ('linear') or ``f + (1 - f) (1 + cos(pi p)) / 2`` ('cosine', as
  ``torch.optim.lr_scheduler.CosineAnnealingLR`` with ``T_max = D``).

The penalty's weight ramps the same way: ``min(1, s / l1_warmup)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sparseae.training.config import TrainConfig

DECAYS: dict[str, Callable[[float, float], float]] = {
    "linear": lambda p, floor: 1 - (1 - floor) * p,
    "cosine": lambda p, floor: floor + (1 - floor) * (1 + math.cos(math.pi * p)) / 2,
}
"""Decay shapes by name: the factor at progress ``p`` in [0, 1) through the decay, ending at ``floor``."""


def long_run(total_steps: int, batch_size: int, samples: int) -> float:
    """The rate's factor for a run of ``total_steps`` x ``batch_size`` samples that is set for ``samples``
    (``lr_long_run``): ``sqrt(samples / run)`` for a longer run, else (and for 0) 1."""
    run = total_steps * batch_size
    return 1.0 if not samples or run <= samples else math.sqrt(samples / run)


def warmup(step: int, steps: int) -> float:
    """``min(1, step / steps)``: a linear ramp from ``1 / steps`` at step 1 to 1 at step ``steps``; 1 when ``steps`` is 0."""
    return 1.0 if step >= steps else step / steps


def decay_steps(total_steps: int, fraction: float) -> int:
    """How many of a run's last steps the decay spans: ``round(fraction * total_steps)``."""
    return round(fraction * total_steps)


def decay(step: int, total_steps: int, shape: str, fraction: float, floor: float) -> float:
    """The decay factor of ``step`` (1 before the decay starts, and always for ``shape='none'``)."""
    span = decay_steps(total_steps, fraction)
    start = total_steps - span
    if shape == "none" or step <= start:
        return 1.0
    return DECAYS[shape](min(step - start - 1, span - 1) / span, floor)


def lr_at(step: int, total_steps: int, config: TrainConfig) -> float:
    """The learning rate of optimizer step ``step`` (1-based) of ``total_steps``; exactly ``config.lr`` without a schedule
    (and in a run no longer than ``config.lr_long_run`` samples)."""
    length = long_run(total_steps, config.batch_size, config.lr_long_run)
    warm = warmup(step, config.lr_warmup)
    down = decay(step, total_steps, config.lr_decay, config.lr_decay_fraction, config.lr_decay_to)
    return config.lr * length * warm * down


def penalty_scale_at(step: int, config: TrainConfig) -> float:
    """The weight on the sparsity penalty at optimizer step ``step``: the ``l1_warmup`` ramp; exactly 1 without one."""
    return warmup(step, config.l1_warmup)

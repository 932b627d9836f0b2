"""Hold out a test split from data that comes without one."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sparseae.errors import check

SPLIT_SEED = 0
"""The held-out rows depend on this fixed seed, not on the training seed, so every run
trained on one file is tested on the same rows."""


def holdout_rows(n: int, test_fraction: float, what: str = "data") -> tuple[Tensor, Tensor]:
    """Sorted row indices ``(train, test)`` that split ``n`` rows, ``test_fraction`` of them held out.

    Rows are held out in random contiguous blocks (about 1,000 blocks in all, at most 256
    rows each), so a file sorted by class is still split evenly while a large file on disk
    is read in long runs. The split is a function of ``n`` and ``test_fraction`` alone.
    """
    check(
        0 < test_fraction < 1,
        "test_fraction",
        expected="a fraction between 0 and 1 (exclusive)",
        got=test_fraction,
        fix="Use e.g. 0.1 to hold out a tenth of the rows for testing.",
    )
    check(
        n >= 2,
        what,
        expected="at least 2 samples, to hold some out for testing",
        got=f"{n} sample(s)",
        fix="Pass more data, or a separate test file.",
    )
    block = max(1, min(256, n // 1000))
    n_blocks = math.ceil(n / block)
    n_test = min(n_blocks - 1, max(1, round(n_blocks * test_fraction)))
    blocks = torch.randperm(n_blocks, generator=torch.Generator().manual_seed(SPLIT_SEED))
    is_test = torch.zeros(n_blocks, dtype=torch.bool)
    is_test[blocks[:n_test]] = True
    rows_test = is_test.repeat_interleave(block)[:n]
    everything = torch.arange(n)
    return everything[~rows_test], everything[rows_test]

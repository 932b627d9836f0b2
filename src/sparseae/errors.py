"""One way to report bad input: what was expected, what came in, how to fix it."""

from __future__ import annotations

import math
import numbers
from typing import Any


class SparseAEError(ValueError):
    """A user-facing error. The CLI prints it in one or two lines and exits with 2.

    Args:
        what: The thing that was checked, e.g. ``"--batch-size"`` or a file path.
        expected: What a valid value looks like.
        got: What came in instead.
        fix: How to make it right.
    """

    def __init__(self, what: str, *, expected: str, got: str, fix: str):
        self.what, self.expected, self.got, self.fix = what, expected, got, fix
        super().__init__(f"{what}: expected {expected}, got {got}. {fix}")


class DiskError(SparseAEError):
    """A file could not be written: the disk is full, or the directory is read-only or gone.

    Raised by every write of `sparseae.io`, naming the file; what was on disk
    before the write is left as it was. ``error`` is the operating system's error.
    """

    def __init__(self, what: str, *, expected: str, got: str, fix: str, error: OSError):
        super().__init__(what, expected=expected, got=got, fix=fix)
        self.error = error


def check(condition: bool, what: str, *, expected: str, got: object, fix: str) -> None:
    """Raise `SparseAEError` unless ``condition`` holds."""
    if not condition:
        raise SparseAEError(what, expected=expected, got=str(got), fix=fix)


# --- the one validator of numbers: configs, constraints and the scikit-learn estimator all use these ---


def positive_int(value: Any, what: str, fix: str = "Pass a positive whole number.") -> int:
    """``value`` as an int, when it is a whole number >= 1 (not a bool); else a `SparseAEError`."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1
    check(ok, what, expected="an integer >= 1", got=repr(value), fix=fix)
    return int(value)


def positive_number(value: Any, what: str, fix: str = "Pass a positive number.") -> float:
    """``value`` as a float, when it is a finite real number > 0 (not a bool); else a `SparseAEError`."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 < value < math.inf
    check(ok, what, expected="a finite number > 0", got=repr(value), fix=fix)
    return float(value)


def non_negative_number(value: Any, what: str, fix: str) -> float:
    """``value`` as a float, when it is a finite real number >= 0 (not a bool); else a `SparseAEError`."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= value < math.inf
    check(ok, what, expected="a finite number >= 0", got=repr(value), fix=fix)
    return float(value)

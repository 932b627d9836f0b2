"""One way to report bad input: what was expected, what came in, how to fix it."""

from __future__ import annotations


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

    Raised by every write of :mod:`sparseae.io`, naming the file; what was on disk
    before the write is left as it was. ``error`` is the operating system's error.
    """

    def __init__(self, what: str, *, expected: str, got: str, fix: str, error: OSError):
        super().__init__(what, expected=expected, got=got, fix=fix)
        self.error = error


def check(condition: bool, what: str, *, expected: str, got: object, fix: str) -> None:
    """Raise :class:`SparseAEError` unless ``condition`` holds."""
    if not condition:
        raise SparseAEError(what, expected=expected, got=str(got), fix=fix)

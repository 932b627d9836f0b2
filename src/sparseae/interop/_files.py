"""What the writers of other tools' formats share: optional packages, and writing files without overwriting."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from sparseae.errors import SparseAEError


def require(name: str, what: str) -> Any:
    """Import the optional package ``name``, which ``what`` needs, or say how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise SparseAEError(what, expected=f"the {name} package", got="not installed", fix=f"pip install {name}") from None


def check_new(path: Path, fix: str) -> None:
    """Refuse a ``path`` that exists: exports never overwrite."""
    if path.exists() or path.is_symlink():
        got = "an existing " + ("folder" if path.is_dir() else "file")
        raise SparseAEError(str(path), expected="a path that does not exist yet", got=got, fix=fix)


def make_parent(path: Path) -> None:
    """Create the directory ``path`` goes in."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise SparseAEError(
            str(path), expected="a path in a directory", got="a path inside a file", fix="Choose another path."
        ) from None


def usual_mode(mode: int) -> int:
    """``mode`` less the process's umask: what ``open`` would give a new file (mkstemp and mkdtemp give 0600/0700)."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask

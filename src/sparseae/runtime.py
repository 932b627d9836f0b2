"""Process-wide settings, applied by the trainer on purpose (never at import): how glibc hands memory
to PyTorch, and the warnings the sparse kernels would raise.

A training step allocates and frees the same large tensors every time. glibc
serves each allocation above 128 KiB-32 MiB with a fresh ``mmap`` and returns it
on free, so every step page-faults its activations in again (what that costs:
docs/performance.md). `keep_freed_memory` tells glibc to serve large blocks from the heap
and keep freed memory for reuse. Peak memory is unchanged; memory freed at the
end of training stays with the process until it exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import warnings

log = logging.getLogger("sparseae")

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_done = False


def keep_freed_memory() -> bool:
    """Have glibc keep freed memory for reuse instead of unmapping it (once per process); ``False`` where not glibc."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # No mmap for large blocks (glibc still falls back to it when the heap cannot grow),
    # and never trim the heap's top back to the system.
    _done = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    if _done:
        log.debug("glibc: large blocks from the heap, freed memory kept for reuse")
    return _done


def quiet_sparse_warnings() -> None:
    """Silence torch's one-time "Sparse CSR tensor support is in beta" warning: the kernels build their CSR
    matrices from valid TopK indices (`sparseae.kernels`), so it says nothing a user can act on."""
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)

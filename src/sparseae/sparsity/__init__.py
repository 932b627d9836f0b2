"""Sparsity constraints, one file each, found through one registry.

Every module in this package is imported here, and each registers itself: a new
constraint is one new file.
"""

import importlib
import pkgutil

from sparseae.sparsity.base import (
    Sparsity,
    build_sparsity,
    get_sparsity,
    list_sparsities,
    penalty,
    register,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Sparsity", "build_sparsity", "get_sparsity", "list_sparsities", "penalty", "register"]

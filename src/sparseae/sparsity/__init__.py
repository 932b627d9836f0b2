"""Sparsity constraints, one file each, found through one registry."""

from sparseae.sparsity import l1, none  # noqa: F401  (each module registers itself)
from sparseae.sparsity.base import (
    Sparsity,
    build_sparsity,
    get_sparsity,
    list_sparsities,
    register,
)

__all__ = ["Sparsity", "build_sparsity", "get_sparsity", "list_sparsities", "register"]

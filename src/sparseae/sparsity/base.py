"""The sparsity extension point: the abstract base and the registry.

A constraint turns the encoder's pre-activations into the code (it owns the
code's nonlinearity) and may add a penalty to the loss. Writing one is a
one-file job:

    @register("my-l1")
    class MyL1(Sparsity):
        def __init__(self, weight: float = 1e-3):
            super().__init__()
            self.weight = weight

        def forward(self, pre):           # (B, n_latents) -> (B, n_latents)
            return torch.relu(pre)

        def penalty(self, code, pre):     # -> scalar
            return self.weight * code.abs().sum() / code.shape[0]

Hyperparameters are the ``__init__`` keyword arguments, stored under the same
attribute names (as in scikit-learn): that is what save/load and the CLI read.
A constraint that needs the code size (per-unit thresholds, say) builds its
parameters in `Sparsity.setup`, which the model calls once.

A constraint outside sparseae is named ``"package.module:ClassName"``; it is
imported on use, so the CLI and saved models find it without registration.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from sparseae.errors import SparseAEError, non_negative_number, positive_int, positive_number


class Sparsity(nn.Module):
    """Maps pre-activations ``(B, n_latents)`` to a sparse code and prices it."""

    name: str = ""
    """Registry name, set by `register`."""
    scale_equivariant: bool = False
    """Whether ``forward(s * pre) == s * forward(pre)`` for every s > 0 in training mode,
    with no state changed by calling it: then a model may fit its encoder's scale at
    initialisation (`DenseAutoencoder.encoder_scale_fit`)."""

    def units_per_row(self) -> float | None:
        """The mean number of units this constraint keeps active per row in training, where it fixes one
        (TopK's and BatchTopK's k); None where the data decides (L1, KL, JumpReLU, ...)."""
        return None

    def sparse_k(self) -> int | None:
        """k, when this constraint's code is exactly the ReLU of each row's k largest pre-activations (in
        the current mode): then a model may compute it with the sparse TopK kernels (`sparseae.kernels`)
        instead of calling `forward`. None (the default) for every other constraint."""
        return None

    def forward(self, pre: Tensor) -> Tensor:
        """The code for pre-activations ``pre`` of shape ``(B, n_latents)``."""
        raise NotImplementedError

    def setup(self, n_latents: int) -> None:
        """Called once by the model with the code size: validate, build per-unit parameters."""

    def penalty(self, code: Tensor, pre: Tensor) -> Tensor:
        """Scalar added to the loss for a batch of codes (and their pre-activations); zero by default."""
        return code.new_zeros(())

    @classmethod
    def hyperparameters(cls) -> dict[str, inspect.Parameter]:
        """The ``__init__`` keyword arguments, in order."""
        params = inspect.signature(cls.__init__).parameters
        return {k: p for k, p in params.items() if k != "self" and p.kind is p.POSITIONAL_OR_KEYWORD}

    def get_params(self) -> dict[str, Any]:
        """The hyperparameters this instance was built with."""
        return {k: getattr(self, k) for k in self.hyperparameters()}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())


_REGISTRY: dict[str, type[Sparsity]] = {}

S = TypeVar("S", bound=type[Sparsity])


def register(name: str) -> Callable[[S], S]:
    """Class decorator: make a constraint available by ``name``."""

    def add(cls: S) -> S:
        if name in _REGISTRY:
            raise ValueError(f"sparsity {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return add


def list_sparsities() -> list[str]:
    """Names of every registered constraint."""
    return sorted(_REGISTRY)


def get_sparsity(name: str) -> type[Sparsity]:
    """The constraint class registered as ``name``, or imported from ``"module:ClassName"``."""
    if ":" in name:
        return _import_sparsity(name)
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SparseAEError(
            "sparsity",
            expected=f"one of {', '.join(list_sparsities())}, or module:ClassName for your own",
            got=repr(name),
            fix="Pick a registered constraint.",
        ) from None


def _import_sparsity(name: str) -> type[Sparsity]:
    module_name, _, attr = name.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except Exception as e:  # the user's module may fail in any way while it is imported
        raise SparseAEError(
            "sparsity",
            expected="module:ClassName naming an importable Sparsity subclass",
            got=f"{name!r} ({e})",
            fix="Check the spelling, and that the module is on PYTHONPATH (or installed).",
        ) from None
    if not (isinstance(obj, type) and issubclass(obj, Sparsity)):
        raise SparseAEError(
            "sparsity",
            expected="a subclass of sparseae.Sparsity",
            got=f"{name!r}, a {type(obj).__name__}",
            fix="Subclass sparseae.Sparsity (see its docstring for a ten-line example).",
        )
    obj.name = name
    return obj


def build_sparsity(name: str, **params: Any) -> Sparsity:
    """An instance of the constraint ``name`` with the given hyperparameters."""
    cls = get_sparsity(name)
    known = cls.hyperparameters()
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise SparseAEError(
            f"sparsity {name!r}",
            expected=f"hyperparameters among {', '.join(known) or '(none)'}",
            got=", ".join(unknown),
            fix="Remove or rename the unknown hyperparameters.",
        )
    return cls(**params)


def check_weight(value: float, what: str) -> float:
    """A finite, non-negative penalty weight."""
    return non_negative_number(value, what, fix="Use 0 to switch the penalty off.")


def check_positive(value: float, what: str) -> float:
    """A finite number > 0."""
    return positive_number(value, what)


def check_positive_int(value: int, what: str) -> int:
    """An integer >= 1."""
    return positive_int(value, what)


def check_open_unit(value: float, what: str) -> float:
    """A number strictly between 0 and 1."""
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1):
        raise SparseAEError(what, expected="a number strictly between 0 and 1", got=repr(value), fix="For example 0.05.")
    return float(value)


def check_k(k: int, n_latents: int, what: str) -> None:
    """``k`` active units must fit in the code."""
    if k > n_latents:
        raise SparseAEError(
            what,
            expected=f"k at most the code size ({n_latents})",
            got=f"k = {k}",
            fix="Lower k or use more latents.",
        )


def penalty(fn: Callable[..., Tensor]) -> type[Sparsity]:
    """Turn a penalty function into a constraint on a ReLU code.

    ``fn(code, **hyperparameters) -> scalar``; its keyword arguments, with their
    defaults and annotations, become the constraint's hyperparameters:

        @sparseae.penalty
        def half_norm(code, weight: float = 1e-3):
            return weight * code.sqrt().sum() / len(code)

    Use it as ``--sparsity mymodule:half_norm --weight 0.01``.
    """
    params = list(inspect.signature(fn).parameters.values())[1:]

    def __init__(self: Sparsity, **kwargs: Any) -> None:
        Sparsity.__init__(self)
        bound = inspect.signature(fn).bind_partial(None, **kwargs)
        bound.apply_defaults()
        for key, value in list(bound.arguments.items())[1:]:
            setattr(self, key, value)

    __init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [p.replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in params]
    )
    __init__.__annotations__ = {p.name: p.annotation for p in params if p.annotation is not p.empty}

    def forward(self: Sparsity, pre: Tensor) -> Tensor:
        return torch.relu(pre)

    def penalty_(self: Sparsity, code: Tensor, pre: Tensor) -> Tensor:
        return fn(code, **self.get_params())

    namespace = {
        "__init__": __init__,
        "forward": forward,
        "penalty": penalty_,
        "__doc__": fn.__doc__,
        "__module__": fn.__module__,
    }
    return type(fn.__name__, (Sparsity,), namespace)

"""Config dataclasses: field docstrings as help text, and checked loading from JSON."""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from typing import Any, Literal, TypeVar, get_args, get_origin

from sparseae.errors import SparseAEError

C = TypeVar("C")


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass, by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, nxt in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return dataclasses.asdict(config)


def from_dict(cls: type[C], data: Any, what: str) -> C:
    """Build ``cls`` from a JSON dict, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise SparseAEError(what, expected="a JSON object", got=type(data).__name__, fix="Check the file.")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise SparseAEError(
            what,
            expected=f"keys among {', '.join(sorted(fields))}",
            got=f"unknown key(s) {', '.join(unknown)}",
            fix="Remove them; the file may come from a newer sparseae.",
        )
    values = {k: coerce(v, hints[k], f"{what}.{k}") for k, v in data.items()}
    required = [f.name for f in dataclasses.fields(cls) if f.init and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]  # fmt: skip
    missing = [name for name in required if name not in values]
    if missing:
        raise SparseAEError(what, expected=f"the keys {', '.join(required)}", got=f"no {', '.join(missing)}", fix="Add them.")
    return cls(**values)


def coerce(value: Any, hint: Any, what: str) -> Any:
    """``value`` as type ``hint`` (int, float, str, bool, None, tuples, Literal, unions)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return coerce(value, arg, what)
            except SparseAEError:
                pass
        raise _type_error(what, hint, value)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if isinstance(value, dict):
            return from_dict(hint, value, what)
        raise _type_error(what, hint, value)
    if origin is Literal:
        if value in args:
            return value
        raise SparseAEError(what, expected=f"one of {', '.join(map(repr, args))}", got=repr(value), fix="Pick one of those.")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _type_error(what, hint, value)
        inner = args[0] if args else Any
        return tuple(coerce(v, inner, what) for v in value)
    if hint is type(None):
        if value is None:
            return None
        raise _type_error(what, hint, value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(what, hint, value)
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(what, hint, value)
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) <= 1.7e308:
            return float(value)
        raise _type_error(what, hint, value)
    if hint is str:
        if isinstance(value, str):
            return value
        raise _type_error(what, hint, value)
    return value


def _type_error(what: str, hint: Any, value: Any) -> SparseAEError:
    name = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
    return SparseAEError(what, expected=f"a value of type {name}", got=f"{value!r} ({type(value).__name__})", fix="Fix its type.")

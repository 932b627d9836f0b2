"""The flag generator: config dataclass fields and constraint signatures turned into argparse flags.

A field's docstring (or a constraint's ``Args:`` entry) is its help; its type annotation
parses the value. Each flag's dest is ``group.field`` (``train.epochs``, ``hp.k``), and
`nest` turns the parsed flags into one sub-namespace per group (``args.train.epochs``,
``args.hp.k``), so that commands read typed groups instead of strings.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import typing
from typing import Any, Literal, get_args, get_origin

from sparseae._config import coerce, field_docs
from sparseae.errors import SparseAEError
from sparseae.models.presets import EXPANSION_FACTOR_DOC, Preset
from sparseae.sparsity import get_sparsity

GROUPS = ("train", "data", "lm", "model_fields", "hp")
"""The sub-namespaces of ``train``/``sweep`` arguments: TrainConfig, DataConfig, ActivationConfig
(``--lm-*``), the model's config fields (plus ``expansion_factor``), the constraint's hyperparameters."""

DATA_FLAGS = {"source": "data"}
"""DataConfig fields whose flag has another name (``source`` is ``--data``)."""


def flag_name(name: str) -> str:
    """``n_latents`` -> ``--n-latents``."""
    return f"--{name.replace('_', '-')}"


def plain(text: str) -> str:
    """Help text without reST/Markdown markup: ``x`` and `x` -> x, `X` -> X, [`x`][ref] -> x."""
    text = re.sub(r":\w+(?::\w+)?:`~([^`]*?\.)?([^`.]+)`", r"\2", text)
    text = re.sub(r":\w+(?::\w+)?:`([^`]*)`", r"\1", text)
    text = re.sub(r"\[(`[^`\]]*`)\]\[[^\]]*\]", r"\1", text)
    return re.sub(r"``?([^`]+?)``?", r"\1", text)


class Switch(argparse.BooleanOptionalAction):
    """``--flag`` / ``--no-flag``, with the help as given (Python 3.10 would append a second default)."""

    def __init__(self, *args: Any, help: str | None = None, **kwargs: Any) -> None:  # noqa: A002 - argparse's name
        super().__init__(*args, help=help, **kwargs)
        self.help = help


def add_flag(group: Any, name: str, dest: str, hint: Any, default: Any, doc: str, shown: Any = None) -> None:
    """A flag ``--name`` for a value of type ``hint``; ``shown`` is the default the help states, when not ``default``."""
    flag = flag_name(name)
    stated = "%(default)s" if shown is None else str(shown).replace("%", "%%")  # %(default)s: a --config file's value too
    help = f"{plain(doc).replace('%', '%%')} (default: {stated})"  # noqa: A001 - argparse's name
    if _base(hint) is bool:
        group.add_argument(flag, dest=dest, action=Switch, default=default, help=help)
        return
    choices = list(get_args(hint)) if get_origin(hint) is Literal else None
    metavar = None if choices else name.upper()
    group.add_argument(flag, dest=dest, metavar=metavar, type=arg_type(hint, flag), choices=choices, default=default, help=help)


def add_dataclass_args(
    parser: Any,
    cls: type,
    group: str,
    rename: dict[str, str] | None = None,
    defaults: dict[str, Any] | None = None,
    prefix: str = "",
    shown: dict[str, str] | None = None,
) -> None:
    """A flag per field of ``cls`` into the sub-namespace ``group``; required fields default to None.

    Nested config dataclasses are left out (they get their own flags). ``shown``: the default that the
    help states for a field, where it is not the flag's value (e.g. computed later).
    """
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    for f in flag_fields(cls):
        name = prefix + (rename or {}).get(f.name, f.name)
        default = (defaults or {}).get(f.name, None if f.default is dataclasses.MISSING else f.default)
        add_flag(parser, name, f"{group}.{f.name}", hints[f.name], default, docs.get(f.name, ""), (shown or {}).get(f.name))


def flag_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` that are flags: all but nested config dataclasses."""
    hints = typing.get_type_hints(cls)
    return [
        f
        for f in dataclasses.fields(cls)
        if not any(dataclasses.is_dataclass(a) for a in (hints[f.name], *get_args(hints[f.name])))
    ]


def add_model_args(group: Any, preset: Preset) -> None:
    """The preset's config fields (those not read off the data), into ``model_fields``."""
    cls = preset.model.config_class
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in preset.model.input_fields:
            continue
        default, doc = preset.defaults.get(f.name, f.default), docs.get(f.name, "")
        if f.name == "n_latents" and preset.expansion:  # None unless given, so that a clash with --expansion-factor shows
            add_flag(group, f.name, f"model_fields.{f.name}", hints[f.name], None, doc, shown=default)
        else:
            add_flag(group, f.name, f"model_fields.{f.name}", hints[f.name], default, doc)
    if preset.expansion:
        add_flag(
            group, "expansion_factor", "model_fields.expansion_factor", float | None, None, " ".join(EXPANSION_FACTOR_DOC.split())
        )


def model_flags(preset: Preset) -> list[str]:
    """The flags `add_model_args` adds for ``preset``."""
    cls = preset.model.config_class
    names = [f.name for f in dataclasses.fields(cls) if f.name not in preset.model.input_fields]
    return [flag_name(n) for n in [*names, *(["expansion_factor"] if preset.expansion else [])]]


def add_sparsity_args(parser: argparse.ArgumentParser, preset: Preset, name: str) -> None:
    """The hyperparameters of constraint ``name``, into ``hp``; the preset's values where it is the preset's own."""
    try:
        hyper = hyperparameters(name)
    except SparseAEError:
        return  # reported when the model is built
    group = parser.add_argument_group(f"{name} hyperparameters", "Run with --sparsity NAME --help to see another constraint's.")
    defaults = preset.sparsity_params if name == preset.sparsity else {}
    for key, (hint, default, doc) in hyper.items():
        try:
            add_flag(group, key, f"hp.{key}", hint, defaults.get(key, default), doc)
        except argparse.ArgumentError:
            raise SparseAEError(
                f"sparsity {name!r} hyperparameter {key!r}",
                expected="a name that is not already a flag of `sparseae train`",
                got=f"{flag_name(key)}, which is",
                fix="Rename the __init__ argument (and its attribute).",
            ) from None


def hyperparameters(name: str) -> dict[str, tuple[Any, Any, str]]:
    """Per hyperparameter of constraint ``name``: (type hint, default, help from the docstring)."""
    cls = get_sparsity(name)
    docs = _docstring_args(cls.__doc__ or "")
    hints = typing.get_type_hints(cls.__init__)
    out = {}
    for key, param in cls.hyperparameters().items():
        default = None if param.default is param.empty else param.default
        out[key] = (hints.get(key, str), default, docs.get(key, ""))
    return out


def _docstring_args(doc: str) -> dict[str, str]:
    """The entries of a Google-style ``Args:`` section."""
    doc = inspect.cleandoc(doc)
    section = doc.split("Args:", 1)[1] if "Args:" in doc else ""
    entries = re.findall(r"^ {4}(\w+):\s*(.+(?:\n {8,}.+)*)", section, flags=re.M)
    return {name: " ".join(text.split()) for name, text in entries}


def _base(hint: Any) -> Any:
    """The type under ``X | None`` (Literal and tuple hints are kept whole)."""
    args = [a for a in get_args(hint) if a is not type(None)]
    return args[0] if get_origin(hint) not in (Literal, tuple) and args else hint


def arg_type(hint: Any, flag: str) -> Any:
    """An argparse ``type`` that parses a string into ``hint`` with a clear error."""
    base = _base(hint)
    if get_origin(base) is tuple:
        kind: Any = lambda text: tuple(int(v) for v in text.split(","))  # noqa: E731
        kind.__name__ = "comma-separated integers"
    elif base is bool:
        kind = parse_bool
    else:
        kind = {int: int, float: float}.get(base, str)

    def parse(text: str) -> Any:
        if text.lower() == "none" and type(None) in get_args(hint):
            return None
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        try:
            return coerce(value, hint, flag)
        except SparseAEError as e:
            raise argparse.ArgumentTypeError(f"expected {e.expected}, got {text!r}") from None

    parse.__name__ = kind.__name__
    return parse


def parse_bool(text: str) -> bool:
    """A switch's value written as text (config files, ``sweep --values``)."""
    if text.lower() in ("true", "yes", "1", "on"):
        return True
    if text.lower() in ("false", "no", "0", "off"):
        return False
    raise ValueError(text)


parse_bool.__name__ = "true or false"


def nest(args: argparse.Namespace, groups: tuple[str, ...] = ()) -> argparse.Namespace:
    """The parsed flags with each ``group.field`` dest gathered into ``args.group.field``; ``groups`` present even
    when empty (a constraint without hyperparameters)."""
    out = argparse.Namespace(**{group: argparse.Namespace() for group in groups})
    for key, value in vars(args).items():
        group, dot, name = key.partition(".")
        if dot:
            if not hasattr(out, group):
                setattr(out, group, argparse.Namespace())
            setattr(getattr(out, group), name, value)
        else:
            setattr(out, key, value)
    return out

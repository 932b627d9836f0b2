"""``--config FILE.json``: default values for the flags of ``train`` and ``sweep``.

The file is either an object of flag names and values (``{"k": 32, "epochs": 5}``) or a run's own
``config.json`` (model, train and data entries), which re-creates that run's flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from pathlib import Path
from typing import Any

from sparseae.cli.flags import DATA_FLAGS, Switch, parse_bool
from sparseae.errors import SparseAEError, check
from sparseae.io import read_json
from sparseae.models import get_preset, list_presets

_NOT_FROM_A_FILE = {"config", "help", "resume", "debug"}


def read_config_file(path: Path, data_given: bool = False) -> dict[str, Any]:
    """The flag values in ``path``, by flag name (``epochs``, ``k``); a run's config.json translated to them.

    ``data_given``: whether ``--data`` is on the command line (a run trained on in-memory data needs it).
    """
    values = read_json(path)
    check(isinstance(values, dict), str(path), expected="a JSON object of flag names and values", got=type(values).__name__,
          fix='For example {"k": 32, "epochs": 5}.')  # fmt: skip
    if _is_run_config(values):
        return _run_flags(values, path, data_given)
    return values


def _is_run_config(values: dict[str, Any]) -> bool:
    return {"model", "train", "data"} <= set(values) and isinstance(values["model"], dict)


def _run_flags(run: dict[str, Any], path: Path, data_given: bool) -> dict[str, Any]:
    """The flags that train the run described by ``run`` (a run's config.json) again."""
    model, data = run["model"], run["data"]
    check(isinstance(model.get("config"), dict) and isinstance(model.get("sparsity"), dict) and isinstance(run["train"], dict),
          f"{path}: model", expected="a run config.json as `sparseae train` writes it", got="other entries",
          fix="Pass the config.json of a run directory.")  # fmt: skip
    if data is None and not data_given:
        raise SparseAEError(
            str(path),
            expected="a run trained on data that the command line can name",
            got="a run trained on in-memory data (config.json holds no data entry)",
            fix="Pass the data with --data.",
        )
    preset = _preset_for(model, path)
    values: dict[str, Any] = {
        "model": preset,
        "recipe": _recipe_for(preset, model["config"]),
        "sparsity": model["sparsity"]["name"],
        "preprocess": ",".join(model.get("preprocess") or []) or "none",
    }
    inputs = get_preset(preset).model.input_fields
    values.update({k: v for k, v in model["config"].items() if k not in inputs})
    values.update(model["sparsity"].get("params") or {})
    values.update(run["train"])
    data = dict(data or {})
    lm = data.pop("lm", None)
    values.update({DATA_FLAGS.get(k, k): v for k, v in data.items()})
    values.update({f"lm_{k}": v for k, v in (lm or {}).items()})
    return values


def _preset_for(model: dict[str, Any], path: Path) -> str:
    """The ``--model`` preset that builds a saved model: of its kind, the one whose defaults it shares most."""
    kind = model.get("kind")
    names = [n for n in list_presets() if get_preset(n).model.kind == kind]
    if not names:
        kinds = sorted({get_preset(n).model.kind for n in list_presets()})
        raise SparseAEError(f"{path}: model kind", expected=f"one that `sparseae train` builds ({', '.join(kinds)})",
                            got=repr(kind), fix="Train this model from Python.")  # fmt: skip
    config, sparsity = model["config"], model["sparsity"].get("name")

    def shared(name: str) -> tuple[int, int]:
        preset = get_preset(name)
        same = sum(config.get(k) == v for k, v in preset.defaults.items()) + (preset.sparsity == sparsity)
        return same, -len(preset.defaults)  # a tie goes to the preset that sets fewer fields

    return max(names, key=shared)


def _recipe_for(preset: str, config: dict[str, Any]) -> str:
    """The ``--recipe`` of ``preset`` whose model defaults a saved model's ``config`` shares most (a tie: "default").

    Its defaults fill the fields the flags leave unset (None), such as mnist-conv's ``decoder_norm``,
    which is unset under ``--recipe keras``."""
    own = get_preset(preset)
    plain = {f.name: f.default for f in dataclasses.fields(own.model.config_class)}

    def shared(name: str) -> int:
        recipe = get_preset(preset, name).defaults
        defaults = {**plain, **recipe}
        return sum(config.get(k) == defaults[k] for k in {*own.defaults, *recipe})

    return max(own.recipe_names, key=shared)


def apply_config(parser: argparse.ArgumentParser, values: dict[str, Any], path: Path) -> None:
    """Make ``values`` (from ``--config path``) the defaults of the matching flags of ``parser``."""
    by_flag = {_name(a): a for a in parser._actions if a.option_strings}
    by_flag = {k: v for k, v in by_flag.items() if k not in _NOT_FROM_A_FILE}
    defaults = {}
    for key, value in values.items():
        action = by_flag.get(key.replace("-", "_"))
        if action is None:
            close = difflib.get_close_matches(key.replace("-", "_"), by_flag, n=1)
            raise SparseAEError(
                f"{path}: key {key!r}",
                expected=f"a flag of this command, one of {', '.join(sorted(by_flag))}",
                got=repr(key),
                fix=f"Remove or rename the key{f' (did you mean {close[0]!r}?)' if close else ''}.",
            )
        try:
            defaults[action.dest] = _value(action, value)
        except argparse.ArgumentTypeError as e:
            expected, _, got = str(e).removeprefix("expected ").rpartition(", got ")
            raise SparseAEError(
                f"{path}: key {key!r}", expected=expected, got=got, fix="Fix the value (--help lists each flag's type)."
            ) from None
    parser.set_defaults(**defaults)


def _name(action: argparse.Action) -> str:
    """A flag's name as a config key: ``--n-latents`` -> ``n_latents`` (a switch by its positive form)."""
    long = [s for s in action.option_strings if s.startswith("--")] or action.option_strings
    return long[0].lstrip("-").replace("-", "_")


def _value(action: argparse.Action, value: Any) -> Any:
    """``value`` from JSON as the flag would parse it: lists as comma-separated text, switches as booleans."""
    if isinstance(action, Switch):
        if isinstance(value, bool):
            return value
        try:
            return parse_bool(str(value))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}") from None
    if action.type is None or isinstance(value, bool):
        return value
    return action.type(",".join(map(str, value)) if isinstance(value, list) else str(value))

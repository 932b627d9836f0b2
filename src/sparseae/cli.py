"""``sparseae`` on the command line: a thin layer over the public API.

Flags come from the config dataclasses (their field docstrings are the help
text) and from the chosen sparsity constraint's hyperparameters.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import logging
import math
import os
import re
import sys
import time
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn, get_args, get_origin

import numpy as np
import torch

from sparseae import distributed
from sparseae._config import coerce, field_docs, from_dict
from sparseae.data import DataConfig, Dataset, RowStream, is_named_source, load_data, read_arrays
from sparseae.data.activations import ActivationConfig, cache_activations
from sparseae.data.shards import ShardReader, is_shard_dir
from sparseae.data.stream import RowReader
from sparseae.errors import SparseAEError, check
from sparseae.io import atomic_write, load, read_json
from sparseae.models import build_preset, get_preset, list_presets
from sparseae.models.presets import EXPANSION_FACTOR_DOC, Preset
from sparseae.preprocess import STEPS
from sparseae.report import write_comparison, write_report
from sparseae.sparsity import build_sparsity, get_sparsity, list_sparsities
from sparseae.training import (
    CONFIG_FILE,
    TrainConfig,
    evaluate,
    load_run_data,
    pick_device,
    probe,
    read_run_config,
    resume,
    sweep,
    train,
)

log = logging.getLogger("sparseae")

_DATA_FLAGS = {"source": "data"}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # `--sparsity mymodule:MyConstraint` finds modules in the current directory, as `python -m` would
    debug = "--debug" in argv
    try:
        args = _parser(argv).parse_args(argv)
        if args.run in (_train, _sweep) and distributed.init_from_env() and not distributed.is_main():
            args.quiet = True  # under torchrun, rank 0 alone reports
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
        logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
        return args.run(args)
    except (SparseAEError, _UsageError) as e:
        if debug:
            raise
        print(f"sparseae: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # training says which checkpoint it left (Interrupted); elsewhere nothing was half-written
        print(f"sparseae: interrupted; {e or 'nothing more was written'}", file=sys.stderr)
        return 130


class _UsageError(Exception):
    """A command line argparse cannot parse; printed in one line like every user error."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see `{self.prog} --help`)")


def _parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = _Parser(prog="sparseae", description="Train, evaluate and explore sparse autoencoders.")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="Print only the results, no progress.")
    common.add_argument("--debug", action="store_true", help="Show the full traceback of errors.")

    p = sub.add_parser("train", parents=[common], help="Train a model (default: the Keras MNIST model).", description=_train_doc)
    _add_training_args(p, argv)
    p.add_argument("--out", type=Path, help="Run directory to create (default: runs/<time>-<model>-<sparsity>).")
    p.add_argument("--resume", type=Path, metavar="RUN", help="Continue RUN from its last checkpoint (other flags are ignored).")
    p.set_defaults(run=_train)
    _apply_config_file(p, argv)

    p = sub.add_parser("sweep", parents=[common], help="Train a family of models that differ in one setting, in one pass.",
                       description=_sweep_doc)  # fmt: skip
    _add_training_args(p, argv)
    p.add_argument("--param", required=True, help="The setting that varies: a constraint hyperparameter or model field, e.g. k.")
    p.add_argument("--values", required=True, help="Its values, comma-separated, e.g. 8,16,32,64.")
    p.add_argument("--out", type=Path, help="Directory for the runs and compare.html (default: runs/sweep-<time>-<param>).")
    p.set_defaults(run=_sweep)
    _apply_config_file(p, argv)

    p = sub.add_parser("eval", parents=[common], help="Recompute a run's test metrics.")
    p.add_argument("run_dir", type=Path, metavar="RUN")
    p.add_argument("--data", help="Evaluate on this data instead of the run's test split (a source as for `train --data`).")
    p.add_argument("--device", default="auto", help="Device (default: %(default)s).")
    p.add_argument("--batch-size", type=int, default=1000, help="Samples per batch (default: %(default)s).")
    p.add_argument("--probe", action="store_true", help="Also fit a linear probe on the codes (labelled data only).")
    p.add_argument(
        "--ce-loss",
        action="store_true",
        help="Also measure the CE loss recovered (runs on language-model activations: --data lm or a cache of them).",
    )
    p.add_argument("--ce-batches", type=int, default=16, help="Forward passes for --ce-loss (default: %(default)s).")
    p.set_defaults(run=_eval)

    p = sub.add_parser("export", parents=[common], help="Write a trained model as ONNX, as SAELens files, or as a Hub folder.")
    p.add_argument("run_dir", type=Path, metavar="RUN", help="A run or model directory.")
    p.add_argument(
        "--format",
        required=True,
        choices=["onnx", "saelens", "hub"],
        help="onnx: a .onnx graph (onnxruntime); saelens: cfg.json + sae_weights.safetensors as SAELens reads them; "
        "hub: a Hugging Face Hub model folder.",
    )
    p.add_argument("--out", type=Path, required=True, help="The .onnx file, or the directory to create.")
    p.add_argument(
        "--part",
        choices=["encoder", "autoencoder"],
        default="encoder",
        help="ONNX: the encoder alone (inputs -> codes) or the whole autoencoder (-> codes, reconstruction).",
    )
    p.add_argument("--hook-name", help="SAELens: the hook the SAE reads, e.g. blocks.6.hook_resid_post.")
    p.add_argument("--model-name", help="SAELens: the language model, e.g. gpt2.")
    p.add_argument("--repo-id", help="Hub: the repository id the model card names, user/repo.")
    p.set_defaults(run=_export)

    p = sub.add_parser(
        "cache-activations",
        parents=[common],
        help="Collect a language model's activations into a shard cache to train from (--data CACHE).",
        description=_LM_DOC,
    )
    _add_lm_args(p)
    p.add_argument("--out", type=Path, required=True, help="New directory for the shards and their manifest.json.")
    p.add_argument("--rows-per-shard", type=int, default=65_536, help="Rows per shard file (default: %(default)s).")
    p.set_defaults(run=_cache_activations)

    p = sub.add_parser("report", parents=[common], help="Write a self-contained report.html with a feature browser.")
    p.add_argument("run_dir", type=Path, metavar="RUN")
    p.add_argument("--out", type=Path, help="Where to write it (default: RUN/report.html).")
    p.add_argument(
        "--max-latents", type=int, default=512, help="Latents in the browser, most frequent first (default: %(default)s)."
    )
    p.set_defaults(run=_report)

    p = sub.add_parser("compare", parents=[common], help="Write compare.html: the L0-FVU frontier and a table of runs.")
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN")
    p.add_argument("--out", type=Path, default=Path("compare.html"), help="Where to write it (default: %(default)s).")
    p.set_defaults(run=_compare)

    p = sub.add_parser("encode", parents=[common], help="Write the codes of inputs as a .npy file.")
    p.add_argument("run_dir", type=Path, metavar="RUN")
    p.add_argument(
        "--input",
        type=Path,
        help="Inputs in an array file (.npy .npz .safetensors .pt .csv .parquet), in the model's input shape or flat; "
        "8-bit images are scaled by 1/255. Default: the run's test split.",
    )
    p.add_argument("--output", type=Path, required=True, help="Where to write the codes, (N, n_latents) float32.")
    p.add_argument("--overwrite", action="store_true", help="Replace --output if it exists.")
    p.add_argument("--device", default="auto", help="Device (default: %(default)s).")
    p.add_argument("--batch-size", type=int, default=1000, help="Samples per batch (default: %(default)s).")
    p.set_defaults(run=_encode)
    return parser


def _add_training_args(p: argparse.ArgumentParser, argv: list[str]) -> None:
    """The flags `train` and `sweep` share: model, constraint, data, training."""
    p.add_argument("--model", default="mnist-conv", choices=list_presets(), help="Model to build (default: %(default)s).")
    p.add_argument(
        "--sparsity",
        help="Sparsity constraint: one of " + ", ".join(list_sparsities()) + ", or module:ClassName for your own "
        "(default: the model's own: l1 for mnist-conv, topk for dense, kl for classic).",
    )
    p.add_argument("--config", type=Path, metavar="FILE.json", help="Default values for any of these flags, as a JSON object.")
    model, sparsity = _chosen(argv)
    preset = get_preset(model)
    group = p.add_argument_group(f"{model} model", preset.doc)
    group.add_argument(
        "--preprocess",
        default="none",
        metavar="STEPS",
        help="Input preprocessing fitted on the training data and saved with the model, comma-separated, in order: "
        f"{', '.join(STEPS)} (e.g. norm for embeddings, center,zca for image patches; default: none).",
    )
    _add_model_args(group, preset)
    _add_dataclass_args(p.add_argument_group("data"), DataConfig, _DATA_FLAGS)
    _add_lm_args(p.add_argument_group("language-model activations (--data lm)", _LM_DOC))
    training = p.add_argument_group("training")
    if preset.lr_at_batch is None:
        _add_dataclass_args(training, TrainConfig, defaults=preset.train_defaults)
    else:  # the rate follows the batch size unless given
        lr, batch, floor = preset.lr_at_batch
        shown = {"lr": f"{lr:g} at batch {batch}, times sqrt(batch size / {batch}), at least {floor:g}"}
        _add_dataclass_args(training, TrainConfig, defaults={**preset.train_defaults, "lr": None}, shown=shown)
    _add_sparsity_args(p, preset, sparsity)  # last: a user's hyperparameter may clash with the flags above


_sweep_doc = """Train models that differ only in --param, feeding each batch to all of them (one pass
over the data), and write their runs plus compare.html (the L0-FVU frontier and a table)."""

_train_doc = """Train a sparse autoencoder and write a run directory (config.json, metrics.jsonl,
model.safetensors + cfg.json, checkpoint.safetensors, reconstructions.png).
With no arguments: the Keras blog's convolutional sparse autoencoder on MNIST."""


def _chosen(argv: list[str]) -> tuple[str, str]:
    """The --model and --sparsity on the command line (or their defaults), read before the full parse."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model")
    pre.add_argument("--sparsity")
    pre.add_argument("--config", type=Path)
    known = pre.parse_known_args(argv)[0]
    file = _read_config_file(known.config) if known.config else {}
    model = known.model or file.get("model") or "mnist-conv"
    model = model if model in list_presets() else "mnist-conv"  # argparse reports a bad choice
    return model, known.sparsity or file.get("sparsity") or get_preset(model).sparsity


def _read_config_file(path: Path) -> dict[str, Any]:
    values = read_json(path)
    check(isinstance(values, dict), str(path), expected="a JSON object of flag names and values", got=type(values).__name__,
          fix='For example {"k": 32, "epochs": 5}.')  # fmt: skip
    return values


def _add_model_args(group: Any, preset: Preset) -> None:
    cls = preset.model.config_class
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in preset.model.input_fields:
            continue
        default = preset.defaults.get(f.name, f.default)
        if f.name == "n_latents" and preset.expansion:  # None unless given, so that a clash with --expansion-factor shows
            _add_flag(group, f.name, f"model.{f.name}", hints[f.name], None, docs.get(f.name, ""), shown=default)
        else:
            _add_flag(group, f.name, f"model.{f.name}", hints[f.name], default, docs.get(f.name, ""))
    if preset.expansion:
        _add_flag(group, "expansion_factor", "model.expansion_factor", float | None, None, " ".join(EXPANSION_FACTOR_DOC.split()))


def _add_sparsity_args(parser: argparse.ArgumentParser, preset: Preset, name: str) -> None:
    try:
        hyper = _hyperparameters(name)
    except SparseAEError:
        return  # reported when the model is built
    group = parser.add_argument_group(f"{name} hyperparameters", "Run with --sparsity NAME --help to see another constraint's.")
    defaults = preset.sparsity_params if name == preset.sparsity else {}
    for key, (hint, default, doc) in hyper.items():
        try:
            _add_flag(group, key, f"hp.{key}", hint, defaults.get(key, default), doc)
        except argparse.ArgumentError:
            raise SparseAEError(
                f"sparsity {name!r} hyperparameter {key!r}",
                expected="a name that is not already a flag of `sparseae train`",
                got=f"--{key.replace('_', '-')}, which is",
                fix="Rename the __init__ argument (and its attribute).",
            ) from None


def _add_flag(group: Any, name: str, dest: str, hint: Any, default: Any, doc: str, shown: Any = None) -> None:
    """A flag ``--name`` for a value of type ``hint``; ``shown`` is the default the help states, when not ``default``."""
    flag = f"--{name.replace('_', '-')}"
    choices = list(get_args(hint)) if get_origin(hint) is Literal else None
    group.add_argument(
        flag,
        dest=dest,
        metavar=None if choices else name.upper(),
        type=_arg_type(hint, flag),
        choices=choices,
        default=default,
        help=f"{doc} (default: {default if shown is None else shown})",
    )


def _apply_config_file(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Make the values in ``--config FILE.json`` the defaults of the matching flags."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path)
    path = pre.parse_known_args(argv)[0].config
    if path is None:
        return
    values = _read_config_file(path)
    excluded = {"config", "help", "resume", "debug"}
    by_flag = {max(a.option_strings, key=len).lstrip("-").replace("-", "_"): a for a in parser._actions if a.option_strings}
    by_flag = {k: v for k, v in by_flag.items() if k not in excluded}
    defaults = {}
    for key, value in values.items():
        action = by_flag.get(key.replace("-", "_"))
        if action is None:
            raise SparseAEError(
                f"{path}: key {key!r}",
                expected=f"a flag of this command, one of {', '.join(sorted(by_flag))}",
                got=repr(key),
                fix="Remove or rename the key.",
            )
        try:
            defaults[action.dest] = action.type(str(value)) if action.type and not isinstance(value, bool) else value
        except argparse.ArgumentTypeError as e:
            expected, _, got = str(e).removeprefix("expected ").rpartition(", got ")
            raise SparseAEError(
                f"{path}: key {key!r}", expected=expected, got=got, fix="Fix the value (--help lists each flag's type)."
            ) from None
    parser.set_defaults(**defaults)


def _hyperparameters(name: str) -> dict[str, tuple[Any, Any, str]]:
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


def _arg_type(hint: Any, flag: str) -> Any:
    """An argparse ``type`` that parses a string into ``hint`` with a clear error."""
    args = [a for a in get_args(hint) if a is not type(None)]
    base = args[0] if get_origin(hint) not in (Literal, tuple) and args else hint
    if get_origin(base) is tuple:
        kind: Any = lambda text: tuple(int(v) for v in text.split(","))  # noqa: E731
        kind.__name__ = "comma-separated integers"
    elif base is bool:
        kind = _parse_bool
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


def _parse_bool(text: str) -> bool:
    if text.lower() in ("true", "yes", "1", "on"):
        return True
    if text.lower() in ("false", "no", "0", "off"):
        return False
    raise ValueError(text)


_parse_bool.__name__ = "true or false"


def _add_dataclass_args(
    parser: Any,
    cls: type,
    rename: dict[str, str] | None = None,
    defaults: dict[str, Any] | None = None,
    prefix: str = "",
    shown: dict[str, str] | None = None,
) -> None:
    """A flag per field of ``cls`` (nested config dataclasses get their own group); required fields default to None.

    ``shown``: the default that the help states for a field, where it is not the flag's value (e.g. computed later).
    """
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    for f in _flag_fields(cls):
        name = prefix + (rename or {}).get(f.name, f.name)
        default = (defaults or {}).get(f.name, None if f.default is dataclasses.MISSING else f.default)
        doc = docs.get(f.name, "")
        _add_flag(parser, name, f"{cls.__name__}.{f.name}", hints[f.name], default, doc, (shown or {}).get(f.name))


def _flag_fields(cls: type) -> list[dataclasses.Field]:
    hints = typing.get_type_hints(cls)
    return [
        f
        for f in dataclasses.fields(cls)
        if not any(dataclasses.is_dataclass(a) for a in (hints[f.name], *get_args(hints[f.name])))
    ]


def _dataclass_values(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    return {f.name: getattr(args, f"{cls.__name__}.{f.name}") for f in _flag_fields(cls)}


def _dataclass_from_args(cls: type, args: argparse.Namespace, **extra: Any) -> Any:
    return cls(**_dataclass_values(cls, args), **extra)


def _setup(args: argparse.Namespace) -> tuple[TrainConfig, Dataset, str]:
    config = TrainConfig.for_preset(args.model, **_dataclass_values(TrainConfig, args))  # no --lr: the preset's rate
    lm = _lm_config(args) if args.__dict__["DataConfig.source"] == "lm" else None
    data_config = _dataclass_from_args(DataConfig, args, lm=lm)
    data_config = dataclasses.replace(
        data_config,
        source=_absolute_source(data_config.source),
        test_source=data_config.test_source and _absolute_source(data_config.test_source),
    )
    return config, load_data(data_config), args.sparsity or get_preset(args.model).sparsity


_LM_DOC = """Train on the activations of a Hugging Face causal language model (pip install 'sparseae[lm]'),
computed as training goes; to train several epochs, write them once with `sparseae cache-activations`
and train with --data CACHE_DIR."""


def _add_lm_args(group: Any) -> None:
    _add_dataclass_args(group, ActivationConfig, prefix="lm_")


def _lm_config(args: argparse.Namespace) -> ActivationConfig:
    values = {f.name: getattr(args, f"ActivationConfig.{f.name}") for f in dataclasses.fields(ActivationConfig)}
    missing = [f"--lm-{name}" for name in ("model", "module", "text") if values[name] is None]
    if missing:
        raise SparseAEError(
            "language-model activations",
            expected="--lm-model, --lm-module and --lm-text",
            got=f"no {', '.join(missing)}",
            fix="For example --lm-model gpt2 --lm-module transformer.h.6 --lm-text corpus.txt.",
        )
    if not values["text"].startswith("hf:"):
        values["text"] = str(Path(values["text"]).resolve())
    if Path(values["model"]).exists():
        values["model"] = str(Path(values["model"]).resolve())
    return ActivationConfig(**values)


def _absolute_source(source: str) -> str:
    """A path source made absolute (so that the run can find it from anywhere); names, and paths not there, kept."""
    if is_named_source(source):
        return source
    if source.startswith("patches:"):
        return "patches:" + str(Path(source.partition(":")[2]).resolve())
    return str(Path(source).resolve()) if Path(source).exists() else source


def _train(args: argparse.Namespace) -> int:
    progress = not args.quiet
    if args.resume is not None:
        result = resume(args.resume, progress=progress)
    else:
        config, data, name = _setup(args)
        sparsity = build_sparsity(name, **_prefixed(args, "hp."))
        model = build_preset(
            args.model, data.sample_shape, sparsity, seed=config.seed, preprocess=args.preprocess, **_model_fields(args)
        )
        out = args.out or _default_run_dir(args.model, name.rpartition(":")[2].lower())
        log.info("training %s with %s(%s) on %s -> %s", args.model, name, sparsity.extra_repr(), data.name, out)
        result = train(model, data, config, out, progress=progress)
    final = result.metrics[-1] if result.metrics else {}
    print(f"run: {result.run_dir}")
    if final:
        print(
            _format_metrics(
                {k[5:]: v for k, v in final.items() if k.startswith("test_")}, f"test metrics after epoch {final['epoch']}"
            )
        )
    return 0


def _sweep(args: argparse.Namespace) -> int:
    config, data, name = _setup(args)
    hp, model_fields = _prefixed(args, "hp."), _model_fields(args)
    key = args.param.replace("-", "_")
    settable = _prefixed(args, "model.")
    if key not in hp and key not in settable:
        raise SparseAEError(
            "--param",
            expected=f"a hyperparameter of {name} ({', '.join(hp) or 'none'}) or a model field ({', '.join(settable)})",
            got=repr(args.param),
            fix="Pick one of those.",
        )
    parse = _param_type(args, key, hp, name)
    try:
        values = [parse(v.strip()) for v in args.values.split(",") if v.strip()]
    except argparse.ArgumentTypeError as e:
        raise SparseAEError("--values", expected=str(e).split(", got")[0].removeprefix("expected "), got=repr(args.values),
                            fix=f"Give comma-separated values of {key}.") from None  # fmt: skip
    check(len(values) >= 1, "--values", expected="one or more comma-separated values", got=repr(args.values), fix="E.g. 8,16,32.")
    models = {}
    for value in values:
        params, fields = dict(hp), dict(model_fields)
        (params if key in hp else fields)[key] = value
        sparsity = build_sparsity(name, **params)
        models[f"{key}={value}"] = build_preset(
            args.model, data.sample_shape, sparsity, seed=config.seed, preprocess=args.preprocess, **fields
        )
    out = args.out or Path("runs") / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{key}"
    start = time.perf_counter()
    results = sweep(models, data, config, out, progress=not args.quiet)
    seconds = time.perf_counter() - start
    page = write_comparison([r.run_dir for r in results.values()], Path(out) / "compare.html")
    print(f"sweep: {len(models)} models in {seconds:.1f}s -> {out}")
    for label, result in results.items():
        last = result.metrics[-1]
        print(f"  {label:<16} L0 {last['test_l0']:8.2f}  FVU {last['test_fvu']:.4f}  dead {last['test_dead_units']}")
    print(f"comparison: {page}")
    return 0


def _param_type(args: argparse.Namespace, key: str, hp: dict[str, Any], name: str) -> Any:
    """A parser for values of the swept setting, from its type annotation."""
    if key in hp:
        hint = _hyperparameters(name)[key][0]
    else:
        hints = typing.get_type_hints(get_preset(args.model).model.config_class)
        hint = hints.get(key, float)  # expansion_factor: an option of the preset, not a config field
    return _arg_type(hint, "--values")


def _prefixed(args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in vars(args).items() if k.startswith(prefix)}


def _model_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The model flags for build_preset; those left unset (n_latents beside --expansion-factor) take the preset's default."""
    return {k: v for k, v in _prefixed(args, "model.").items() if v is not None}


def _default_run_dir(model: str, sparsity: str) -> Path:
    base = Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{model}-{sparsity}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


def _run_data(run_dir: Path, override: str | None) -> Dataset:
    run = read_run_config(run_dir)
    if override is not None:
        saved = from_dict(DataConfig, run["data"], f"{run_dir} data") if run["data"] else DataConfig()
        return load_data(dataclasses.replace(saved, source=_absolute_source(override), test_source=None))
    return load_run_data(run_dir, run, fix="Pass --data.")


def _check_batch_size(args: argparse.Namespace) -> None:
    check(args.batch_size >= 1, "--batch-size", expected="an integer >= 1", got=args.batch_size, fix="Use e.g. 1000.")


def _eval(args: argparse.Namespace) -> int:
    _check_batch_size(args)
    device = pick_device(args.device)
    model = load(args.run_dir, device)
    data = _run_data(args.run_dir, args.data)
    metrics = evaluate(model, data.test, args.batch_size, device)
    if args.probe:
        metrics["linear_probe"] = probe(model, data, args.batch_size)
    if args.ce_loss:
        metrics.update(_ce_loss(model, args.run_dir, args))
    print(_format_metrics(metrics, f"{args.run_dir} on {data.name} test ({len(data.test)} samples)"))
    return 0


def _export(args: argparse.Namespace) -> int:
    if args.format == "onnx":
        from sparseae.export import export_onnx

        path = export_onnx(load(args.run_dir), args.out, part=args.part)
    elif args.format == "saelens":
        from sparseae.interop import export_saelens

        path = export_saelens(load(args.run_dir), args.out, hook_name=args.hook_name, model_name=args.model_name)
    else:
        from sparseae.export import publish_folder

        path = publish_folder(args.run_dir, args.out, repo_id=args.repo_id)
    print(f"{args.format}: {path}")
    return 0


def _cache_activations(args: argparse.Namespace) -> int:
    config = _lm_config(args)
    out = cache_activations(config, args.out, rows_per_shard=args.rows_per_shard, progress=not args.quiet)
    meta = ShardReader(out).metadata
    print(f"cached {meta.get('rows')} rows of width {meta.get('d_model')} in {out} ({meta.get('tokens_per_s')} tokens/s)")
    return 0


def _ce_loss(model: Any, run_dir: Path, args: argparse.Namespace) -> dict[str, float]:
    """CE loss recovered for a run trained on language-model activations, live or cached."""
    run = read_run_config(run_dir)
    data = from_dict(DataConfig, run["data"], f"{run_dir} data") if run["data"] else None
    lm = data.lm if data is not None else None
    if lm is None and data is not None and is_shard_dir(Path(data.source)):
        meta = ShardReader(data.source).metadata
        if meta.get("source") == "lm-activations":
            lm = from_dict(ActivationConfig, meta["config"], f"{data.source} manifest")
    if lm is None:
        raise SparseAEError(
            "--ce-loss",
            expected="a run trained on language-model activations (--data lm, or a cache-activations directory)",
            got=f"a run trained on {data.source if data else 'in-memory data'}",
            fix="Use --ce-loss only for language-model SAEs.",
        )
    from sparseae.data.activations import ce_loss_recovered, load_lm, read_texts

    lm_model, tokenizer = load_lm(lm.model, lm.device)
    texts = read_texts(lm.text, text_column=lm.text_column, split=lm.split)
    return ce_loss_recovered(
        model, lm_model, tokenizer, lm.module, texts, context_length=lm.context_length, batch_size=lm.batch_size,
        max_batches=args.ce_batches, exclude_bos=lm.exclude_bos,
    )  # fmt: skip


def _report(args: argparse.Namespace) -> int:
    read_run_config(args.run_dir)
    check(args.max_latents >= 1, "--max-latents", expected="an integer >= 1", got=args.max_latents, fix="Pass a positive number.")
    path = write_report(args.run_dir, out=args.out, max_latents=args.max_latents, progress=not args.quiet)
    print(f"report: {path}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    for run_dir in args.run_dirs:
        read_run_config(run_dir)
    path = write_comparison(args.run_dirs, args.out)
    print(f"comparison: {path}")
    return 0


def _encode(args: argparse.Namespace) -> int:
    _check_batch_size(args)
    if args.output.exists() and not args.overwrite:
        raise SparseAEError(
            str(args.output),
            expected="a path that does not exist yet",
            got="an existing file",
            fix="Choose another --output or pass --overwrite.",
        )
    check(
        args.output.suffix == ".npy",
        "--output",
        expected="a path ending in .npy",
        got=args.output,
        fix="Name the file CODES.npy.",
    )
    device = pick_device(args.device)
    model = load(args.run_dir, device)
    x = (_run_data(args.run_dir, None).test if args.input is None
         else _read_inputs(args.input, model.input_shape, _table_options(args.run_dir, args.input)))  # fmt: skip
    model.check_input(tuple(x.shape[1:]), str(args.input or "the run's test data"))
    out = model.encode_all(x, args.batch_size).numpy()
    buffer = io.BytesIO()
    np.save(buffer, out)
    atomic_write(args.output, buffer.getvalue())
    print(f"codes: {args.output} {out.shape} (L0 {float((out != 0).sum(1).mean()):.2f})")
    return 0


def _table_options(run_dir: Path, path: Path) -> dict[str, Any]:
    """For a CSV/Parquet file to encode: the columns the run was trained on (its --columns, --drop-columns, label
    column and CSV delimiter), so that the same columns are read; nothing for other files or a bare model folder."""
    config = Path(run_dir) / CONFIG_FILE
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet") or not config.is_file():
        return {}
    run = read_json(config)
    data = run.get("data") if isinstance(run, dict) else None
    names = ("columns", "drop_columns", "label_column") + (("csv_delimiter",) if suffix == ".csv" else ())
    return {name: data[name] for name in names if isinstance(data, dict) and data.get(name) is not None}


def _read_inputs(path: Path, shape: tuple[int, ...], options: dict[str, Any] | None = None) -> Any:
    """Inputs to encode from an array file (any format `train --data` reads), reshaped to the model's input shape."""
    arrays = read_arrays(path, **(options or {}))
    if isinstance(arrays.x, RowReader):
        eight_bit = arrays.x.read(0, 1).dtype == np.uint8
        x = RowStream(arrays.x)[:]
    else:
        eight_bit, x = arrays.x.dtype == torch.uint8, arrays.x.float()
    if eight_bit and x.ndim >= 3:
        x = x / 255.0  # 8-bit images, as MNIST's files hold them
    if math.prod(x.shape[1:]) == math.prod(shape) and tuple(x.shape[1:]) != shape:
        x = x.reshape(len(x), *shape)  # flat rows for an image model, or images for a dense one
    return x


def _format_metrics(metrics: dict[str, Any], title: str) -> str:
    lines = [title]
    for key, value in metrics.items():
        lines.append(f"  {key:<16} {value:.6g}" if isinstance(value, float) else f"  {key:<16} {value}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

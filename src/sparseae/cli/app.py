"""``main``: the ``sparseae`` parser and its commands, and errors printed in one line.

The command line is pre-parsed once (`preparse`) for what the flags depend on: the command,
``--model`` and ``--sparsity`` (which model fields and hyperparameters are flags) and ``--config``
(their defaults).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

from sparseae import distributed
from sparseae._version import __version__
from sparseae.cli import commands
from sparseae.cli.config_file import apply_config, read_config_file
from sparseae.cli.flags import DATA_FLAGS, GROUPS, add_dataclass_args, add_model_args, add_sparsity_args, nest, plain
from sparseae.cli.suggest import unknown_flags
from sparseae.data import ActivationConfig, DataConfig
from sparseae.errors import SparseAEError
from sparseae.models import get_preset, list_presets
from sparseae.preprocess import STEPS
from sparseae.sparsity import list_sparsities
from sparseae.training import TrainConfig

_TRAINING = (commands.train, commands.sweep)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # `--sparsity mymodule:MyConstraint` finds modules in the current directory, as `python -m` would
    debug = "--debug" in argv
    try:
        args = parse(argv)
        if args.run in _TRAINING and distributed.init_from_env() and not distributed.is_main():
            args.quiet = True  # under torchrun, rank 0 alone reports
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
        logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
        return args.run(args)
    except (SparseAEError, UsageError) as e:
        if debug:
            raise
        print(f"sparseae: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # training says which checkpoint it left (Interrupted); elsewhere nothing was half-written
        print(f"sparseae: interrupted; {e or 'nothing more was written'}", file=sys.stderr)
        return 130


class UsageError(Exception):
    """A command line argparse cannot parse; printed in one line like every user error."""


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)  # `--epoch 1` is not `--epochs 1`

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


class Chosen(NamedTuple):
    """What the flags depend on, read before the full parse."""

    command: str | None
    model: str
    """``--model`` (from the command line, else the config file, else mnist-conv)."""
    sparsity: str
    """``--sparsity`` (likewise; else the model's own)."""
    config: Path | None
    """``--config`` of ``train`` and ``sweep``."""
    recipe: str
    """``--recipe`` (likewise; else "default")."""
    values: dict[str, Any]
    """The config file's flag values."""


def preparse(argv: list[str]) -> Chosen:
    """Read the command, ``--model``, ``--sparsity`` and ``--config`` (and the config file) once."""
    command = next((a for a in argv if not a.startswith("-")), None)
    pre = _Parser(prog="sparseae", add_help=False)
    for flag in ("--model", "--sparsity", "--data", "--recipe"):
        pre.add_argument(flag)
    pre.add_argument("--config", type=Path)
    known = pre.parse_known_args(argv)[0]
    path = known.config if command in ("train", "sweep") else None
    values = read_config_file(path, data_given=known.data is not None) if path else {}
    model = known.model or values.get("model") or "mnist-conv"
    model = model if model in list_presets() else "mnist-conv"  # argparse reports a bad choice
    recipe = known.recipe or values.get("recipe") or "default"
    recipe = recipe if recipe in get_preset(model).recipe_names else "default"  # the full parse reports a bad choice
    sparsity = known.sparsity or values.get("sparsity") or get_preset(model).sparsity
    return Chosen(command, model, sparsity, path, recipe=recipe, values=values)


def parse(argv: list[str]) -> argparse.Namespace:
    """The arguments of ``argv``, the flags of ``train``/``sweep`` in groups (``args.train``, ``args.hp``, ...)."""
    chosen = preparse(argv)
    parser = build_parser(argv, chosen)
    args, extras = parser.parse_known_args(argv)
    if extras:
        raise UsageError(unknown_flags(extras, argv, chosen.command, _commands(parser)))
    args = nest(args, GROUPS if args.run in _TRAINING else ())
    if getattr(args, "resume", None) is not None:  # the run's new length, where asked for
        given = {name for name in ("epochs", "steps") if any(a == f"--{name}" or a.startswith(f"--{name}=") for a in argv)}
        args.extend = {name: getattr(args.train, name) for name in given}
    return args


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def build_parser(argv: list[str], chosen: Chosen | None = None) -> argparse.ArgumentParser:
    """The ``sparseae`` parser, its ``train``/``sweep`` flags for the model and constraint that ``argv`` chooses."""
    chosen = chosen or preparse(argv)
    parser = _Parser(prog="sparseae", description="Train, evaluate and explore sparse autoencoders.")
    parser.add_argument("--version", action="version", version=f"sparseae {__version__}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="Print only the results, no progress.")
    common.add_argument("--debug", action="store_true", help="Show the full traceback of errors.")

    def command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    _add_train(command("train", help="Train a model (default: the Keras MNIST model).", description=_TRAIN_DOC), chosen)
    _add_sweep(command("sweep", help="Train a family of models that differ in some settings, in one pass.",
                       description=_SWEEP_DOC), chosen)  # fmt: skip
    _add_eval(command("eval", help="Recompute a run's test metrics."))
    _add_export(command("export", help="Write a trained model as ONNX, as SAELens files, or as a Hub folder."))
    p = command("cache-activations", help="Collect a language model's activations into a shard cache to train from "
                "(--data CACHE).", description=plain(_LM_DOC))  # fmt: skip
    _add_lm_args(p)
    p.add_argument("--out", type=Path, required=True, help="New directory for the shards and their manifest.json.")
    p.add_argument("--rows-per-shard", type=int, default=65_536, help="Rows per shard file (default: %(default)s).")
    p.set_defaults(run=commands.cache_activations)
    _add_inspect(command)
    return parser


_TRAIN_DOC = """Train a sparse autoencoder and write a run directory (config.json, metrics.jsonl,
model.safetensors + cfg.json, checkpoint.safetensors, reconstructions.png).
With no arguments: the Keras blog's convolutional sparse autoencoder on MNIST.
With --config RUN/config.json: train that run again (flags given beside it change it)."""

_SWEEP_DOC = """Train models that differ only in --param (a grid over several), feeding each batch to all of
them (one pass over the data), and write their runs plus compare.html (the L0-FVU frontier and a table).
Each model has its own optimizer and schedule; a swept --seed seeds each model's initialisation, while
the data order stays that of --seed (or --data-seed) for all, as the batches are shared."""

_LM_DOC = """Train on the activations of a Hugging Face causal language model (pip install 'sparseae[lm]'),
computed as training goes; to train several epochs, write them once with `sparseae cache-activations`
and train with --data CACHE_DIR."""


def _add_train(p: argparse.ArgumentParser, chosen: Chosen) -> None:
    _add_training_args(p, chosen)
    p.add_argument("--out", type=Path, help="Run directory to create (default: runs/<time>-<model>-<sparsity>).")
    p.add_argument(
        "--resume",
        type=Path,
        metavar="RUN",
        help="Continue RUN from its last checkpoint with its own settings; --epochs or --steps given with it extend "
        "the run to that length (other flags are ignored).",
    )
    p.set_defaults(run=commands.train)
    if chosen.config and chosen.command == "train":
        apply_config(p, chosen.values, chosen.config)


def _add_sweep(p: argparse.ArgumentParser, chosen: Chosen) -> None:
    _add_training_args(p, chosen)
    p.add_argument(
        "--param",
        required=True,
        action="append",
        help="A setting that varies: a constraint hyperparameter, "
        "model field or training setting (e.g. k, n-latents, lr, seed); give several for a grid.",
    )
    p.add_argument(
        "--values",
        required=True,
        action="append",
        help="Its values, comma-separated, e.g. 8,16,32,64; one --values after each --param.",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="Directory for the runs (named like k=16,lr=0.0001) and compare.html (default: runs/sweep-<time>-<params>).",
    )
    p.set_defaults(run=commands.sweep)
    if chosen.config and chosen.command == "sweep":
        grid = [key for key in ("param", "values") if key in chosen.values]
        if grid:  # a sweep's grid is its command line; a run's config.json never holds one
            raise SparseAEError(f"{chosen.config}: key {grid[0]!r}", expected="defaults for the other flags",
                                got=f"--{grid[0]} in the file", fix="Give --param and --values on the command line.")  # fmt: skip
        apply_config(p, chosen.values, chosen.config)


def _add_training_args(p: argparse.ArgumentParser, chosen: Chosen) -> None:
    """The flags `train` and `sweep` share: model, constraint, data, training."""
    p.add_argument("--model", default="mnist-conv", choices=list_presets(), help="Model to build (default: %(default)s).")
    p.add_argument(
        "--recipe",
        default="default",
        choices=get_preset(chosen.model).recipe_names,
        help="How to build and train the model: its own defaults, or another recipe of it (mnist-conv: keras, the Keras "
        "blog's model and training exactly). Flags given with it override it (default: %(default)s).",
    )
    p.add_argument(
        "--sparsity",
        help="Sparsity constraint: one of " + ", ".join(list_sparsities()) + ", or module:ClassName for your own "
        "(default: the model's own: l1 for mnist-conv, topk for dense, kl for classic).",
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE.json",
        help="Default values for any of these flags, as a JSON object of flag names and values, or a run's config.json.",
    )
    p.add_argument(
        "--preprocess",
        default="none",
        metavar="STEPS",
        help="Input preprocessing fitted on the training data and saved with the model, comma-separated, in order: "
        f"{', '.join(STEPS)} (e.g. norm for embeddings, center,zca for image patches; default: none).",
    )
    preset = get_preset(chosen.model, chosen.recipe)
    add_model_args(p.add_argument_group(f"{chosen.model} model", plain(preset.doc)), preset)
    add_dataclass_args(p.add_argument_group("data"), DataConfig, "data", DATA_FLAGS)
    _add_lm_args(p.add_argument_group("language-model activations (--data lm)", plain(_LM_DOC)))
    training = p.add_argument_group("training")
    if preset.lr_at_batch is None:
        add_dataclass_args(training, TrainConfig, "train", defaults=preset.train_defaults)
    else:  # the rate follows the batch size unless given
        lr, batch, floor = preset.lr_at_batch
        shown = {"lr": f"{lr:g} at batch {batch}, times sqrt(batch size / {batch}), at least {floor:g}"}
        add_dataclass_args(training, TrainConfig, "train", defaults={**preset.train_defaults, "lr": None}, shown=shown)
    add_sparsity_args(p, preset, chosen.sparsity)  # last: a user's hyperparameter may clash with the flags above


def _add_lm_args(group: Any) -> None:
    add_dataclass_args(group, ActivationConfig, "lm", prefix="lm_")


def _add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, metavar="RUN")
    p.add_argument("--data", help="Evaluate on this data instead of the run's test split (a source as for train --data).")
    p.add_argument("--device", default="auto", help="Device (default: %(default)s).")
    p.add_argument("--batch-size", type=int, default=1000, help="Samples per batch (default: %(default)s).")
    p.add_argument("--probe", action="store_true", help="Also fit a linear probe on the codes (labelled data only).")
    p.add_argument(
        "--ce-loss",
        action="store_true",
        help="Also measure the CE loss recovered (runs on language-model activations: --data lm or a cache of them).",
    )
    p.add_argument("--ce-batches", type=int, default=16, help="Forward passes for --ce-loss (default: %(default)s).")
    p.set_defaults(run=commands.evaluate)


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, metavar="RUN", help="A run or model directory.")
    p.add_argument(
        "--format",
        required=True,
        choices=["onnx", "saelens", "sparsify", "hub"],
        help="onnx: a .onnx graph (onnxruntime); saelens: cfg.json + sae_weights.safetensors as SAELens reads them; "
        "sparsify: cfg.json + sae.safetensors as EleutherAI sparsify reads them; hub: a Hugging Face Hub model folder.",
    )
    p.add_argument("--out", type=Path, required=True, help="The .onnx file, or the directory to create.")
    p.add_argument(
        "--part",
        choices=["encoder", "autoencoder"],
        default="encoder",
        help="ONNX: the encoder alone (inputs -> codes) or the whole autoencoder (-> codes, reconstruction).",
    )
    p.add_argument(
        "--hook-name",
        help="SAELens: the hook the SAE reads, e.g. blocks.6.hook_resid_post. sparsify: the hookpoint, e.g. layers.6 "
        "(the SAE goes in OUT/layers.6).",
    )
    p.add_argument("--model-name", help="SAELens: the language model, e.g. gpt2.")
    p.add_argument("--repo-id", help="Hub: the repository id the model card names, user/repo.")
    p.set_defaults(run=commands.export)


def _add_inspect(command: Any) -> None:
    """``report``, ``compare`` and ``encode``: commands that read runs."""
    p = command("report", help="Write report.html and its report_files/ folder: a browser of every feature.")
    p.add_argument("run_dir", type=Path, metavar="RUN")
    p.add_argument("--out", type=Path, help="Where to write it (default: RUN/report.html).")
    p.add_argument("--max-latents", type=int, default=None, help="Latents in the browser, most frequent first (default: all).")
    p.add_argument("--top", type=int, default=20, help="Top examples kept per feature (default: %(default)s).")
    p.set_defaults(run=commands.report)

    p = command("compare", help="Write compare.html: the L0-FVU frontier and a table of runs.")
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN")
    p.add_argument("--out", type=Path, default=Path("compare.html"), help="Where to write it (default: %(default)s).")
    p.set_defaults(run=commands.compare)

    p = command("encode", help="Write the codes of inputs: a dense .npy array, or their non-zeros (--format sparse).")
    p.add_argument("run_dir", type=Path, metavar="RUN")
    p.add_argument(
        "--input",
        type=Path,
        help="Inputs in an array file (.npy .npz .safetensors .pt .csv .parquet), in the model's input shape or flat; "
        "8-bit images are scaled by 1/255. Default: the run's test split.",
    )
    p.add_argument(
        "--output",
        "--out",
        type=Path,
        required=True,
        help="Where to write the codes, (N, n_latents) float32: CODES.npy (--format dense), "
        "CODES.safetensors or CODES.npz (--format sparse).",
    )
    p.add_argument(
        "--format",
        choices=["dense", "sparse"],
        default="dense",
        help="dense: every entry, a .npy array; sparse: the non-zeros only, as CSR (indptr, indices, values): "
        ".safetensors (shape in the metadata) or .npz (scipy.sparse.load_npz reads it); "
        "sparseae.io.load_codes reads both (default: %(default)s).",
    )
    p.add_argument("--overwrite", action="store_true", help="Replace --output if it exists.")
    p.add_argument("--device", default="auto", help="Device (default: %(default)s).")
    p.add_argument("--batch-size", type=int, default=1000, help="Samples per batch (default: %(default)s).")
    p.set_defaults(run=commands.encode)

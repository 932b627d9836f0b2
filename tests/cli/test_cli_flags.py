"""The flag generator and the parser (no training): no abbreviations, switches, --version, help text, --config."""

import argparse
import json
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

import sparseae
from sparseae._config import to_dict
from sparseae.cli import build_parser, main
from sparseae.cli.app import parse
from sparseae.cli.flags import plain
from sparseae.data import DataConfig
from sparseae.models import list_presets
from sparseae.sparsity import list_sparsities


def _commands(argv: list[str]) -> dict[str, argparse.ArgumentParser]:
    (sub,) = (a for a in build_parser(argv)._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


# --- no abbreviations; an unknown flag says who has it ------------------------------------------


def test_no_parser_takes_abbreviations():
    assert not build_parser([]).allow_abbrev
    assert all(not p.allow_abbrev for p in _commands([]).values())


def test_a_cut_short_flag_is_refused_with_the_close_name(capsys):
    err = _error(["train", "--epoch", "1"], capsys)
    assert "unrecognized arguments: --epoch 1. --epoch: did you mean --epochs?" in err


def test_a_hyperparameter_of_another_constraint_names_it(capsys):
    err = _error(["train", "--k", "8"], capsys)  # once "ambiguous option: --k could match --key, --kernels"
    assert "--k belongs to the constraints topk, batchtopk: add --sparsity topk." in err


def test_a_close_name_of_another_constraint_says_whose(capsys):
    err = _error(["train", "--l0-coeff", "1e-3"], capsys)
    assert "--l0-coeff: did you mean --l0-coef (of the constraint jumprelu: add --sparsity jumprelu)?" in err


@pytest.mark.parametrize(
    ("argv", "note"),
    [
        (["train", "--model", "dense", "--channels", "8"], "--channels belongs to the model mnist-conv: add --model mnist-conv."),
        (["train", "--format", "onnx"], "--format belongs to `sparseae encode`, `sparseae export`."),
        (["eval", "RUN", "--epochs", "2"], "--epochs belongs to `sparseae sweep`, `sparseae train`."),
        (["train", "--bogus", "3"], "`sparseae train --help` lists its flags."),
    ],
)
def test_an_unknown_flag_says_which_model_or_command_has_it(argv, note, capsys):
    assert note in _error(argv, capsys)


# --- switches --------------------------------------------------------------------------------


def test_a_switch_takes_no_value():
    assert parse(["train"]).train.tensorboard is False
    assert parse(["train", "--tensorboard"]).train.tensorboard is True
    assert parse(["train", "--tensorboard", "--no-tensorboard"]).train.tensorboard is False
    dense = parse(["train", "--model", "dense", "--no-unit-norm-decoder", "--no-lm-exclude-bos"])
    assert dense.model_fields.unit_norm_decoder is False and dense.model_fields.tied_init is True
    assert dense.lm.exclude_bos is False


def test_a_value_after_a_switch_is_refused(capsys):
    err = _error(["train", "--tensorboard", "yes"], capsys)
    assert "unrecognized arguments: yes. --tensorboard takes no value: write --tensorboard or --no-tensorboard." in err


def test_switches_in_a_config_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"tensorboard": True, "unit_norm_decoder": "false", "model": "dense"}))
    args = parse(["train", "--config", str(path)])
    assert args.train.tensorboard is True and args.model_fields.unit_norm_decoder is False
    assert parse(["train", "--config", str(path), "--no-tensorboard"]).train.tensorboard is False


# --- --version -------------------------------------------------------------------------------


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"sparseae {sparseae.__version__}\n"
    assert sparseae.__version__ == "0.1.0"


def test_python_m_sparseae_and_the_console_script_reach_main():
    proc = subprocess.run([sys.executable, "-m", "sparseae", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == "sparseae 0.1.0\n", proc.stderr
    scripts = [e for e in entry_points(group="console_scripts") if e.name == "sparseae"]
    assert not scripts or scripts[0].load() is main  # where the package is installed


# --- help text -------------------------------------------------------------------------------


def test_help_has_no_rest_markup():
    texts = [build_parser([]).format_help()]
    for model in list_presets():
        for sparsity in list_sparsities():
            texts += [p.format_help() for p in _commands(["train", "--model", model, "--sparsity", sparsity]).values()]
    text = "\n".join(texts)
    assert "`" not in text and ":class:" not in text
    assert "l1(10e-5)" in " ".join(_commands([])["train"].format_help().split())  # was ``l1(10e-5)``


def test_plain_strips_rest_and_markdown_markup():
    assert plain("Penalty weight ``w`` of :class:`~sparseae.TrainConfig`") == "Penalty weight w of TrainConfig"
    assert plain(":func:`sparseae.load` and `x`; see [`sparseae.rundir`][sparseae.rundir]") == (
        "sparseae.load and x; see sparseae.rundir"
    )


def test_preprocess_is_not_a_model_field():
    train = _commands([])["train"]
    (model,) = (g for g in train._action_groups if g.title == "mnist-conv model")
    assert "--preprocess" not in {s for a in model._group_actions for s in a.option_strings}
    assert any("--preprocess" in a.option_strings for a in train._actions)


# --- --config with a run's own config.json (the re-run itself is in test_cli.py) ---------------


def _run_config(preset: str, tmp_path, **data) -> str:
    """A config.json as `sparseae train` writes it, for ``preset`` on 16 features."""
    model = sparseae.build_preset(preset, (16,), preprocess="norm")
    config = sparseae.TrainConfig.for_preset(preset, epochs=3, tensorboard=True)
    run = {"sparseae_version": "0.1.0", "model": {"format": 1, **model.describe()}, "train": to_dict(config),
           "data": to_dict(DataConfig(source=str(tmp_path / "x.npy"), **data))}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(run))
    return str(tmp_path / "config.json")


def test_a_run_config_gives_the_flags_that_train_it_again(tmp_path):
    args = parse(["train", "--config", _run_config("dense", tmp_path, columns="a,b")])
    assert (args.model, args.sparsity, args.preprocess) == ("dense", "topk", "norm")
    assert args.hp.k == 32 and vars(args.hp) == sparseae.build_preset("dense", (16,)).sparsity.get_params()
    assert args.model_fields.n_latents == 1024 and args.model_fields.unit_norm_decoder is True
    assert args.train.epochs == 3 and args.train.tensorboard is True and args.train.lr == 2e-3
    assert args.data.source == str(tmp_path / "x.npy") and args.data.columns == "a,b"
    args = parse(["train", "--config", str(tmp_path / "config.json"), "--epochs", "5", "--k", "8"])
    assert args.train.epochs == 5 and args.hp.k == 8  # the command line wins


def test_a_run_config_picks_the_preset_it_was_built_from(tmp_path):
    args = parse(["train", "--config", _run_config("classic", tmp_path)])
    assert (args.model, args.sparsity, args.model_fields.output_activation) == ("classic", "kl", "sigmoid")

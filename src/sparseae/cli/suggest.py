"""What to say about a flag the command does not have: which constraint, model or command has it, or a close name."""

from __future__ import annotations

import argparse
import difflib

from sparseae.cli.flags import Switch, flag_name, hyperparameters, model_flags
from sparseae.models import get_preset, list_presets
from sparseae.sparsity import list_sparsities


def unknown_flags(extras: list[str], argv: list[str], command: str | None, commands: dict[str, argparse.ArgumentParser]) -> str:
    """The message for arguments ``extras`` of ``argv`` that ``sparseae COMMAND`` does not take, each explained."""
    flags = dict.fromkeys(a.partition("=")[0] for a in extras if a.startswith("-") and not _is_number(a))
    parser = commands.get(command or "")
    here = _flags_of(parser) if parser else set()
    notes = [_explain(f, command, here, commands) for f in flags]
    if parser:
        notes += _values_of_switches(extras, argv, parser)
    return " ".join([f"unrecognized arguments: {' '.join(extras)}.", *notes])


def _values_of_switches(extras: list[str], argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """``--tensorboard yes``: a switch takes no value."""
    switches = {s: a for a in parser._actions if isinstance(a, Switch) for s in a.option_strings}
    notes = []
    for before, value in zip(argv, argv[1:], strict=False):
        if before in switches and value in extras:
            on, off = switches[before].option_strings
            notes.append(f"{before} takes no value: write {on} or {off}.")
    return notes


def _explain(flag: str, command: str | None, here: set[str], commands: dict[str, argparse.ArgumentParser]) -> str:
    owners = _owners(command, here, commands)
    if flag in owners:
        return f"{flag} belongs to {_owner(owners[flag])}."
    close = _close(flag, here | set(owners))
    if close:
        return f"{flag}: did you mean {' or '.join(c if c in here else f'{c} (of {_owner(owners[c])})' for c in close)}?"
    return f"`sparseae {command} --help` lists its flags." if command else "`sparseae --help` lists the commands."


def _owner(owner: tuple[str, str]) -> str:
    who, fix = owner
    return f"{who}: {fix}" if fix else who


def _owners(command: str | None, here: set[str], commands: dict[str, argparse.ArgumentParser]) -> dict[str, tuple[str, str]]:
    """Flags that are not the command's but another's: (who has them, how to get them), e.g.
    ("the constraints topk, batchtopk", "add --sparsity topk")."""
    owners: dict[str, tuple[str, str]] = {}
    if command in ("train", "sweep"):
        by_constraint = _holders({n: [flag_name(k) for k in hyperparameters(n)] for n in list_sparsities()}, here)
        for flag, names in by_constraint.items():
            owners[flag] = (f"the constraint{'s' * (len(names) > 1)} {', '.join(names)}", f"add --sparsity {names[0]}")
        by_model = _holders({n: model_flags(get_preset(n)) for n in list_presets()}, here)
        for flag, names in by_model.items():
            owners.setdefault(flag, (f"the model{'s' * (len(names) > 1)} {', '.join(names)}", f"add --model {names[0]}"))
    by_command = _holders({n: sorted(_flags_of(p)) for n, p in commands.items() if n != command}, here)
    for flag, names in by_command.items():
        owners.setdefault(flag, (", ".join(f"`sparseae {n}`" for n in names), ""))
    return owners


def _holders(flags: dict[str, list[str]], here: set[str]) -> dict[str, list[str]]:
    """Per flag not in ``here``: the names that have it, shortest first (``topk`` before ``batchtopk``)."""
    out: dict[str, list[str]] = {}
    for name in sorted(flags, key=lambda n: (len(n), n)):
        for flag in flags[name]:
            if flag not in here:
                out.setdefault(flag, []).append(name)
    return out


def _close(flag: str, flags: set[str]) -> list[str]:
    """The flags whose names are close to ``flag``'s (the ``--`` left out: every flag shares it)."""
    names = {f.removeprefix("--"): f for f in flags}
    return [names[n] for n in difflib.get_close_matches(flag.removeprefix("--"), sorted(names), n=2, cutoff=0.75)]


def _flags_of(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings if s.startswith("--")}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True

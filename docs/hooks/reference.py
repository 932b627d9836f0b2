"""MkDocs hooks that fill in the reference pages from the code at build time, so they cannot drift from it.

- ``reference/cli.md``: ``<!-- cli-reference -->`` becomes the ``--help`` of ``sparseae`` and of every
  command, as ``sparseae.cli.build_parser`` builds them, plus the flags that depend on ``--model`` and
  ``--sparsity`` (each preset's model flags, each registered constraint's hyperparameters).
- ``reference/api.md``: ``<!-- api-unlisted -->`` becomes an entry for every name in
  ``sparseae.__all__`` that the page does not already document, so a new public name is never missing.

Run ``python docs/hooks/reference.py`` to print the CLI reference.
"""

from __future__ import annotations

import argparse
import functools
import re
from typing import Any

CLI_MARKER = "<!-- cli-reference -->"
API_MARKER = "<!-- api-unlisted -->"
WIDTH = 78  # columns of the --help text; fixed so that the page does not depend on the terminal that builds it


def _help(parser: argparse.ArgumentParser) -> str:
    parser.formatter_class = functools.partial(argparse.HelpFormatter, width=WIDTH)
    return re.sub(r"\x1b\[[0-9;]*m", "", parser.format_help()).rstrip()  # no colour codes (Python 3.14 colours help)


def _group_help(parser: argparse.ArgumentParser, title: str) -> str:
    """The --help text of one argument group of ``parser``."""
    group = next(g for g in parser._action_groups if g.title == title)
    formatter = argparse.HelpFormatter(parser.prog, width=WIDTH)
    formatter.start_section(group.title)
    formatter.add_text(group.description)
    formatter.add_arguments(group._group_actions)
    formatter.end_section()
    return formatter.format_help().strip()


def commands(argv: list[str] | None = None) -> dict[str, argparse.ArgumentParser]:
    """Every ``sparseae`` subcommand's parser, by name, in the order ``sparseae --help`` lists them."""
    from sparseae.cli import build_parser

    parser = build_parser(argv or [])
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _block(text: str) -> str:
    return f"```text\n{text}\n```\n"


def cli_reference() -> str:
    """The command-line reference in Markdown: one section per command with its full ``--help``."""
    from sparseae.cli import build_parser
    from sparseae.models.presets import get_preset, list_presets
    from sparseae.sparsity import list_sparsities

    out = ["## `sparseae`\n", _block(_help(build_parser([])))]
    for name, parser in commands().items():
        out += [f"## `sparseae {name}`\n", _block(_help(parser))]
        if name == "sweep":
            out.append("`sweep` takes the same model flags and constraint hyperparameters as `train` (below).\n")
        if name != "train":
            continue
        out.append(
            "The help above is for the default model and constraint (`--model mnist-conv`, its `l1`). "
            "The model flags and the constraint's hyperparameters change with `--model` and `--sparsity`; "
            "`sparseae train --model M --sparsity S --help` shows them for that choice.\n"
        )
        out.append("### Model flags, by `--model`\n")
        for model in list_presets():
            group = _group_help(commands(["train", "--model", model])["train"], f"{model} model")
            out += [f"#### `--model {model}`\n", _block(group)]
        out.append("### Constraint hyperparameters, by `--sparsity`\n")
        out.append(
            "Defaults shown are the constraint's own; a model's own constraint may start from other values "
            f"({', '.join(f'{m}: `{_preset_params(get_preset(m))}`' for m in list_presets())}).\n"
        )
        for sparsity in list_sparsities():
            parser = commands(["train", "--sparsity", sparsity])["train"]
            title = f"{sparsity} hyperparameters"
            has_flags = any(g.title == title and g._group_actions for g in parser._action_groups)
            text = _block(_group_help(parser, title)) if has_flags else "No hyperparameters.\n"
            out += [f"#### `--sparsity {sparsity}`\n", text]
    return "\n".join(out)


def _preset_params(preset: Any) -> str:
    params = ", ".join(f"{k}={v}" for k, v in preset.sparsity_params.items())
    return f"{preset.sparsity}({params})"


def api_unlisted(markdown: str) -> str:
    """``::: sparseae.NAME`` for each public name that ``markdown`` does not document yet."""
    import sparseae

    listed = set(re.findall(r"^::: sparseae\.(\w+)\s*$", markdown, flags=re.M))
    missing = [name for name in sparseae.__all__ if name not in listed]
    if not missing:
        return ""
    return "## Also exported\n\n" + "\n\n".join(f"::: sparseae.{name}" for name in missing) + "\n"


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if page.file.src_uri == "reference/cli.md":
        return markdown.replace(CLI_MARKER, cli_reference())
    if page.file.src_uri == "reference/api.md":
        return markdown.replace(API_MARKER, api_unlisted(markdown))
    return markdown


if __name__ == "__main__":
    print(cli_reference())

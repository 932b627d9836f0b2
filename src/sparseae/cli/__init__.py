"""``sparseae`` on the command line: a thin layer over the public API.

Flags come from the config dataclasses (their field docstrings are the help text) and from
the chosen sparsity constraint's hyperparameters (`sparseae.cli.flags`); ``--config``
gives their defaults from a file (`sparseae.cli.config_file`); the commands are in
`sparseae.cli.commands`, the parser and `main` in `sparseae.cli.app`.
"""

from sparseae.cli.app import build_parser, main

__all__ = ["build_parser", "main"]

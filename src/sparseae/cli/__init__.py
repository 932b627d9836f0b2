"""``sparseae`` on the command line: a thin layer over the public API.

Flags come from the config dataclasses (their field docstrings are the help text) and from
the chosen sparsity constraint's hyperparameters (:mod:`sparseae.cli.flags`); ``--config``
gives their defaults from a file (:mod:`sparseae.cli.config_file`); the commands are in
:mod:`sparseae.cli.commands`, the parser and :func:`main` in :mod:`sparseae.cli.app`.
"""

from sparseae.cli.app import build_parser, main

__all__ = ["build_parser", "main"]

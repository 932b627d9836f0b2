"""The package's version: the one place it is written (pyproject.toml reads it). Imports nothing."""

__version__ = "0.1.0"

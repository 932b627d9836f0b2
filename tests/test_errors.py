"""Every case of tests/error_cases.py: exit status 2, the pinned message in one or two lines, no traceback.

The cases are also the table of docs/errors.md; a test below keeps the two in step.
"""

import re
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

from error_cases import CASES, DOC, Case, Env, table
from sparseae.cli import main
from sparseae.errors import SparseAEError

BY_ID = {c.id: c for c in CASES}
PREFIX = re.compile(r"^sparseae( [\w-]+)?: error: ", re.M)
"""Starts the message line (argparse's one-line usage may come first)."""


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    return Env(tmp_path_factory.mktemp("errors"))


def _in_process(case: Case, tmp: Path, env: Env, capsys, monkeypatch) -> tuple[object, str]:
    """Build the case's input, run ``main`` on it; (exit status, stderr). An escaped exception gives status None."""
    monkeypatch.chdir(tmp)
    argv = [*case.setup(tmp, env), "--quiet"]
    capsys.readouterr()  # drop what building the input printed (the shared run's training)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    except Exception:
        code = None
        traceback.print_exc()
    return code, capsys.readouterr().err


def _check(case: Case, code: object, err: str) -> None:
    assert code == 2, f"exit status {code}, not 2; stderr:\n{err}"
    assert "Traceback" not in err, err
    assert PREFIX.search(err), f"no line starts with 'sparseae: error: ':\n{err}"
    assert len(err.strip().splitlines()) <= 2, f"{len(err.strip().splitlines())} lines, not one or two:\n{err}"
    assert case.matches(err), f"expected the message to hold\n  {case.message}\ngot\n  {err}"


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_error_case(case: Case, env, tmp_path, capsys, monkeypatch):
    _check(case, *_in_process(case, tmp_path, env, capsys, monkeypatch))


SUBPROCESS_CASES = ["config-unknown-key", "model-format-version", "npy-nan"]
"""A few cases run as a real ``python -m sparseae.cli`` process (logging and exit status as users see them)."""


def test_real_process_reports_in_one_or_two_lines_and_debug_shows_the_traceback(env, tmp_path):
    def start(case_id: str, *extra: str) -> subprocess.Popen:
        tmp = tmp_path / f"{case_id}{'-debug' if '--debug' in extra else ''}"
        tmp.mkdir()
        argv = [*BY_ID[case_id].setup(tmp, env), *extra]
        command = [sys.executable, "-m", "sparseae.cli", *argv]
        return subprocess.Popen(command, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    # Started together: each process spends most of its few seconds importing torch.
    procs = {case_id: start(case_id, "--quiet") for case_id in SUBPROCESS_CASES}
    debug = start("config-unknown-key", "--debug")
    for case_id, proc in procs.items():  # 600 s: against a hang only, far beyond a start on a loaded machine
        _, err = proc.communicate(timeout=600)
        _check(BY_ID[case_id], proc.returncode, err)
    _, err = debug.communicate(timeout=600)
    assert debug.returncode not in (0, 2) and "Traceback" in err and "SparseAEError" in err, err
    assert BY_ID["config-unknown-key"].matches(err)


def test_debug_raises_in_process(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SparseAEError, match="expected a run or model directory"):
        main(["eval", str(tmp_path / "nowhere"), "--debug"])


def test_cases_are_many_and_named_once():
    assert len(CASES) >= 35
    assert len({c.id for c in CASES}) == len(CASES), "two cases share an id"


def test_docs_table_is_current():
    assert table() in DOC.read_text(), (
        "docs/errors.md is out of date with tests/error_cases.py: run `python tests/error_cases.py` to rewrite its table"
    )

"""The documentation site: its examples run, it builds with warnings as errors, its references are complete.

A fenced block whose info string is exactly ``python title="tested in CI"`` or
``sh title="tested in CI"`` is run here, in page order, in a fresh directory per
page: Python blocks share one namespace per page; shell blocks run in bash with
``set -euo pipefail`` and this environment's ``sparseae`` first on the PATH.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MARK = 'title="tested in CI"'
FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)


def marked_blocks(page: Path) -> list[tuple[str, str, int]]:
    """(language, code, line) of each block of ``page`` marked to run, in order."""
    blocks = []
    text = page.read_text(encoding="utf-8")
    for m in FENCE.finditer(text):
        info = m["info"].strip()
        if "tested" not in info:
            continue
        lang, _, rest = info.partition(" ")
        assert rest.strip() == MARK and lang in ("python", "sh"), (
            f"{page.name}: a block's info string is {info!r}; blocks that run in CI are marked "
            f"```python {MARK} or ```sh {MARK}, exactly"
        )
        blocks.append((lang, m["body"], text.count("\n", 0, m.start()) + 2))
    return blocks


PAGES = sorted(p for p in DOCS.rglob("*.md") if any("tested" in m["info"] for m in FENCE.finditer(p.read_text(encoding="utf-8"))))


def _load_hook():
    spec = importlib.util.spec_from_file_location("docs_reference_hook", DOCS / "hooks" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pages_have_tested_examples():
    names = {p.relative_to(DOCS).as_posix() for p in PAGES if marked_blocks(p)}
    assert {"index.md", "tutorial.md", "choosing.md", "embeddings.md"} <= names, names


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(DOCS).as_posix() for p in PAGES])
def test_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    blocks = marked_blocks(page)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # as `python` run in that directory would import its modules
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    namespace: dict = {"__name__": "__docs__"}
    for lang, code, line in blocks:
        where = f"{page.relative_to(ROOT)}:{line}"
        if "import transformers" in code and importlib.util.find_spec("transformers") is None:
            pytest.skip(f"{where} and the blocks after it need the lm extra (transformers)")
        if lang == "python":
            exec(compile("\n" * (line - 1) + code, str(page), "exec"), namespace)  # tracebacks give the page's line numbers
        else:
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
            assert done.returncode == 0, f"{where}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"


def test_cli_reference_lists_every_command():
    hook = _load_hook()
    text = hook.cli_reference()
    from sparseae.models.presets import list_presets
    from sparseae.sparsity import list_sparsities

    for name in hook.commands():
        assert f"## `sparseae {name}`" in text and f"usage: sparseae {name} " in text, name
    for model in list_presets():
        assert f"#### `--model {model}`" in text
    for sparsity in list_sparsities():
        assert f"#### `--sparsity {sparsity}`" in text
    assert "--epochs EPOCHS" in text and "--k K" in text  # flags from TrainConfig and from topk's __init__


def test_site_builds_strict(tmp_path: Path):
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason="the docs tools are not installed: pip install -e '.[docs]'")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"

    cli = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    for name in _load_hook().commands():
        assert f"usage: sparseae {name} " in cli, f"the CLI reference has no --help for `sparseae {name}`"

    import sparseae

    api = (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    for name in sparseae.__all__:
        assert f'id="sparseae.{name}"' in api, f"the API reference does not document sparseae.{name}"
    tutorial = (site / "tutorial" / "index.html").read_text(encoding="utf-8")
    assert "<table>" in tutorial  # tables render (the tables extension is on)

"""The package's layers: a module imports only from its own layer's package or from lower layers, and no
import cycle runs between modules. Every ``import`` counts, at the top of a module or inside a function.

Data flows one way (STYLE.md): a source's batches -> a model (encoder, constraint, decoder) -> the
trainer, which writes a run directory -> what reads it (report, export). Add a new module to a layer
below; the test fails for a module in no layer, so the map stays complete.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS: list[tuple[str, ...]] = [
    # Plain helpers that import nothing of sparseae, then those built on the errors.
    ("sparseae._version", "sparseae.errors", "sparseae.distributed", "sparseae.runtime", "sparseae.kernels", "sparseae.metrics"),
    ("sparseae._config", "sparseae.preprocess", "sparseae.devices"),
    ("sparseae.sparsity",),  # the constraints
    ("sparseae.models",),  # encoder, constraint, decoder
    ("sparseae.io",),  # a model's files (cfg.json + safetensors), atomic writes
    ("sparseae.checkpoint",),  # training state on disk
    ("sparseae.data", "sparseae.pictures"),  # sources of batches; PNG pictures
    ("sparseae.rundir",),  # the run directory's files
    ("sparseae.training", "sparseae.lm_eval"),  # the trainer writes runs
    ("sparseae.report", "sparseae.interop"),  # what reads runs and models
    ("sparseae.sklearn", "sparseae.cli", "sparseae"),  # the front doors
    ("sparseae.__main__",),  # python -m sparseae: the CLI
]  # fmt: skip


def modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / "sparseae").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The sparseae modules ``path`` imports (``from a.b import c`` is module ``a.b.c`` where that is one)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("sparseae"):
                out.add(name)
    return out


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, the layer entry it belongs to): the longest entry that is the module or a package above it."""
    best = None
    for index, layer in enumerate(LAYERS):
        for entry in layer:
            if (module == entry or module.startswith(entry + ".")) and (best is None or len(entry) > len(best[1])):
                best = (index, entry)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")
    return best


GRAPH = {m: imports(p, modules()) - {m} for m, p in modules().items()}


def test_every_module_has_a_layer():
    for module in GRAPH:
        layer_of(module)


def test_no_module_imports_a_higher_layer_or_a_neighbour_of_its_own():
    wrong = []
    for module, targets in sorted(GRAPH.items()):
        here, entry = layer_of(module)
        for target in sorted(targets):
            there, target_entry = layer_of(target)
            if there > here or (there == here and target_entry != entry and module != "sparseae"):
                wrong.append(f"{module} (layer {here}) imports {target} (layer {there}, {target_entry})")
    assert not wrong, "\n".join(wrong)


def test_nothing_imports_the_package_root():
    # `import sparseae` inside the package closes a circle through __init__ (e.g. for __version__).
    assert not [m for m, targets in GRAPH.items() if "sparseae" in targets and m != "sparseae.__main__"]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert cycles(GRAPH) == []


@pytest.mark.parametrize(
    "graph, expected",
    [({"a": {"b"}, "b": {"a"}, "c": {"a"}}, [["a", "b"]]), ({"a": {"b"}, "b": {"c"}, "c": set()}, [])],
)
def test_the_cycle_finder_finds_cycles(graph, expected):
    assert cycles(graph) == expected


def test_the_layer_check_catches_an_upward_import(tmp_path, monkeypatch):
    # Not vacuous: the models importing the trainer would be reported.
    graph = defaultdict(set, GRAPH)
    graph["sparseae.models.dense"] = GRAPH["sparseae.models.dense"] | {"sparseae.training.trainer"}
    monkeypatch.setitem(globals(), "GRAPH", graph)
    with pytest.raises(AssertionError, match=r"sparseae.models.dense \(layer 3\) imports sparseae.training.trainer"):
        test_no_module_imports_a_higher_layer_or_a_neighbour_of_its_own()

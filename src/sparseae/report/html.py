"""``report.html`` for one run (with a feature browser) and ``compare.html`` for several.

Pages are Jinja2 templates (``report/templates/``) with autoescaping. A report is a
folder that opens from disk with no server and no network: ``report.html`` holds the
metrics, curves and pictures inline and the feature index as inline JSON; each feature's
examples are in ``report_files/features-NNNN.js`` beside it, loaded when the feature is
opened (see `sparseae.report.browser`). Text from data and configs is escaped, JSON in
scripts has ``<``, ``>`` and ``&`` escaped, and the browser script writes text with
``textContent`` only.
"""

from __future__ import annotations

import base64
import json
import math
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from sparseae import rundir
from sparseae.data import Dataset
from sparseae.data.rows import RowInfo
from sparseae.errors import SparseAEError
from sparseae.io import atomic_write, load
from sparseae.models import Autoencoder
from sparseae.pictures.features import image_shape
from sparseae.pictures.images import encode_png, image_grid
from sparseae.report import browser, meaning
from sparseae.report.charts import Series, chart
from sparseae.report.scan import scan

REPORT_FILE, COMPARE_FILE = "report.html", "compare.html"
TOP_INPUTS = 20
"""Top examples per feature (and at most this many per quantile band in all)."""


@cache
def _templates() -> Any:
    import jinja2  # lazily: only writing a page needs it

    return jinja2.Environment(loader=jinja2.PackageLoader("sparseae.report", "templates"), autoescape=True)


def _asset(name: str) -> Any:
    import markupsafe

    return markupsafe.Markup((resources.files("sparseae.report") / "templates" / name).read_text(encoding="utf-8"))


def _render(template: str, **context: Any) -> bytes:
    import markupsafe

    safe = {k: markupsafe.Markup(v) for k, v in context.pop("trusted", {}).items()}
    return _templates().get_template(template).render(css=_asset("report.css"), **safe, **context).encode()


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def curves(metrics: list[dict[str, Any]], steps: list[dict[str, Any]]) -> tuple[str, str]:
    """The Loss and Sparsity charts (SVG) and a note of where they come from: per-step records where the run
    wrote them (``metrics-steps.jsonl``, so a one-epoch run has curves), else one point per epoch."""
    steps = [r for r in steps if r.get("train_loss") is not None]
    if len(steps) >= 2:
        x = [float(r["step"]) for r in steps]
        loss = chart([Series("train loss", x, [r["train_loss"] for r in steps])], "Loss", "step", "value", log_y=True)
        sparsity = chart([Series("train L0", x, [r["l0"] for r in steps]),
                          Series("dead latents", x, [float(r["dead_latents"]) for r in steps])],
                         "Sparsity", "step", "latents")  # fmt: skip
        return loss + sparsity, f"Per step, from {rundir.STEP_METRICS_FILE} ({len(steps)} records)."
    kind = "line" if len(metrics) > 1 else "points"
    epochs = [float(r["epoch"]) for r in metrics]
    loss = chart([Series("train loss", epochs, [r["train_loss"] for r in metrics], kind=kind),
                  Series("test MSE", epochs, [r["test_mse"] for r in metrics], kind=kind)],
                 "Loss", "epoch", "value", log_y=True)  # fmt: skip
    sparsity = chart([Series("test L0", epochs, [r["test_l0"] for r in metrics], kind=kind),
                      Series("dead units", epochs, [float(r["test_dead_units"]) for r in metrics], kind=kind)],
                     "Sparsity", "epoch", "units")  # fmt: skip
    note = f"Per epoch, from {rundir.METRICS_FILE}; train with --metrics-every N for per-step curves."
    return loss + sparsity, note


def density_chart(freq: list[float], n: int) -> str:
    """Histogram of log10 activation frequency; dead units (frequency 0) are counted in the title."""
    dead = sum(f == 0 for f in freq)
    logs = [math.log10(f) for f in freq if f > 0]
    lo = math.floor(min(logs + [math.log10(1 / max(n, 1))]) * 4) / 4
    bins = [lo + 0.25 * i for i in range(int((0 - lo) / 0.25) + 1)]
    counts = [float(sum(b <= v < b + 0.25 or (i == len(bins) - 1 and v >= b) for v in logs)) for i, b in enumerate(bins)]
    return chart(
        [Series("latents", bins, counts, kind="bars")],
        f"Latent density ({dead} dead, never active on {n} test inputs)",
        "log10 activation frequency",
        "latents",
        marks=[(-1.0, "dense > 10%")],
        legend="left",
    )


@torch.no_grad()
def reconstructions(model: Autoencoder, x: Any, n: int = 10) -> str | None:
    """A PNG data URI of the first ``n`` samples above their reconstructions, where samples are images."""
    shape = image_shape(tuple(x.shape[1:]))
    if shape is None:
        return None
    sample = torch.as_tensor(x[:n])
    grid = image_grid([sample.reshape(-1, *shape), model.reconstruct(sample).reshape(-1, *shape)])
    return "data:image/png;base64," + base64.b64encode(encode_png(grid)).decode()


def write_report(
    run_dir: str | Path,
    data: Dataset | None = None,
    out: str | Path | None = None,
    max_latents: int | None = None,
    progress: bool = False,
    *,
    rows: RowInfo | None = None,
    columns: tuple[str, ...] | None = None,
    top: int = TOP_INPUTS,
) -> Path:
    """Write ``report.html`` (and its ``report_files/`` folder) for a run: config, metrics, curves, reconstructions,
    density, and a browser of every feature with its top examples, examples from quantile bands and histogram.

    Args:
        run_dir: A run directory written by `sparseae.train`.
        data: The data set; by default the one the run's ``config.json`` names. Its test split is used.
        out: The page's path (default ``RUN/report.html``); the folder ``<stem>_files`` goes beside it.
        max_latents: Keep only this many latents, the most often active; ``None`` keeps all.
        progress: Show progress bars.
        rows: What each held-out row is (texts, or tokens in documents); by default ``data.test_rows``.
        columns: Names of the input's columns (tables); by default ``data.columns``.
        top: Top examples per feature.
    """
    run_dir = Path(run_dir)
    run = rundir.read_config(run_dir)
    path = Path(out) if out else run_dir / REPORT_FILE
    if not path.parent.is_dir():  # before the long scan, as the page's write would say after it
        raise SparseAEError(
            str(path),
            expected="a path in an existing directory",
            got=f"{path.parent} (no such directory)" if not path.parent.exists() else f"{path.parent} (a file)",
            fix="Create the directory first, or choose another path.",
        )
    model = load(run_dir)
    data = data or rundir.load_run_data(run_dir, run, fix="Pass the data: write_report(run, data=...).")
    rows = rows if rows is not None else getattr(data, "test_rows", None)
    columns = columns if columns is not None else getattr(data, "columns", None)
    x = data.test
    kind = meaning.row_kind(tuple(x.shape[1:]), rows, columns)
    found = scan(model, x, top=top, progress=progress)
    freq = (found.count.double() / max(found.n, 1)).tolist()
    latents = sorted(range(model.n_latents), key=lambda j: -freq[j])[: max_latents or model.n_latents]
    described = browser.Rows(x, kind, rows, columns, data.test_labels, data.label_names)
    index = browser.build(model, described, found, path.with_name(path.stem + "_files"), sorted(latents), progress)
    metrics = rundir.read_metrics(run_dir)
    charts, note = curves(metrics, rundir.read_step_metrics(run_dir)) if metrics else ("", "")
    page = _render(
        "report.html.j2",
        title=f"sparseae report: {run_dir.name}",
        run_name=run_dir.name,
        metrics=[(k, _value(v)) for k, v in (metrics[-1].items() if metrics else ())],
        curves_note=note,
        reconstructions=reconstructions(model, x) if kind == "images" else None,
        shown=len(latents),
        n_latents=model.n_latents,
        n=found.n,
        kind=kind,
        files=index["files"],
        search_label="find word" if kind in ("texts", "tokens") else "find word (texts and tokens only)",
        has_docs=bool(index["docs"]),
        config_path=str(run_dir / rundir.CONFIG_FILE),
        config=[(k, _value(v)) for k, v in _flatten(run)],
        trusted={"curves": charts, "density": density_chart(freq, found.n), "index_json": browser.script_json(index),
                 "script": _asset("report.js")},
    )  # fmt: skip
    atomic_write(path, page)
    return path


def comparison_rows(run_dirs: list[str | Path]) -> list[dict[str, Any]]:
    """One row per finished run: its name, model, constraint, hyperparameters and final metrics."""

    rows = []
    for run_dir in map(Path, run_dirs):
        run, metrics = rundir.read_config(run_dir), rundir.read_metrics(run_dir)
        if metrics:
            sparsity = run["model"]["sparsity"]
            rows.append({"run": run_dir.name, "model": run["model"]["kind"], "sparsity": sparsity["name"],
                         "params": sparsity["params"], **metrics[-1]})  # fmt: skip
    return rows


def frontier_chart(rows: list[dict[str, Any]], width: int = 640, height: int = 400) -> str:
    """SVG of test L0 against test FVU, one colour per constraint."""
    by_sparsity: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_sparsity.setdefault(r["sparsity"], []).append(r)
    series = [Series(name, [r["test_l0"] for r in rs], [r["test_fvu"] for r in rs], kind="points",
                     labels=[f"{r['run']}: {json.dumps(r['params'])}" for r in rs])
              for name, rs in sorted(by_sparsity.items())]  # fmt: skip
    return chart(series, "Sparsity-fidelity frontier", "L0 (active latents per input)", "FVU (test)", width=width, height=height)


def write_comparison(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Write ``compare.html``: the L0-FVU frontier (one colour per constraint) and a table of the runs' final metrics."""
    rows = comparison_rows(run_dirs)
    keys = ["run", "sparsity", "params", "test_l0", "test_fvu", "test_mse", "test_dead_units", "test_dense_units", "epoch"]
    table = [{k: _value(r.get(k, "")) for k in keys} for r in rows]
    frontier = {"frontier": frontier_chart(rows)}
    page = _render("compare.html.j2", title="sparseae comparison", rows=table, keys=keys, trusted=frontier)
    path = Path(out)
    atomic_write(path, page)
    return path

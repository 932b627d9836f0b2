"""``report.html`` for one run (with a feature browser) and ``compare.html`` for several.

Each page is one self-contained file: pictures are inline data URIs or SVG,
the data for the browser is inline JSON, and the script is inline. It opens
from disk with no server and no network. (Built from f-strings with `html.escape` today;
the per-feature report of issue 14 moves it to Jinja2 templates with autoescaping.) Text from data and configs is
escaped, and the browser script writes it with ``textContent`` only.
"""

from __future__ import annotations

import base64
import json
import math
from html import escape
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from sparseae import rundir
from sparseae.data import Dataset
from sparseae.io import atomic_write, load
from sparseae.models import Autoencoder
from sparseae.pictures.features import feature_tiles, image_shape
from sparseae.pictures.images import encode_png, image_grid
from sparseae.report.charts import Series, chart

REPORT_FILE, COMPARE_FILE = "report.html", "compare.html"
TOP_INPUTS = 12
HIST_BINS = 20


def _png_uri(images: Tensor, scale: int = 2) -> str:
    """A PNG data URI of one image ``(C, H, W)`` with values in [0, 1]."""
    return "data:image/png;base64," + base64.b64encode(encode_png(image_grid([images[None]], pad=0, scale=scale))).decode()


def browser_data(
    model: Autoencoder, data: Dataset, codes: Tensor, max_latents: int = 512, progress: bool = False
) -> dict[str, Any]:
    """Everything the feature browser shows, from the test split and its ``codes`` ``(N, n_latents)``."""
    x = data.test
    freq = (codes != 0).double().mean(0)
    mean = codes.double().mean(0)
    shape = image_shape(tuple(x.shape[1:]))
    tiles = feature_tiles(model) if shape else None
    order = torch.argsort(freq, descending=True)[:max_latents]
    top_values, top_index = codes.topk(min(TOP_INPUTS, len(codes)), dim=0)  # (TOP, n_latents)
    names = data.label_names
    inputs: dict[int, dict[str, Any]] = {}
    latents = []
    for j in tqdm(order.tolist(), desc="feature browser", disable=not progress, leave=False):
        active = codes[:, j][codes[:, j] != 0]
        if len(active):
            counts = torch.histc(active.float(), bins=HIST_BINS, min=float(active.min()), max=float(active.max()))
            hist = {"lo": float(active.min()), "hi": float(active.max()), "counts": counts.int().tolist()}
        else:
            hist = {"lo": 0.0, "hi": 0.0, "counts": []}
        top = []
        for value, i in zip(top_values[:, j].tolist(), top_index[:, j].tolist(), strict=True):
            if value == 0:
                break
            top.append({"input": i, "value": value})
            if i not in inputs:
                label = None if data.test_labels is None else int(data.test_labels[i])
                entry: dict[str, Any] = {"label": None if label is None else (names[label] if names else str(label))}
                if shape:
                    entry["img"] = _png_uri(x[i].reshape(shape).clamp(0, 1))
                else:
                    entry["values"] = [round(v, 4) for v in x[i].flatten()[:8].tolist()]
                inputs[i] = entry
        latents.append({
            "id": j, "freq": float(freq[j]), "mean": float(mean[j]), "hist": hist, "top": top,
            "img": _png_uri(tiles[j]) if tiles is not None else None,
        })  # fmt: skip
    return {"latents": latents, "inputs": {str(k): v for k, v in inputs.items()}, "n_latents": model.n_latents, "n": len(x)}


def _table(rows: list[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(_value(v))}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


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


def _curves(metrics: list[dict[str, Any]]) -> str:
    epochs = [float(r["epoch"]) for r in metrics]
    loss = chart([Series("train loss", epochs, [r["train_loss"] for r in metrics]),
                  Series("test MSE", epochs, [r["test_mse"] for r in metrics])],
                 "Loss", "epoch", "value", log_y=True)  # fmt: skip
    sparsity = chart([Series("test L0", epochs, [r["test_l0"] for r in metrics]),
                      Series("dead units", epochs, [float(r["test_dead_units"]) for r in metrics])],
                     "Sparsity", "epoch", "units")  # fmt: skip
    return loss + sparsity


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


_STYLE = """body{font-family:sans-serif;margin:24px;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px}
th{background:#f4f4f4}img.pix{image-rendering:pixelated}h2{margin-top:28px}
#grid img{margin:1px;cursor:pointer;border:2px solid transparent}#grid img.sel{border-color:#d62728}
#detail{display:flex;gap:24px;flex-wrap:wrap;margin-top:12px}.top{display:inline-block;text-align:center;margin:3px;font-size:11px}
.bar{display:inline-block;width:12px;background:#1f77b4;margin-right:1px;vertical-align:bottom}"""

_SCRIPT = """
const D = JSON.parse(document.getElementById('browser-data').textContent);
const grid = document.getElementById('grid'), pick = document.getElementById('latent'), sort = document.getElementById('sort');
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}
function drawGrid() {
  const key = sort.value, items = D.latents.slice().sort((a, b) => b[key] - a[key]);
  grid.replaceChildren();
  for (const l of items) {
    const node = l.img ? el('img') : el('button', String(l.id));
    if (l.img) { node.src = l.img; node.className = 'pix'; node.width = 42; node.title = 'latent ' + l.id; }
    node.dataset.id = l.id; node.addEventListener('click', () => show(l.id)); grid.appendChild(node);
  }
}
function show(id) {
  const l = D.latents.find(x => x.id === Number(id));
  const info = document.getElementById('info'); info.replaceChildren();
  if (!l) { info.appendChild(el('p', 'Latent ' + id + ' is not in this report (dead or beyond the shown ones).')); return; }
  pick.value = l.id;
  for (const n of grid.children) n.classList.toggle('sel', Number(n.dataset.id) === l.id);
  info.appendChild(el('h3', 'Latent ' + l.id));
  if (l.img) { const im = el('img'); im.src = l.img; im.width = 112; im.className = 'pix'; info.appendChild(im); }
  info.appendChild(el('p', 'activation frequency ' + l.freq.toFixed(4) + ' · mean activation ' + l.mean.toPrecision(4)));
  const hist = el('div'); hist.style.height = '60px'; const peak = Math.max(1, ...l.hist.counts);
  for (const c of l.hist.counts) {
    const b = el('span', undefined, 'bar'); b.style.height = (60 * c / peak) + 'px'; hist.appendChild(b);
  }
  info.appendChild(el('p', 'activations when active: ' + l.hist.lo.toPrecision(3) + ' to ' + l.hist.hi.toPrecision(3)));
  info.appendChild(hist);
  const tops = document.getElementById('tops'); tops.replaceChildren(el('h3', 'Inputs that activate it most'));
  for (const t of l.top) {
    const inp = D.inputs[String(t.input)], box = el('div', undefined, 'top');
    if (inp.img) { const im = el('img'); im.src = inp.img; im.width = 56; im.className = 'pix'; box.appendChild(im); }
    else box.appendChild(el('div', inp.values.join(', ')));
    box.appendChild(el('div', '#' + t.input + ' · ' + t.value.toPrecision(3)));
    if (inp.label !== null) box.appendChild(el('div', 'label ' + inp.label));
    tops.appendChild(box);
  }
}
sort.addEventListener('change', drawGrid);
pick.addEventListener('change', () => show(pick.value));
drawGrid();
if (D.latents.length) show(D.latents[0].id);
"""


def _page(title: str, body: str, data: dict[str, Any] | None = None) -> str:
    script = ""
    if data is not None:
        blob = json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        script = f'<script type="application/json" id="browser-data">{blob}</script>\n<script>{_SCRIPT}</script>'
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body>\n{body}\n{script}\n</body></html>\n")  # fmt: skip


def write_report(
    run_dir: str | Path,
    data: Dataset | None = None,
    out: str | Path | None = None,
    max_latents: int = 512,
    progress: bool = False,
) -> Path:
    """Write ``report.html`` for a run: config, metrics, curves, reconstructions, features, density, feature browser."""
    run_dir = Path(run_dir)
    run = rundir.read_config(run_dir)
    model = load(run_dir)
    data = data or rundir.load_run_data(run_dir, run, fix="Pass the data: write_report(run, data=...).")
    metrics = rundir.read_metrics(run_dir)
    codes = model.encode_all(data.test)
    browser = browser_data(model, data, codes, max_latents, progress)
    with torch.no_grad():
        recon = model.reconstruct(data.test[:10])
    shape = image_shape(tuple(data.test.shape[1:]))
    parts = [f"<h1>sparseae run {escape(run_dir.name)}</h1>"]
    if metrics:
        last = metrics[-1]
        parts.append("<h2>Metrics</h2>" + _table([(k, v) for k, v in last.items()]))
        parts.append("<h2>Training curves</h2>" + _curves(metrics))
    if shape:
        pictures = image_grid([data.test[:10].reshape(-1, *shape), recon.reshape(-1, *shape)])
        uri = "data:image/png;base64," + base64.b64encode(encode_png(pictures)).decode()
        parts.append(f'<h2>Reconstructions</h2><p>Test inputs above their reconstructions.</p><img class="pix" src="{uri}">')
    freq = [float(v) for v in (codes != 0).double().mean(0)]
    parts.append("<h2>Latent density</h2>" + density_chart(freq, len(data.test)))
    parts.append(
        f"<h2>Features</h2><p>{len(browser['latents'])} of {model.n_latents} latents. Click one, or type its number.</p>"
        '<label>latent <input id="latent" type="number" min="0"></label> '
        '<label>sort by <select id="sort"><option value="freq">activation frequency</option>'
        '<option value="mean">mean activation</option></select></label>'
        '<div id="grid"></div><div id="detail"><div id="info"></div><div id="tops"></div></div>'
    )
    parts.append(f"<h2>Configuration</h2><p>{escape(str(run_dir / rundir.CONFIG_FILE))}</p>" + _table(_flatten(run)))
    path = Path(out) if out else run_dir / REPORT_FILE
    atomic_write(path, _page(f"sparseae report: {run_dir.name}", "\n".join(parts), browser).encode())
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
    head = "".join(f"<th>{escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{escape(_value(r.get(k, '')))}</td>" for k in keys) + "</tr>" for r in rows)
    page = _page(
        "sparseae comparison",
        f"<h1>Comparison of {len(rows)} runs</h1>{frontier_chart(rows)}<table><tr>{head}</tr>{body}</table>",
    )
    path = Path(out)
    atomic_write(path, page.encode())
    return path

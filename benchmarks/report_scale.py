"""How large a 16,384-latent SAE's report is, and how fast it first paints from disk in headless Chromium.

A DenseAutoencoder (TopK, k 32, 16,384 latents) trained for one step only (its weights are
as good as random; what is measured is the report, not the model), reported on 4,096
held-out rows of two kinds: MNIST digits (a picture per feature and per example) and random
384-d "embeddings" with a made-up text per row. Writes benchmarks/results/report_scale.{json,md}.

    .venv/bin/python benchmarks/report_scale.py [--latents 16384] [--rows 4096] [--loads 5] [--data mnist texts]

First paint is Chromium's ``first-contentful-paint`` entry (from navigation start), and
the load event's time, over ``--loads`` fresh loads of the file:// page (median, min, max);
then "open a feature": from clicking a feature (in another chunk) to its examples drawn.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "report"), str(ROOT / "benchmarks")]

import chromium  # noqa: E402  (the tests' headless Chromium)

import sparseae  # noqa: E402
from machine import cpu_name  # noqa: E402
from sparseae.data.rows import RowInfo  # noqa: E402
from sparseae.report import write_report  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def folder_size(page: Path) -> tuple[int, int, int]:
    """Bytes of the page, of its files folder, and the folder's number of files."""
    files = list(page.with_name(page.stem + "_files").iterdir())
    return page.stat().st_size, sum(f.stat().st_size for f in files), len(files)


def measure(page: Path, loads: int) -> dict[str, list[float]]:
    browser = chromium.chromium("1200,1600")
    out: dict[str, list[float]] = {"first_paint_ms": [], "load_ms": [], "open_feature_ms": []}
    try:
        for _ in range(loads):
            browser.get("about:blank")
            browser.get(page.as_uri())
            paint = chromium.wait_for(
                browser, "performance.getEntriesByName('first-contentful-paint')[0]?.startTime", timeout=600
            )
            nav = browser.execute_script("return performance.getEntriesByType('navigation')[0].toJSON()")
            out["first_paint_ms"].append(float(paint))
            out["load_ms"].append(float(nav["loadEventEnd"]))
            chromium.wait_for(browser, "!!document.getElementById('tops')", timeout=600)
            assert chromium.severe(browser) == [], "console errors"
            # Open a feature from another chunk: time from the click to its examples drawn.
            target = browser.execute_script(
                "const f = [...document.querySelectorAll('#features .feature')].map(e => Number(e.dataset.id));"
                "return f.find(id => Math.floor(id / 256) !== Math.floor(f[0] / 256)) ?? f[1]"
            )
            start = time.perf_counter()
            browser.find_element("css selector", f"#features .feature[data-id='{target}']").click()
            chromium.wait_for(
                browser,
                f"document.querySelector('#info h3')?.textContent === 'Feature {target}' && !!document.getElementById('tops')",
            )
            out["open_feature_ms"].append(1000 * (time.perf_counter() - start))
    finally:
        browser.quit()
    return out


def dataset(kind: str, rows: int) -> tuple[sparseae.Dataset, RowInfo | None]:
    """MNIST digits (pictures), or random 384-d "embeddings" each with a made-up text of about 100 characters."""
    if kind == "mnist":
        return sparseae.load_mnist().subset(512, rows), None
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(512 + rows, 384, generator=generator)
    words = ["river", "engine", "tax", "music", "cat", "protein", "court", "orbit", "harvest", "poem", "bridge", "virus"]
    picks = torch.randint(len(words), (rows, 14), generator=generator).tolist()
    texts = tuple(f"text {i}: " + " ".join(words[w] for w in ws) for i, ws in enumerate(picks))
    return sparseae.Dataset("embeddings", x[:512], x[512:]), RowInfo(texts=texts)


def one(kind: str, latents: int, rows: int, loads: int) -> dict:
    torch.manual_seed(0)
    data, info = dataset(kind, rows)
    model = sparseae.build_preset("dense", data.sample_shape, sparseae.build_sparsity("topk", k=32), seed=0, n_latents=latents)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        sparseae.train(model, data, sparseae.TrainConfig(steps=1, eval_batch_size=256), run, progress=False)
        start = time.perf_counter()
        page = write_report(run, data=data, progress=True, rows=info)
        seconds = time.perf_counter() - start
        page_bytes, files_bytes, n_files = folder_size(page)
        times = measure(page, loads)
    return {"data": kind, "latents": latents, "rows": rows, "report_seconds": round(seconds, 1),
            "page_bytes": page_bytes, "files_bytes": files_bytes, "files": n_files,
            **{k: [round(v, 1) for v in vs] for k, vs in times.items()}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latents", type=int, default=16384)
    parser.add_argument("--rows", type=int, default=4096, help="held-out rows the report is computed on")
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--data", nargs="+", choices=["mnist", "texts"], default=["mnist", "texts"])
    args = parser.parse_args()
    machine = f"{cpu_name()}, {torch.get_num_threads()} threads, Chromium {chromium_version()}"
    results = [one(kind, args.latents, args.rows, args.loads) for kind in args.data]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "report_scale.json").write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")

    def ms(values: list[float]) -> str:
        return f"{statistics.median(values):.0f} ms ({min(values):.0f}-{max(values):.0f})"

    lines = [
        f"{args.latents:,}-latent DenseAutoencoder (TopK k 32, weights after one step: as good as random) on "
        f"{args.rows:,} held-out rows; each report opened from disk (file://) in headless Chromium {args.loads} times, "
        f"median (range). {machine}.",
        "",
        "| data | written in | report.html | report_files/ | first contentful paint | load event | open a feature |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['data']} | {r['report_seconds']:.0f} s | {r['page_bytes'] / 1e6:.2f} MB | "
            f"{r['files_bytes'] / 1e6:.1f} MB in {r['files']} files | {ms(r['first_paint_ms'])} | {ms(r['load_ms'])} | "
            f"{ms(r['open_feature_ms'])} |"
        )
    (RESULTS / "report_scale.md").write_text("\n".join(lines) + "\n")
    print((RESULTS / "report_scale.md").read_text())


def chromium_version() -> str:
    import subprocess

    done = subprocess.run(["chromium", "--version"], capture_output=True, text=True, check=False)
    return done.stdout.split()[1] if done.returncode == 0 and len(done.stdout.split()) > 1 else "unknown"


if __name__ == "__main__":
    main()

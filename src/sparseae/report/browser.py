"""The feature browser's data: an index inline in report.html, and per-feature detail in chunk files beside it.

The index holds, per latent, what the list needs to sort, filter and search (id,
frequency, mean, largest activation, and a word -> feature ids table); each feature's
examples, histogram, loadings or logit tables are in ``<files>/features-NNNN.js``
(`CHUNK` features each), and what each shown row is (picture, text, values) in
``<files>/rows-NNNN.js``; the page loads them with a ``<script>`` tag when a feature is
opened, so a 16,384-latent report opens as fast as a small one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sparseae.data.rows import RowInfo
from sparseae.io import atomic_write
from sparseae.models import Autoencoder
from sparseae.report import meaning
from sparseae.report.scan import FeatureScan, histogram, quantile_examples, strongest, top_examples

CHUNK = 256
"""Features per chunk file (``features-NNNN.js``)."""
ROW_CHUNK = 1024
"""Held-out rows per chunk file (``rows-NNNN.js``: each shown row's picture, text or values, written once)."""
TILES_INLINE = 1024
"""Up to this many latents, their pictures are inline in the index (the list shows them); beyond, only in each detail."""
SEARCH_TOP = 10
"""The words of a feature's first this many top examples make it findable by the search."""
COMMON_FRACTION, COMMON_MIN = 0.1, 20
"""A word in the top examples of more than this fraction of the features (and more than COMMON_MIN of them) finds
too many to help; it is listed as common instead of with its features, which keeps the index small."""


@dataclass(frozen=True)
class Rows:
    """What the held-out rows are: the samples, and what the data set says of them."""

    x: Any
    """The held-out samples, ``(N, *sample_shape)`` (a tensor or row stream)."""
    kind: str
    """One of `meaning.KINDS`."""
    info: RowInfo | None = None
    columns: tuple[str, ...] | None = None
    labels: Any = None
    label_names: tuple[str, ...] | None = None

    def label(self, i: int) -> str | None:
        if self.labels is None:
            return None
        value = int(self.labels[i])
        return self.label_names[value] if self.label_names and value < len(self.label_names) else str(value)


def script_json(value: Any) -> str:
    """JSON that is safe inside a ``<script>`` element or a script file: ``<``, ``>`` and ``&`` escaped as ``\\u00XX``."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _round(v: float) -> float:
    return float(f"{v:.4g}")


def build(
    model: Autoencoder, rows: Rows, scan: FeatureScan, files: Path, latents: list[int], progress: bool = False
) -> dict[str, Any]:
    """Write the chunk files of ``latents`` into ``files`` (replacing old ones) and return the index for the page."""
    freq = (scan.count.double() / max(scan.n, 1)).tolist()
    mean = (scan.total / max(scan.n, 1)).tolist()
    peak = scan.top_values[0].clamp(min=0).tolist()
    examples = {j: (top_examples(scan, j), quantile_examples(scan, j)) for j in latents}
    extras = _extras(model, rows)
    contexts = _contexts(model, rows, examples)
    search: dict[str, set[int]] = {}
    files.mkdir(exist_ok=True)
    for old in [*files.glob("features-*.js"), *files.glob("rows-*.js")]:
        old.unlink()
    by_chunk: dict[int, list[int]] = {}
    for j in latents:
        by_chunk.setdefault(j // CHUNK, []).append(j)
    needed: set[int] = set()
    common = max(COMMON_MIN, int(COMMON_FRACTION * len(latents)))
    for c, members in tqdm(sorted(by_chunk.items()), desc="report files", disable=not progress, leave=False):
        features = {}
        for j in members:
            top, bands = examples[j]
            detail: dict[str, Any] = {"id": j, "freq": _round(freq[j]), "mean": _round(mean[j]), "count": int(scan.count[j]),
                                      "hist": histogram(scan, j),
                                      "top": [_example(j, r, v, contexts) for r, v in top],
                                      "bands": [{"name": name, "examples": [_example(j, r, v, contexts) for r, v in picks]}
                                                for name, picks in bands]}  # fmt: skip
            for key, per_latent in extras.items():
                detail[key] = per_latent[j]
            features[str(j)] = detail
            needed |= {r for r, _ in top} | {r for _, picks in bands for r, _ in picks}
            for word in _words(j, top[:SEARCH_TOP], rows, contexts):
                search.setdefault(word, set()).add(j)
        _write_chunk(files, "features", c, features)
    by_rows: dict[int, list[int]] = {}
    for r in sorted(needed):
        by_rows.setdefault(r // ROW_CHUNK, []).append(r)
    for c, members in by_rows.items():
        described = {str(r): meaning.describe_row(rows.x, r, rows.kind, rows.info, rows.label(r), rows.columns) for r in members}
        _write_chunk(files, "rows", c, described)
    index: dict[str, Any] = {
        "n_latents": model.n_latents, "n": scan.n, "kind": rows.kind, "chunk": CHUNK, "row_chunk": ROW_CHUNK,
        "files": files.name,
        "features": {"id": latents, "freq": [_round(freq[j]) for j in latents], "mean": [_round(mean[j]) for j in latents],
                     "max": [_round(peak[j]) for j in latents]},
        "search": {w: sorted(ids) for w, ids in sorted(search.items()) if len(ids) <= common},
        "common": sorted(w for w, ids in search.items() if len(ids) > common),
        "tiles": None, "docs": [], "token_features": {},
    }  # fmt: skip
    if "img" in extras and len(latents) <= TILES_INLINE:
        index["tiles"] = [extras["img"][j] for j in latents]
    if rows.kind == "tokens":
        index["docs"] = meaning.token_view(rows.info.tokens)
        shown = torch.tensor(sorted({r for doc in index["docs"] for _, r in doc if r >= 0}), dtype=torch.int64)
        strong = strongest(model, rows.x, shown)
        index["token_features"] = {str(r): [[j, _round(v)] for j, v in s] for r, s in zip(shown.tolist(), strong, strict=True)}
    return index


def _write_chunk(files: Path, kind: str, index: int, data: dict[str, Any]) -> None:
    atomic_write(files / f"{kind}-{index:04d}.js", f"sparseaeChunk({json.dumps(kind)},{index},{script_json(data)});\n".encode())


def _extras(model: Autoencoder, rows: Rows) -> dict[str, list[Any]]:
    """Per-latent fields beside the examples, by the kind of rows: pictures, column loadings, logit tables."""
    out: dict[str, list[Any]] = {}
    if rows.kind == "images":
        tiles = meaning.tiles(model)
        if tiles is not None:
            out["img"] = tiles
    if rows.columns and len(rows.columns) == _width(model):
        out["loadings"] = meaning.loadings(model, rows.columns)
    if rows.kind == "tokens":
        lm = meaning.unembedding(rows.info.tokens.documents, _width(model))
        if lm is not None:
            out["logits"] = meaning.logit_tables(model, *lm)
    return out


def _width(model: Autoencoder) -> int:
    return int(torch.Size(model.input_shape).numel())


def _contexts(model: Autoencoder, rows: Rows, examples: dict[int, tuple]) -> dict[tuple[int, int], dict[str, Any]]:
    """The token context of every (latent, row) shown, for token rows; empty otherwise."""
    if rows.kind != "tokens":
        return {}
    pairs = sorted({(j, r) for j, (top, bands) in examples.items() for r, _ in top + [p for _, ps in bands for p in ps]})
    return dict(zip(pairs, meaning.contexts(model, rows.x, rows.info.tokens, pairs), strict=True))


def _example(j: int, r: int, v: float, contexts: dict[tuple[int, int], dict[str, Any]]) -> dict[str, Any]:
    # 7 significant digits: a float32's value to within its own precision, in fewer characters than its float64 repr.
    return {"row": r, "value": float(f"{v:.7g}"), **contexts.get((j, r), {})}


def _words(j: int, top: list[tuple[int, float]], rows: Rows, contexts: dict) -> set[str]:
    """The words a feature is found by: those of its top texts, or the tokens it fires on most."""
    found: set[str] = set()
    for r, _ in top:
        if rows.kind == "texts":
            found |= meaning.words(rows.info.texts[r])
        elif rows.kind == "tokens":
            ctx = contexts[(j, r)]
            found |= meaning.words(ctx["ctx"][ctx["at"]][0])
    return found

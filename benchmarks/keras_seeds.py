"""Dead code units over seeds: the Keras blog model in Keras, and sparseae's two recipes for it.

For each seed, trains the verbatim Keras model on TensorFlow (``keras_reference.py``, in its own
environment, built as the speed suite builds it), sparseae's ``--recipe keras`` (the same model and
training) and sparseae's default recipe (the same architecture and L1 penalty, its code units held
alive), and writes ``benchmarks/results/keras_seeds.{json,md}``: test MSE, L0, dead code units and a
linear probe's accuracy on the code after each of ``--epochs``.

Keras and ``--recipe keras`` are read after each epoch of one run (their rate is constant); the
default recipe's rate decays over the run's last fifth, so each epoch count is its own run, as
``sparseae train --epochs N`` trains it. Jobs run ``--parallel`` at a time on ``--threads`` threads
each (TensorFlow on one thread is 2-4x slower per epoch than on two), seeds interleaved so that
machine noise hits every contender alike; the times are not a speed comparison (``make bench`` is).

    .venv/bin/python benchmarks/keras_seeds.py --seeds 0 1 2 3 4 5 6 7 --epochs 1 5 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from machine import cpu_name

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CONTENDERS = ("keras", "sparseae --recipe keras", "sparseae default")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 5, 10], help="Epoch counts to report.")
    parser.add_argument("--parallel", type=int, default=1, help="Jobs at a time.")
    parser.add_argument("--threads", type=int, default=2, help="Threads of each job.")
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    parser.add_argument("--skip-install", action="store_true", help="Use benchmarks/.venvs/keras as it is.")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="keras_seeds", help="Results file name, without .json / .md.")
    parser.add_argument("--worker", nargs=3, metavar=("RECIPE", "EPOCHS", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--probe-codes", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker[0], int(args.worker[1]), int(args.worker[2]))
    if args.probe_codes:
        return probe_codes(args.probe_codes)
    keras_python = None
    if "keras" in args.contenders:
        sys.path.insert(0, str(HERE / "speed"))
        from suite import ENVS, build_env  # noqa: PLC0415 - only where Keras is measured

        info = build_env("keras", ENVS["keras"], args.skip_install)
        if info.get("error"):
            sys.exit(f"the Keras environment could not be built: {info['error']}")
        keras_python = info["python"]
    jobs = []
    for seed in args.seeds:
        for name in args.contenders:
            lengths = args.epochs if name == "sparseae default" else [max(args.epochs)]
            jobs += [(name, seed, n) for n in lengths]
    machine = {
        "cpu": cpu_name(),
        "python": platform.python_version(),
        "jobs": f"{args.parallel} at a time, {args.threads} thread{'s' * (args.threads > 1)} each",
        "date": time.strftime("%Y-%m-%d"),
    }
    done: list[dict] = []
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.parallel) as pool:
        for record in pool.map(lambda job: run(job, keras_python, args.threads), jobs):
            done.append(record)
            last = record["epochs"][-1] if record["epochs"] else {}
            print(f"[{time.perf_counter() - start:6.0f} s] {record['contender']} seed {record['seed']} "
                  f"{record['length']} epochs: {last or record.get('error')}", flush=True)  # fmt: skip
            # Written after every run, so that a stopped benchmark keeps what it measured.
            (args.out / f"{args.name}.json").write_text(json.dumps({"machine": machine, "runs": done}, indent=1))
            table = tables(done, args.seeds, args.epochs, args.contenders, machine)
            (args.out / f"{args.name}.md").write_text(table)
    print(table)


def run(job: tuple[str, int, int], keras_python: str | None, threads: int) -> dict:
    """One training run in its own process, on ``threads`` threads: its per-epoch records."""
    name, seed, length = job
    n = str(threads)
    env = {**os.environ, "OMP_NUM_THREADS": n, "TF_NUM_INTRAOP_THREADS": n, "TF_NUM_INTEROP_THREADS": n}
    with tempfile.TemporaryDirectory() as tmp:
        codes = Path(tmp) / "codes.npz"
        if name == "keras":
            cmd = [keras_python, str(HERE / "keras_reference.py"), "--epochs", str(length), "--seed", str(seed),
                   "--codes", str(codes)]  # fmt: skip
            env["TF_CPP_MIN_LOG_LEVEL"] = "2"
        else:
            recipe = "keras" if name == "sparseae --recipe keras" else "default"
            cmd = [sys.executable, __file__, "--worker", recipe, str(length), str(seed)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        epochs = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        record = {"contender": name, "seed": seed, "length": length, "epochs": epochs}
        if done.returncode != 0:
            record["error"] = done.stderr[-2000:]
        elif name == "keras":  # the probe as sparseae fits it, on the codes Keras saved
            probe = subprocess.run(
                [sys.executable, __file__, "--probe-codes", str(codes)], capture_output=True, text=True, env=env
            )
            epochs[-1]["probe"] = float(probe.stdout.strip().splitlines()[-1])
    return record


def worker(recipe: str, epochs: int, seed: int) -> None:
    """Train sparseae's mnist-conv with ``recipe`` and print one JSON line per epoch."""
    import torch  # noqa: PLC0415 - the parent process needs no torch

    import sparseae  # noqa: PLC0415
    from sparseae.metrics import linear_probe  # noqa: PLC0415

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    data = sparseae.load_mnist()
    model = sparseae.mnist_conv(seed=seed, recipe=recipe)
    config = sparseae.TrainConfig.for_preset("mnist-conv", recipe, epochs=epochs, seed=seed)
    result = sparseae.train(model, data, config, progress=False)
    probe = linear_probe(model.encode_all(data.train), data.train_labels, model.encode_all(data.test), data.test_labels)
    for m in result.metrics:
        record = {k: m[k] for k in ("epoch", "epoch_time_s", "samples_per_s", "test_mse", "test_l0", "test_dead_units")}
        if m["epoch"] == epochs:
            record["probe"] = probe
        print(json.dumps(record), flush=True)


def probe_codes(path: Path) -> None:
    """Print the linear probe's test accuracy on the codes in ``path`` (saved by keras_reference.py --codes)."""
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415

    import sparseae  # noqa: PLC0415
    from sparseae.metrics import linear_probe  # noqa: PLC0415

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    data, codes = sparseae.load_mnist(), np.load(path)
    print(linear_probe(torch.from_numpy(codes["train"]), data.train_labels, torch.from_numpy(codes["test"]), data.test_labels))


def tables(runs: list[dict], seeds: list[int], epochs: list[int], contenders: list[str], machine: dict) -> str:
    """Per epoch count: each contender's dead units per seed, and mean test MSE, L0 and probe accuracy."""
    lines = [
        f"Keras MNIST conv model, full MNIST, batch 128, seeds {', '.join(map(str, seeds))}; {machine['cpu']}, "
        f"{machine['jobs']}, {machine['date']}. Dead units: zero on every test digit. Probe: a logistic "
        "regression on the 32-unit code (after the run's last epoch only).",
        "",
    ]
    for n in epochs:
        lines += [
            f"After {n} epoch{'s' * (n > 1)}:",
            "",
            "| | dead units (of 32), per seed | max dead | test MSE, mean | L0, mean | probe, mean |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name in contenders:
            rows = [at_epoch(runs, name, seed, n) for seed in seeds]
            rows = [r for r in rows if r is not None]
            if not rows:
                continue
            dead = [r["test_dead_units"] for r in rows]
            probes = [r["probe"] for r in rows if "probe" in r]
            probe = f"{statistics.mean(probes):.4f}" if len(probes) == len(rows) else "-"
            lines.append(
                f"| {name} | {', '.join(map(str, dead))} (mean {statistics.mean(dead):.1f}) | {max(dead)} "
                f"| {statistics.mean(r['test_mse'] for r in rows):.4f} | {statistics.mean(r['test_l0'] for r in rows):.1f} "
                f"| {probe} |"
            )
        lines.append("")
    return "\n".join(lines)


def at_epoch(runs: list[dict], name: str, seed: int, n: int) -> dict | None:
    """The record after epoch ``n`` of ``name``'s run on ``seed``: of the n-epoch run where there is one."""
    own = [r for r in runs if r["contender"] == name and r["seed"] == seed and r["length"] == n]
    pool = own or [r for r in runs if r["contender"] == name and r["seed"] == seed and r["length"] >= n]
    for record in pool:
        found = [e for e in record["epochs"] if e["epoch"] == n]
        if found:
            return found[0]
    return None


if __name__ == "__main__":
    main()

"""Peak memory of one streamed epoch stays flat as the data grows: 1 GB against 8 GB of .npy.

Generates float32 ``.npy`` files of the given sizes (rows are sparse combinations of a
fixed random dictionary plus noise, written block by block, never held whole), then
trains one epoch of a dense TopK SAE on each with ``load="stream"``, and one epoch on
the smallest with ``load="memory"`` for contrast. Every run is a fresh subprocess, so
its peak RSS is its own: the child reports ``ru_maxrss`` and its ``VmHWM`` at phase
boundaries (data loaded, prepare sample drawn, first shuffle buffer, last batch,
start of the test evaluation, after it), with the bytes read from files so far
(``rchar`` of ``/proc/self/io``); the parent samples the child's ``/proc/PID/status``
meanwhile. The test evaluation is timed on its own. Writes
benchmarks/results/streaming_memory.{json,md}, comparing peak RSS with the results
already there (``--previous``; ``--note`` adds a line); asserts nothing.

    .venv/bin/python benchmarks/streaming_memory.py --sizes-gb 1 8
    .venv/bin/python benchmarks/streaming_memory.py --sizes-gb 0.05 0.2 --memory-sizes-gb 0.05 --out /tmp/check   # a quick check

The files go to --workdir (kept between runs with --keep and reused when their sidecar
matches the settings); without --keep they are deleted at the end.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from machine import cpu_name

GIB = 2**30
BLOCK_ROWS = 16_384
"""Rows generated and written in one go (16 MB at d_in 256)."""
GENERATOR_VERSION = 1
"""Bump when the generated data changes, so old files are not reused."""


# --- data ------------------------------------------------------------------------------


def data_spec(size_gb: float, args: argparse.Namespace) -> dict[str, Any]:
    """Everything the content of a generated file depends on (its sidecar)."""
    return {
        "version": GENERATOR_VERSION,
        "rows": int(size_gb * GIB) // (4 * args.d_in),
        "d_in": args.d_in,
        "atoms": args.atoms,
        "active": args.active,
        "noise": args.noise,
        "seed": args.seed,
    }


def data_file(workdir: Path, size_gb: float, args: argparse.Namespace) -> tuple[Path, float]:
    """The .npy file of ``size_gb`` GiB in ``workdir``, generated unless a matching one is there; and seconds spent."""
    spec = data_spec(size_gb, args)
    path = workdir / f"rows-{size_gb:g}gb-d{args.d_in}.npy"
    sidecar = path.with_suffix(".json")
    if path.is_file() and sidecar.is_file():
        saved = json.loads(sidecar.read_text())
        whole = path.stat().st_size == saved.get("bytes") and _spot_hash(path) == saved.get("spot_sha256")
        if saved.get("spec") == spec and whole:
            print(f"reusing {path} ({saved['bytes'] / GIB:.2f} GiB)", flush=True)
            return path, 0.0
    start = time.perf_counter()
    sha = _generate(path, spec)
    seconds = time.perf_counter() - start
    sidecar.write_text(
        json.dumps({"spec": spec, "bytes": path.stat().st_size, "sha256": sha, "spot_sha256": _spot_hash(path)}, indent=1) + "\n"
    )
    print(f"wrote {path} ({path.stat().st_size / GIB:.2f} GiB) in {seconds:.0f}s", flush=True)
    return path, seconds


def _generate(path: Path, spec: dict[str, Any]) -> str:
    """Write ``spec['rows']`` rows block by block after a .npy header; returns the file's sha256."""
    rows, d = spec["rows"], spec["d_in"]
    dictionary = np.random.default_rng(spec["seed"]).standard_normal((spec["atoms"], d), dtype=np.float32)  # (atoms, d)
    dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
    sha = hashlib.sha256()
    partial = path.with_suffix(".npy.partial")
    with open(partial, "wb") as f:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": (rows, d)}
        np.lib.format.write_array_header_1_0(f, header)
        f.flush()
        sha.update(partial.read_bytes())
        for i, start in enumerate(range(0, rows, BLOCK_ROWS)):
            n = min(BLOCK_ROWS, rows - start)
            rng = np.random.default_rng([spec["seed"], i])
            atoms = rng.integers(0, spec["atoms"], (n, spec["active"]))  # (n, active)
            coef = rng.exponential(1.0, (n, spec["active"])).astype(np.float32)  # (n, active)
            block = spec["noise"] * rng.standard_normal((n, d), dtype=np.float32)  # (n, d)
            for j in range(spec["active"]):
                block += coef[:, j : j + 1] * dictionary[atoms[:, j]]
            raw = memoryview(np.ascontiguousarray(block, dtype="<f4")).cast("B")
            f.write(raw)
            sha.update(raw)
    partial.replace(path)
    return sha.hexdigest()


def _spot_hash(path: Path, spots: int = 64, span: int = 2**20) -> str:
    """sha256 of ``spots`` stretches spread over the file: a cheap check that a reused file is whole."""
    size = path.stat().st_size
    sha = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        for i in range(spots):
            f.seek(max(0, (size - span) * i // max(1, spots - 1)))
            sha.update(f.read(span))
    return sha.hexdigest()


# --- one training run, in a child process ------------------------------------------------


def _status(pid: int | str = "self") -> dict[str, int]:
    """Memory lines of /proc/PID/status, in KiB (VmRSS, VmHWM, RssAnon, RssFile)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0])
    except (OSError, ValueError):
        pass
    return out


def _read_bytes() -> int:
    """Bytes this process has read from files and pipes so far (``rchar``; page-cache hits count too)."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def child(spec: dict[str, Any]) -> None:
    """Train one epoch as ``spec`` says and write what was measured to ``spec['result']``."""
    marks: list[dict[str, Any]] = []
    t0 = time.time()

    def mark(phase: str) -> None:
        marks.append({"phase": phase, "t": round(time.time() - t0, 3), "read_bytes": _read_bytes(), **_status()})

    import torch

    import sparseae
    from sparseae.data import RowStream, Stream

    class Probed(Stream):
        """The training split as it is, marking memory when the prepare sample is drawn and as batches are read."""

        def __init__(self, inner: Stream, steps: int):
            self.inner, self.steps, self.sample_shape = inner, steps, inner.sample_shape

        def __len__(self) -> int:
            return len(self.inner)

        def head(self, n: int) -> torch.Tensor:
            return self.inner.head(n)

        def sample(self, n: int, seed: int) -> torch.Tensor:
            mark("prepare: before sample")
            out = self.inner.sample(n, seed)
            mark("prepare: sample drawn")
            return out

        def batches(self, batch_size: int, seed: int, epoch: int) -> Iterator[torch.Tensor]:
            for i, batch in enumerate(self.inner.batches(batch_size, seed, epoch)):
                if i == 0:
                    mark("epoch: first shuffle buffer read")
                if i == self.steps - 1:
                    mark("epoch: last batch read")
                yield batch

    class ProbedTest(RowStream):
        """The test split on disk as it is, marking when the evaluation first reads it and timing its reads."""

        def __init__(self, inner: RowStream):
            super().__init__(inner.reader, inner.rows, chunk_rows=inner.chunk_rows, buffer_rows=inner.buffer_rows)
            self.started: float | None = None
            self.read_s = 0.0

        def __getitem__(self, index: Any) -> torch.Tensor:
            if self.started is None:
                mark("eval: first test batch")
                self.started = time.perf_counter()
            start = time.perf_counter()
            out = super().__getitem__(index)
            self.read_s += time.perf_counter() - start
            return out

    mark("started")
    config = sparseae.DataConfig(source=spec["path"], load=spec["mode"], shuffle_buffer=spec["shuffle_buffer"])
    start = time.perf_counter()
    data = sparseae.load_data(config)
    load_s = time.perf_counter() - start
    mark("data loaded")
    n_train = len(data.train)
    if isinstance(data.train, Stream):
        data = replace(data, train=Probed(data.train, -(-n_train // spec["batch_size"])))
    if isinstance(data.test, RowStream):
        data = replace(data, test=ProbedTest(data.test))
    model = sparseae.build_preset(
        "dense",
        data.sample_shape,
        sparseae.build_sparsity("topk", k=spec["k"]),
        seed=0,
        n_latents=spec["n_latents"],
        aux_k=spec["aux_k"],
    )
    train_config = sparseae.TrainConfig(
        epochs=1, batch_size=spec["batch_size"], optimizer="adam", adam_eps=1e-8, device="cpu", seed=0
    )
    start = time.perf_counter()
    result = sparseae.train(model, data, train_config, progress=False)
    train_s = time.perf_counter() - start
    done = time.perf_counter()
    mark("trained and evaluated")
    record = result.metrics[-1]
    eval_s = eval_read_s = None
    if isinstance(data.test, ProbedTest) and data.test.started is not None:
        eval_s, eval_read_s = done - data.test.started, data.test.read_s
    out = {
        "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "load_s": load_s,
        "train_s": train_s,
        "train_rows": n_train,
        "test_rows": len(data.test),
        "rows_per_s": n_train / train_s,
        "epoch_time_s": record["epoch_time_s"],
        "samples_per_s": record["samples_per_s"],
        "eval_s": eval_s,
        "eval_read_s": eval_read_s,
        "test_fvu": record["test_fvu"],
        "test_l0": record["test_l0"],
        "test_dead_units": record["test_dead_units"],
        "marks": marks,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "sparseae": sparseae.__version__,
        "python": sys.version.split()[0],
    }
    Path(spec["result"]).write_text(json.dumps(out, indent=1) + "\n")


def run_child(spec: dict[str, Any], interval: float, timeout: float | None) -> dict[str, Any]:
    """Run :func:`child` in a fresh interpreter, sampling its /proc status every ``interval`` seconds."""
    Path(spec["result"]).unlink(missing_ok=True)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)], cwd=Path(__file__).parent)
    trace = []
    while proc.poll() is None:
        status = _status(proc.pid)
        if status:
            trace.append({"t": round(time.perf_counter() - start, 2), **status})
        if timeout is not None and time.perf_counter() - start > timeout:
            proc.kill()
            proc.wait()
            raise SystemExit(f"{spec['mode']} run on {spec['path']} took over {timeout:.0f}s: killed")
        time.sleep(interval)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{spec['mode']} run on {spec['path']} failed (exit {proc.returncode})")
    out = json.loads(Path(spec["result"]).read_text())
    Path(spec["result"]).unlink()
    out["wall_s"] = wall
    out["sampled_peak_rss_kib"] = max((s.get("VmRSS", 0) for s in trace), default=0)
    out["last_sampled_hwm_kib"] = trace[-1].get("VmHWM", 0) if trace else 0
    out["trace"] = _thin(trace, 240)
    return out


def _thin(trace: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """At most about ``n`` samples: the one with the highest RSS in each stretch."""
    if len(trace) <= n:
        return trace
    step = -(-len(trace) // n)
    return [max(trace[i : i + step], key=lambda s: s.get("VmRSS", 0)) for i in range(0, len(trace), step)]


# --- the benchmark ---------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-gb", type=float, nargs="+", default=[1.0, 8.0], help="sizes (GiB) of the streamed files")
    parser.add_argument("--memory-sizes-gb", type=float, nargs="*", default=None,
                        help="sizes also trained with load='memory' (default: the smallest of --sizes-gb)")  # fmt: skip
    parser.add_argument("--d-in", type=int, default=256, help="values per row")
    parser.add_argument("--atoms", type=int, default=512, help="atoms in the random dictionary the rows are made of")
    parser.add_argument("--active", type=int, default=8, help="atoms per row")
    parser.add_argument("--noise", type=float, default=0.05, help="standard deviation of the noise added to each value")
    parser.add_argument(
        "--n-latents",
        type=int,
        default=512,
        help="512, not 1024: with AuxK on, 1024 ran ~3,000 rows/s on 2 cores (8 GiB: ~47 min)",
    )
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--aux-k", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--shuffle-buffer", type=int, default=262_144, help="rows in the shuffle buffer (DataConfig default)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the generated data")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "sparseae-streaming-memory")
    parser.add_argument("--keep", action="store_true", help="keep the generated files (reused by the next run)")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between samples of the child's RSS")
    parser.add_argument("--run-timeout", type=float, default=None, help="kill a training run after this many seconds")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--previous", type=Path, default=None,
                        help="an earlier streaming_memory.json to compare with (default: the one in --out, if any)")  # fmt: skip
    parser.add_argument("--note", default="", help="a line added to the table (e.g. what changed since --previous)")
    parser.add_argument("--render-only", action="store_true", help="rewrite the .md from the .json in --out (with --note)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    if args.render_only:
        summary = json.loads((args.out / "streaming_memory.json").read_text())
        summary["note"] = args.note or summary.get("note", "")
        (args.out / "streaming_memory.json").write_text(json.dumps(summary, indent=1) + "\n")
        (args.out / "streaming_memory.md").write_text(_table(summary))
        print(_table(summary))
        return
    memory_sizes = [min(args.sizes_gb)] if args.memory_sizes_gb is None else args.memory_sizes_gb
    previous = _previous(args.previous or args.out / "streaming_memory.json")  # read now: --out is overwritten
    args.workdir.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in ("d_in", "atoms", "active", "noise", "n_latents", "k", "aux_k", "batch_size")}
    settings["shuffle_buffer"] = args.shuffle_buffer
    files: dict[float, Path] = {}
    generate_s: dict[str, float] = {}
    runs = []
    try:
        for size in sorted({*args.sizes_gb, *memory_sizes}):
            files[size], generate_s[f"{size:g}"] = data_file(args.workdir, size, args)
        plan = [(size, "stream") for size in args.sizes_gb] + [(size, "memory") for size in memory_sizes]
        for size, mode in plan:
            spec = {"path": str(files[size]), "mode": mode, "result": str(args.workdir / "child-result.json"), **settings}
            print(f"training one epoch: {size:g} GiB, load={mode} ...", flush=True)
            run = {"size_gb": size, "mode": mode, "file_bytes": files[size].stat().st_size,
                   **run_child(spec, args.interval, args.run_timeout)}  # fmt: skip
            print(
                f"  peak RSS {run['ru_maxrss_kib'] / 1024:.0f} MB, {run['wall_s']:.0f}s, "
                f"{run['rows_per_s']:.0f} rows/s, test FVU {run['test_fvu']:.4f}",
                flush=True,
            )
            runs.append(run)
    finally:
        if not args.keep:
            for path in files.values():
                path.unlink(missing_ok=True)
                path.with_suffix(".json").unlink(missing_ok=True)
            if not any(args.workdir.iterdir()):
                args.workdir.rmdir()
    first = runs[0]
    machine = {
        "cpu": cpu_name(),
        "threads": first["threads"],
        "cpus": os.cpu_count(),
        "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1),
        "torch": first["torch"],
        "python": first["python"],
        "sparseae": first["sparseae"],
    }
    summary = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine,
        "settings": settings,
        "generate_s": generate_s,
        "stream_peak_ratio": _stream_ratio(runs),
        "runs": runs,
        "note": args.note,
        "previous": previous,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "streaming_memory.json").write_text(json.dumps(summary, indent=1) + "\n")
    table = _table(summary)
    (args.out / "streaming_memory.md").write_text(table)
    print(table)


def _stream_ratio(runs: list[dict[str, Any]]) -> float | None:
    """Peak RSS of the largest streamed run over that of the smallest."""
    streamed = sorted((r for r in runs if r["mode"] == "stream"), key=lambda r: r["size_gb"])
    if len(streamed) < 2:
        return None
    return streamed[-1]["ru_maxrss_kib"] / streamed[0]["ru_maxrss_kib"]


def _previous(path: Path) -> dict[str, Any] | None:
    """Date, machine, settings and peak RSS per run of an earlier result file (None if there is none)."""
    if not path.is_file():
        return None
    old = json.loads(path.read_text())
    return {
        "file": str(path),
        "date": old["date"],
        "machine": old["machine"],
        "settings": old["settings"],
        "peaks_kib": {f"{r['size_gb']:g} {r['mode']}": r["ru_maxrss_kib"] for r in old["runs"]},
        # from the last batch read to the end: the evaluation and the last step
        "eval_s": {
            f"{r['size_gb']:g} {r['mode']}": _phase_gap(r, "epoch: last batch read", "trained and evaluated") for r in old["runs"]
        },
    }


def _mark(run: dict[str, Any], phase: str) -> dict[str, Any] | None:
    return next((m for m in run["marks"] if m["phase"] == phase), None)


def _phase_gap(run: dict[str, Any], first: str, last: str) -> float | None:
    """Seconds between two marks of a run (None if either is missing)."""
    a, b = _mark(run, first), _mark(run, last)
    return None if a is None or b is None else b["t"] - a["t"]


def _read_share(run: dict[str, Any], first: str, last: str) -> str:
    """Bytes read between two marks, as a share of the file."""
    a, b = _mark(run, first), _mark(run, last)
    if a is None or b is None or "read_bytes" not in a:
        return "-"
    return f"{(b['read_bytes'] - a['read_bytes']) / run['file_bytes']:.1%}"


def _table(summary: dict[str, Any]) -> str:
    s, m = summary["settings"], summary["machine"]
    mb = 1024  # KiB per MiB
    lines = [
        f"One epoch of a dense TopK SAE (d_in {s['d_in']}, {s['n_latents']} latents, k = {s['k']}, aux_k {s['aux_k']}, "
        f"batch {s['batch_size']}, Adam) on float32 .npy files of random rows (sparse sums of {s['active']} of "
        f"{s['atoms']} dictionary atoms + noise), 10% of the rows held out as the test split; "
        f"streamed runs use a {s['shuffle_buffer']:,}-row shuffle buffer. Each run in a fresh process. "
        f"{m['cpu']}, {m['threads']} threads, {m['ram_gib']} GiB RAM, torch {m['torch']}, {summary['date'][:10]}.",
        "",
    ]
    prev = summary.get("previous")
    comparable = prev is not None and prev["settings"] == s
    head = "| data | mode | rows | peak RSS MB | peak / file | wall s | rows/s | test eval s | test FVU |"
    rule = "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    if comparable:
        head, rule = head + " previous peak RSS MB |", rule + " --- |"
    lines += [head, rule]
    for r in summary["runs"]:
        eval_s = "-" if r.get("eval_s") is None else f"{r['eval_s']:.1f}"
        line = (
            f"| {r['size_gb']:g} GiB | {r['mode']} | {r['train_rows'] + r['test_rows']:,} | {r['ru_maxrss_kib'] / mb:,.0f} | "
            f"{r['ru_maxrss_kib'] * 1024 / r['file_bytes']:.2f} | {r['wall_s']:.0f} | {r['rows_per_s']:,.0f} | {eval_s} | "
            f"{r['test_fvu']:.4f} |"
        )
        if comparable:
            old = prev["peaks_kib"].get(f"{r['size_gb']:g} {r['mode']}")
            line += f" {'-' if old is None else f'{old / mb:,.0f}'} |"
        lines.append(line)
    lines += [
        "",
        "Peak RSS is the child's `ru_maxrss`; wall s is the whole child process (start-up, loading, one epoch, test "
        "evaluation); rows/s is training rows over the time in `sparseae.train` (prepare sample, epoch, evaluation); "
        "test eval s is the evaluation on the streamed test split, from its first read to the end of `sparseae.train` "
        "(the in-memory test split is a tensor and is not timed).",
    ]
    if comparable:
        m0 = prev["machine"]
        lines.append(
            f"Previous peak RSS: {Path(prev['file']).name} of {prev['date'][:10]} (same settings; {m0['cpu']}, "
            f"{m0['threads']} threads, {m0['ram_gib']} GiB RAM, torch {m0['torch']})."
        )
    elif prev is not None:
        lines.append(f"({Path(prev['file']).name} of {prev['date'][:10]} used other settings: not compared.)")
    if summary["stream_peak_ratio"] is not None:
        lines.append(f"Largest / smallest streamed peak RSS: {summary['stream_peak_ratio']:.2f}.")
    if summary.get("note"):
        lines += ["", summary["note"]]
    streamed = [r for r in summary["runs"] if r["mode"] == "stream"]
    if streamed and "read_bytes" in streamed[0]["marks"][0]:
        lines += [
            "",
            "Read from the file (`rchar`, page-cache hits included) as a share of its size: by the prepare sample; by the "
            "epoch (first batch to last); by the test evaluation.",
            "",
            "| data | prepare sample | epoch | test evaluation |",
            "| --- | --- | --- | --- |",
        ]
        for r in streamed:
            lines.append(
                f"| {r['size_gb']:g} GiB | {_read_share(r, 'prepare: before sample', 'prepare: sample drawn')} | "
                f"{_read_share(r, 'prepare: sample drawn', 'epoch: last batch read')} | "
                f"{_read_share(r, 'eval: first test batch', 'trained and evaluated')} |"
            )
    phases = list(dict.fromkeys(mark["phase"] for r in summary["runs"] for mark in r["marks"]))
    lines += [
        "",
        "Where the peak is reached: the child's VmHWM (the high-water mark so far) / VmRSS, in MB, at each point.",
        "",
        "| data | mode | " + " | ".join(phases) + " |",
        "| --- | --- | " + " | ".join("---" for _ in phases) + " |",
    ]
    for r in summary["runs"]:
        cells = {mark["phase"]: f"{mark['VmHWM'] / mb:,.0f} / {mark['VmRSS'] / mb:,.0f}" for mark in r["marks"]}
        lines.append(f"| {r['size_gb']:g} GiB | {r['mode']} | " + " | ".join(cells.get(phase, "-") for phase in phases) + " |")
    gen = ", ".join(f"{k} GiB {v:.0f}s" for k, v in summary["generate_s"].items())
    lines += ["", f"Generating the files took: {gen} (0s: reused)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

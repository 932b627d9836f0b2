"""The speed suite: sparseae against Keras, plain PyTorch, sparsify and SAELens, in one command.

    python benchmarks/speed/suite.py [--quick] [--only conv,topk,ceiling] [--rounds N]

Three comparisons, each contender's worker a fresh subprocess in its own
environment, one at a time, the contenders' order rotated round by round so
that the machine's noise hits all alike:

- ``conv``: the Keras blog's MNIST conv autoencoder, sparseae vs Keras
  (verbatim) vs plain PyTorch, one seed per round, samples/s and test MSE.
- ``topk``: a TopK SAE (768 -> 16,384, k 32, batch 4,096) on synthetic sparse
  data (``topk_data.py``), sparseae (float32, bfloat16) vs sparsify vs SAELens,
  rows/s, FVU, dead latents.
- ``ceiling``: sustained matmul GFLOP/s (``ceiling.py``), at the start and the
  end; every speed is also quoted as a fraction of it.

Environments: sparseae's workers use the project's ``.venv`` (built, when
missing or older than pyproject.toml/constraints.txt, exactly as ``make``
builds it); every other contender gets ``benchmarks/.venvs/<name>`` from its
``requirements-<name>.txt``, installed with ``-c constraints.txt`` and left
alone while the file's hash matches the stamp (``rm -r benchmarks/.venvs`` for
a clean rebuild). A contender whose environment fails to install, or whose
worker fails, is reported with the error and the suite goes on.

Writes ``benchmarks/results/speed.{json,md}`` (``speed-quick.*`` with
--quick); ``--only`` replaces just those comparisons in the existing files.
Standard library only: any python3 runs it.

Worker protocol: ``python WORKER.py --config '<json>' --out RESULT.json``;
the worker writes one JSON object to RESULT.json and exits 0. A worker that
cannot run a setting (say a precision) writes ``{"skipped": "why"}``.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
ROOT = BENCH.parent
CONSTRAINTS = ROOT / "constraints.txt"
RESULTS = BENCH / "results"
MNIST = ROOT / "src" / "sparseae" / "data" / "mnist_files"
sys.path.insert(0, str(BENCH))
from machine import cpu_name  # noqa: E402 - benchmarks/machine.py, standard library only


@dataclass(frozen=True)
class Env:
    """A Python environment that workers run in."""

    path: Path
    requirements: Path | None
    """Its requirements file; None for the project's own .venv, built as `make` builds it."""


@dataclass(frozen=True)
class Contender:
    """One contender of a comparison: which worker, in which environment, with which config changes."""

    name: str
    worker: str
    """A file in benchmarks/speed."""
    env: str
    """A key of ENVS."""
    overrides: dict = field(default_factory=dict)
    """Merged over the comparison's config."""


ENVS = {
    "sparseae": Env(ROOT / ".venv", None),
    "keras": Env(BENCH / ".venvs" / "keras", HERE / "requirements-keras.txt"),
    "torch": Env(BENCH / ".venvs" / "torch", HERE / "requirements-torch.txt"),
    "sparsify": Env(BENCH / ".venvs" / "sparsify", HERE / "requirements-sparsify.txt"),
    "saelens": Env(BENCH / ".venvs" / "saelens", HERE / "requirements-saelens.txt"),
}
CONV = (
    Contender("sparseae float32", "conv_sparseae.py", "sparseae", {"precision": "float32"}),
    Contender("sparseae bfloat16", "conv_sparseae.py", "sparseae", {"precision": "bfloat16"}),
    # sparseae train's own recipe (code units held alive, its rate of 2e-3 decayed); the two above are --recipe keras.
    Contender("sparseae default recipe float32", "conv_sparseae.py", "sparseae", {"recipe": "default", "lr": None}),
    Contender("keras", "conv_keras.py", "keras"),
    Contender("pytorch", "conv_torch.py", "torch"),
)
CONV_REFERENCE = "keras"
CONV_OURS = ("sparseae float32", "sparseae bfloat16", "sparseae default recipe float32")
TOPK = (
    Contender("sparseae float32", "topk_sparseae.py", "sparseae", {"precision": "float32"}),
    Contender("sparseae bfloat16", "topk_sparseae.py", "sparseae", {"precision": "bfloat16"}),
    Contender("sparsify float32", "topk_sparsify.py", "sparsify", {"precision": "float32"}),
    Contender("sae-lens float32", "topk_saelens.py", "saelens", {"precision": "float32"}),
    Contender("sparsify bfloat16", "topk_sparsify.py", "sparsify", {"precision": "bfloat16"}),
)
TOPK_PEERS = ("sparsify float32", "sae-lens float32")
"""The reference of the TopK comparison is the faster of these (each library as it runs on a CPU by default)."""
TOPK_PEERS_ANY = (*TOPK_PEERS, "sparsify bfloat16")
"""Also reported: the ratio to the faster peer in any precision."""
TOPK_OURS = ("sparseae float32", "sparseae bfloat16")
COMPARISONS = ("conv", "topk", "ceiling")

# Forward multiply-accumulates per sample of the Keras MNIST model: (layer, output positions, MACs per position).
# A transposed convolution is counted per input position (each scatters a 3x3xC_out patch), which for stride 2
# is the same as counting its output positions at 1/4 of the kernel each.
CONV_LAYERS = (
    ("Conv2D 1->16, 3x3, 28x28", 28 * 28, 3 * 3 * 1 * 16),
    ("Conv2D 16->32, 3x3, 14x14", 14 * 14, 3 * 3 * 16 * 32),
    ("Dense 1568->32 (the code)", 1, 1568 * 32),
    ("Dense 32->1568", 1, 32 * 1568),
    ("Conv2D 32->32, 3x3, 7x7", 7 * 7, 3 * 3 * 32 * 32),
    ("Conv2DTranspose 32->32, stride 2, 7x7 -> 14x14", 7 * 7, 3 * 3 * 32 * 32),
    ("Conv2DTranspose 32->16, stride 2, 14x14 -> 28x28", 14 * 14, 3 * 3 * 32 * 16),
    ("Conv2DTranspose 16->1, 3x3, 28x28", 28 * 28, 3 * 3 * 16 * 1),
)
CONV_FLOPS = 3 * 2 * sum(positions * macs for _, positions, macs in CONV_LAYERS)
"""FLOPs per training sample: 2 per MAC, training = forward + backward (2x forward) = 3x forward."""


def topk_flops_per_row(d: int, n: int, k: int) -> int:
    """The FLOPs per row that every implementation must do: the encoder's forward matmul, 2 x d x n.

    Everything else (the encoder's backward, the decoder) can be done sparsely, touching
    only the k active latents (a few x 2 x k x d); a dense implementation does up to
    three times this in the encoder alone. The percentage of the ceiling therefore
    reads: how close the whole step comes to running this one product at full speed.
    """
    return 2 * d * n


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def shown(path: Path) -> str:
    """`path` relative to the checkout where it is inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def tail(text: str, chars: int = 3000) -> str:
    return text[-chars:]


# ---------------------------------------------------------------- environments


def run_quiet(cmd: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def build_env(name: str, env: Env, skip_install: bool) -> dict:
    """Create or refresh `env`; return {"python": path} or {"error": why}, plus what is installed."""
    python = env.path / "bin" / "python"
    if skip_install:
        return {"python": str(python)} if python.exists() else {"error": f"{python} missing (--skip-install)"}
    if env.requirements is None:  # the project's .venv, as the Makefile builds it
        stamp = env.path / ".installed"
        inputs = (ROOT / "pyproject.toml", CONSTRAINTS)
        fresh = stamp.exists() and all(stamp.stat().st_mtime >= p.stat().st_mtime for p in inputs)
        steps = [
            [sys.executable, "-m", "venv", str(env.path)],
            [str(python), "-m", "pip", "install", "--quiet", "-c", str(CONSTRAINTS), "-e", ".[test]"],
        ]
        digest = None
    else:
        if not env.requirements.exists():
            return {"error": f"{shown(env.requirements)} does not exist"}
        stamp = env.path / ".requirements-sha256"
        digest = hashlib.sha256(
            env.requirements.read_bytes() + CONSTRAINTS.read_bytes() + platform.python_version().encode()
        ).hexdigest()
        fresh = stamp.exists() and stamp.read_text().strip() == digest
        steps = [
            [sys.executable, "-m", "venv", str(env.path)],
            [str(python), "-m", "pip", "install", "--quiet", "-c", str(CONSTRAINTS), "-r", str(env.requirements)],
        ]
    if not fresh:
        log(f"environment {name}: installing into {shown(env.path)} (minutes the first time)")
        start = time.perf_counter()
        for cmd in steps:
            done = run_quiet(cmd)
            if done.returncode != 0:
                log(f"environment {name}: FAILED ({' '.join(cmd[-2:])})")
                return {"error": f"`{' '.join(cmd)}` exited {done.returncode}:\n{tail(done.stdout + done.stderr)}"}
        stamp.write_text(digest + "\n" if digest else "")
        log(f"environment {name}: ready in {time.perf_counter() - start:.0f} s")
    return {"python": str(python)}


class Envs:
    """Each environment built at most once per run, on first use."""

    def __init__(self, skip_install: bool) -> None:
        self.skip_install = skip_install
        self.info: dict[str, dict] = {}

    def python(self, name: str) -> tuple[str | None, str | None]:
        if name not in self.info:
            info = build_env(name, ENVS[name], self.skip_install)
            if "python" in info:
                py = info["python"]
                info["python_version"] = run_quiet([py, "-c", "import platform; print(platform.python_version())"]).stdout.strip()
                info["freeze"] = run_quiet([py, "-m", "pip", "freeze", "--all"]).stdout.split()
            self.info[name] = info
        info = self.info[name]
        return info.get("python"), info.get("error")


# ---------------------------------------------------------------- running workers


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def run_worker(python: str, worker: str, config: dict, timeout: float) -> dict:
    """Run one worker in a fresh process; the record holds its result, or why it failed, and the load around it."""
    threads = str(config.get("threads", 1))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONUNBUFFERED": "1"}  # fmt: skip
    record = {"worker": worker, "config": config, "load_before": loadavg()}
    with tempfile.TemporaryDirectory(prefix="speed-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [python, str(HERE / worker), "--config", json.dumps(config), "--out", str(out)]
        start = time.perf_counter()
        try:
            done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
            returncode, stdout, stderr = done.returncode, done.stdout, done.stderr
        except subprocess.TimeoutExpired as e:
            returncode = "timeout"
            stdout = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout or ""
            stderr = (e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr or "") + (
                f"\n[suite] killed after {timeout:.0f} s"
            )
        record["wall_s"] = time.perf_counter() - start
        record["load_after"] = loadavg()
        result = None
        if returncode == 0:
            try:
                result = json.loads(out.read_text())
            except (OSError, ValueError) as e:
                stderr += f"\n[suite] exited 0 but its result could not be read: {e}"
    if result is None:
        record.update(status="failed", returncode=returncode, error=tail(stderr), stdout_tail=tail(stdout, 1000))
    elif "skipped" in result:
        record.update(status="skipped", reason=result["skipped"], result=result)
    else:
        record.update(status="ok", result=result)
    return record


def rotated(items: tuple, r: int) -> list:
    r %= len(items)
    return list(items[r:] + items[:r])


@dataclass
class Suite:
    args: argparse.Namespace
    envs: Envs
    data: dict
    """What speed.json will hold."""
    save: object
    """Called after every worker, so that an interrupted run keeps what it measured."""

    def contend(self, section: str, contenders: tuple[Contender, ...], rounds: list[dict]) -> None:
        """Run every contender once per round (rounds[r] = that round's config changes), the order rotated."""
        runs = self.data[section]["runs"]
        total, i = len(contenders) * len(rounds), 0
        for r, round_config in enumerate(rounds):
            for c in rotated(contenders, r):
                i += 1
                config = {**self.data[section]["config"], **round_config, **c.overrides}
                python, error = self.envs.python(c.env)
                base = {"contender": c.name, "round": r + 1, "env": c.env}
                if error:
                    runs.append({**base, "status": "failed", "error": f"environment {c.env}: {error}", "config": config})
                    log(f"[{section} {i}/{total}] {c.name}: environment failed")
                    continue
                if not (HERE / c.worker).exists():
                    runs.append({**base, "status": "failed", "error": f"{c.worker} does not exist", "config": config})
                    log(f"[{section} {i}/{total}] {c.name}: {c.worker} does not exist")
                    continue
                log(f"[{section} {i}/{total}] round {r + 1}: {c.name} ({c.worker}, seed {config.get('seed')}) ...")
                record = {**base, **run_worker(python, c.worker, config, self.args.timeout)}
                runs.append(record)
                log(f"[{section} {i}/{total}] {c.name}: {describe(section, record)}")
                self.save()


def describe(section: str, record: dict) -> str:
    if record["status"] == "failed":
        last = record["error"].strip().splitlines()[-1:] or [""]
        return f"FAILED ({record['returncode']}) after {record['wall_s']:.0f} s: {last[0][:200]}"
    if record["status"] == "skipped":
        return f"skipped: {record['reason']}"
    res = record["result"]
    if section == "conv":
        return (f"{record['wall_s']:.0f} s, {res['steady_samples_per_s']:,.0f} samples/s, "
                f"test MSE {res['test_mse']:.5f}")  # fmt: skip
    if section == "topk":
        return f"{record['wall_s']:.0f} s, {res['rows_per_s']:,.0f} rows/s, FVU {res['fvu']:.4f}"
    return f"float32 {res['float32_gflops']:.0f} GFLOP/s, bfloat16 {res['bfloat16_gflops']:.0f} GFLOP/s"


def measure_ceiling(suite: Suite, when: str) -> None:
    python, error = suite.envs.python("sparseae")
    config = {"threads": suite.args.threads, **({"repeats": 2} if suite.args.quick else {})}
    log(f"ceiling ({when}) ...")
    if error:
        record = {"status": "failed", "error": f"environment sparseae: {error}", "config": config}
    else:
        record = run_worker(python, "ceiling.py", config, suite.args.timeout)
        log(f"ceiling ({when}): {describe('ceiling', record)}")
    suite.data["ceiling"][when] = record
    suite.save()


def make_topk_data(suite: Suite) -> dict | None:
    cfg = suite.data["topk"]["config"]
    # A fresh batch for every step (steps count the warm-up); as many atoms in the dictionary as the SAE has latents.
    rows = cfg["steps"] * cfg["batch_size"]
    test_rows = suite.data["topk"]["test_rows"]
    data_cfg = {"d_in": cfg["d_in"], "n_atoms": cfg["n_latents"], "train_rows": rows, "test_rows": test_rows, "seed": 0}
    python, error = suite.envs.python("sparseae")
    if error:
        suite.data["topk"]["data"] = {"status": "failed", "error": error}
        return None
    log(f"topk data: {data_cfg['train_rows']:,} + {data_cfg['test_rows']:,} rows of d {cfg['d_in']} ...")
    record = run_worker(python, "topk_data.py", data_cfg, suite.args.timeout)
    suite.data["topk"]["data"] = record
    if record["status"] != "ok":
        log(f"topk data FAILED: {record.get('error', '')[-300:]}")
        return None
    log(f"topk data: {'reused' if record['result']['cached'] else 'written'} {Path(record['result']['train']).parent}")
    return record["result"]


# ---------------------------------------------------------------- summaries and the markdown


def ok_runs(section: dict, name: str) -> list[dict]:
    return [r for r in section["runs"] if r["contender"] == name and r["status"] == "ok"]


def mean(values: list[float]) -> float | None:
    return statistics.mean(values) if values else None


def span(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{statistics.mean(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def paired_ratios(section: dict, ours: str, ref: str, key: str) -> list[float]:
    """ours / ref within each round: the comparison least touched by drifts in the machine's load."""
    by_round = {}
    for name in (ours, ref):
        for r in ok_runs(section, name):
            by_round.setdefault(r["round"], {})[name] = r["result"][key]
    return [v[ours] / v[ref] for v in by_round.values() if ours in v and ref in v and v[ref]]


def ratio_text(section: dict, ours: str, ref: str, key: str) -> tuple[float | None, str]:
    a, b = mean(values(section, ours, key)), mean(values(section, ref, key))
    if a is None or not b:
        return None, "-"
    paired = paired_ratios(section, ours, ref, key)
    extra = f" (per round {min(paired):.2f}-{max(paired):.2f})" if len(paired) > 1 else ""
    return a / b, f"{a / b:.2f}x{extra}"


def values(section: dict, name: str, key: str) -> list[float]:
    return [r["result"][key] for r in ok_runs(section, name) if r["result"].get(key) is not None]


def ceiling_gflops(data: dict, precision: str) -> float | None:
    """The best of the start and end measurements: what the machine can sustain."""
    found = [r["result"][f"{precision}_gflops"] for r in data.get("ceiling", {}).values() if r.get("status") == "ok"]
    return max(found) if found else None


def percent(rate: float | None, flops: float, ceiling: float | None) -> str:
    if rate is None or not ceiling:
        return "-"
    return f"{100 * rate * flops / (ceiling * 1e9):.1f}%"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def targets(data: dict) -> list[str]:
    lines = []
    conv = data.get("conv")
    if conv:
        for name in CONV_OURS:
            ratio, text = ratio_text(conv, name, CONV_REFERENCE, "steady_samples_per_s")
            ours, ref = mean(values(conv, name, "test_mse")), mean(values(conv, CONV_REFERENCE, "test_mse"))
            ok = None if ratio is None or ours is None or ref is None else ratio >= 2 and ours <= ref
            mse = f"; mean test MSE {ours:.5f} vs {ref:.5f}" if ours is not None and ref is not None else ""
            lines.append(f"| conv: {name} >= 2x Keras samples/s, mean test MSE <= Keras's | {text}{mse} | {verdict(ok)} |")
    topk = data.get("topk")
    if topk:
        for name in TOPK_OURS:
            peer = faster_peer(topk, TOPK_PEERS_ANY)
            if peer and peer not in TOPK_PEERS:
                ratio, text = ratio_text(topk, name, peer, "rows_per_s")
                lines.append(f"| (for information) {name} vs the faster peer in any precision ({peer}) | {text} | - |")
        peer = faster_peer(topk)
        for name in TOPK_OURS:
            ratio, text = ratio_text(topk, name, peer, "rows_per_s") if peer else (None, "no peer result")
            ours, ref = mean(values(topk, name, "fvu")), mean(values(topk, peer, "fvu")) if peer else None
            ok = None if ratio is None or ours is None or ref is None else ratio >= 2 and ours <= ref
            fvu = f"; FVU {ours:.4f} vs {ref:.4f}" if ours is not None and ref is not None else ""
            lines.append(f"| topk: {name} >= 2x the faster peer ({peer or '-'}) rows/s, FVU <= its | {text}{fvu} | "
                         f"{verdict(ok)} |")  # fmt: skip
    if not lines:
        return []
    return ["## Targets", "", "| target | measured | result |", "| --- | --- | --- |", *lines, ""]


def faster_peer(topk: dict, peers: tuple[str, ...] = TOPK_PEERS) -> str | None:
    rates = {p: mean(values(topk, p, "rows_per_s")) for p in peers}
    rates = {p: v for p, v in rates.items() if v is not None}
    return max(rates, key=rates.get) if rates else None


def version_of(section: dict, name: str) -> str:
    found = {str(r["result"].get("version", "?")) for r in ok_runs(section, name)}
    return ", ".join(sorted(found)) or "-"


def ceiling_md(data: dict) -> list[str]:
    records = data.get("ceiling", {})
    if not records:
        return []
    lines = ["## The machine's ceiling", "",
             "Sustained matmul GFLOP/s in PyTorch (`ceiling.py`), best of several repeats; the percentages below "
             "divide by the best of the start and end figures for the precision.", "",
             "| when | matmul | float32 GFLOP/s | bfloat16 GFLOP/s |", "| --- | --- | --- | --- |"]  # fmt: skip
    for when, record in records.items():
        if record.get("status") != "ok":
            lines.append(f"| {when} | failed | - | - |")
            continue
        for shape, rates in record["result"]["shapes"].items():
            lines.append(f"| {when} | {shape} | {rates['float32']:.1f} | {rates['bfloat16']:.1f} |")
    first = next((r["result"] for r in records.values() if r.get("status") == "ok"), None)
    if first:
        lines += ["", f"CPU flags: {', '.join(first['flags']) or 'none of interest'}; torch's CPU capability "
                  f"{first.get('cpu_capability', '?')}."]  # fmt: skip
    return [*lines, ""]


def conv_md(data: dict) -> list[str]:
    conv = data.get("conv")
    if not conv:
        return []
    cfg, ceiling = conv["config"], ceiling_gflops(data, "float32")
    limit = f", the first {cfg['train_limit']:,} training digits" if cfg.get("train_limit") else ""
    lines = [
        "## Conv MNIST autoencoder (the Keras blog model)", "",
        f"{cfg['epochs']} epoch(s) per run{limit}, batch {cfg['batch_size']}, Adam {cfg['lr']}, L1 {cfg['l1']}, "
        f"{cfg['threads']} threads; seeds {', '.join(str(s) for s in conv['seeds'])}, one per round, contenders "
        f"rotated. Steady samples/s: the median over epochs 2 and later of one run (epoch 1 when there is only "
        f"one), the training pass only; figures are the mean (min-max) over seeds. Test MSE after the last "
        f"epoch, over the 10,000 test digits. Load average before/after: {conv['load_before']} / "
        f"{conv.get('load_after', '-')}.", "",
        "| contender | version | runs | steady samples/s | epoch 1 samples/s | test MSE | % of float32 ceiling "
        f"| vs {CONV_REFERENCE} | peak RSS MB |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for c in conv["contenders"]:
        name = c["name"]
        runs = ok_runs(conv, name)
        rate = values(conv, name, "steady_samples_per_s")
        first = [r["result"]["epochs"][0]["samples_per_s"] for r in runs]
        _, ratio = ratio_text(conv, name, CONV_REFERENCE, "steady_samples_per_s")
        lines.append(
            f"| {name} | {version_of(conv, name)} | {len(runs)}/{len(conv['seeds'])} | {span(rate, ',.0f')} | "
            f"{span(first, ',.0f')} | {span(values(conv, name, 'test_mse'), '.5f')} | "
            f"{percent(mean(rate), CONV_FLOPS, ceiling)} | {ratio} | {span(values(conv, name, 'peak_rss_mb'), ',.0f')} |"
        )
    lines += ["", f"FLOPs per training sample: {CONV_FLOPS / 1e6:.1f} M = 3 (forward + backward) x 2 x "
              f"{CONV_FLOPS // 6:,} forward multiply-accumulates; pooling, activations and the optimizer not counted.",
              "", "| layer | positions (output; input for a transposed conv) | MACs per position | forward MACs |",
              "| --- | --- | --- | --- |"]  # fmt: skip
    lines += [f"| {name} | {pos:,} | {macs:,} | {pos * macs:,} |" for name, pos, macs in CONV_LAYERS]
    return [*lines, ""]


def topk_md(data: dict) -> list[str]:
    topk = data.get("topk")
    if not topk:
        return []
    cfg = topk["config"]
    flops = topk_flops_per_row(cfg["d_in"], cfg["n_latents"], cfg["k"])
    peer = faster_peer(topk)
    source = topk.get("data", {}).get("result", {})
    lines = [
        "## TopK sparse autoencoder", "",
        f"d_in {cfg['d_in']}, {cfg['n_latents']:,} latents, k {cfg['k']}, batch {cfg['batch_size']:,}, "
        f"{cfg['steps']} steps of which the first {cfg['warmup']} are not timed, lr {cfg['lr']}, {cfg['threads']} threads, "
        f"{len(topk['rounds'])} rounds (model seed = round - 1), contenders rotated. Data: `topk_data.py`, "
        f"sparse sums of a fixed random dictionary ({source.get('params', {}).get('active', '?')} of "
        f"{cfg['n_latents']:,} unit-norm atoms per row, exponential magnitudes, 5% noise), "
        f"FVU on its {topk['test_rows']:,} test rows. Figures: mean (min-max) over rounds. Load average "
        f"before/after: {topk['load_before']} / {topk.get('load_after', '-')}.", "",
        f"| contender | version | runs | rows/s | median step ms | FVU | dead fraction | L0 | % of its precision's "
        f"ceiling | vs {peer or 'the faster peer'} | peak RSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for c in topk["contenders"]:
        name, precision = c["name"], c["overrides"].get("precision", "float32")
        runs = ok_runs(topk, name)
        skipped = [r for r in topk["runs"] if r["contender"] == name and r["status"] == "skipped"]
        rate = values(topk, name, "rows_per_s")
        steps = [1000 * statistics.median(r["result"]["step_s"]) for r in runs if r["result"].get("step_s")]
        _, ratio = ratio_text(topk, name, peer, "rows_per_s") if peer else (None, "-")
        note = f" (skipped: {skipped[0]['reason']})" if skipped and not runs else ""
        lines.append(
            f"| {name}{note} | {version_of(topk, name)} | {len(runs)}/{len(topk['rounds'])} | {span(rate, ',.0f')} | "
            f"{span(steps, ',.0f')} | {span(values(topk, name, 'fvu'), '.4f')} | "
            f"{span(values(topk, name, 'dead_fraction'), '.3f')} | {span(values(topk, name, 'l0'), '.1f')} | "
            f"{percent(mean(rate), flops, ceiling_gflops(data, precision))} | {ratio} | "
            f"{span(values(topk, name, 'peak_rss_mb'), ',.0f')} |"
        )
    lines += ["", f"FLOPs per row: the encoder's forward matmul, 2 x d_in x n_latents = {flops / 1e6:.1f} MFLOP, the one "
              f"dense product every implementation must do (the encoder's backward and the decoder can touch only "
              f"the k active latents; a dense implementation does up to 3x this in the encoder alone). The "
              f"percentage of the ceiling is how close the whole step comes to running just that product at the "
              f"machine's sustained matmul speed in the contender's precision."]  # fmt: skip
    return [*lines, ""]


def failures_md(data: dict) -> list[str]:
    lines, seen = [], set()
    failed = [("topk data", "-", data.get("topk", {}).get("data", {}))]
    failed += [(f"{s} / {r['contender']}", r.get("round"), r) for s in ("conv", "topk") for r in data.get(s, {}).get("runs", [])]
    failed += [(f"ceiling ({when})", "-", r) for when, r in data.get("ceiling", {}).items()]
    for what, round_, r in failed:
        if r.get("status") != "failed":
            continue
        error = "\n".join(r["error"].strip().splitlines()[-8:])
        if (what, error) in seen:  # the same environment error in every round
            continue
        seen.add((what, error))
        lines += [f"- {what}, round {round_}:", "", "  ```", *("  " + line for line in error.splitlines()), "  ```", ""]
    return ["## Failures", "", *lines] if lines else []


def markdown(data: dict) -> str:
    m = data["machine"]
    lines = [
        "# Speed: sparseae against its peers", "",
        f"Written by `{data['command']}` on {data['date']}; {m['cpu']}, {m['threads']} threads of "
        f"{m['cores']} cores, Python {m['python']}, torch {m.get('torch', '?')}, commit {m['git']}. "
        "Every raw figure, with each environment's packages, is in the .json beside this file.", "",
    ]  # fmt: skip
    for part in (targets, ceiling_md, conv_md, topk_md, failures_md):
        lines += part(data)
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def machine(threads: int) -> dict:
    """The machine a run measures on: CPU, cores, threads used, Python, platform, git state, load before the run."""
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": threads, "python": platform.python_version(),
            "platform": platform.platform(), "git": git_state(), "load_before": loadavg()}  # fmt: skip


def git_state() -> str:
    head = run_quiet(["git", "rev-parse", "--short", "HEAD"]).stdout.strip() or "?"
    dirty = run_quiet(["git", "status", "--porcelain", "--untracked-files=no"]).stdout.strip()
    return head + (" (with uncommitted changes)" if dirty else "")


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")  # .gitignore has benchmarks/results/*.tmp
    tmp.write_text(text)
    tmp.replace(path)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings to test the plumbing; writes speed-quick.{json,md}")  # fmt: skip
    parser.add_argument("--only", default=",".join(COMPARISONS), help="comma-separated subset of conv,topk,ceiling")
    parser.add_argument("--rounds", type=int, help="rounds (conv: seeds 0..N-1); default 3, 1 with --quick")
    parser.add_argument("--epochs", type=int, help="conv epochs per run; default 3, 1 with --quick")
    parser.add_argument("--steps", type=int, help="topk steps, warm-up included; default 40, 5 with --quick")
    parser.add_argument("--warmup", type=int, help="topk warm-up steps; default 3, 1 with --quick")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="default: every core")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before a worker is killed")
    parser.add_argument("--skip-install", action="store_true", help="use the environments as they are")
    parser.add_argument("--render", action="store_true", help="only rewrite speed.md from speed.json (no runs)")
    args = parser.parse_args()
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(COMPARISONS))
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)}; choose from {', '.join(COMPARISONS)}")
    args.only = only
    quick = args.quick
    args.rounds = args.rounds or (1 if quick else 3)
    args.epochs = args.epochs or (1 if quick else 3)
    args.steps = args.steps or (5 if quick else 40)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 3)
    return args


def main() -> None:
    args = parse_args()
    json_path = RESULTS / ("speed-quick.json" if args.quick else "speed.json")
    md_path = json_path.with_suffix(".md")
    data = json.loads(json_path.read_text()) if json_path.exists() else {}
    if args.render:
        write_atomic(md_path, markdown(data))
        print(md_path.read_text())
        return
    for section in args.only:  # --only replaces just these comparisons
        data.pop(section, None)
    data["ceiling"] = {}
    envs = Envs(args.skip_install)
    data.update(
        command=" ".join(["python", "benchmarks/speed/suite.py", *sys.argv[1:]]),
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        machine=machine(args.threads),
        envs=data.get("envs", {}),
    )

    def save() -> None:
        data["envs"].update(envs.info)
        torch = [line for info in envs.info.values() for line in info.get("freeze", []) if line.startswith("torch==")]
        if torch:
            data["machine"]["torch"] = torch[0].split("==", 1)[1]
        RESULTS.mkdir(parents=True, exist_ok=True)
        write_atomic(json_path, json.dumps(data, indent=1) + "\n")
        write_atomic(md_path, markdown(data))

    suite = Suite(args, envs, data, save)
    log(f"speed suite: {', '.join(args.only)}; {args.threads} threads; results to {json_path}")
    if data["machine"]["load_before"] and data["machine"]["load_before"][0] > 0.5:
        log(f"note: load average {data['machine']['load_before']}: other jobs are on the cores; figures will be noisy")
    measure_ceiling(suite, "start")
    if "conv" in args.only:
        seeds = list(range(args.rounds))
        config = {"epochs": args.epochs, "batch_size": 128, "lr": 1e-3, "l1": 1e-4, "threads": args.threads,
                  "mnist": str(MNIST), **({"train_limit": 6000} if args.quick else {})}  # fmt: skip
        data["conv"] = {"config": config, "seeds": seeds, "contenders": [vars(c) for c in CONV], "runs": [],
                        "load_before": loadavg(), "flops_per_sample": CONV_FLOPS}  # fmt: skip
        suite.contend("conv", CONV, [{"seed": s} for s in seeds])
        data["conv"]["load_after"] = loadavg()
        save()
    if "topk" in args.only:
        config = ({"d_in": 64, "n_latents": 1024, "k": 32, "batch_size": 512} if args.quick
                  else {"d_in": 768, "n_latents": 16_384, "k": 32, "batch_size": 4096})  # fmt: skip
        config.update(steps=args.steps, warmup=args.warmup, lr=5e-4, seed=0, threads=args.threads, precision="float32")
        rounds = list(range(args.rounds))
        data["topk"] = {"config": config, "rounds": rounds, "contenders": [vars(c) for c in TOPK], "runs": [],
                        "test_rows": 1024 if args.quick else 8192, "load_before": loadavg(),
                        "flops_per_row": topk_flops_per_row(config["d_in"], config["n_latents"], config["k"])}  # fmt: skip
        made = make_topk_data(suite)
        if made:
            config.update(train=made["train"], test=made["test"])
            suite.contend("topk", TOPK, [{"seed": r} for r in rounds])
        data["topk"]["load_after"] = loadavg()
        save()
    measure_ceiling(suite, "end")
    data["machine"]["load_after"] = loadavg()
    save()
    print(md_path.read_text())


if __name__ == "__main__":
    main()

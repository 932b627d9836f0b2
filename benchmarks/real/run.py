"""The real-activation benchmark: TopK SAEs on all-MiniLM-L6-v2's residual stream over the Python docs (issue 13).

    python benchmarks/real/run.py [--quick] [--settings 3:32,3:16,3:64,5:32] [--long]
                                  [--sparsify-lrs default,1e-3,2e-3,4e-3] [--saelens-lrs default,1e-3]
                                  [--sparseae-variant JSON ...]

Data: ``collect.py`` (run in the project's .venv) writes 262,144 training and
16,384 held-out rows (other documents) of ``hidden_states[L]`` per layer.
Contenders, each a fresh process, one at a time, their order rotated from
setting to setting so that the machine's noise hits all alike:

- ``sparseae defaults``: ``topk_sparseae_defaults.py``, ``sparseae.train`` with the
  dense preset and its TrainConfig defaults (only batch size, steps and seed set),
  so the benchmark follows sparseae's defaults as they change; ``--sparseae-variant``
  adds a contender with overrides (``{"train": {...}, "model": {...}, "sparsity": {...}}``).
- ``sparsify`` and ``sae-lens``: the speed suite's workers (``benchmarks/speed/topk_*.py``,
  each library's own training step, constant learning rate, float32), each at a
  small grid of learning rates, ``default`` being the library's own default for this
  dictionary size; the best learning rate (lowest held-out FVU) is the one compared.

Every contender sees the same training rows in the same order (``train`` reshuffles
them per epoch for sparseae, its own data order), 6,144 latents (16 x 384), batch
4,096, 256 steps (4 epochs of the training rows; ``--long``: 2,048 steps, 32 epochs).
Reported: held-out FVU, dead fraction (no firing on the whole held-out set), L0,
rows/s of the training steps, and FVU at equal wall-clock: each peer's held-out
FVU, read off its FVU-against-training-seconds curve (every 16 steps, on the first
4,096 held-out rows, evaluation untimed; linear between points) at the time
sparseae took for its whole run (``sparseae.train`` less its evaluations, so
initialisation and data shuffling count against it). A peer trains at a constant
rate, so its curve at T is exactly what a run with a T-second budget would give.

Writes ``benchmarks/results/real.{json,md}`` (``real-long.*`` with --long; --quick
writes to ``benchmarks/.cache/real/``); runs already in the JSON for the same
setting, contender and steps are kept and not run again (``--fresh`` to redo them; each old
result stays until its new one is in).
Standard library only: any python3 runs it; environments as the speed suite builds them.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
sys.path.insert(0, str(BENCH / "speed"))
import suite  # noqa: E402 - benchmarks/speed/suite.py: environments, workers, logging (standard library only)

D_IN, N_LATENTS, BATCH = 384, 6144, 4096
SHORT_STEPS, LONG_STEPS = 256, 2048
DEFAULT_SETTINGS = "3:32,3:16,3:64,5:32"
TARGET_FVU_RATIO, TARGET_DEAD, TARGET_SPEED = 0.95, 0.01, 2.0
SAELENS_DEFAULT_LR = 3e-4
"""sae_lens LanguageModelSAERunnerConfig.lr (6.54.12); SAETrainerConfig itself has no default."""


def sparsify_default_lr(n_latents: int) -> float:
    """sparsify.Trainer's rate when TrainConfig.lr is None (1.3.3): 2e-4 / sqrt(num_latents / 2**14)."""
    return 2e-4 / math.sqrt(n_latents / 2**14)


@dataclass(frozen=True)
class Contender(suite.Contender):
    """The speed suite's contender, its worker a path under benchmarks/ (the speed workers are in speed/), and its rate."""

    lr: str | None = None
    """'default' or the rate as given, for the peers; None for sparseae (its own defaults)."""

    @property
    def peer(self) -> str | None:
        return None if self.env == "sparseae" else self.name.split(" lr ")[0]


def parse_lrs(text: str, default: float) -> list[tuple[str, float]]:
    out = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        out.append(("default", default) if item == "default" else (item, float(item)))
    return out


def contenders(args: argparse.Namespace) -> list[Contender]:
    """sparseae first, then the peers' learning rates interleaved (sparsify, sae-lens, sparsify, ...)."""
    out = [Contender("sparseae defaults", "real/topk_sparseae_defaults.py", "sparseae")]
    for i, variant in enumerate(args.sparseae_variant):
        out.append(Contender(f"sparseae variant {i + 1}", "real/topk_sparseae_defaults.py", "sparseae",
                             {"variant": json.loads(variant)}))  # fmt: skip
    peers = [
        [Contender(f"sparsify lr {label}", "speed/topk_sparsify.py", "sparsify", {"lr": lr}, label)
         for label, lr in parse_lrs(args.sparsify_lrs, sparsify_default_lr(N_LATENTS))],
        [Contender(f"sae-lens lr {label}", "speed/topk_saelens.py", "saelens", {"lr": lr}, label)
         for label, lr in parse_lrs(args.saelens_lrs, SAELENS_DEFAULT_LR)],
    ]  # fmt: skip
    for i in range(max(map(len, peers))):
        out += [group[i] for group in peers if i < len(group)]
    return out


def collect(envs: suite.Envs, quick: bool, layers: list[int]) -> dict:
    """Run collect.py in the project's .venv; its result (paths and provenance)."""
    python, error = envs.python("sparseae")
    if error:
        raise SystemExit(f"the project's .venv: {error}")
    out = BENCH / ".cache" / "real" / "collect-result.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [python, str(HERE / "collect.py"), "--layers", ",".join(map(str, layers)), "--out", str(out)]
    if quick:
        cmd += ["--train-rows", "8192", "--test-rows", "2048"]
    suite.log("data: " + " ".join(cmd[1:]))
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"collect.py failed:\n{suite.tail(done.stdout + done.stderr)}")
    return json.loads(out.read_text())


def src_state() -> dict:
    """Which sparseae was measured: HEAD, and a hash of any uncommitted change under src/ (others edit it meanwhile)."""
    diff = suite.run_quiet(["git", "diff", "HEAD", "--", "src"]).stdout
    return {"head": suite.run_quiet(["git", "rev-parse", "--short", "HEAD"]).stdout.strip(),
            "src_diff_sha256": hashlib.sha256(diff.encode()).hexdigest()[:12] if diff else None}  # fmt: skip


# ---------------------------------------------------------------- reading results


def ok_run(setting: dict, name: str) -> dict | None:
    """The contender's last good run record (its ``result`` and where it was run)."""
    runs = [r for r in setting["runs"] if r["contender"] == name and r["status"] == "ok"]
    return runs[-1] if runs else None


def ok(setting: dict, name: str) -> dict | None:
    run = ok_run(setting, name)
    return run["result"] if run else None


def at_time(curve: list[dict], t: float) -> tuple[float | None, str]:
    """FVU at training seconds t, linear between curve points; the last point if the run ended before t."""
    if not curve or t < curve[0]["train_s"]:
        return None, "before its first point"
    for a, b in zip(curve, curve[1:], strict=False):
        if a["train_s"] <= t <= b["train_s"]:
            w = (t - a["train_s"]) / (b["train_s"] - a["train_s"])
            return a["fvu"] + w * (b["fvu"] - a["fvu"]), f"step {a['step'] + w * (b['step'] - a['step']):.0f}"
    return curve[-1]["fvu"], f"finished (step {curve[-1]['step']}) before T"


def best(setting: dict, peer: str) -> tuple[str, dict] | None:
    """The peer's contender with the lowest held-out FVU, and its result."""
    found = [(c["name"], ok(setting, c["name"])) for c in setting["contenders"] if c["name"].startswith(peer + " lr ")]
    found = [(n, r) for n, r in found if r]
    return min(found, key=lambda nr: nr[1]["fvu"]) if found else None


def summary(setting: dict) -> dict:
    """The targets of one setting: ratios and PASS/MISS (None where a contender is missing)."""
    ours = ok(setting, "sparseae defaults")
    peers = {p: best(setting, p) for p in ("sparsify", "sae-lens")}
    found = {p: b for p, b in peers.items() if b}
    out: dict = {"best": {p: {"contender": n, "fvu": r["fvu"]} for p, (n, r) in found.items()}}
    if ours and found:
        peer_fvu = min(r["fvu"] for _, r in found.values())
        ratio = ours["fvu"] / peer_fvu
        out["tokens"] = {"ratio": ratio, "dead": ours["dead_fraction"],
                         "pass": ratio <= TARGET_FVU_RATIO and ours["dead_fraction"] <= TARGET_DEAD}  # fmt: skip
        t = ours["train_s"]
        clock = {}
        for p in found:
            values = []
            for c in setting["contenders"]:
                r = ok(setting, c["name"]) if c["name"].startswith(p + " lr ") else None
                if r and r.get("curve"):
                    fvu, where = at_time(r["curve"], t)
                    if fvu is not None:
                        values.append({"contender": c["name"], "fvu": fvu, "where": where})
            if values:
                clock[p] = min(values, key=lambda v: v["fvu"])
        out["clock"] = {"T_s": t, "ours": ours["fvu_curve_rows"], "peers": clock,
                        "pass": bool(clock) and all(ours["fvu_curve_rows"] < v["fvu"] for v in clock.values())}  # fmt: skip
    # Speed is compared within one invocation of this script (the machine's load and threads alike);
    # otherwise with sparsify's latest invocation at the same thread count (its earlier ones may have
    # shared the machine with other work).
    ours_run = ok_run(setting, "sparseae defaults")
    sparsify = [r for c in setting["contenders"] if c["name"].startswith("sparsify lr ")
                for r in [ok_run(setting, c["name"])] if r]  # fmt: skip
    if ours_run:
        same = [r for r in sparsify if r.get("invocation") and r.get("invocation") == ours_run.get("invocation")]
        where = "same run"
        if not same:
            threads = [r for r in sparsify if r["result"]["threads"] == ours["threads"]]
            latest = max((r.get("invocation") or "" for r in threads), default="")
            same = [r for r in threads if (r.get("invocation") or "") == latest]
            where = f"sparsify's latest run at {ours['threads']} threads, {latest or 'date not recorded'}"
        if same:
            ratio = ours["rows_per_s"] / statistics.median(r["result"]["rows_per_s"] for r in same)
            out["speed"] = {"ratio": ratio, "pass": ratio >= TARGET_SPEED, "where": where,
                            "against": [r["contender"] for r in same]}  # fmt: skip
    return out


# ---------------------------------------------------------------- markdown


def verdict(ok_: bool | None) -> str:
    return "-" if ok_ is None else ("PASS" if ok_ else "MISS")


def lr_of(result: dict) -> str:
    """sparseae's rate: its config's lr, and what a long run trains at (``lr_long_run``) where that is lower."""
    lr = result.get("train_config", {}).get("lr") if "train_config" in result else None
    if not lr:
        return "-"
    run = result.get("lr_run", lr)
    return f"{lr:g}" if run == lr else f"{lr:g} x {run / lr:.3f} = {run:.3g} (long run)"


def setting_md(name: str, setting: dict) -> list[str]:
    s = summary(setting)
    t = s.get("clock", {}).get("T_s")
    lines = [f"### {name}", "",
             f"Layer {setting['layer']} (`hidden_states[{setting['layer']}]`), k {setting['config']['k']}, "
             f"{setting['config']['steps']} steps. T (sparseae's whole training time) = "
             + (f"{t:.1f} s." if t else "not measured."), "",
             "| contender | lr | held-out FVU | dead % | L0 | rows/s (steps) | train s | "
             f"FVU at T (first {setting['config']['curve_rows']:,} rows) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for c in setting["contenders"]:
        runs = [r for r in setting["runs"] if r["contender"] == c["name"]]
        if not runs:
            lines.append(f"| {c['name']} | | not run | | | | | |")
            continue
        rec = ([r for r in runs if r["status"] == "ok"] or runs)[-1]  # a failed rerun does not hide a result
        if rec["status"] != "ok":
            lines.append(f"| {c['name']} | | {rec['status']}: {rec.get('error', '')[-120:]!r} | | | | | |".replace("\n", " "))
            continue
        r = rec["result"]
        lr = lr_of(r) if c["env"] == "sparseae" else f"{rec['config']['lr']:.3g}" + (" (default)" if c["lr"] == "default" else "")
        train_s = r.get("train_s", sum(r["step_s"]))
        if c["env"] == "sparseae":
            at_t = f"{r['fvu_curve_rows']:.4f} (its end)"
        else:
            fvu, where = at_time(r.get("curve", []), t) if t else (None, "")
            at_t = f"{fvu:.4f} ({where})" if fvu is not None else "-"
        lines.append(f"| {c['name']} | {lr} | {r['fvu']:.4f} | {100 * r['dead_fraction']:.2f} | {r['l0']:.1f} | "
                     f"{r['rows_per_s']:,.0f} | {train_s:.1f} | {at_t} |")  # fmt: skip
    lines.append("")
    return lines


def targets_md(data: dict) -> list[str]:
    lines = ["| setting | equal tokens: sparseae FVU / best peer's (<= 0.95), dead <= 1% | equal wall-clock: sparseae FVU "
             "< every peer's at T | speed: rows/s vs sparsify float32 (>= 2x) |", "| --- | --- | --- | --- |"]  # fmt: skip
    for name, setting in data.get("settings", {}).items():
        s = summary(setting)
        tok = s.get("tokens")
        tok_text = (f"{tok['ratio']:.3f} (vs {min(s['best'].values(), key=lambda b: b['fvu'])['contender']}), "
                    f"dead {100 * tok['dead']:.2f}% {verdict(tok['pass'])}") if tok else "-"  # fmt: skip
        clk = s.get("clock")
        clk_text = (f"{clk['ours']:.4f} vs " + ", ".join(f"{v['contender']} {v['fvu']:.4f}" for v in clk["peers"].values())
                    + f" {verdict(clk['pass'])}") if clk else "-"  # fmt: skip
        spd = s.get("speed")
        spd_text = f"{spd['ratio']:.2f}x ({spd['where']}: {', '.join(spd['against'])}) {verdict(spd['pass'])}" if spd else "-"
        lines.append(f"| {name} | {tok_text} | {clk_text} | {spd_text} |")
    return lines + [""]


def markdown(data: dict) -> str:
    m = data["machine"]
    meta = data.get("data", {}).get("meta", {})
    lines = ["# Real activations: sparseae against sparsify and SAELens", "",
             f"Written by `{data['command']}` on {data['date']}; {m['cpu']}, {m['threads']} threads of {m['cores']} "
             f"cores, Python {m['python']}, commit {m['git']}; load average before {m['load_before']}, after "
             f"{m.get('load_after')}. Shared machine: figures are noisy; compare ratios within a setting. "
             "Every raw figure, with each environment's packages, is in the .json beside this file.", "",
             "## Targets (issue 13)", ""]  # fmt: skip
    lines += targets_md(data)
    model = meta.get("model", {})
    batch = next(iter(data.get("settings", {}).values()), {}).get("config", {}).get("batch_size", BATCH)
    lines += ["## Data", "",
              f"{model.get('name')} ({model.get('package')}, model.safetensors sha256 "
              f"{str(model.get('model.safetensors sha256'))[:16]}...) over the Python documentation sources "
              f"({meta.get('text', {}).get('debian_package')}, `{meta.get('text', {}).get('root')}`): "
              f"{len(meta.get('documents', {}).get('train', []))} training and "
              f"{len(meta.get('documents', {}).get('test', []))} held-out documents (whole files). Rows: "
              f"{meta.get('rows')}. Arrays: " + ", ".join(f"{k} {v['shape'][0]:,} x {v['shape'][1]}"
                                                         for k, v in meta.get("arrays", {}).items()) + ".", "",
              "## Settings", "",
              f"{N_LATENTS:,} latents, batch {batch:,}, float32, {m['threads']} threads; the peers at a constant "
              "learning rate (their default: sparsify's 2e-4/sqrt(n/2^14), SAELens's 3e-4), AuxK dead windows at "
              f"{data.get('peer_dead_window') or 'each library default'}; sparseae at its defaults, which these runs "
              "were:", ""]  # fmt: skip
    shown = False
    for name, setting in data.get("settings", {}).items():
        r = ok(setting, "sparseae defaults")
        if r and not shown:
            lines += [f"- model: `{json.dumps(r['model_config'])}`", f"- train: `{json.dumps(r['train_config'])}`", ""]
            shown = True
        lines += setting_md(name, setting)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: 8 steps, one setting, one lr each, small data")
    p.add_argument("--long", action="store_true", help=f"{LONG_STEPS} steps instead of {SHORT_STEPS}; real-long.*")
    p.add_argument("--steps", type=int, help="override the number of steps")
    p.add_argument("--settings", default=None, help=f"LAYER:K,... (default {DEFAULT_SETTINGS}; --quick 3:32)")
    p.add_argument("--sparsify-lrs", default="default,1e-3,2e-3,4e-3", help="'default' is sparsify's own rate for 6,144 latents")
    p.add_argument("--saelens-lrs", default="default,1e-3", help="'default' is SAELens's 3e-4")
    p.add_argument("--sparseae-variant", action="append", default=[],
                   help='an extra sparseae contender: JSON {"train": {...}, "model": {...}, "sparsity": {...}}')  # fmt: skip
    p.add_argument("--only", default=None, help="comma-separated contender names to run (the others are kept/skipped)")
    p.add_argument("--peer-dead-window", type=int, default=None,
                   help="the peers' AuxK dead window in steps (default: each library's own, as a user gets it)")  # fmt: skip
    p.add_argument("--curve-every", type=int, help="steps between FVU curve points (default 16; long 64; quick 2)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--skip-install", action="store_true", help="use the environments as they are")
    p.add_argument("--fresh", action="store_true", help="run again what the JSON already holds")
    p.add_argument("--render", action="store_true", help="only rewrite the .md from the .json")
    args = p.parse_args()
    if args.quick:
        args.sparsify_lrs, args.saelens_lrs = args.sparsify_lrs.split(",")[0], args.saelens_lrs.split(",")[0]
    args.settings = args.settings or ("3:32" if args.quick else DEFAULT_SETTINGS)
    args.steps = args.steps or (8 if args.quick else LONG_STEPS if args.long else SHORT_STEPS)
    args.curve_every = args.curve_every or (2 if args.quick else 64 if args.long else 16)
    return args


def main() -> None:
    args = parse_args()
    stem = "real-quick" if args.quick else "real-long" if args.long else "real"
    folder = BENCH / ".cache" / "real" if args.quick else RESULTS
    json_path, md_path = folder / f"{stem}.json", folder / f"{stem}.md"
    data = json.loads(json_path.read_text()) if json_path.exists() else {}
    if args.render:
        suite.write_atomic(md_path, markdown(data))
        print(md_path.read_text())
        return
    settings = [tuple(int(v) for v in s.split(":")) for s in args.settings.split(",")]
    envs = suite.Envs(args.skip_install)
    made = collect(envs, args.quick, sorted({3, 5} | {layer for layer, _ in settings}))  # one cache for the usual layers
    data.update(
        command=" ".join(["python", "benchmarks/real/run.py", *sys.argv[1:]]),
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        machine=suite.machine(args.threads),
        data={k: v for k, v in made.items() if k != "cached"},
        peer_dead_window=args.peer_dead_window,
        envs=data.get("envs", {}),
    )
    data.setdefault("settings", {})

    def save() -> None:
        data["envs"].update(envs.info)
        data["machine"]["load_after"] = suite.loadavg()
        folder.mkdir(parents=True, exist_ok=True)
        suite.write_atomic(json_path, json.dumps(data, indent=1) + "\n")
        suite.write_atomic(md_path, markdown(data))

    all_contenders = contenders(args)
    only = set(args.only.split(",")) if args.only else None
    for index, (layer, k) in enumerate(settings):
        name = f"layer {layer}, k {k}"
        config = {"train": made["layers"][str(layer)]["train"], "test": made["layers"][str(layer)]["test"], "d_in": D_IN,
                  "n_latents": N_LATENTS, "k": k, "batch_size": 512 if args.quick else BATCH, "steps": args.steps,
                  "warmup": 1 if args.quick else 3, "seed": 0, "threads": args.threads, "precision": "float32",
                  "cycle": True, "curve_every": args.curve_every, "curve_rows": 4096,
                  "dead_window_steps": args.peer_dead_window}  # fmt: skip
        setting = data["settings"].setdefault(name, {"layer": layer, "runs": []})
        if setting.get("config", {}).get("steps") != args.steps:
            setting["runs"] = []  # another run length: start this setting again
        setting.update(config=config, contenders=[asdict(c) for c in all_contenders])
        # --fresh: run again; each old result is kept until its new one is in (an interrupted run loses nothing).
        redo = {c.name for c in all_contenders if not only or c.name in only} if args.fresh else set()
        order = suite.rotated(tuple(all_contenders), index)
        for i, c in enumerate(order, 1):
            if only and c.name not in only or (ok(setting, c.name) and c.name not in redo):
                continue
            python, error = envs.python(c.env)
            base = {"contender": c.name, "env": c.env, "src": src_state() if c.env == "sparseae" else None,
                    "invocation": data["date"]}  # fmt: skip
            if error:
                setting["runs"].append({**base, "status": "failed", "error": f"environment {c.env}: {error}"})
                continue
            run_config = {**config, **c.overrides}
            if c.env == "sparseae":  # the dead window is sparseae's own default unless a variant sets it
                run_config.pop("dead_window_steps")
            suite.log(f"[{name} {i}/{len(order)}] {c.name} ...")
            record = {**base, **suite.run_worker(python, str(BENCH / c.worker), run_config, args.timeout)}
            if record["status"] == "ok":  # replaces this contender's earlier runs; a failure leaves them
                setting["runs"] = [r for r in setting["runs"] if r["contender"] != c.name]
            setting["runs"].append(record)
            if record["status"] == "ok":
                r = record["result"]
                suite.log(f"[{name} {i}/{len(order)}] {c.name}: FVU {r['fvu']:.4f}, dead {100 * r['dead_fraction']:.2f}%, "
                          f"L0 {r['l0']:.1f}, {r['rows_per_s']:,.0f} rows/s")  # fmt: skip
            else:
                suite.log(f"[{name} {i}/{len(order)}] {c.name}: {record['status']} {suite.tail(record.get('error', ''), 400)}")
            save()
    save()
    print(md_path.read_text())


if __name__ == "__main__":
    main()

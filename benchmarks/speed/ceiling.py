"""Speed worker: the machine's ceiling, sustained float32 and bfloat16 matmul FLOP/s in PyTorch.

Times square-ish matmuls (the TopK encoder's 4096x768 @ 768x16384, and
2048^3) with the given number of threads, best of several repeats after a
warm-up, and reads the CPU's name and its relevant flags (avx512_bf16, AMX)
from /proc/cpuinfo. The other speed figures are quoted as fractions of this.
Runs in any environment with torch; ``suite.py`` starts it at the start and
the end of a run:

    .venv/bin/python benchmarks/speed/ceiling.py --config '{"threads": 2}' --out /tmp/ceiling.json
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from protocol import read_config, write_result

DEFAULTS = {"threads": 2, "repeats": 5, "shapes": [[4096, 768, 16384], [2048, 2048, 2048]]}
FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "amx_int8")


def cpu_info() -> tuple[str, list[str]]:
    """The CPU's model name and which of FLAGS it has."""
    name, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return name, [f for f in FLAGS if f in flags]


def best_gflops(m: int, k: int, n: int, dtype: torch.dtype, repeats: int) -> float:
    """Best sustained GFLOP/s of (m, k) @ (k, n) in `dtype` over `repeats` timed runs after one warm-up."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(dtype)
    b = torch.randn(k, n, generator=gen).to(dtype)
    out = torch.empty(m, n, dtype=dtype)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best / 1e9


def main() -> None:
    cfg, out = read_config(__doc__.splitlines()[0], DEFAULTS)
    torch.set_num_threads(int(cfg["threads"]))
    shapes = {}
    for m, k, n in cfg["shapes"]:
        shapes[f"{m}x{k} @ {k}x{n}"] = {
            name: best_gflops(m, k, n, dtype, int(cfg["repeats"]))
            for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16))
        }
    cpu, flags = cpu_info()
    result = {
        "float32_gflops": max(s["float32"] for s in shapes.values()),
        "bfloat16_gflops": max(s["bfloat16"] for s in shapes.values()),
        "shapes": shapes,
        "cpu": cpu,
        "flags": flags,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "repeats": int(cfg["repeats"]),
    }
    write_result(out, result)


if __name__ == "__main__":
    main()

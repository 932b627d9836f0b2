"""What every benchmark records about the machine it ran on (standard library only at import: no torch until asked)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what the platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def lm_machine(load_before: tuple[float, ...], **extra: object) -> dict:
    """The machine record of the language-model benchmarks: CPU, cores, ``extra`` (e.g. torch's threads),
    the versions of torch, transformers and Python, and the load average before the measurement
    (``load_before``) and now. The machine is shared: a load above the core count means other processes ran too."""
    import torch  # noqa: PLC0415 - this module imports nothing beyond the standard library itself
    import transformers  # noqa: PLC0415

    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        **extra,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }

"""Numbers for the benchmark's JSON: percentiles, distributions, rounding; and the machine a run measured."""
from __future__ import annotations

import math
import os
import platform
from pathlib import Path

import numpy as np


def num(x, nd: int = 4):
    """A float for JSON: ``nd`` decimals, or ``nd`` significant digits when smaller; None for inf/NaN."""
    if x is None:
        return None
    x = float(x)
    if not math.isfinite(x):
        return None
    if x == 0:
        return 0.0
    return round(x, max(nd, nd - int(math.floor(math.log10(abs(x)))) - 1))


def pct(values, qs=(50, 95, 99)) -> dict:
    """{"p50": ..., "p95": ..., ...} of ``values`` (None each when there are none)."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {f"p{q}": None for q in qs}
    return {f"p{q}": num(np.percentile(a, q)) for q in qs}


def dist(values, qs=(50, 95, 99)) -> dict:
    """Percentiles, mean and count of ``values``."""
    a = np.asarray(values, dtype=np.float64)
    return {**pct(a, qs), "mean": num(a.mean()) if a.size else None, "n": int(a.size)}


def machine() -> dict:
    """CPU model, cores, Python, numpy and onnxruntime versions, platform, which feature code ran (the compiled
    kernel or the numpy reference), load average now."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    from .features import KERNEL_AVAILABLE

    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "onnxruntime": onnxruntime.__version__, "platform": platform.platform(terse=True),
            "feature_kernel": "compiled" if KERNEL_AVAILABLE else "numpy"}
    if hasattr(os, "getloadavg"):
        info["loadavg_start"] = loadavg()
    return info


def loadavg() -> list[float] | None:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None

"""What the benchmark measures in fresh processes: cold start, peak RSS, and concurrent streams on the server.

Each child runs the live engine with the benchmark's own engine settings, passed as the command-line words
:func:`realtime.options.engine_argv` renders from the ``EngineConfig``. Children run in the current folder
with this copy of the ``realtime`` package first on their path.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .bench_stats import num
from .options import engine_argv

#: modules the live engine must never load
HEAVY_MODULES = ("tensorflow", "keras", "librosa", "numba", "xgboost", "torch")


def child_env() -> dict[str, str]:
    """The environment of a child process, with the folder holding this ``realtime`` package on its path."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


def _time_process(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=child_env())
    return time.perf_counter() - t0


def _time_in_process(code: str, *argv: str) -> float:
    """Seconds ``code`` takes inside a fresh interpreter (start-up and teardown left out)."""
    wrapped = f"import time; _t0 = time.perf_counter()\n{code}\nprint(time.perf_counter() - _t0)"
    out = subprocess.run([sys.executable, "-c", wrapped, *argv], check=True, capture_output=True, text=True,
                         env=child_env())
    return float(out.stdout.strip().splitlines()[-1])


def cold_start(path: Path, config, models: Path | None, runs: int, timeout: float = 120.0) -> dict:
    """Spawn ``python -m realtime stream --source file:PATH --format jsonl``; seconds to its first line and
    to its first line carrying an estimate (median over ``runs``). Also the parts: a bare interpreter, and
    the time an interpreter takes to import the engine and load the bundle (without its start-up and exit)."""
    cmd = [sys.executable, "-m", "realtime", "stream", "--source", f"file:{path}", "--format", "jsonl",
           *engine_argv(config, models)]
    load = ("import sys; from realtime.engine import Engine; from realtime.bundle import Bundle; "
            "Engine(Bundle.load(*sys.argv[1:]))")
    firsts, estimates, bare, loaded = [], [], [], []
    for _ in range(runs):
        bare.append(_time_process([sys.executable, "-c", "pass"]))
        loaded.append(_time_in_process(load, *([str(models)] if models else [])))
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
        first = est = None
        try:
            for line in proc.stdout:
                now = time.perf_counter() - t0
                if first is None:
                    first = now
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if ev.get("p_female") is not None:
                    est = now
                    break
                if now > timeout:
                    break
        finally:
            proc.kill()
            _, err = proc.communicate()
        if est is None:
            raise RuntimeError(f"cold start: no estimate from {' '.join(cmd)}: {err.strip()[-500:]}")
        firsts.append(first)
        estimates.append(est)
    return {"first_line_s": num(np.median(firsts)), "first_estimate_s": num(np.median(estimates)),
            "interpreter_s": num(np.median(bare)), "import_engine_and_load_bundle_s": num(np.median(loaded)),
            "runs": runs, "command": " ".join(shlex.quote(c) for c in cmd[1:])}


def rss_child(argv: list[str]) -> int:
    """Child of :func:`peak_rss`: run the live engine over files; print peak RSS and heavy imports as JSON.

    ``argv``: engine options (as for ``python -m realtime classify``), then ``--``, then audio files.
    """
    import argparse
    import resource

    from .options import add_engine_arguments, make_engine
    from .sources import FileSource

    split = argv.index("--")
    p = argparse.ArgumentParser()
    add_engine_arguments(p)
    args = p.parse_args(argv[:split])
    rss_start = vm_hwm_mb()
    engine = make_engine(args)
    events = 0
    for path in argv[split + 1:]:
        engine.reset()
        with FileSource(path) as src:
            events += sum(1 for _ in engine.run(src))
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    hwm = vm_hwm_mb()
    loaded = sorted(m for m in HEAVY_MODULES if m in sys.modules)
    print(json.dumps({"peak_rss_mb": hwm if hwm is not None else maxrss, "ru_maxrss_mb": maxrss,
                      "rss_before_engine_mb": rss_start, "events": events,
                      "heavy_modules_loaded": loaded, "tensorflow_loaded": "tensorflow" in sys.modules}))
    return 0


def vm_hwm_mb() -> float | None:
    """Peak RSS of this process image (Linux VmHWM). ``getrusage``'s ru_maxrss survives fork + exec, so a
    child of a big parent (this benchmark, after TensorFlow) reports the parent's peak there."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss(files: list[Path], config, models: Path | None) -> dict:
    """Peak RSS of a fresh process running the live engine over ``files`` (see :func:`rss_child`)."""
    code = "import sys; from realtime.bench_probes import rss_child; sys.exit(rss_child(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, *engine_argv(config, models), "--", *map(str, files)],
                          capture_output=True, text=True, timeout=600, env=child_env())
    if proc.returncode != 0:
        raise RuntimeError(f"peak RSS child failed: {proc.stderr.strip()[-800:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["files"] = len(files)
    return out


def concurrent_figure(streams: str, config, models: Path | None, seconds: float = 15.0) -> dict:
    """The measured counterpart of ``streams_per_core``: ``python -m realtime loadtest --spawn`` at each
    concurrency in ``streams``; per run, streams held in real time and the server's CPU cores, and the best
    held-streams-per-server-core of the runs where every stream held."""
    server_args = " ".join(shlex.quote(a) for a in engine_argv(config, models))
    cmd = [sys.executable, "-m", "realtime", "loadtest", "--spawn", "--streams", streams, "--seconds", str(seconds),
           "--json", "--server-args", server_args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=child_env())
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    held = [r["streams"] / r["server_cpu_cores"] for r in rows
            if r.get("held") == r.get("streams") and r.get("server_cpu_cores")]
    return {"available": True, "command": " ".join(shlex.quote(c) for c in cmd[1:]), "runs": rows,
            "streams_per_core_measured": num(max(held)) if held else None,
            "note": "streams / server CPU cores in runs where every stream held (lag below loadtest's --max-lag); "
                    "clients share the machine"}

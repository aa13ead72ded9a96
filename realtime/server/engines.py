"""The compute side of the server: one shared bundle for every connection's Engine, BLAS on one thread
(the parallelism comes from the streams), and a warm-up inference before the first client."""
from __future__ import annotations

import time
from typing import Any, Callable

__all__ = ["engine_factory", "limit_blas_threads", "warm_up"]


def engine_factory(load_bundle: Callable[[], Any] | None = None, engine_config=None):
    """``engine_factory()`` for a StreamServer: one Bundle loaded now, shared by every Engine it makes
    (its onnxruntime sessions are thread-safe and ``predict_one`` keeps its buffers per thread)."""
    from ..bundle import Bundle
    from ..engine import Engine

    bundle = (load_bundle or Bundle.load)()
    return lambda: Engine(bundle, engine_config)


def limit_blas_threads(n: int = 1) -> bool:
    """Make OpenBLAS (used by numpy/scipy in the feature extractor) single-threaded, process-wide.

    The server gets its parallelism from running many streams at once; a BLAS call that fans one small
    matrix product out over every core only adds contention. ``import realtime`` already defaults
    OPENBLAS_NUM_THREADS to 1, but that is too late when numpy was imported first (an application
    embedding the server), hence this runtime call. On a loaded machine OpenBLAS's default threads cost
    several times the CPU per hop of one thread (on an idle machine the two are equal). Uses threadpoolctl
    when installed, else calls OpenBLAS's own setter in every loaded OpenBLAS library. Returns True if a
    limit was applied.
    """
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n, user_api="blas")
        return True
    except ImportError:
        pass
    import ctypes

    done = False
    try:
        libs = {line.split()[-1] for line in open("/proc/self/maps") if "openblas" in line.lower()}
    except OSError:
        return False
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in ("openblas_set_num_threads", "scipy_openblas_set_num_threads", "openblas_set_num_threads64_",
                     "scipy_openblas_set_num_threads64_"):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn(int(n))
                done = True
                break
    return done


def warm_up(engine) -> float:
    """One pass of 2.5 s of noise through a fresh engine, so the first client does not pay the first
    (slow) inference. Returns the seconds it took."""
    import numpy as np

    from ..audio import SAMPLE_RATE

    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    t = np.arange(int(2.5 * SAMPLE_RATE)) / SAMPLE_RATE
    x = (0.1 * np.sin(2 * np.pi * 150 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
         + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    engine.push(x)
    engine.reset()
    return time.perf_counter() - t0

"""``python -m realtime bench --batch 1,8,32,128``: what one window's features and models cost when many
streams' windows are classified together (:mod:`realtime.batching`), against one window at a time
(``Engine.classify``, what a stream alone pays), on real utterances.

For each batch size N, N streams (the utterances, each stream starting at its own one and its own offset)
are pushed one hop at a time, in rounds; a round's windows (at most one per stream) are classified once one
at a time and once as a batch, by twin engines on the same audio, the two orders alternating from round
to round so that load from other jobs hits both alike. Per window: wall and process-CPU ms of each way,
the speedup, and each stage's share (features, speech check, each model); and whether every stream's
events came out identical both ways (they must: only the timings may differ).
"""
from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from .audio import SAMPLE_RATE
from .bench_stats import num

__all__ = ["batch_figures", "parse_sizes", "report_lines"]

TIMINGS = ("compute_ms", "stages_ms")


def parse_sizes(text: str) -> list[int]:
    """``"1,8,32"`` -> [1, 8, 32]; anything but positive integers is a ValueError that says so."""
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--batch wants batch sizes like 1,8,32,128, got {text!r}") from None
    if not sizes or any(n < 1 or n > 4096 for n in sizes):
        raise ValueError(f"--batch sizes must be 1..4096, got {text!r}")
    return sizes


class _Timed:
    """A classifier of window lists (``realtime.batching.Classifier``) that adds up its own time."""

    def __init__(self, classify):
        self.classify = classify
        self.wall_ms = self.cpu_ms = 0.0
        self.windows = 0
        self.stages: dict[str, float] = defaultdict(float)

    def __call__(self, jobs):
        c0, t0 = time.process_time(), time.perf_counter()
        out = self.classify(jobs)
        self.wall_ms += (time.perf_counter() - t0) * 1000
        self.cpu_ms += (time.process_time() - c0) * 1000
        self.windows += len(jobs)
        for r in out:
            for stage, ms in r.stages.items():
                self.stages[stage] += ms
        return out

    def figures(self) -> dict:
        w = max(self.windows, 1)
        return {"wall_ms": num(self.wall_ms / w), "cpu_ms": num(self.cpu_ms / w),
                "stages_ms": {k: num(v / w) for k, v in self.stages.items()}}


def _one_at_a_time(jobs):
    return [job.engine.classify(job) for job in jobs]


def _fields(events) -> list[dict]:
    return [{k: v for k, v in e.to_dict().items() if k not in TIMINGS} for e in events]


def _one_size(make_engine, tracks: list[np.ndarray], n: int, rounds: int) -> dict:
    from .batching import classify_many, run_many

    hop = round(make_engine().config.hop_s * SAMPLE_RATE)
    alone, together = _Timed(_one_at_a_time), _Timed(classify_many)
    pairs = [(make_engine(), make_engine()) for _ in range(n)]
    streams = [tracks[k % len(tracks)][(k // len(tracks)) * 3331 % SAMPLE_RATE:] for k in range(n)]
    identical = True
    for r in range(rounds):
        chunks = [s[r * hop:(r + 1) * hop] for s in streams]
        ways = [(0, alone), (1, together)] if r % 2 == 0 else [(1, together), (0, alone)]
        out = {}
        for side, classify in ways:
            out[side] = run_many([pair[side].push_steps(c) for pair, c in zip(pairs, chunks)], classify)
        identical &= all(not isinstance(a, Exception) and _fields(a) == _fields(b) for a, b in zip(out[0], out[1]))
    one, many = alone.figures(), together.figures()
    return {"size": n, "windows": together.windows, "one_at_a_time": one, "batched": many,
            "speedup_cpu": num(one["cpu_ms"] / many["cpu_ms"]) if many["cpu_ms"] else None,
            "speedup_wall": num(one["wall_ms"] / many["wall_ms"]) if many["wall_ms"] else None,
            "identical": bool(identical)}


def batch_figures(make_engine, audios: list[np.ndarray], sizes: list[int], rounds: int, log=print) -> dict:
    """The figures of every batch size: ``make_engine()`` makes one stream's Engine (all sharing one bundle),
    ``audios`` are 16 kHz utterances, ``rounds`` the hops pushed per stream."""
    from threadpoolctl import threadpool_limits

    tracks = [np.concatenate(audios[i:] + audios[:i]) for i in range(len(audios))]
    rows = []
    with threadpool_limits(1):
        _one_size(make_engine, tracks, max(sizes), 2)  # warm-up (onnxruntime's first runs of each shape)
        for n in sizes:
            log(f"bench --batch: {n} streams x {rounds} hops ...")
            rows.append(_one_size(make_engine, tracks, n, rounds))
    return {"batch": rows, "rounds": rounds}


def report_lines(result: dict) -> list[str]:
    """The text report: one line per batch size, then the stages of the largest."""
    lines = ["per window (features + speech check + 3 models), one at a time vs batched; process CPU ms "
             "(wall ms):"]
    for row in result["batch"]:
        one, many = row["one_at_a_time"], row["batched"]
        lines.append(f"  N={row['size']:4d}  {row['windows']:5d} windows  one at a time {one['cpu_ms']:.3f} "
                     f"({one['wall_ms']:.3f})  batched {many['cpu_ms']:.3f} ({many['wall_ms']:.3f})  "
                     f"x{row['speedup_cpu']:.2f} CPU  events identical: {'yes' if row['identical'] else 'NO'}")
    last = result["batch"][-1]
    for way in ("one_at_a_time", "batched"):
        st = last[way]["stages_ms"]
        lines.append(f"  stages at N={last['size']}, {way.replace('_', ' ')} (wall ms per window): "
                     + "  ".join(f"{k} {v:.3f}" for k, v in st.items()))
    return lines

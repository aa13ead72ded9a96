"""Many streams' windows classified together, each stream's events unchanged.

A server with hundreds of streams classifies hundreds of small windows; one at a time, the fixed cost of
each numpy and onnxruntime call is paid per window. Here the windows that many engines wait on go
through the features and the models as one batch:

    from realtime.batching import run_many
    results = run_many([engine.push_steps(chunk) for engine, chunk in pushes])  # events, or the exception

* :func:`run_many` runs many engines' steps (``Engine.push_steps`` / ``flush_steps``) to their end together:
  each round gathers the one window every unfinished stream waits on and classifies them with
  :func:`classify_many`, so each stream's windows go in order, one per round.
* :func:`classify_many` is ``Engine.classify`` for many windows: the fresh STFT frames of all of them in one
  ``features.extract_streams`` call, the speech check once on their stacked stats, the three models once on
  the windows that pass (``Bundle.predict_many``).

Every result equals what the window's own engine computes alone, to the bit, so every event field but
``compute_ms`` / ``stages_ms`` is what the stream's single-stream Engine gives (tests/test_batching.py checks
it on real speech). In a batch, a window's ``stages_ms`` are its share of the batch's time for each stage.
"""
from __future__ import annotations

import time
import traceback
from typing import Callable

import numpy as np

from .engine import Steps, WindowJob, WindowResult
from .events import Event
from .features import extract_streams

__all__ = ["Classifier", "classify_many", "run_many"]

#: classifies a list of windows of distinct engines (``classify_many``, or one at a time)
Classifier = Callable[[list[WindowJob]], list[WindowResult]]


def classify_many(jobs: list[WindowJob]) -> list[WindowResult]:
    """``Engine.classify`` of many streams' windows in one pass (one window per engine); in ``jobs`` order.
    Windows of engines with different bundles go in one pass per bundle."""
    groups: dict[int, list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(id(job.engine.bundle), []).append(i)
    results: list[WindowResult | None] = [None] * len(jobs)
    for rows in groups.values():
        for i, r in zip(rows, _classify_group([jobs[i] for i in rows])):
            results[i] = r
    return results


def _classify_group(jobs: list[WindowJob]) -> list[WindowResult]:
    bundle = jobs[0].engine.bundle
    n = len(jobs)
    t0 = time.perf_counter()
    feats = extract_streams([(j.engine.streaming, j.window, j.start) for j in jobs])
    stages = {"features": (time.perf_counter() - t0) * 1000 / n}
    stats = np.stack([s for s, _ in feats])
    p_speech: list[float | None] = [None] * n
    keep = list(range(n))
    if bundle.has_speech_model:
        t0 = time.perf_counter()
        p_speech = bundle.p_speech(stats).tolist()
        stages["speech_check"] = (time.perf_counter() - t0) * 1000 / n
        keep = [i for i in range(n) if p_speech[i] >= bundle.speech_threshold]  # as Engine.classify decides
    p_female: list[float | None] = [None] * n
    model_stages = {}
    if keep:
        if len(keep) == 1:  # one window: predict_one's buffers, bound to the sessions, cost less than a batch run
            p, _, model_ms = bundle.predict_one(*feats[keep[0]])
            ps = [p]
        else:
            ps, model_ms = bundle.predict_many(stats[keep], np.stack([feats[i][1] for i in keep]))
        for i, p in zip(keep, ps):
            p_female[i] = p
        model_stages = {name: ms / len(keep) for name, ms in model_ms.items()}
    return [WindowResult(stats_i, mfcc_i, p_speech[i], p_female[i],
                         {**stages, **model_stages} if p_female[i] is not None else dict(stages))
            for i, (stats_i, mfcc_i) in enumerate(feats)]


def _classify_each(jobs: list[WindowJob], classify: Classifier) -> list[WindowResult | Exception]:
    """``classify(jobs)``, or, if it fails, each window alone, so that a failing window fails only its stream.
    (A window classified again gives the same result: its extractor then reuses all the frames it shares.)"""
    try:
        return classify(jobs)
    except Exception:
        return [_detached(r) for r in map(_classify_one, jobs)]


def _classify_one(job: WindowJob) -> WindowResult | Exception:
    try:
        return job.engine.classify(job)
    except Exception as exc:
        return exc


def _advance(steps: Steps, value: WindowResult | None) -> tuple[WindowJob | None, list[Event] | Exception | None]:
    """Send ``value`` into ``steps`` (None starts them, as next() does): (the next window it waits on, None), or
    (None, its events or the exception that ended it)."""
    try:
        return steps.send(value), None
    except StopIteration as done:
        return None, done.value
    except Exception as exc:
        return None, exc


def _detached(r):
    """A returned exception without the frames of its traceback (nor of its causes'), which is kept as text,
    in a note (Python >= 3.11: ``traceback`` prints it). Kept, the frames would reach run_many's caller (a
    frame keeps its caller), up to the worker job whose result holds the exception: a reference cycle keeping
    the failed steps' frames, and their Engine, until a full garbage collection. Anything else: as it is."""
    if isinstance(r, BaseException) and r.__traceback__ is not None:
        if hasattr(r, "add_note"):
            where = "".join(traceback.format_tb(r.__traceback__)).rstrip()
            r.add_note(f"where it failed, in realtime.batching.run_many:\n{where}")
        seen, e = set(), r
        while e is not None and id(e) not in seen:
            seen.add(id(e))
            e.__traceback__ = None
            e = e.__cause__ or e.__context__
    return r


def run_many(steps: list[Steps], classify: Classifier = classify_many) -> list[list[Event] | Exception]:
    """Run many engines' steps to their end together (at most one of them per engine), classifying the
    windows they wait on in rounds (``classify``: :func:`classify_many`; the benchmark times others). Returns,
    in order, each one's events, or the exception that ended it (that stream only: the others go on)."""
    out: list[list[Event] | Exception | None] = [None] * len(steps)
    waiting: dict[int, WindowJob] = {}

    def advance(i: int, value: WindowResult | None) -> None:
        job, r = _advance(steps[i], value)
        out[i] = _detached(r)
        if job is not None:
            waiting[i] = job

    for i in range(len(steps)):
        advance(i, None)
    while waiting:
        rows = list(waiting)
        results = _classify_each([waiting.pop(i) for i in rows], classify)
        for i, r in zip(rows, results):
            if isinstance(r, Exception):
                out[i] = r
                steps[i].close()
            else:
                advance(i, r)
    return out

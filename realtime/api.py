"""The one-call Python API: ``classify`` (one verdict per recording) and ``segments`` (one row per turn).

    from realtime import classify, segments
    classify("talk.flac")                 # {'label': 'female', 'p_female': 0.97, 'speech_seconds': 12.3, ...}
    classify(x, 44100)                    # an array (float in [-1, 1] or int16, mono or (N, channels)) and its rate
    segments("dialogue.wav")              # [{'start': 0.0, 'end': 4.5, 'label': 'female', 'p_female': 0.96}, ...]

The model bundle is loaded once per process (lazily, thread-safe) and shared by every call;
``models=`` picks another bundle folder (or passes a loaded :class:`realtime.bundle.Bundle`).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from .audio import SAMPLE_RATE, AudioError
from .bundle import Bundle
from .engine import Engine, EngineConfig, file_decision, summarise
from .events import Event

__all__ = ["classify", "segments", "shared_bundle", "turns"]

_BUNDLES: dict[str, Bundle] = {}
_LOCK = threading.Lock()


def shared_bundle(models: str | Path | Bundle | None = None) -> Bundle:
    """The bundle in ``models`` (default: the shipped models/), loaded on first use and then shared."""
    if isinstance(models, Bundle):
        return models
    from .bundle import DEFAULT_MODELS_DIR

    key = str(Path(models if models is not None else DEFAULT_MODELS_DIR).resolve())
    with _LOCK:
        bundle = _BUNDLES.get(key)
        if bundle is None:
            bundle = _BUNDLES[key] = Bundle.load(key)
        return bundle


def _engine(models, config: EngineConfig | None) -> Engine:
    return Engine(shared_bundle(models), config)


def _events(engine: Engine, source, sample_rate) -> list[Event]:
    """Run a path, a file-like object or an array (with its rate) through the engine."""
    if isinstance(source, (str, os.PathLike)):
        if sample_rate is not None:
            raise ValueError("sample_rate is for arrays; a file says its own rate")
        return list(engine.run(source))
    if hasattr(source, "read"):  # a file-like object holding an encoded file (wav, flac, ogg, ...)
        import soundfile as sf

        try:
            x, rate = sf.read(source, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
            raise AudioError(f"cannot decode audio from {type(source).__name__} ({exc})") from exc
        if x.shape[0] == 0:
            raise AudioError("the file holds no audio samples")
        return list(engine.run(x, sample_rate=rate))
    if isinstance(source, np.ndarray) or isinstance(source, (list, tuple)):
        if sample_rate is None:
            raise ValueError("an array needs its sample_rate, e.g. classify(x, 16000)")
        return list(engine.run(np.asarray(source), sample_rate=sample_rate))
    raise TypeError(f"source must be a path, a file-like object or an array, got {type(source).__name__}")


def classify(source, sample_rate: float | None = None, *, models=None, config: EngineConfig | None = None) -> dict:
    """One verdict for a whole recording.

    ``source``: a path, a binary file-like object (any format soundfile reads), or an array (float in
    [-1, 1] or int16; mono or ``(N, channels)``) with its ``sample_rate``. Returns ``label`` (female | male |
    uncertain | no speech), ``p_female`` (null without windows), ``speech_seconds``, ``windows``,
    ``level_dbfs`` (median speech level) and ``warning`` (why the verdict may be missing or unreliable, or null).
    """
    engine = _engine(models, config)
    return summarise(_events(engine, source, sample_rate), engine)


def segments(source, sample_rate: float | None = None, *, models=None, config: EngineConfig | None = None,
             min_pause_s: float = 1.0, min_turn_windows: int = 3) -> list[dict]:
    """Speaker turns: ``[{start, end, label, p_female}, ...]`` in seconds, speech only, in time order.

    Speech is split at pauses of ``min_pause_s`` or more and, within speech, where the windows change
    side (female <-> male) and hold the new side for ``min_turn_windows`` windows (1.5 s of hops) -- a
    confident change of voice. Each turn's label and p come from its own windows (as :func:`classify`
    decides a file); a turn too short for a window is ``uncertain`` with ``p_female`` null.
    """
    engine = _engine(models, config)
    events = _events(engine, source, sample_rate)
    return turns(events, engine.bundle, hop_s=engine.config.hop_s, window_s=engine.window_samples / SAMPLE_RATE,
                 min_pause_s=min_pause_s, min_turn_windows=min_turn_windows)


def turns(events: list, bundle: Bundle, *, hop_s: float, window_s: float, min_pause_s: float = 1.0,
          min_turn_windows: int = 3) -> list[dict]:
    """Turns from a stream's events (see :func:`segments`)."""
    # 1. speech runs: hops that count as speech, bridged over pauses shorter than min_pause_s
    runs: list[list[tuple[float, float, float | None]]] = []  # per run: (hop start, hop end, window p)
    prev_t, gap = 0.0, 0.0
    for ev in events:
        start, end = prev_t, float(ev["t"])
        prev_t = end
        if not ev["speech"]:
            gap += end - start
            continue
        if not runs or gap >= min_pause_s - 1e-9:
            runs.append([])
        gap = 0.0
        runs[-1].append((start, end, ev["window_p_female"]))
    out = []
    for run in runs:
        for part in _split_at_voice_changes(run, bundle, min_turn_windows, window_s):
            label, p = file_decision([w for _, _, w in part], bundle)
            out.append({"start": round(part[0][0], 2), "end": round(part[-1][1], 2),
                        "label": "uncertain" if label == "no speech" else label,
                        "p_female": None if p is None else round(p, 4)})
    return out


def _side(p: float | None, bundle: Bundle) -> int:
    if p is None:
        return 0
    return 1 if p >= bundle.thresholds["female"] else -1 if p <= bundle.thresholds["male"] else 0


def _split_at_voice_changes(run: list, bundle: Bundle, min_windows: int, window_s: float) -> list[list]:
    """Cut a speech run where the windows' side flips and stays flipped for ``min_windows`` windows.

    A window covers the ``window_s`` of speech before its hop's end, so the first window of the new side
    ends about half a window after the change: the cut goes there, at a hop boundary."""
    wins = [(i, _side(w, bundle)) for i, (_, _, w) in enumerate(run) if w is not None]
    cuts, current = [], None
    for k, (i, side) in enumerate(wins):
        if side == 0:
            continue
        if current is None:
            current = side
            continue
        if side != current:
            following = [s for _, s in wins[k:k + min_windows]]
            if len(following) == min_windows and all(s == side for s in following):
                cut_t = run[i][1] - window_s / 2
                j = next((j for j in range(len(run)) if run[j][1] > cut_t), i)
                last = cuts[-1] if cuts else 0
                cuts.append(max(j, last + 1) if j <= i else i)
                current = side
    parts, begin = [], 0
    for c in cuts:
        if begin < c < len(run):
            parts.append(run[begin:c])
            begin = c
    parts.append(run[begin:])
    return [p for p in parts if p]

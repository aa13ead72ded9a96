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

from .audio import SAMPLE_RATE, as_mono_float, load_audio, resample
from .bundle import Bundle
from .engine import Engine, EngineConfig, file_decision, summarise
from .events import Event
from .logodds import sigmoid
from .voice import vad_speech

__all__ = ["classify", "engine_turns", "segments", "shared_bundle", "turns"]

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


def _decoded(source, sample_rate) -> tuple:
    """(what ``Engine.run`` takes, its rate) for a path (as it is), a file-like object (decoded) or an array."""
    if isinstance(source, (str, os.PathLike)):
        if sample_rate is not None:
            raise ValueError("sample_rate is for arrays; a file says its own rate")
        return source, SAMPLE_RATE
    if hasattr(source, "read"):  # a file-like object holding an encoded file (wav, flac, ogg, m4a, webm, ...)
        from .decode import read

        return read(source, name=f"audio from {type(source).__name__}")
    if isinstance(source, np.ndarray) or isinstance(source, (list, tuple)):
        if sample_rate is None:
            raise ValueError("an array needs its sample_rate, e.g. classify(x, 16000)")
        return np.asarray(source), sample_rate
    raise TypeError(f"source must be a path, a file-like object or an array, got {type(source).__name__}")


def _events(engine: Engine, source, sample_rate) -> list[Event]:
    """Run a path, a file-like object or an array (with its rate) through the engine."""
    src, rate = _decoded(source, sample_rate)
    return list(engine.run(src, sample_rate=rate))


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
    """Speaker turns: ``[{start, end, label, p_female, voice_p_female}, ...]`` in seconds, speech only, in
    time order.

    Speech is split at pauses of ``min_pause_s`` or more and, within speech, where the windows change
    side (female <-> male) and hold the new side for ``min_turn_windows`` windows (1.5 s of hops) -- a
    confident change of voice. Each turn is decided as :func:`classify` decides a file: its own windows and,
    with the voice opinion on, the voice opinion of the turn's own speech (``voice_p_female``; null for a turn
    with under 1 s of speech, or with the opinion off); a turn too short for a window is ``uncertain`` with
    ``p_female`` null.
    """
    src, rate = _decoded(source, sample_rate)
    return engine_turns(_engine(models, config), src, rate, min_pause_s=min_pause_s, min_turn_windows=min_turn_windows)


def engine_turns(engine: Engine, src, rate: float = SAMPLE_RATE, *, min_pause_s: float = 1.0,
                 min_turn_windows: int = 3) -> list[dict]:
    """:func:`segments` on a given engine: ``src`` a path or an array at ``rate`` (what ``Engine.run`` takes)."""
    events = list(engine.run(src, sample_rate=rate))
    audio = None
    if engine.voice is not None:  # the bundle has a voice opinion and the config wants it
        audio = load_audio(src) if isinstance(src, (str, os.PathLike)) else resample(as_mono_float(src), int(rate))
    return turns(events, engine.bundle, hop_s=engine.config.hop_s, window_s=engine.window_samples / SAMPLE_RATE,
                 min_pause_s=min_pause_s, min_turn_windows=min_turn_windows, audio=audio)


def turns(events: list, bundle: Bundle, *, hop_s: float, window_s: float, min_pause_s: float = 1.0,
          min_turn_windows: int = 3, audio: np.ndarray | None = None) -> list[dict]:
    """Turns from a stream's events (see :func:`segments`); ``audio``: the stream at 16 kHz mono, for each
    turn's voice opinion (None: none)."""
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
            start, end = part[0][0], part[-1][1]
            voice_logit = None
            if audio is not None:
                turn = audio[int(start * SAMPLE_RATE): int(np.ceil(end * SAMPLE_RATE))]
                voice_logit = bundle.voice_logit(vad_speech(turn))
            label, p = file_decision([w for _, _, w in part], bundle, voice_logit)
            out.append({"start": round(start, 2), "end": round(end, 2),
                        "label": "uncertain" if label == "no speech" else label,
                        "p_female": None if p is None else round(p, 4),
                        "voice_p_female": None if voice_logit is None else round(float(sigmoid(voice_logit)), 4)})
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

"""The live engine's per-hop cost and decision latency on real utterances, and the summary of a run.

* :func:`select_utterances`: labelled utterances of a LibriSpeech root (or a CSV manifest), alternating
  female / male readers;
* :func:`stream_utterance`: push one utterance a hop at a time, as a live source delivers it, timing each
  ``Engine.push`` (wall and process CPU) and counting the STFT frames computed afresh;
* :func:`decision_times`, :func:`first_estimate_breakdown`: from speech onset to the first estimate and to
  the first correct stable one, and what the first wait is made of;
* :func:`summarise`: per-hop and per-stage distributions, real-time factor, streams per core, and, where a
  comparison pipeline was timed beside the engine (see ``realtime.bench.Comparison``), its per-window cost
  and the speedup.
"""
from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .bench_stats import dist, num, pct

SPEAKERS_FILE = "SPEAKERS.TXT"
_GENDERS = {"f": "F", "female": "F", "m": "M", "male": "M"}


class Utterance(NamedTuple):
    path: Path
    utt_id: str
    gender: str  # 'F' or 'M'


def _gender(value: str, where: str) -> str:
    g = _GENDERS.get(value.strip().lower())
    if g is None:
        raise ValueError(f"{where}: gender must be F, M, female or male, got {value!r}")
    return g


def _librispeech(root: Path) -> list[Utterance]:
    """``<subset>/<reader>/<chapter>/*.flac`` under ``root`` (or under one subset folder whose parent holds
    SPEAKERS.TXT), labelled from SPEAKERS.TXT, by path; readers it does not list are left out."""
    if not (root / SPEAKERS_FILE).is_file() and (root.parent / SPEAKERS_FILE).is_file():
        files, root = root.glob("*/*/*.flac"), root.parent
    else:
        files = root.glob("*/*/*/*.flac")
    speakers_file = root / SPEAKERS_FILE
    if not speakers_file.is_file():
        raise ValueError(f"{root}: no {SPEAKERS_FILE}; --data wants a LibriSpeech root or a CSV manifest")
    speakers = {}
    for lineno, line in enumerate(speakers_file.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        fields = [f.strip() for f in line.split("|")]
        if line.lstrip().startswith(";") or len(fields) < 2:
            continue
        speakers[fields[0]] = _gender(fields[1], f"{speakers_file}:{lineno}")
    found = sorted((f for f in files if not f.relative_to(root).parts[0].startswith(".")), key=lambda f: f.parts)
    return [Utterance(f, f.stem, speakers[f.parent.parent.name]) for f in found if f.parent.parent.name in speakers]


def _manifest(path: Path) -> list[Utterance]:
    """A CSV with columns path,speaker,gender (paths relative to its folder), in file order."""
    out = []
    with path.open(newline="", encoding="utf-8") as fh:
        rows = csv.DictReader(fh)
        if not {"path", "gender"} <= set(rows.fieldnames or ()):
            raise ValueError(f"{path}: a manifest needs the columns path,speaker,gender")
        for lineno, row in enumerate(rows, 2):
            f = Path(row["path"].strip())
            f = f if f.is_absolute() else path.parent / f
            out.append(Utterance(f, f.stem, _gender(row["gender"], f"{path}:{lineno}")))
    return out


def select_utterances(data: Path, n: int) -> list[Utterance]:
    """``n`` utterances of a LibriSpeech root (or a CSV manifest), alternating female / male readers, by path."""
    data = Path(data)
    if data.is_dir():
        utts = _librispeech(data)
    elif data.suffix.lower() == ".csv" and data.is_file():
        utts = _manifest(data)
    else:
        raise ValueError(f"{data}: expected a LibriSpeech root (holding {SPEAKERS_FILE}) or a CSV manifest")
    by = {"F": [u for u in utts if u.gender == "F"], "M": [u for u in utts if u.gender == "M"]}
    out = []
    for i in range(max(len(by["F"]), len(by["M"]))):
        for g in ("F", "M"):
            if i < len(by[g]):
                out.append(by[g][i])
    return out[:n]


def spread_windows(audio: np.ndarray, k: int, n: int) -> list[np.ndarray]:
    """``k`` windows of ``n`` samples spread evenly over ``audio`` (a short one wrap-padded, repeated)."""
    from .features import fit_window

    if k <= 0:
        return []
    if len(audio) <= n:
        return [fit_window(audio, n)] * k
    return [audio[s:s + n] for s in np.linspace(0, len(audio) - n, k).astype(int)]


def speech_onset_s(audio: np.ndarray, engine) -> tuple[float | None, np.ndarray]:
    """Time of the first frame the engine's VAD settings call speech, and all frame decisions."""
    from .vad import VadGate

    gate = VadGate(engine.vad.aggressiveness, frame_ms=engine.vad.frame_ms, sample_rate=engine.vad.sample_rate)
    dec = gate.process(audio)
    idx = np.flatnonzero(dec)
    return (None if idx.size == 0 else idx[0] * gate.frame_seconds), dec


def stream_utterance(engine, audio: np.ndarray) -> list[dict]:
    """Push ``audio`` one hop at a time, as a live source delivers it. One record per hop: the event,
    the wall and process-CPU time (ms) of its ``push``, and the STFT frames the features computed afresh
    (``engine.extractor.definition.n_frames`` = a full window: the first windows of a voice are wrap-padded
    and cannot reuse frames)."""
    hop = int(round(engine.config.hop_s * 16000))
    engine.reset()
    sx = engine.streaming
    records = []
    for start in range(0, len(audio), hop):
        chunk = audio[start:start + hop]
        frames0 = sx.computed_frames
        c0, t0 = time.process_time(), time.perf_counter()
        out = engine.push(chunk)
        wall, cpu = (time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000
        for ev in out:
            records.append({"event": ev, "wall_ms": wall / len(out), "cpu_ms": cpu / len(out),
                            "new_frames": (sx.computed_frames - frames0) // len(out)})
    return records


def decision_times(events: list[dict], onset: float | None, truth: str | None) -> dict:
    """Seconds from speech onset to the first estimate and to the first correct stable estimate.

    An event at stream time ``t`` closes the hop that ends at ``t``; its estimate is available
    ``compute_ms`` after ``t``. ``None`` where there was no speech; ``inf`` where the label never settled on the truth.
    """
    out = {"first": None, "stable": None}
    if onset is None:
        return out
    avail = [e["t"] + e["compute_ms"] / 1000 - onset for e in events]
    first = next((i for i, e in enumerate(events) if e["p_female"] is not None), None)
    if first is None:
        return out
    out["first"] = avail[first]
    if truth is None:
        return out
    stable = None
    for i in range(len(events) - 1, -1, -1):
        label = events[i]["label"]
        if label == truth:
            stable = i
        elif label != "no speech":
            break
    out["stable"] = math.inf if stable is None else max(avail[stable], out["first"])
    return out


def first_estimate_breakdown(decisions: np.ndarray, onset: float, first_s: float | None, frame_s: float,
                             first_window_s: float) -> dict | None:
    """Split onset -> first estimate into the speech the engine waits for, pauses inside it, and the
    wait for the hop boundary (plus the hop speech rules)."""
    if first_s is None:
        return None
    speech = np.cumsum(decisions) * frame_s
    need = int(np.searchsorted(speech, first_window_s - 1e-9))
    if need >= len(speech):
        return None
    t_buffered = (need + 1) * frame_s
    return {"speech_needed": first_window_s, "pauses": t_buffered - onset - first_window_s,
            "hop_alignment": first_s - (t_buffered - onset)}


def utterance_record(u: Utterance, audio: np.ndarray, recs: list[dict], engine) -> dict:
    """Onset, first and stable estimate (and the first wait's parts) of one streamed utterance."""
    events = [r["event"] for r in recs]
    onset, dec = speech_onset_s(audio, engine)
    dt = decision_times(events, onset, {"F": "female", "M": "male"}.get(u.gender))
    brk = None if onset is None else first_estimate_breakdown(
        dec, onset, dt["first"], engine.vad.frame_seconds, engine.config.first_window_s)
    return {"utt": u.utt_id, "gender": u.gender, "duration_s": len(audio) / 16000, "onset_s": onset,
            "first_s": dt["first"], "stable_s": dt["stable"], "breakdown": brk,
            "compute_ms": float(sum(r["wall_ms"] for r in recs)), "hops": len(recs)}


def summarise(hops: list[dict], base_rows: list[dict], per_utt: list[dict], hop_s: float, n_frames: int) -> dict:
    """The figures of a run: ``hops`` from :func:`stream_utterance`, ``base_rows`` the comparison pipeline's
    per-window times (ms per part, ``total``, ``total_cpu``; none when it did not run), ``per_utt`` from
    :func:`utterance_record`."""
    events = [h["event"] for h in hops]
    wall = np.array([h["wall_ms"] for h in hops])
    cpu = np.array([h["cpu_ms"] for h in hops])
    classified = np.array([e["window_p_female"] is not None for e in events], dtype=bool)
    full = classified & (np.array([h["new_frames"] for h in hops]) >= n_frames)
    order: list[str] = []
    for e in events:
        order += [k for k in e["stages_ms"] if k not in order]
    order.sort(key=lambda k: k == "smoother")  # pipeline order: the smoother runs last, on every hop
    stages = {name: dist([e["stages_ms"][name] for e in events if name in e["stages_ms"]]) for name in order}
    # what push() spends outside the timed stages: VAD framing, speech buffer, window cut, ensemble arithmetic
    # (the bundle times only the three model runs), the event dict
    stages["other"] = dist([max(h["wall_ms"] - e["compute_ms"], 0.0) for h, e in zip(hops, events)])
    stages["total"] = dist([e["compute_ms"] for e in events])
    feats = np.array([e["stages_ms"].get("features", np.nan) for e in events])

    audio_s = sum(u["duration_s"] for u in per_utt)
    per_hop = dist(wall)
    per_window = dist(wall[classified])
    res = {
        "per_hop_ms": per_hop,
        "per_window_ms": per_window,
        "stages_ms": stages,
        "cpu_ms": {"per_hop": dist(cpu), "per_window": dist(cpu[classified])},
        "windows": {
            "incremental": {"n": int((classified & ~full).sum()), "push_ms": pct(wall[classified & ~full]),
                            "features_ms": pct(feats[classified & ~full])},
            "full": {"n": int(full.sum()), "push_ms": pct(wall[full]), "features_ms": pct(feats[full]),
                     "note": "windows that computed all their frames: the first windows of each voice (less than "
                             "2 s of speech, wrap-padded, so no frames to reuse)"},
        },
        "rtf": num(wall.sum() / 1000 / audio_s),
        "rtf_cpu": num(cpu.sum() / 1000 / audio_s),
        "streams_per_core": num(hop_s * 1000 / per_hop["p50"]),
        "streams_per_core_mean": num(hop_s * 1000 / per_hop["mean"]),
        "streams_per_core_cpu": num(hop_s * 1000 / np.median(cpu)),
    }
    if base_rows:
        parts = {k: pct([r[k] for r in base_rows], (50, 95)) for k in base_rows[0] if not k.startswith("total")}
        res["baseline_per_window_ms"] = {**dist([r["total"] for r in base_rows]), "parts": parts,
                                         "cpu": pct([r["total_cpu"] for r in base_rows], (50, 95))}
        res["speedup"] = num(res["baseline_per_window_ms"]["p50"] / per_window["p50"], 3)
        res["speedup_cpu"] = num(res["baseline_per_window_ms"]["cpu"]["p50"] / res["cpu_ms"]["per_window"]["p50"], 3)
        res["speedup_by_stage"] = {part: num(v["p50"] / stages[part]["p50"], 3) for part, v in parts.items()
                                   if stages.get(part, {}).get("p50")}
    else:
        res["baseline_per_window_ms"] = {"p50": None}
        res["speedup"] = None
    firsts = [u["first_s"] for u in per_utt if u["first_s"] is not None]
    stables = [u["stable_s"] for u in per_utt if u["stable_s"] is not None]
    res["first_estimate_s"] = {**dist(firsts, (50, 90)),
                               "no_estimate": sum(1 for u in per_utt if u["first_s"] is None and u["onset_s"] is not None)}
    res["stable_estimate_s"] = {**pct(stables, (50, 90)), "n": len(stables),
                                "never": int(sum(1 for s in stables if math.isinf(s)))}
    brks = [u["breakdown"] for u in per_utt if u["breakdown"]]
    res["first_estimate_breakdown_s"] = {k: num(np.median([b[k] for b in brks])) for k in brks[0]} if brks else None
    res["utterances"] = [{k: (num(v) if isinstance(v, float) else v) for k, v in u.items() if k != "breakdown"}
                         for u in per_utt]
    res["_raw"] = {"push_ms": wall.tolist(), "cpu_ms": cpu.tolist(), "classified": classified.tolist(),
                   "baseline_ms": [r["total"] for r in base_rows], "baseline_cpu_ms": [r["total_cpu"] for r in base_rows]}
    return res

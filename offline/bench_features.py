"""``python -m offline bench-features``: the shared features' cost per 2 s window, side by side with librosa.

Both sides get the same real windows, on one core (BLAS/OpenMP pools limited to one thread).
librosa is timed two ways: the original study's calls (each feature its own call from the waveform,
tonnetz over CQT chroma, librosa.yin for pitch) and the same definition we compute (tonnetz over
STFT chroma), so the speedup is not just the dropped CQT.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from realtime.features import DEFAULT, FeatureExtractor, StreamingExtractor


def librosa_calls(definition, *, cqt_tonnetz: bool):
    """A function of one waveform that computes ``definition``'s features as librosa users do: each feature its
    own call from the waveform, pitch by ``librosa.yin``; tonnetz over CQT chroma (the original study) or over
    STFT chroma (our definition). Also the naive pipeline's features in ``python -m offline bench``."""
    import librosa

    d = definition
    stft = dict(n_fft=d.n_fft, hop_length=d.hop_length, center=True, pad_mode="constant")

    def run(y):
        sr = d.sr
        librosa.feature.zero_crossing_rate(y, frame_length=d.n_fft, hop_length=d.hop_length, center=True)
        librosa.feature.rms(y=y, frame_length=d.n_fft, hop_length=d.hop_length, center=True, pad_mode="constant")
        librosa.feature.spectral_centroid(y=y, sr=sr, **stft)
        librosa.feature.spectral_bandwidth(y=y, sr=sr, **stft)
        librosa.feature.spectral_rolloff(y=y, sr=sr, roll_percent=d.rolloff_percent, **stft)
        librosa.feature.spectral_flatness(y=y, **stft)
        librosa.feature.spectral_contrast(y=y, sr=sr, fmin=d.contrast_fmin, n_bands=d.contrast_bands, **stft)
        if cqt_tonnetz:
            librosa.feature.tonnetz(y=y, sr=sr, hop_length=d.hop_length)
        else:
            librosa.feature.tonnetz(chroma=librosa.feature.chroma_stft(y=y, sr=sr, tuning=0.0, **stft), sr=sr)
        librosa.yin(y, fmin=d.pitch_fmin, fmax=d.pitch_fmax, sr=sr, frame_length=d.n_fft, hop_length=d.hop_length,
                    center=True, pad_mode="constant")
        librosa.feature.mfcc(y=y, sr=sr, n_mfcc=d.n_mfcc, n_mels=d.n_mels, fmin=d.fmin, fmax=d.fmax, **stft)

    return run


def _time(fn, windows, repeats):
    fn(windows[0])  # warm-up (librosa's numba JIT, FFT plans)
    out = []
    for _ in range(repeats):
        for w in windows:
            t0 = time.perf_counter()
            fn(w)
            out.append((time.perf_counter() - t0) * 1000)
    return np.asarray(out)


def _time_streaming(fe, utterances, repeats):
    """Per-window cost of StreamingExtractor over consecutive windows 22 STFT hops (~0.5 s) apart, as the engine pays it."""
    step = 22 * fe.definition.hop_length
    n = fe.definition.window_samples
    out = []
    for _ in range(repeats):
        for y in utterances:
            sx = StreamingExtractor(fe)
            for start in range(0, len(y) - n + 1, step):
                t0 = time.perf_counter()
                sx.extract(y[start:start + n], start)
                out.append((time.perf_counter() - t0) * 1000)
    return np.asarray(out)


def real_utterances(data: Path, n: int) -> list[np.ndarray]:
    from realtime.audio import load_audio

    files = sorted(Path(data).glob("**/*.flac"))[:n]
    if not files:
        raise SystemExit(f"error: no .flac files under {data}")
    return [load_audio(f) for f in files]


def real_windows(data: Path, n: int) -> list[np.ndarray]:
    """``n`` 2 s windows from the first utterances of a LibriSpeech-layout folder."""
    from realtime.audio import load_audio
    from realtime.features import fit_window

    files = sorted(Path(data).glob("**/*.flac"))[:n]
    if not files:
        raise SystemExit(f"error: no .flac files under {data}")
    return [fit_window(load_audio(f)[8000:]) for f in files]


def run(args) -> int:
    from threadpoolctl import threadpool_limits

    windows = real_windows(args.data, args.windows)
    fe = FeatureExtractor(DEFAULT)
    rows = {}
    with threadpool_limits(1):
        rows["ours (stats + MFCC)"] = _time(fe.extract, windows, args.repeats)
        rows["ours, streaming (0.5 s hop)"] = _time_streaming(fe, real_utterances(args.data, 10), args.repeats)
        if not args.skip_librosa:
            rows["librosa, same definition"] = _time(librosa_calls(DEFAULT, cqt_tonnetz=False), windows, 1)
            rows["librosa, original (CQT tonnetz)"] = _time(librosa_calls(DEFAULT, cqt_tonnetz=True), windows, 1)
    result = {name: {"p50_ms": float(np.median(t)), "p95_ms": float(np.percentile(t, 95)), "n": int(t.size)}
              for name, t in rows.items()}
    ours = result["ours (stats + MFCC)"]["p50_ms"]
    for name in result:
        result[name]["x_ours_full_window"] = result[name]["p50_ms"] / ours
    summary = {"windows": len(windows), "feature_hash": DEFAULT.hash, "timings": result}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{len(windows)} real 2 s windows from {args.data}, one core, feature hash {DEFAULT.hash}")
        print(f"{'pipeline':34s} {'p50 ms':>8s} {'p95 ms':>8s} {'x ours':>8s}   (x ours: p50 / ours full-window p50)")
        for name, r in result.items():
            print(f"{name:34s} {r['p50_ms']:8.2f} {r['p95_ms']:8.2f} {r['x_ours_full_window']:8.1f}")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench-features", help="time the shared features per 2 s window beside librosa's own calls",
        description="Median and p95 cost of the statistical vector + MFCC matrix for one 2 s window, on one core, "
                    "side by side with librosa computing the same features on the same real windows.")
    from realtime.audio import data_dir

    p.add_argument("--data", type=Path, default=data_dir() / "LibriSpeech", metavar="DIR",
                   help="folder with .flac files (default: $VOICEGENDER_DATA/LibriSpeech, else ../shared/data/LibriSpeech)")
    p.add_argument("--windows", type=int, default=40, metavar="N", help="real windows to time (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=5, metavar="N",
                   help="passes over the windows for our extractor (librosa: one pass) (default: %(default)s)")
    p.add_argument("--skip-librosa", action="store_true", help="time only ours")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)

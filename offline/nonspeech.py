"""Audio that is not speech, for the bundle's speech / non-speech check: synthesised signals and real music.

webrtcvad passes music, harmonic tones, chords and sweeps as speech, and the gender models then give them a
confident gender. The release bundle carries a small XGBoost model on the statistics vector, trained on
speech windows (positives) against the windows of this module (negatives); the live engine gives no gender
to a window it calls non-speech.

* ``synthetic_clips`` draws signals a microphone meets between talk: harmonic tones at speech-like pitches
  (80-400 Hz, with and without vibrato), chords, piano-like and plucked note sequences, sine sweeps, phone
  rings and DTMF, beeps and alarms, mains hum, square/sawtooth buzz, coloured noise and noise bursts, a tone
  in noise. Deterministic given the seed.
* ``music_clips`` reads real music files (any format libsndfile decodes, e.g. the OGG/MP3 game soundtracks
  of Debian packages such as singularity-music, drascula-music and asc-music) as 16 kHz mono excerpts.

Never used on the live path.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from realtime.audio import SAMPLE_RATE, AudioError, load_audio

KINDS = ("tone", "vibrato_tone", "chord", "piano", "pluck", "sweep", "ring", "dtmf", "beeps", "hum", "buzz",
         "noise", "noise_bursts", "tone_in_noise")
# music packages of Debian whose soundtracks serve as real non-speech (train on the first two, test on asc)
MUSIC_DIRS = {"singularity-music": "/usr/share/games/singularity/music",
              "drascula-music": "/usr/share/scummvm/drascula/audio",
              "asc-music": "/usr/share/games/asc/music"}
TRAIN_MUSIC = ("singularity-music", "drascula-music")
TEST_MUSIC = ("asc-music",)
AUDIO_SUFFIXES = (".ogg", ".mp3", ".flac", ".wav", ".opus")


def _harmonic(f0: np.ndarray, rng: np.random.Generator, sr: int, n_harm: int | None = None,
              tilt_db: float | None = None) -> np.ndarray:
    """A harmonic signal following the instantaneous frequency ``f0`` (Hz per sample)."""
    n_harm = int(rng.integers(1, 16)) if n_harm is None else n_harm
    tilt = rng.uniform(-12.0, 0.0) if tilt_db is None else tilt_db  # dB per octave
    phase = 2 * np.pi * np.cumsum(f0) / sr
    y = np.zeros_like(phase)
    for h in range(1, n_harm + 1):
        if np.max(f0) * h >= 0.45 * sr:
            break
        amp = 10 ** (tilt * math.log2(h) / 20) * rng.uniform(0.5, 1.0)
        y += amp * np.sin(h * phase + rng.uniform(0, 2 * np.pi))
    return y


def _note_seq(rng: np.random.Generator, n: int, sr: int, decay: tuple[float, float]) -> np.ndarray:
    """Notes of random pitch (MIDI 40-84) and length, each a harmonic tone with an exponential decay."""
    y = np.zeros(n)
    pos = 0
    while pos < n:
        length = int(rng.uniform(0.15, 0.8) * sr)
        f = 440.0 * 2 ** ((rng.integers(40, 85) - 69) / 12)
        seg = min(length * 3, n - pos)
        t = np.arange(seg) / sr
        note = _harmonic(np.full(seg, f), rng, sr, n_harm=int(rng.integers(3, 12))) * np.exp(-t / rng.uniform(*decay))
        y[pos:pos + seg] += note
        pos += length
    return y


def synthesize(kind: str, seconds: float, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """One clip of ``kind`` (see ``KINDS``), float32 at a random level between -35 and -10 dBFS RMS."""
    n = int(seconds * sr)
    t = np.arange(n) / sr
    if kind == "tone":
        y = _harmonic(np.full(n, rng.uniform(80, 400)), rng, sr)
    elif kind == "vibrato_tone":
        f0 = rng.uniform(80, 400) * (1 + rng.uniform(0.005, 0.03) * np.sin(2 * np.pi * rng.uniform(4, 7) * t))
        y = _harmonic(f0, rng, sr) * (1 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.5, 4) * t))
    elif kind == "chord":
        root = rng.integers(36, 64)
        notes = root + np.array(sorted(rng.choice([0, 3, 4, 7, 10, 12, 14, 16], size=int(rng.integers(2, 5)),
                                                  replace=False)))
        y = sum(_harmonic(np.full(n, 440.0 * 2 ** ((m - 69) / 12)), rng, sr, n_harm=int(rng.integers(2, 10)))
                for m in notes)
    elif kind == "piano":
        y = _note_seq(rng, n, sr, (0.3, 1.2))
    elif kind == "pluck":
        y = _note_seq(rng, n, sr, (0.05, 0.3))
    elif kind == "sweep":
        f_lo, f_hi = sorted(rng.uniform(60, 4000, 2))
        if rng.random() < 0.5:
            f0 = np.geomspace(f_lo, f_hi, n)
        else:
            f0 = np.linspace(f_lo, f_hi, n)
        if rng.random() < 0.5:
            f0 = f0[::-1]
        y = _harmonic(f0, rng, sr, n_harm=int(rng.integers(1, 4)))
    elif kind == "ring":
        pairs = [(440, 480), (400, 450), (425, 425), (350, 440), (480, 620)]
        f1, f2 = pairs[int(rng.integers(len(pairs)))]
        y = np.sin(2 * np.pi * f1 * t) + np.sin(2 * np.pi * f2 * t)
        on = rng.uniform(0.3, 2.0)
        y *= ((t % (on + rng.uniform(0.2, 2.0))) < on)
    elif kind == "dtmf":
        lows, highs = (697, 770, 852, 941), (1209, 1336, 1477, 1633)
        y = np.zeros(n)
        step = int(rng.uniform(0.1, 0.3) * sr)
        for start in range(0, n, 2 * step):
            seg = slice(start, min(start + step, n))
            y[seg] = np.sin(2 * np.pi * rng.choice(lows) * t[seg]) + np.sin(2 * np.pi * rng.choice(highs) * t[seg])
    elif kind == "beeps":
        f = rng.uniform(400, 3500)
        period = rng.uniform(0.2, 1.5)
        y = np.sin(2 * np.pi * f * t) * ((t % period) < period * rng.uniform(0.2, 0.8))
    elif kind == "hum":
        y = _harmonic(np.full(n, rng.choice([50.0, 60.0, 100.0, 120.0])), rng, sr, n_harm=int(rng.integers(2, 8)))
    elif kind == "buzz":
        f = rng.uniform(60, 500)
        phase = (f * t) % 1.0
        y = np.sign(np.sin(2 * np.pi * f * t)) if rng.random() < 0.5 else 2 * phase - 1
    elif kind in ("noise", "noise_bursts", "tone_in_noise"):
        from .augment import colored_noise

        y = colored_noise(n, str(rng.choice(["white", "pink", "brown"])), rng, sr=sr)
        if kind == "noise_bursts":
            y *= (rng.random(n // 800 + 1) < 0.4).repeat(800)[:n]
        elif kind == "tone_in_noise":
            y = y / (np.std(y) + 1e-9) * 10 ** (-rng.uniform(0, 20) / 20) + _harmonic(
                np.full(n, rng.uniform(80, 1000)), rng, sr) / math.sqrt(2)
    else:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    y = np.asarray(y, dtype=np.float64)
    rms = float(np.sqrt(np.mean(y ** 2))) or 1.0
    y *= 10 ** (rng.uniform(-35, -10) / 20) / rms
    peak = float(np.max(np.abs(y)))
    if peak > 0.99:
        y *= 0.99 / peak
    return y.astype(np.float32)


def synthetic_clips(n_per_kind: int = 20, *, seconds: float = 4.0, seed: int = 0,
                    kinds: tuple[str, ...] = KINDS) -> list[tuple[str, np.ndarray]]:
    """``n_per_kind`` clips of every kind: [(name 'kind-i', audio)], deterministic given ``seed``."""
    out = []
    for k, kind in enumerate(kinds):
        for i in range(n_per_kind):
            rng = np.random.default_rng([seed, k, i])
            out.append((f"{kind}-{i}", synthesize(kind, seconds, rng)))
    return out


def music_files(packages: tuple[str, ...] = TRAIN_MUSIC) -> list[Path]:
    """Audio files of the named Debian music packages that are installed (none: empty list)."""
    files: list[Path] = []
    for name in packages:
        root = Path(MUSIC_DIRS[name])
        if root.is_dir():
            files += sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()
                            and not p.is_symlink())
    return files


def music_clips(files, *, seconds: float = 4.0, every_s: float = 10.0, max_per_file: int = 30
                ) -> list[tuple[str, np.ndarray]]:
    """Excerpts of ``seconds`` every ``every_s`` seconds of each file (at most ``max_per_file``), 16 kHz mono.
    Silent excerpts (track starts and ends) are dropped; unreadable files are skipped."""
    out = []
    n, step = int(seconds * SAMPLE_RATE), int(every_s * SAMPLE_RATE)
    for path in files:
        try:
            x = load_audio(path)
        except AudioError:
            continue
        for j, start in enumerate(range(0, max(len(x) - n, 0) + 1, step)):
            if j >= max_per_file:
                break
            seg = x[start:start + n]
            if len(seg) == n and float(np.sqrt(np.mean(seg.astype(np.float64) ** 2))) > 10 ** (-50 / 20):
                out.append((f"{Path(path).stem}@{start / SAMPLE_RATE:.0f}s", seg))
    return out


def clip_windows(clips, *, definition=None, augmenter=None, copies: int = 0, hop_s: float = 1.0, seed: int = 0,
                 progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Stats vectors of the 2 s windows (``hop_s`` apart) of every clip, and of ``copies`` augmented versions
    of it (noise, gain, capture channels: non-speech reaches the engine through the same channels as
    speech). Returns (stats (N, n_stats) float32, clip index per row)."""
    from realtime.features import DEFAULT, FeatureExtractor

    from .windows import iter_windows

    fe = FeatureExtractor(definition or DEFAULT)
    d = fe.definition
    rows, owner = [], []
    it = enumerate(clips)
    if progress:
        from tqdm import tqdm

        it = tqdm(list(it), desc="non-speech", unit="clip", dynamic_ncols=True)
    for i, (name, x) in it:
        versions = [x] + ([augmenter(x, augmenter.rng_for(name, c, seed), sr=d.sr) for c in range(copies)]
                          if augmenter is not None else [])
        for v in versions:
            for _, w in iter_windows(v, d.window_seconds, hop_s, d.sr, min_samples=d.min_samples):
                rows.append(fe.extract(w)[0])
                owner.append(i)
    if not rows:
        return np.zeros((0, fe.n_stats), dtype=np.float32), np.zeros(0, dtype=np.int64)
    return np.stack(rows).astype(np.float32), np.asarray(owner, dtype=np.int64)


def training_negatives(*, definition=None, augmenter=None, seed: int = 0, n_per_kind: int = 40,
                       music: tuple[str, ...] = TRAIN_MUSIC, cache_dir=Path(".cache/features"),
                       progress: bool = True) -> tuple[np.ndarray, np.ndarray, dict]:
    """Stats of the training negatives: synthetic clips (seed ``seed``) and excerpts of the installed training
    music, each with one augmented copy. Cached by feature hash, augmenter and inputs. Returns (stats, group
    per row (clip index; the held-out split is by group), info)."""
    import hashlib
    import json

    from realtime.features import DEFAULT

    definition = definition or DEFAULT
    files = music_files(music)
    missing = [m for m in music if not Path(MUSIC_DIRS[m]).is_dir()]
    if missing:
        import warnings

        warnings.warn(f"music package(s) {', '.join(missing)} not installed: the speech check trains without "
                      f"them (apt-get install {' '.join(missing)}, or ./setup.sh --dev --train-music)", stacklevel=2)
    key = hashlib.sha256(json.dumps({"v": 1, "f": definition.hash, "seed": seed, "n": n_per_kind,
                                     "aug": augmenter.to_dict() if augmenter else None,
                                     "files": [f"{p}|{p.stat().st_size}" for p in files]},
                                    sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"nonspeech-{definition.hash}-{key}.npz" if cache_dir else None
    if path is not None and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return z["stats"], z["group"], json.loads(str(z["info"]))
    clips = synthetic_clips(n_per_kind, seed=seed) + music_clips(files)
    stats, group = clip_windows(clips, definition=definition, augmenter=augmenter, copies=1, seed=seed,
                                progress=progress)
    info = {"synthetic_clips": n_per_kind * len(KINDS), "kinds": list(KINDS), "music_files": len(files),
            "music_packages": [m for m in music if Path(MUSIC_DIRS[m]).is_dir()],
            "music_clips": len(clips) - n_per_kind * len(KINDS), "windows": int(len(stats))}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, stats=stats, group=group, info=np.array(json.dumps(info)))
    return stats, group, info


def heldout_negatives(*, definition=None, seed: int = 1000, n_per_kind: int = 10) -> dict[str, np.ndarray]:
    """Non-speech never used in training, for evaluation: {kind: stats}. Synthetic clips of every kind drawn
    with another seed, and excerpts of the test music (asc-music) if installed, as 'music (asc-music)'."""
    out: dict[str, np.ndarray] = {}
    clips = synthetic_clips(n_per_kind, seed=seed)
    stats, owner = clip_windows(clips, definition=definition)
    kinds = np.asarray([name.split("-")[0] for name, _ in clips])[owner]
    for kind in KINDS:
        out[kind] = stats[kinds == kind]
    files = music_files(TEST_MUSIC)
    if files:
        out["music (asc-music)"] = clip_windows(music_clips(files, every_s=6.0, max_per_file=80),
                                                definition=definition)[0]
    return out

"""The one feature definition, shared by training (offline/) and the live engine (realtime/).

Two outputs per 2-second window of 16 kHz mono audio:

* ``stats``: a fixed, named vector for XGBoost: the original study's per-frame features
  (zero-crossing rate, tonnetz, spectral rolloff, flatness, contrast, bandwidth, centroid, RMS)
  each summarised by mean / min / max / std over frames, plus what earned its place on
  reader-disjoint validation: pitch (YIN F0, the strongest gender cue, absent from the original
  set) and the mean / std of the first MFCCs.
* ``mfcc``: a 40 x 87 MFCC matrix for the CNNs (hop 368 at 16 kHz gives 87 frames per 2 s).

Everything comes from one framing of the window and one real FFT: the magnitude spectrogram
feeds every spectral feature, the power spectrogram feeds mel/MFCC and chroma, and the same
zero-padded frames feed YIN's autocorrelation. Only numpy and scipy.fft: no librosa, numba or
TensorFlow on the live path.

Each per-frame feature equals the librosa 0.11 call it stands for, with every parameter passed
explicitly (tests/test_features_parity.py states the call and the tolerance). One deliberate
difference from the original study: tonnetz is computed over STFT chroma
(``librosa.feature.tonnetz(chroma=librosa.feature.chroma_stft(S=power, tuning=0))``) instead of
CQT chroma, which costs 80-100 ms per window for a cue that carries little gender information.

The definition serialises to a dict with a stable hash. Model bundles store that hash and the
live engine refuses a bundle whose hash differs from ``DEFAULT.hash``. Bump ``version`` whenever
the code changes what it computes for the same parameters.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from functools import cached_property

import numpy as np
import scipy.fft

from .audio import AudioError

_TINY32 = np.finfo(np.float32).tiny


@dataclass(frozen=True)
class FeatureDefinition:
    """Every parameter of the features. Frozen: a changed parameter is a different definition."""

    version: int = 1
    sr: int = 16000
    window_seconds: float = 2.0
    min_seconds: float = 0.5  # shorter clips are refused; between this and a window: wrap-padded
    short_clip_padding: str = "wrap"
    # shared STFT (librosa.stft conventions)
    n_fft: int = 1024
    hop_length: int = 368
    window: str = "hann"
    center: bool = True
    pad_mode: str = "constant"
    # MFCC (librosa.feature.mfcc over a slaney mel filterbank, power_to_db, DCT-II ortho)
    n_mfcc: int = 40
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float = 8000.0
    mfcc_top_db: float = 80.0
    db_amin: float = 1e-10
    # statistical features
    zcr_threshold: float = 1e-10
    rolloff_percent: float = 0.85
    flatness_amin: float = 1e-10
    contrast_fmin: float = 200.0
    contrast_bands: int = 6
    contrast_quantile: float = 0.02
    n_chroma: int = 12
    chroma_tuning: float = 0.0
    chroma_ctroct: float = 5.0
    chroma_octwidth: float = 2.0
    # pitch (librosa.yin with frame_length=n_fft, centred, zero-padded)
    pitch_fmin: float = 60.0
    pitch_fmax: float = 400.0
    yin_trough_threshold: float = 0.1
    voicing_threshold: float = 0.3  # frame voiced when min CMNDF below this and F0 in range
    mfcc_summary_coeffs: int = 20
    summaries: tuple[str, ...] = field(default=("mean", "min", "max", "std"))

    @property
    def window_samples(self) -> int:
        return int(round(self.window_seconds * self.sr))

    @property
    def min_samples(self) -> int:
        return int(round(self.min_seconds * self.sr))

    @property
    def n_frames(self) -> int:
        if self.center:
            return 1 + self.window_samples // self.hop_length
        return 1 + (self.window_samples - self.n_fft) // self.hop_length

    def to_dict(self) -> dict:
        d = asdict(self)
        d["summaries"] = list(self.summaries)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureDefinition":
        d = dict(d)
        d["summaries"] = tuple(d.get("summaries", cls.summaries))
        return cls(**d)

    @property
    def hash(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


DEFAULT = FeatureDefinition()
MIN_SAMPLES = DEFAULT.min_samples


def fit_window(x: np.ndarray, n: int = DEFAULT.window_samples, *, min_samples: int = MIN_SAMPLES) -> np.ndarray:
    """Make a clip exactly ``n`` samples, as training and the live engine both do.

    Longer clips keep their first ``n`` samples; clips between ``min_samples`` and ``n`` are
    tiled (wrap-padded), which keeps their voice statistics unlike zero padding; shorter clips
    raise AudioError.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 1:
        raise AudioError(f"a window must be mono 1-D audio, got shape {x.shape}")
    if x.size >= n:
        return x[:n]
    if x.size < min_samples:
        raise AudioError(f"clip too short: {x.size} samples, need at least {min_samples} ({min_samples / 16000:.2f} s at 16 kHz)")
    return np.resize(x, n)


# --- filterbanks (same formulas as librosa.filters; tested against them) -------------------------

def _hz_to_mel(f):
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz, logstep = 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-12) / min_log_hz) / logstep, mels)


def _mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, logstep = 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(d: FeatureDefinition = DEFAULT) -> np.ndarray:
    """Slaney-normalised mel filterbank, (n_mels, 1 + n_fft // 2): librosa.filters.mel(htk=False, norm='slaney')."""
    fftfreqs = np.linspace(0, d.sr / 2, 1 + d.n_fft // 2)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(d.fmin), _hz_to_mel(d.fmax), d.n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fftfreqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return weights.astype(np.float32)


def chroma_filterbank(d: FeatureDefinition = DEFAULT) -> np.ndarray:
    """STFT chroma filterbank, (n_chroma, 1 + n_fft // 2): librosa.filters.chroma(norm=2, base_c=True)."""
    n_chroma, n_fft = d.n_chroma, d.n_fft
    freqs = np.linspace(0, d.sr, n_fft, endpoint=False)[1:]
    a440 = 440.0 * 2.0 ** (d.chroma_tuning / n_chroma)
    frqbins = n_chroma * np.log2(freqs / (a440 / 16))
    frqbins = np.concatenate(([frqbins[0] - 1.5 * n_chroma], frqbins))
    binwidth = np.concatenate((np.maximum(frqbins[1:] - frqbins[:-1], 1.0), [1.0]))
    dist = frqbins[None, :] - np.arange(n_chroma, dtype=np.float64)[:, None]
    half = np.round(n_chroma / 2.0)
    dist = np.remainder(dist + half + 10 * n_chroma, n_chroma) - half
    wts = np.exp(-0.5 * (2 * dist / binwidth[None, :]) ** 2)
    wts /= np.maximum(np.sqrt(np.sum(wts**2, axis=0, keepdims=True)), np.finfo(np.float64).tiny)
    wts *= np.exp(-0.5 * (((frqbins / n_chroma - d.chroma_ctroct) / d.chroma_octwidth) ** 2))[None, :]
    wts = np.roll(wts, -3 * (n_chroma // 12), axis=0)
    return np.ascontiguousarray(wts[:, : 1 + n_fft // 2], dtype=np.float32)


def tonnetz_matrix(n_chroma: int = 12) -> np.ndarray:
    """The 6 x n_chroma projection of librosa.feature.tonnetz (fifths, minor and major thirds)."""
    dim_map = np.linspace(0, 12, num=n_chroma, endpoint=False)
    scale = np.array([7.0 / 6, 7.0 / 6, 3.0 / 2, 3.0 / 2, 2.0 / 3, 2.0 / 3])
    v = np.multiply.outer(scale, dim_map)
    v[::2] -= 0.5
    r = np.array([1, 1, 1, 1, 0.5, 0.5])
    return (r[:, None] * np.cos(np.pi * v)).astype(np.float32)


def _power_to_db(x: np.ndarray, amin: float, top_db: float | None) -> np.ndarray:
    db = 10.0 * np.log10(np.maximum(amin, x))
    if top_db is not None:
        db = np.maximum(db, db.max() - top_db)
    return db


# --- the extractor ---------------------------------------------------------------------------------

FRAME_FEATURES = ("zcr", "tonnetz", "rolloff", "flatness", "contrast", "bandwidth", "centroid", "rms")
PITCH_SUMMARY = ("f0_median", "f0_mean", "f0_std", "f0_p10", "f0_p90", "voiced_fraction", "periodicity_mean")


class FeatureExtractor:
    """Computes the shared features of one window. Build once (filterbanks are precomputed), call often.

    All public arrays are float32. Per-frame matrices use librosa's orientation (rows = features,
    columns = frames) so they compare directly with the librosa calls they stand for.
    """

    def __init__(self, definition: FeatureDefinition = DEFAULT):
        d = self.definition = definition
        if d.center and d.pad_mode != "constant":
            raise ValueError("only pad_mode='constant' is implemented")
        n_bins = 1 + d.n_fft // 2
        self._win = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(d.n_fft) / d.n_fft)).astype(np.float32)  # periodic hann
        self.freqs = np.linspace(0, d.sr / 2, n_bins).astype(np.float32)
        self._mel = mel_filterbank(d)
        n_mels = d.n_mels
        k = np.arange(n_mels)
        dct = np.cos(np.pi / n_mels * (k[None, :] + 0.5) * np.arange(d.n_mfcc)[:, None]) * np.sqrt(2.0 / n_mels)
        dct[0] /= np.sqrt(2.0)
        self._dct = dct.astype(np.float32)  # (n_mfcc, n_mels): DCT-II, norm='ortho'
        self._chroma = chroma_filterbank(d)
        self._tonnetz = tonnetz_matrix(d.n_chroma)
        self._contrast_bands = self._make_contrast_bands()
        self._min_period = int(np.floor(d.sr / d.pitch_fmax))
        self._max_period = min(int(np.ceil(d.sr / d.pitch_fmin)), d.n_fft - 1)
        self._acf_n = scipy.fft.next_fast_len(2 * d.n_fft - 1, real=True)
        self.stat_names = self._make_names()
        self.n_stats = len(self.stat_names)

    # -- set-up helpers
    def _make_contrast_bands(self):
        d, freq = self.definition, self.freqs.astype(np.float64)
        octa = np.zeros(d.contrast_bands + 2)
        octa[1:] = d.contrast_fmin * 2.0 ** np.arange(d.contrast_bands + 1)
        if np.any(octa[:-1] >= 0.5 * d.sr):
            raise ValueError("spectral contrast band exceeds Nyquist")
        bands = []
        for k, (lo, hi) in enumerate(zip(octa[:-1], octa[1:])):
            band = (freq >= lo) & (freq <= hi)
            idx = np.flatnonzero(band)
            if k > 0:
                band[idx[0] - 1] = True
            if k == d.contrast_bands:
                band[idx[-1] + 1:] = True
            n_q = max(int(np.rint(d.contrast_quantile * band.sum())), 1)
            rows = np.flatnonzero(band)
            if k < d.contrast_bands:
                rows = rows[:-1]
            bands.append((rows, n_q))
        return bands

    def _make_names(self) -> list[str]:
        d = self.definition
        rows = {"zcr": 1, "tonnetz": 6, "rolloff": 1, "flatness": 1, "contrast": d.contrast_bands + 1,
                "bandwidth": 1, "centroid": 1, "rms": 1}
        names = []
        for feat in FRAME_FEATURES:
            for r in range(rows[feat]):
                base = feat if rows[feat] == 1 else f"{feat}{r}"
                names += [f"{base}_{s}" for s in d.summaries]
        names += list(PITCH_SUMMARY)
        for i in range(d.mfcc_summary_coeffs):
            names += [f"mfcc{i}_mean", f"mfcc{i}_std"]
        return names

    # -- per-frame computations
    def _check(self, window: np.ndarray) -> np.ndarray:
        x = np.asarray(window, dtype=np.float32)
        if x.ndim != 1 or x.size != self.definition.window_samples:
            raise AudioError(f"a feature window must be {self.definition.window_samples} mono samples, got shape {x.shape}; use fit_window()")
        if not np.all(np.isfinite(x)):
            raise AudioError("window contains NaN or infinite samples")
        return x

    def _frames(self, x: np.ndarray, mode: str) -> np.ndarray:
        d = self.definition
        half = d.n_fft // 2
        padded = np.pad(x, half, mode=mode) if d.center else x
        return np.lib.stride_tricks.sliding_window_view(padded, d.n_fft)[:: d.hop_length]

    def _frame_quantities(self, zframes: np.ndarray, eframes: np.ndarray, *, keep_spectrum: bool = False) -> dict[str, np.ndarray]:
        """Per-frame quantities, frames first: everything a window needs that depends on one frame alone.

        ``zframes`` are zero-padded frames (STFT and YIN), ``eframes`` the same frames edge-padded (ZCR).
        Window-level steps (top_db clipping, DCT, summaries) happen in :meth:`_assemble`.
        """
        d = self.definition
        spec = scipy.fft.rfft(zframes * self._win, axis=1)  # (T, F) complex64
        S = np.abs(spec)  # magnitude
        P = S * S
        q: dict[str, np.ndarray] = {"mel": P @ self._mel.T}  # (T, n_mels) power
        if keep_spectrum:
            q["S"] = S
        total = S.sum(axis=1, keepdims=True)
        Sn = S / np.where(total > _TINY32, total, 1.0)
        centroid = Sn @ self.freqs
        q["centroid"] = centroid
        dev = self.freqs[None, :] - centroid[:, None]
        q["bandwidth"] = np.sqrt(np.einsum("tf,tf->t", Sn, dev * dev))
        csum = np.cumsum(S, axis=1)
        q["rolloff"] = self.freqs[np.argmax(csum >= d.rolloff_percent * csum[:, -1:], axis=1)]
        Sp = np.maximum(d.flatness_amin, P)
        q["flatness"] = np.exp(np.mean(np.log(Sp), axis=1)) / np.mean(Sp, axis=1)
        q["peak"], q["valley"] = self._peaks_valleys(S)
        Pr = P.copy()
        Pr[:, 0] *= 0.5
        if d.n_fft % 2 == 0:
            Pr[:, -1] *= 0.5
        q["rms"] = np.sqrt(2.0 * Pr.sum(axis=1) / d.n_fft**2)
        # tonnetz over STFT chroma (chroma normalised by its max, then L1, per frame)
        chroma = P @ self._chroma.T  # (T, 12)
        cmax = np.max(np.abs(chroma), axis=1, keepdims=True)
        chroma = chroma / np.where(cmax > _TINY32, cmax, 1.0)
        c1 = np.sum(np.abs(chroma), axis=1, keepdims=True)
        q["tonnetz"] = (chroma / np.where(c1 > _TINY32, c1, 1.0)) @ self._tonnetz.T  # (T, 6)
        signs = np.signbit(np.where(np.abs(eframes) <= d.zcr_threshold, 0.0, eframes))
        q["zcr"] = (np.count_nonzero(signs[:, 1:] != signs[:, :-1], axis=1) / d.n_fft).astype(np.float32)
        q["f0"], q["periodicity"] = self._yin(zframes)
        return q

    def _window_quantities(self, x: np.ndarray, **kw) -> dict[str, np.ndarray]:
        return self._frame_quantities(self._frames(x, "constant"), self._frames(x, "edge"), **kw)

    def frame_features(self, window: np.ndarray) -> dict[str, np.ndarray]:
        """Every per-frame feature of one window in librosa's orientation, {name: (rows, n_frames)}:
        the stat features, 'mfcc', 'S' (magnitude spectrogram), 'f0' and 'periodicity'."""
        q = self._window_quantities(self._check(window), keep_spectrum=True)
        out = {name: np.atleast_2d(q[name].T) for name in ("S", "centroid", "bandwidth", "rolloff", "flatness", "rms",
                                                          "tonnetz", "zcr", "f0", "periodicity")}
        out["contrast"] = self._contrast(q)
        out["mfcc"] = self._mfcc(q)
        return out

    def _peaks_valleys(self, S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Spectral contrast's per-frame part: mean of the top / bottom quantile of each octave band, (T, bands)."""
        T = S.shape[0]
        peak = np.empty((T, len(self._contrast_bands)), dtype=np.float64)
        valley = np.empty_like(peak)
        for k, (rows, n_q) in enumerate(self._contrast_bands):
            sub = np.sort(S[:, rows], axis=1)
            valley[:, k] = sub[:, :n_q].mean(axis=1)
            peak[:, k] = sub[:, -n_q:].mean(axis=1)
        return peak, valley

    def _contrast(self, q: dict) -> np.ndarray:
        """librosa.feature.spectral_contrast: dB of peaks minus dB of valleys, top_db=80 over the window. (bands, T)"""
        amin = self.definition.db_amin
        return (_power_to_db(q["peak"].T, amin, 80.0) - _power_to_db(q["valley"].T, amin, 80.0)).astype(np.float32)

    def _mfcc(self, q: dict) -> np.ndarray:
        """MFCC from per-frame mel power: dB with top_db over the window, then DCT-II ortho. (n_mfcc, T)"""
        d = self.definition
        db = _power_to_db(q["mel"], d.db_amin, d.mfcc_top_db).astype(np.float32)
        return self._dct @ db.T

    def _yin(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """librosa.yin on the shared zero-padded frames; also the periodicity 1 - min CMNDF."""
        d = self.definition
        lo, hi = self._min_period, self._max_period
        spec = scipy.fft.rfft(frames, n=self._acf_n, axis=1)
        acf = scipy.fft.irfft(spec.real**2 + spec.imag**2, n=self._acf_n, axis=1)[:, : hi + 1]
        energy = np.cumsum(frames[:, :hi] * frames[:, :hi], axis=1)
        energy[:, 0] = 0.0
        diff = 2.0 * (acf[:, :1] - acf[:, 1: hi + 1]) - energy  # d(k), k = 1..hi
        cmean = np.cumsum(diff, axis=1) / np.arange(1, hi + 1, dtype=np.float32)
        cmndf = diff[:, lo - 1: hi] / (cmean[:, lo - 1: hi] + _TINY32)  # tau = lo..hi, (T, K)
        T, K = cmndf.shape
        # parabolic interpolation shifts
        a = cmndf[:, 2:] + cmndf[:, :-2] - 2 * cmndf[:, 1:-1]
        b = (cmndf[:, 2:] - cmndf[:, :-2]) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            inner = np.where(np.abs(b) >= np.abs(a), 0.0, -b / a)
        shifts = np.zeros_like(cmndf)
        shifts[:, 1:-1] = inner
        # troughs: x[i] < x[i-1] and x[i] <= x[i+1] (edge-padded); first bin: x[0] < x[1]
        trough = np.empty_like(cmndf, dtype=bool)
        trough[:, 1:-1] = (cmndf[:, 1:-1] < cmndf[:, :-2]) & (cmndf[:, 1:-1] <= cmndf[:, 2:])
        trough[:, -1] = cmndf[:, -1] < cmndf[:, -2]
        trough[:, 0] = cmndf[:, 0] < cmndf[:, 1]
        good = trough & (cmndf < d.yin_trough_threshold)
        period = np.where(good.any(axis=1), np.argmax(good, axis=1), np.argmin(cmndf, axis=1))
        rows = np.arange(T)
        f0 = d.sr / (lo + period + shifts[rows, period])
        periodicity = 1.0 - np.clip(cmndf[rows, period], 0.0, 1.0)
        return f0.astype(np.float32), periodicity.astype(np.float32)

    # -- window-level outputs
    def _summarise(self, m: np.ndarray) -> np.ndarray:
        """(rows, T) -> each row's summaries, row by row: [r0_mean, r0_min, r0_max, r0_std, r1_mean, ...]."""
        fns = {"mean": np.mean, "min": np.min, "max": np.max, "std": np.std}
        return np.stack([fns[s](m, axis=1) for s in self.definition.summaries], axis=1).ravel()

    def _pitch_summary(self, f0: np.ndarray, periodicity: np.ndarray) -> np.ndarray:
        d = self.definition
        voiced = (periodicity > 1.0 - d.voicing_threshold) & (f0 >= d.pitch_fmin) & (f0 <= d.pitch_fmax)
        frac = float(voiced.mean())
        if voiced.sum() < 3:  # no usable pitch: fixed fill values, distinguishable by voiced_fraction
            return np.array([0, 0, 0, 0, 0, frac, periodicity.mean()], dtype=np.float32)
        lf = np.log2(f0[voiced])
        p10, p50, p90 = np.percentile(lf, [10, 50, 90])
        return np.array([p50, lf.mean(), lf.std(), p10, p90, frac, periodicity.mean()], dtype=np.float32)

    def _assemble(self, q: dict) -> tuple[np.ndarray, np.ndarray]:
        """Per-frame quantities of one window -> (stats, mfcc)."""
        mfcc = self._mfcc(q)
        rows = {"contrast": self._contrast(q)}
        frame_rows = np.vstack([rows[name] if name in rows else np.atleast_2d(q[name].T) for name in FRAME_FEATURES])
        parts = [self._summarise(frame_rows.astype(np.float32, copy=False))]
        parts.append(self._pitch_summary(q["f0"], q["periodicity"]))
        m = mfcc[: self.definition.mfcc_summary_coeffs]
        parts.append(np.stack([m.mean(axis=1), m.std(axis=1)], axis=1).ravel())
        return np.concatenate(parts).astype(np.float32), np.ascontiguousarray(mfcc, dtype=np.float32)

    def extract(self, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One window -> (stats (n_stats,), mfcc (n_mfcc, n_frames)), both float32."""
        return self._assemble(self._window_quantities(self._check(window)))

    def stats(self, window: np.ndarray) -> np.ndarray:
        return self.extract(window)[0]

    def mfcc(self, window: np.ndarray) -> np.ndarray:
        return self.extract(window)[1]

    @cached_property
    def description(self) -> dict:
        """What the bundle stores: the definition, its hash and the stat names."""
        return {"definition": self.definition.to_dict(), "hash": self.definition.hash, "stat_names": self.stat_names}


class StreamingExtractor:
    """``FeatureExtractor.extract`` for successive windows of one stream, computing only the frames that changed.

    Give each window with ``start``, its position in the stream in samples. When it moved by a
    whole number of hops since the previous window, the frames that lie wholly inside both windows
    (away from the zero-padded edges) are taken from the previous window instead of recomputed:
    at a 0.5 s hop about 25 of 87 frames are new. The result equals ``extract(window)`` (same
    per-frame arithmetic; tests/test_features_streaming.py checks it).
    """

    def __init__(self, extractor: FeatureExtractor):
        self.fe = extractor
        d = extractor.definition
        self.hop = d.hop_length
        j = np.arange(d.n_frames)
        self._interior = (j * d.hop_length - d.n_fft // 2 >= 0) & (j * d.hop_length + d.n_fft // 2 <= d.window_samples)
        self.reset()

    def reset(self) -> None:
        self._start: int | None = None
        self._q: dict | None = None
        self.reused_frames = 0
        self.computed_frames = 0

    def extract(self, window: np.ndarray, start: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        fe = self.fe
        x = fe._check(window)
        n = len(self._interior)
        shift = None
        if start is not None and self._start is not None and start >= self._start and (start - self._start) % self.hop == 0:
            shift = (start - self._start) // self.hop
        if shift is None or shift >= n:
            q = fe._window_quantities(x)
            self.computed_frames += n
        else:
            j = np.arange(n)
            reuse = self._interior & (j + shift < n)
            reuse[reuse] &= self._interior[j[reuse] + shift]
            todo = np.flatnonzero(~reuse)
            fresh = fe._frame_quantities(fe._frames(x, "constant")[todo], fe._frames(x, "edge")[todo])
            keep = np.flatnonzero(reuse)
            q = {}
            for name, new_rows in fresh.items():
                arr = np.empty((n,) + new_rows.shape[1:], dtype=new_rows.dtype)
                arr[todo] = new_rows
                arr[keep] = self._q[name][keep + shift]
                q[name] = arr
            self.reused_frames += keep.size
            self.computed_frames += todo.size
        self._start, self._q = start, q
        return fe._assemble(q)

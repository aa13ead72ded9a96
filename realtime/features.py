"""The one feature definition, shared by training (offline/) and the live engine (realtime/).

Two outputs per 2-second window of 16 kHz mono audio:

* ``stats``: a fixed, named vector for XGBoost: the original study's per-frame features
  (zero-crossing rate, tonnetz, spectral rolloff, flatness, contrast, bandwidth, centroid, RMS)
  each summarised by mean / min / max / std over frames, plus what earned its place on
  reader-disjoint validation: pitch (YIN F0, the strongest gender cue, absent from the original
  set) and the mean / std of the first MFCCs.
* ``mfcc``: a 40 x 87 MFCC matrix for the CNNs (hop 368 at 16 kHz gives 87 frames per 2 s).

Everything comes from one framing of the window and one real FFT: the magnitude spectrogram
feeds every spectral feature, the power spectrogram feeds mel/MFCC and chroma, and every second
one of the same zero-padded frames feeds YIN's autocorrelation (``pitch_hop_length``: pitch is the
costliest feature, and 44 pitch frames summarise a window's F0). Only numpy and scipy.fft: no
librosa, numba or TensorFlow on the live path. The numpy code here is the reference; where it is
built, a compiled kernel (realtime/_featurekernel.c) runs the same loops ~2.5x faster and equal to
float32 rounding (``FeatureExtractor(kernel=...)``, ``KERNEL_ENV``; tests/test_features_kernel.py).

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
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import NamedTuple

import numpy as np
import scipy.fft

from .audio import AudioError

#: set to 0 to compute with the numpy reference code even where the compiled kernel is installed (benchmarks, checks)
KERNEL_ENV = "VOICEGENDER_FEATURE_KERNEL"
#: the compiled kernel's calling convention this module speaks (``VERSION`` in realtime/_featurekernel.c)
KERNEL_VERSION = 1


def _usable_kernel(module):
    """The compiled kernel module if it speaks this module's ``KERNEL_VERSION``, else None (with a warning: an
    extension built from other sources, e.g. a checkout updated without ``pip install -e .``)."""
    if module is None or getattr(module, "VERSION", None) == KERNEL_VERSION:
        return module
    warnings.warn(f"realtime/_featurekernel was built from other sources (version {getattr(module, 'VERSION', None)}, "
                  f"this code needs {KERNEL_VERSION}): using the numpy features; rebuild with `pip install -e .`",
                  RuntimeWarning, stacklevel=2)
    return None


try:  # the compiled loops (realtime/_featurekernel.c, built by pip install); the numpy code below is their reference
    import realtime._featurekernel as _kernel
except ImportError:  # not compiled (no C compiler at install time): numpy alone, same definition, slower
    _kernel = None
_kernel = None if os.environ.get(KERNEL_ENV, "").strip() == "0" else _usable_kernel(_kernel)

#: whether the compiled feature kernel is installed (``FeatureExtractor(kernel=None)`` then uses it)
KERNEL_AVAILABLE = _kernel is not None

_TINY32 = np.finfo(np.float32).tiny


@dataclass(frozen=True)
class FeatureDefinition:
    """Every parameter of the features. Frozen: a changed parameter is a different definition."""

    version: int = 2
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
    # pitch (librosa.yin with frame_length=n_fft, centred, zero-padded, on every second STFT frame)
    pitch_hop_length: int = 736  # a multiple of hop_length
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

    @property
    def n_pitch_frames(self) -> int:
        if self.center:
            return 1 + self.window_samples // self.pitch_hop_length
        return 1 + (self.window_samples - self.n_fft) // self.pitch_hop_length

    @property
    def frame_alignment(self) -> int:
        """Windows whose starts differ by a multiple of this many samples share their STFT and pitch frames."""
        return math.lcm(self.hop_length, self.pitch_hop_length)

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
        return definition_hash(self.to_dict())


def definition_hash(d: dict) -> str:
    """The short hash a bundle records of a definition (features here, the voice frontend in
    ``realtime.voice``): sha256 of its parameters as compact JSON with sorted keys, first 16 hex digits."""
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
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

def hz_to_mel(f):
    """Hz -> mel on the Slaney scale (librosa.hz_to_mel(htk=False)): linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz, logstep = 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-12) / min_log_hz) / logstep, mels)


def mel_to_hz(m):
    """mel -> Hz, the inverse of ``hz_to_mel`` (librosa.mel_to_hz(htk=False))."""
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, logstep = 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(d: FeatureDefinition = DEFAULT) -> np.ndarray:
    """Slaney-normalised mel filterbank, (n_mels, 1 + n_fft // 2): librosa.filters.mel(htk=False, norm='slaney')."""
    fftfreqs = np.linspace(0, d.sr / 2, 1 + d.n_fft // 2)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(d.fmin), hz_to_mel(d.fmax), d.n_mels + 2))
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


def dct_matrix(d: FeatureDefinition = DEFAULT) -> np.ndarray:
    """The MFCC DCT, (n_mfcc, n_mels): the first ``n_mfcc`` rows of an orthonormal DCT-II over the mel bands
    (scipy.fft.dct(type=2, norm='ortho')), so ``mfcc = dct_matrix(d) @ log_mel``."""
    n_mels = d.n_mels
    k = np.arange(n_mels)
    dct = np.cos(np.pi / n_mels * (k[None, :] + 0.5) * np.arange(d.n_mfcc)[:, None]) * np.sqrt(2.0 / n_mels)
    dct[0] /= np.sqrt(2.0)
    return dct.astype(np.float32)


def tonnetz_matrix(n_chroma: int = 12) -> np.ndarray:
    """The 6 x n_chroma projection of librosa.feature.tonnetz (fifths, minor and major thirds)."""
    dim_map = np.linspace(0, 12, num=n_chroma, endpoint=False)
    scale = np.array([7.0 / 6, 7.0 / 6, 3.0 / 2, 3.0 / 2, 2.0 / 3, 2.0 / 3])
    v = np.multiply.outer(scale, dim_map)
    v[::2] -= 0.5
    r = np.array([1, 1, 1, 1, 0.5, 0.5])
    return (r[:, None] * np.cos(np.pi * v)).astype(np.float32)


# --- the extractor ---------------------------------------------------------------------------------

FRAME_FEATURES = ("zcr", "tonnetz", "rolloff", "flatness", "contrast", "bandwidth", "centroid", "rms")
PITCH_SUMMARY = ("f0_median", "f0_mean", "f0_std", "f0_p10", "f0_p90", "voiced_fraction", "periodicity_mean")
_PITCH_QUANTILES = np.array([0.1, 0.5, 0.9])  # f0_p10, f0_median, f0_p90


def _percentiles(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``np.percentile(x, 100 * q)`` (method 'linear', same arithmetic, same result to the bit) without
    its ~30 us of Python: one sort and numpy's own lerp. ``x`` 1-D and finite, ``q`` in [0, 1)."""
    a = np.sort(x)
    vi = (a.size - 1) * q
    prev = vi.astype(np.intp)  # floor, vi >= 0
    nxt = np.minimum(prev + 1, a.size - 1)
    g = vi - prev
    lo, hi = a[prev], a[nxt]
    diff = hi - lo
    return np.where(g >= 0.5, hi - diff * (1 - g), lo + diff * g)


def _mean_std(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(m.mean(axis=1), m.std(axis=1))`` with numpy's own arithmetic (same bits, same memory order), sharing
    the mean and skipping the Python of np.mean / np.std (~15 us a call)."""
    n = m.shape[1]
    mean = np.add.reduce(m, axis=1, keepdims=True) / n
    dev = m - mean
    np.multiply(dev, dev, out=dev)
    return mean[:, 0], np.sqrt(np.add.reduce(dev, axis=1) / n)


def _by_rows(a: np.ndarray, b: np.ndarray, segments) -> np.ndarray:
    """``a @ b``, one BLAS call per segment of rows (``segments``: row offsets, None: one call)."""
    if segments is None:
        return a @ b
    out = np.empty((a.shape[0], *b.shape[1:]), dtype=np.result_type(a, b))
    for lo, hi in zip(segments[:-1], segments[1:]):
        out[lo:hi] = a[lo:hi] @ b
    return out


class FeatureExtractor:
    """Computes the shared features of one window. Build once (filterbanks are precomputed), call often.

    All public arrays are float32. Per-frame matrices use librosa's orientation (rows = features,
    columns = frames) so they compare directly with the librosa calls they stand for.

    Internally every per-frame quantity of a window lives in one float32 matrix ``Q`` (rows =
    quantities, columns = frames; row layout in ``self.rows``), beside a float64 ``D`` for spectral
    contrast's peak / valley dB (librosa computes those in float64) and a float32 ``F`` for pitch
    (rows f0 and periodicity, columns = pitch frames, every ``pitch_stride``-th STFT frame). The
    summarised rows of Q come first, in ``FRAME_FEATURES`` order, so the summaries are a few
    reductions over one block, and the streaming extractor moves reused frames with one copy per
    matrix. Every step repeats the
    previous implementation's arithmetic (tests/test_features_pinned.py keeps that implementation),
    so the outputs are the same to the bit on the real windows compared. The extractor keeps no
    per-call state, so one instance may serve many streams.
    """

    def __init__(self, definition: FeatureDefinition = DEFAULT, *, kernel: bool | None = None):
        """``kernel``: compute with the compiled loops (True; an error when they are not installed), with the numpy
        reference code (False), or with the compiled loops where installed (None)."""
        d = self.definition = definition
        if d.center and d.pad_mode != "constant":
            raise ValueError("only pad_mode='constant' is implemented")
        if kernel and _kernel is None:
            raise RuntimeError("the compiled feature kernel (realtime/_featurekernel.c) is not installed; reinstall "
                               "with a C compiler and Python headers (pip install -e .), or use kernel=False")
        if kernel and not d.center:
            raise ValueError("the compiled feature kernel frames centred windows only (center=True)")
        self.kernel = (KERNEL_AVAILABLE and d.center) if kernel is None else bool(kernel)
        n_bins = 1 + d.n_fft // 2
        self._win = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(d.n_fft) / d.n_fft)).astype(np.float32)  # periodic hann
        self.freqs = np.linspace(0, d.sr / 2, n_bins).astype(np.float32)
        self._mel = mel_filterbank(d)
        self._dct = dct_matrix(d)  # (n_mfcc, n_mels): DCT-II, norm='ortho'
        self._chroma = chroma_filterbank(d)
        self._tonnetz = tonnetz_matrix(d.n_chroma)
        self._contrast_bands = self._make_contrast_bands()
        # contrast bands are consecutive runs of bins; those whose quantile is a single bin reduce to min / max
        self._band_starts = np.array([rows[0] for rows, _ in self._contrast_bands], dtype=np.int64)
        self._sorted_bands = [(k, rows[0], rows[-1] + 1, n_q) for k, (rows, n_q) in enumerate(self._contrast_bands) if n_q > 1]
        self._min_period = int(np.floor(d.sr / d.pitch_fmax))
        self._max_period = min(int(np.ceil(d.sr / d.pitch_fmin)), d.n_fft - 1)
        # the autocorrelation up to the longest period, free of circular wrap-around: n_fft + max_period points
        # suffice (librosa pads to 2 * n_fft; the lags it keeps are the same sums)
        self._acf_n = scipy.fft.next_fast_len(d.n_fft + self._max_period, real=True)
        self._lag_count = np.arange(1, self._max_period + 1, dtype=np.float32)
        self.pitch_stride, rem = divmod(d.pitch_hop_length, d.hop_length)
        if rem or self.pitch_stride < 1:
            raise ValueError(f"pitch_hop_length ({d.pitch_hop_length}) must be a whole multiple of hop_length "
                             f"({d.hop_length})")
        self._frame_index = np.arange(d.n_pitch_frames)
        self._all_frames = np.arange(d.n_frames)
        self._neighbours = np.array([-1, 0, 1])
        self.rows = self._make_rows()
        # the compiled loops' arguments: band starts and quantile sizes, and the Q rows each per-frame value goes to
        self._band_nq = np.array([n_q for _, n_q in self._contrast_bands], dtype=np.int64)
        self._kernel_rows = np.array([self.rows[n].start for n in ("centroid", "bandwidth", "rolloff", "flatness", "rms",
                                                                   "zcr")], dtype=np.int64)
        nz = [np.flatnonzero(row) for row in self._mel]  # each mel triangle's bins (contiguous), for the kernel
        self._mel_first = np.array([z[0] if z.size else 0 for z in nz], dtype=np.int64)
        self._mel_count = np.array([z[-1] - z[0] + 1 if z.size else 0 for z in nz], dtype=np.int64)
        self._mel_offset = np.concatenate(([0], np.cumsum(self._mel_count)[:-1])).astype(np.int64)
        self._mel_weights = np.concatenate([row[a:a + n] for row, a, n in zip(self._mel, self._mel_first,
                                                                               self._mel_count)] + [np.zeros(1, np.float32)])
        self._summary_cols = np.array([("mean", "min", "max", "std").index(s) for s in d.summaries], dtype=np.int64)
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
        if not np.array_equal(np.concatenate([r for r, _ in bands]), np.arange(len(freq))):
            raise ValueError("spectral contrast bands must tile the bins in order")  # _peaks_valleys' reduceat needs it
        return bands

    def _make_rows(self) -> dict[str, slice]:
        """Row layout of Q: FRAME_FEATURES first (the summarised block), then the mel spectrum in dB (before the
        window's top_db clipping, so that a reused frame keeps its logarithms)."""
        d = self.definition
        sizes = {"zcr": 1, "tonnetz": 6, "rolloff": 1, "flatness": 1, "contrast": d.contrast_bands + 1, "bandwidth": 1,
                 "centroid": 1, "rms": 1, "mel_db": d.n_mels}
        rows, r = {}, 0
        for name, size in sizes.items():  # FRAME_FEATURES order first
            rows[name] = slice(r, r + size)
            r += size
        assert tuple(sizes)[:len(FRAME_FEATURES)] == FRAME_FEATURES
        self._n_summarised = rows[FRAME_FEATURES[-1]].stop
        self._n_rows = r
        return rows

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

    def _frame_views(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All frames of a window as strided views, (T, n_fft): zero-padded (STFT) and edge-padded (ZCR), and the
        pitch frames (every ``pitch_stride``-th zero-padded frame). Two small buffers instead of np.pad, whose
        Python costs more than the copies."""
        d = self.definition
        if not d.center:
            v = np.lib.stride_tricks.sliding_window_view(x, d.n_fft)[:: d.hop_length]
            return v, v, v[:: self.pitch_stride]
        half = d.n_fft // 2
        zpad = np.zeros(x.size + 2 * half, dtype=np.float32)
        zpad[half:-half] = x
        epad = zpad.copy()
        epad[:half] = x[0]
        epad[-half:] = x[-1]
        # frame j = pad[j * hop : j * hop + n_fft]; the plain constructor, as sliding_window_view costs ~10 us of Python
        shape, strides = (d.n_frames, d.n_fft), (d.hop_length * 4, 4)
        zframes = np.ndarray(shape, np.float32, zpad, 0, strides)
        return zframes, np.ndarray(shape, np.float32, epad, 0, strides), zframes[:: self.pitch_stride]

    def _frames(self, x: np.ndarray, todo: np.ndarray | None = None, ptodo: np.ndarray | None = None) -> tuple:
        """What :meth:`_frame_block` takes for the frames of a window that are to be computed, those at ``todo``
        (STFT frames) and ``ptodo`` (pitch frames; None: all of each): the numpy code takes the zero- and the
        edge-padded frames (:meth:`_frame_views`, indexed) and the pitch frames; the compiled kernel copies the
        frames out of the window already windowed, with their zero-crossing rates, and the pitch frames."""
        d = self.definition
        if not self.kernel:
            zv, ev, pv = self._frame_views(x)
            return ((zv, ev) if todo is None else (zv[todo], ev[todo])) + (pv if ptodo is None else pv[ptodo],)
        todo = self._all_frames if todo is None else todo
        ptodo = self._frame_index if ptodo is None else ptodo
        frames = np.empty((len(todo), d.n_fft), dtype=np.float32)
        zcr = np.empty(len(todo), dtype=np.float32)
        pframes = np.empty((len(ptodo), d.n_fft), dtype=np.float32)
        _kernel.frames(x, todo, frames, self._win, zcr, len(todo), x.size, d.hop_length, d.n_fft, d.zcr_threshold)
        _kernel.frames(x, ptodo, pframes, None, None, len(ptodo), x.size, d.pitch_hop_length, d.n_fft, 0.0)
        return frames, zcr, pframes

    def _frame_block(self, zframes: np.ndarray, eframes: np.ndarray, pframes: np.ndarray, *,
                     keep_spectrum: bool = False, segments: np.ndarray | None = None):
        """Per-frame quantities of the given frames: Q's rows (``self.rows``) for those columns, D, the dB of
        spectral contrast's peaks and valleys (float64, as librosa; rows: peaks then valleys), and F, the pitch
        of the given pitch frames (rows f0, periodicity). The contrast rows of Q are left for :meth:`_assemble`:
        they need the whole window. Returns (Q, D, F), and S if asked.

        ``zframes`` are zero-padded frames (STFT), ``eframes`` the same frames edge-padded (ZCR), ``pframes``
        zero-padded pitch frames (YIN), not necessarily the same frames' pitch (:meth:`_frames`; with the
        compiled kernel the first two are the windowed frames and their zero-crossing rates).
        Each quantity is the arithmetic of the definition, operation for operation, row by row, so the
        elementwise and per-row work does not depend on which frames are computed together. The four matrix
        products (mel, centroid, chroma, tonnetz) are the exception: BLAS rounds by the shape of the call.
        ``segments`` (row offsets ``[0, ..., T]``) runs them once per segment, so that the frames of several
        windows stacked into one call (:func:`extract_streams`) get the bits each window's own call gives.
        """
        if self.kernel:
            return self._frame_block_compiled(zframes, eframes, pframes, keep_spectrum, segments)
        d, R = self.definition, self.rows
        T = zframes.shape[0]
        out = np.empty((self._n_rows, T), dtype=np.float32)
        spec = scipy.fft.rfft(zframes * self._win, axis=1)  # (T, F) complex64
        S = np.abs(spec)  # magnitude
        P = S * S
        out[R["mel_db"]] = (10.0 * np.log10(np.maximum(d.db_amin, _by_rows(P, self._mel.T, segments)))).T
        total = S.sum(axis=1, keepdims=True)
        Sn = S / np.where(total > _TINY32, total, 1.0)
        centroid = out[R["centroid"].start] = _by_rows(Sn, self.freqs, segments)
        dev = self.freqs[None, :] - centroid[:, None]
        out[R["bandwidth"].start] = np.sqrt(np.einsum("tf,tf->t", Sn, dev * dev))
        csum = np.cumsum(S, axis=1)
        out[R["rolloff"].start] = self.freqs[np.argmax(csum >= d.rolloff_percent * csum[:, -1:], axis=1)]
        Sp = np.maximum(d.flatness_amin, P)
        n_bins = S.shape[1]  # means as sum / n: np.mean's own arithmetic without its Python wrapper
        out[R["flatness"].start] = np.exp(np.add.reduce(np.log(Sp), axis=1) / n_bins) / (np.add.reduce(Sp, axis=1) / n_bins)
        nb = len(self._contrast_bands)
        D = np.empty((2 * nb, T))
        self._peaks_valleys(S, D[:nb], D[nb:])
        np.maximum(d.db_amin, D, out=D)  # power_to_db, in place
        np.log10(D, out=D)
        D *= 10.0
        # tonnetz over STFT chroma (chroma normalised by its max, then L1, per frame)
        chroma = _by_rows(P, self._chroma.T, segments)  # (T, 12)
        cmax = np.max(np.abs(chroma), axis=1, keepdims=True)
        chroma = chroma / np.where(cmax > _TINY32, cmax, 1.0)
        c1 = np.sum(np.abs(chroma), axis=1, keepdims=True)
        out[R["tonnetz"]] = (_by_rows(chroma / np.where(c1 > _TINY32, c1, 1.0), self._tonnetz.T, segments)).T
        # rms last: it halves the DC and Nyquist bins of P in place
        P[:, 0] *= 0.5
        if d.n_fft % 2 == 0:
            P[:, -1] *= 0.5
        out[R["rms"].start] = np.sqrt(2.0 * P.sum(axis=1) / d.n_fft**2)
        # sign bits after zeroing |x| <= threshold: exactly "x < -threshold"
        signs = eframes < -d.zcr_threshold
        out[R["zcr"].start] = np.count_nonzero(signs[:, 1:] != signs[:, :-1], axis=1) / d.n_fft
        F = np.empty((2, pframes.shape[0]), dtype=np.float32)
        if pframes.shape[0]:
            self._yin(pframes, F[0], F[1])
        return (out, D, F, S) if keep_spectrum else (out, D, F)

    def _frame_block_compiled(self, frames, zcr, pframes, keep_spectrum, segments):
        """:meth:`_frame_block` by the compiled loops, from the windowed frames and their zero-crossing rates: the
        same quantities from the same FFTs, ~10 calls instead of ~60 (sums accumulate in double: equal to the
        numpy code up to float32 rounding)."""
        d, R = self.definition, self.rows
        T = frames.shape[0]
        out = np.empty((self._n_rows, T), dtype=np.float32)
        spec = scipy.fft.rfft(frames, axis=1)
        n_bins = spec.shape[1]
        S = np.empty((T, n_bins), dtype=np.float32) if keep_spectrum else None
        P = np.empty((T, n_bins), dtype=np.float32)
        D = np.empty((2 * len(self._contrast_bands), T))
        _kernel.spectral(spec, S, P, out, D, zcr, self.freqs, self._band_starts, self._band_nq, self._kernel_rows, T,
                         n_bins, d.n_fft, T, d.rolloff_percent, d.flatness_amin, d.db_amin)
        M = np.empty((T, d.n_mels), dtype=np.float32)
        _kernel.mel(P, self._mel_weights, self._mel_first, self._mel_count, self._mel_offset, M, T, n_bins, d.n_mels)
        _kernel.bands(M, _by_rows(P, self._chroma.T, segments), self._tonnetz, out, R["mel_db"].start,
                      R["tonnetz"].start, T, d.n_mels, d.n_chroma, T, d.db_amin)
        F = np.empty((2, pframes.shape[0]), dtype=np.float32)
        if pframes.shape[0]:
            spec = scipy.fft.rfft(pframes, n=self._acf_n, axis=1)
            power = np.empty(spec.shape, dtype=np.float32)
            _kernel.power(spec, power, spec.size)
            acf = scipy.fft.irfft(power, n=self._acf_n, axis=1)
            _kernel.yin(acf, pframes, F[0], F[1], len(pframes), self._acf_n, d.n_fft, self._min_period,
                        self._max_period, d.yin_trough_threshold, d.sr)
        return (out, D, F, S) if keep_spectrum else (out, D, F)

    def frame_features(self, window: np.ndarray) -> dict[str, np.ndarray]:
        """Every per-frame feature of one window in librosa's orientation, {name: (rows, n_frames)}:
        the stat features, 'mfcc', 'S' (magnitude spectrogram), 'f0' and 'periodicity'."""
        Q, D, F, S = self._frame_block(*self._frames(self._check(window)), keep_spectrum=True)
        self._contrast(Q, D)
        out = {name: Q[self.rows[name]].copy() for name in ("centroid", "bandwidth", "rolloff", "flatness", "rms",
                                                             "tonnetz", "zcr", "contrast")}
        out["f0"], out["periodicity"] = F[:1].copy(), F[1:].copy()
        out["S"] = S.T
        out["mfcc"] = self._mfcc(Q)
        return out

    def _peaks_valleys(self, S: np.ndarray, peak: np.ndarray, valley: np.ndarray) -> None:
        """Spectral contrast's per-frame part into ``peak`` / ``valley`` (bands, T): mean of the top / bottom
        quantile of each octave band. A one-bin quantile is the band's max / min: one reduceat for all such
        bands; only the wide bands are sorted."""
        valley[:] = np.minimum.reduceat(S, self._band_starts, axis=1).T
        peak[:] = np.maximum.reduceat(S, self._band_starts, axis=1).T
        for k, a, b, n_q in self._sorted_bands:
            sub = np.sort(S[:, a:b], axis=1)
            valley[k] = np.add.reduce(sub[:, :n_q], axis=1) / n_q  # the mean
            peak[k] = np.add.reduce(sub[:, -n_q:], axis=1) / n_q

    def _contrast(self, Q: np.ndarray, D: np.ndarray) -> None:
        """librosa.feature.spectral_contrast into Q's contrast rows: dB of peaks minus dB of valleys, top_db=80
        over the window (in float64, as librosa)."""
        nb = len(self._contrast_bands)
        peak, valley = D[:nb], D[nb:]  # dB per frame; each clipped at its own window max - 80 dB
        Q[self.rows["contrast"]] = np.maximum(peak, peak.max() - 80.0) - np.maximum(valley, valley.max() - 80.0)

    def _mfcc(self, Q: np.ndarray) -> np.ndarray:
        """MFCC from per-frame mel power: dB with top_db over the window, then DCT-II ortho. (n_mfcc, T)"""
        d = self.definition
        # BLAS rounds by operand layout: a frames-first dB matrix, as the definition's reference had, keeps the bits
        db = np.ascontiguousarray(Q[self.rows["mel_db"]].T)
        return self._dct @ np.maximum(db, db.max() - d.mfcc_top_db).T

    def _yin(self, frames: np.ndarray, f0_out: np.ndarray, periodicity_out: np.ndarray) -> None:
        """librosa.yin on the shared zero-padded frames; also the periodicity 1 - min CMNDF."""
        d = self.definition
        lo, hi = self._min_period, self._max_period
        spec = scipy.fft.rfft(frames, n=self._acf_n, axis=1)
        acf = scipy.fft.irfft(spec.real**2 + spec.imag**2, n=self._acf_n, axis=1)[:, : hi + 1]
        head = frames[:, :hi]
        energy = np.cumsum(head * head, axis=1)
        energy[:, 0] = 0.0
        diff = 2.0 * (acf[:, :1] - acf[:, 1: hi + 1]) - energy  # d(k), k = 1..hi
        cmean = np.cumsum(diff, axis=1) / self._lag_count
        cmndf = diff[:, lo - 1: hi] / (cmean[:, lo - 1: hi] + _TINY32)  # tau = lo..hi, (T, K)
        T, K = cmndf.shape
        # troughs: x[i] < x[i-1] and x[i] <= x[i+1] (edge-padded); first bin: x[0] < x[1]
        trough = np.empty_like(cmndf, dtype=bool)
        mid = cmndf[:, 1:-1]
        np.less(mid, cmndf[:, :-2], out=trough[:, 1:-1])
        trough[:, 1:-1] &= mid <= cmndf[:, 2:]
        trough[:, -1] = cmndf[:, -1] < cmndf[:, -2]
        trough[:, 0] = cmndf[:, 0] < cmndf[:, 1]
        trough &= cmndf < d.yin_trough_threshold
        period = np.where(trough.any(axis=1), np.argmax(trough, axis=1), np.argmin(cmndf, axis=1))
        # parabolic interpolation, only at the chosen lag (none at the first and last lag)
        rows = self._frame_index[:T] if T <= self._frame_index.size else np.arange(T)  # more: frames of many windows
        q = np.clip(period, 1, K - 2)
        c0, c1, c2 = cmndf[rows[:, None], q[:, None] + self._neighbours].T
        a = c2 + c0 - 2 * c1
        b = (c2 - c0) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            shift = np.where((np.abs(b) >= np.abs(a)) | (q != period), 0.0, -b / a)
        f0_out[:] = d.sr / (lo + period + shift)
        periodicity_out[:] = 1.0 - np.clip(cmndf[rows, period], 0.0, 1.0)

    # -- window-level outputs
    def _pitch_summary(self, f0: np.ndarray, periodicity: np.ndarray) -> np.ndarray:
        d = self.definition
        voiced = (periodicity > 1.0 - d.voicing_threshold) & (f0 >= d.pitch_fmin) & (f0 <= d.pitch_fmax)
        n_voiced = np.count_nonzero(voiced)
        frac = n_voiced / voiced.size
        per_mean = np.add.reduce(periodicity) / periodicity.size  # the mean
        if n_voiced < 3:  # no usable pitch: fixed fill values, distinguishable by voiced_fraction
            return np.array([0, 0, 0, 0, 0, frac, per_mean], dtype=np.float32)
        lf = np.log2(f0[voiced])
        p10, p50, p90 = _percentiles(lf, _PITCH_QUANTILES)
        (mean,), (std,) = _mean_std(lf[None, :])
        return np.array([p50, mean, std, p10, p90, frac, per_mean], dtype=np.float32)

    def _assemble(self, Q: np.ndarray, D: np.ndarray, F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-frame quantities of one window (Q, D, F from :meth:`_frame_block`) -> (stats, mfcc). Fills Q's
        contrast rows."""
        d = self.definition
        mfcc = self._mfcc(Q)
        self._contrast(Q, D)
        if self.kernel:
            stats = np.empty(self.n_stats, dtype=np.float32)
            _kernel.assemble(Q, mfcc, F[0], F[1], self._summary_cols, stats, Q.shape[1], self._n_summarised,
                             d.mfcc_summary_coeffs, F.shape[1], d.pitch_fmin, d.pitch_fmax, d.voicing_threshold)
            return stats, mfcc
        # (rows, T) in FRAME_FEATURES order. Column-major, as the reference implementation happened to stack it:
        # numpy then sums each row frame by frame rather than pairwise, and these are the bits the models know.
        m = np.asfortranarray(Q[: self._n_summarised])
        mean, std = _mean_std(m)
        fns = {"mean": lambda: mean, "min": lambda: np.minimum.reduce(m, axis=1),
               "max": lambda: np.maximum.reduce(m, axis=1), "std": lambda: std}
        frame_stats = np.stack([fns[s]() for s in d.summaries], axis=1).ravel()
        mfcc_stats = np.stack(_mean_std(mfcc[: d.mfcc_summary_coeffs]), axis=1).ravel()
        pitch = self._pitch_summary(F[0], F[1])
        return np.concatenate((frame_stats, pitch, mfcc_stats)), mfcc

    def _window_block(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._frame_block(*self._frames(x))

    def extract(self, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One window -> (stats (n_stats,), mfcc (n_mfcc, n_frames)), both float32."""
        return self._assemble(*self._window_block(self._check(window)))

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
    whole number of STFT hops since the previous window, the STFT frames that lie wholly inside both
    windows (away from the zero-padded edges) are taken from the previous window instead of
    recomputed: at a 0.5 s hop about 25 of 87 frames are new. The pitch frames are reused alike when
    the move is a whole number of pitch hops (``FeatureDefinition.frame_alignment``: the live engine
    aligns its windows so), and all recomputed otherwise. The result equals ``extract(window)`` (same
    per-frame arithmetic; tests/test_features_streaming.py checks it).
    """

    def __init__(self, extractor: FeatureExtractor):
        self.fe = extractor
        d = extractor.definition
        self.hop = d.hop_length
        self._interior = self._interior_frames(d.n_frames, d.hop_length)
        self._pitch_interior = self._interior_frames(d.n_pitch_frames, d.pitch_hop_length)
        self._todo: dict[tuple[bool, int], np.ndarray] = {}  # (pitch?, shift) -> frames to compute afresh
        self.reset()

    def _interior_frames(self, n: int, hop: int) -> np.ndarray:
        d = self.fe.definition
        j = np.arange(n)
        return (j * hop - d.n_fft // 2 >= 0) & (j * hop + d.n_fft // 2 <= d.window_samples)

    def reset(self) -> None:
        self._start: int | None = None
        self._Q: np.ndarray | None = None  # the previous window's per-frame quantities (FeatureExtractor._frame_block)
        self._D: np.ndarray | None = None
        self._F: np.ndarray | None = None
        self.reused_frames = 0  # STFT frames
        self.computed_frames = 0
        self.reused_pitch_frames = 0

    def _fresh(self, pitch: bool, shift: int) -> np.ndarray:
        """Frames (STFT or pitch) of the new window that are not interior frames of both windows, shift hops apart."""
        todo = self._todo.get((pitch, shift))
        if todo is None:
            interior = self._pitch_interior if pitch else self._interior
            n = len(interior)
            j = np.arange(n)
            reuse = interior & (j + shift < n)
            reuse[reuse] &= interior[j[reuse] + shift]
            todo = self._todo[pitch, shift] = np.flatnonzero(~reuse)
        return todo

    def plan(self, window: np.ndarray, start: int | None = None) -> FramePlan:
        """What ``extract(window, start)`` must compute afresh, given the previous window (no state changes)."""
        fe = self.fe
        x = fe._check(window)
        shift = None
        if start is not None and self._start is not None and start >= self._start and (start - self._start) % self.hop == 0:
            shift = (start - self._start) // self.hop
        if shift is None or shift >= len(self._interior):
            return FramePlan(start, None, None, None, fe._frames(x))
        todo = self._fresh(False, shift)
        ptodo = None if shift % fe.pitch_stride else self._fresh(True, shift // fe.pitch_stride)
        return FramePlan(start, shift, todo, ptodo, fe._frames(x, todo, ptodo))

    def complete(self, plan: FramePlan, Q: np.ndarray, D: np.ndarray, F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``extract``'s result from its plan and the fresh frames' (Q, D, F) (``FeatureExtractor._frame_block`` of
        ``*plan.frames``); keeps this window's frames for the next one."""
        if plan.todo is None:
            Q, D = np.ascontiguousarray(Q), np.ascontiguousarray(D)  # a batch's columns become this window's own
            self.computed_frames += Q.shape[1]
        else:
            Q, D = _moved(self._Q, Q, plan.shift, plan.todo), _moved(self._D, D, plan.shift, plan.todo)
            self.reused_frames += Q.shape[1] - plan.todo.size
            self.computed_frames += plan.todo.size
        if plan.ptodo is None:
            F = np.ascontiguousarray(F)
        else:
            F = _moved(self._F, F, plan.shift // self.fe.pitch_stride, plan.ptodo)
            self.reused_pitch_frames += F.shape[1] - plan.ptodo.size
        self._start, self._Q, self._D, self._F = plan.start, Q, D, F
        return self.fe._assemble(Q, D, F)

    def extract(self, window: np.ndarray, start: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(stats, mfcc) of this window of the stream (``start``: its first sample's position; None: unknown)."""
        plan = self.plan(window, start)
        return self.complete(plan, *self.fe._frame_block(*plan.frames))


def _moved(old: np.ndarray, fresh: np.ndarray, shift: int, todo: np.ndarray) -> np.ndarray:
    """The previous window's per-frame matrix ``old``, in place, moved ``shift`` frames left (frame j of the new
    window is frame j + shift of the old one), with the fresh frames' columns written at ``todo``."""
    n = old.shape[1]
    if shift:
        old[:, : n - shift] = old[:, shift:]
    old[:, todo] = fresh
    return old


class FramePlan(NamedTuple):
    """The frames one window of a stream needs computed (``StreamingExtractor.plan``)."""

    start: int | None
    shift: int | None  # STFT hops since the previous window; None: every frame is new
    todo: np.ndarray | None  # the indices of the new STFT frames; None: all
    ptodo: np.ndarray | None  # the indices of the new pitch frames; None: all
    frames: tuple  # those frames as ``FeatureExtractor._frame_block`` takes them (``_frames``): STFT frames first,
    # pitch frames last, each with one row per frame


#: fresh frames per ``_frame_block`` call in :func:`extract_streams`: a few windows' worth share the per-call cost
#: and their arrays (~40 KB a frame) still fit the CPU's caches (with many more, each frame costs more than alone)
BLOCK_FRAMES = 128


def extract_streams(items) -> list[tuple[np.ndarray, np.ndarray]]:
    """``StreamingExtractor.extract`` for the next window of many streams at once: ``items`` are
    ``(streaming_extractor, window, start)``, each extractor at most once, all of one feature definition.

    The fresh frames of several windows go through one ``FeatureExtractor._frame_block`` call (up to
    ``BLOCK_FRAMES`` frames; its matrix products segment by segment), then each window is summarised as
    ``extract`` would: each result equals that stream's own ``extract(window, start)`` to the bit, and each
    extractor ends in the same state."""
    if not items:
        return []
    fe = items[0][0].fe
    if any(sx.fe.definition != fe.definition for sx, _, _ in items):
        raise ValueError("extract_streams: the streams' extractors compute different feature definitions")
    if len({id(sx) for sx, _, _ in items}) != len(items):
        raise ValueError("extract_streams: one window per stream at a time (its next window reuses this one's frames)")
    out: list[tuple[np.ndarray, np.ndarray]] = []
    group: list[tuple[StreamingExtractor, FramePlan]] = []
    frames = 0
    for sx, window, start in items:  # consecutive windows, up to BLOCK_FRAMES fresh frames a call
        plan = sx.plan(window, start)
        if group and frames + len(plan.frames[0]) > BLOCK_FRAMES:
            out += _complete_block(fe, group)
            group, frames = [], 0
        group.append((sx, plan))
        frames += len(plan.frames[0])
    return out + _complete_block(fe, group)


def _complete_block(fe: FeatureExtractor, group: list[tuple[StreamingExtractor, FramePlan]]) -> list:
    """The fresh frames of a few windows in one ``_frame_block`` call, then each window completed by its stream."""
    if len(group) == 1:
        sx, plan = group[0]
        return [sx.complete(plan, *fe._frame_block(*plan.frames))]
    segments = np.cumsum([0] + [len(plan.frames[0]) for _, plan in group])
    psegments = np.cumsum([0] + [len(plan.frames[-1]) for _, plan in group])
    Q, D, F = fe._frame_block(*(np.concatenate(part) for part in zip(*(plan.frames for _, plan in group))),
                              segments=segments)
    return [sx.complete(plan, Q[:, lo:hi], D[:, lo:hi], F[:, plo:phi])
            for (sx, plan), lo, hi, plo, phi in zip(group, segments[:-1], segments[1:], psegments[:-1], psegments[1:])]

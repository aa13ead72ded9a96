"""The optimised extractor still computes what the models were trained on.

``_reference`` below is the straightforward implementation of the feature definition as it stood
when the bundled models were trained (version 2: version 1 as written before the per-hop
optimisations, with pitch on every second frame): one numpy expression per quantity, frames first.
The live extractor (batch and streaming) must give the
same stats and MFCC on many real windows, at the tolerances of tests/test_features_streaming.py,
and the same per-frame pitch (a YIN lag that flipped would show there even when a summary hides it).
"""
import numpy as np
import pytest
import scipy.fft

from realtime.audio import load_audio
from realtime.features import DEFAULT, FRAME_FEATURES, FeatureExtractor, StreamingExtractor

from .data import librispeech_files

_TINY32 = np.finfo(np.float32).tiny


def _power_to_db(x, amin, top_db):
    db = 10.0 * np.log10(np.maximum(amin, x))
    return np.maximum(db, db.max() - top_db)


def _yin(fe, frames):
    d, lo, hi = fe.definition, fe._min_period, fe._max_period
    n = fe._acf_n  # n_fft + max_period points: no wrap-around at the lags kept
    spec = scipy.fft.rfft(frames, n=n, axis=1)
    acf = scipy.fft.irfft(spec.real**2 + spec.imag**2, n=n, axis=1)[:, : hi + 1]
    energy = np.cumsum(frames[:, :hi] * frames[:, :hi], axis=1)
    energy[:, 0] = 0.0
    diff = 2.0 * (acf[:, :1] - acf[:, 1: hi + 1]) - energy
    cmean = np.cumsum(diff, axis=1) / np.arange(1, hi + 1, dtype=np.float32)
    cmndf = diff[:, lo - 1: hi] / (cmean[:, lo - 1: hi] + _TINY32)
    a = cmndf[:, 2:] + cmndf[:, :-2] - 2 * cmndf[:, 1:-1]
    b = (cmndf[:, 2:] - cmndf[:, :-2]) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        inner = np.where(np.abs(b) >= np.abs(a), 0.0, -b / a)
    shifts = np.zeros_like(cmndf)
    shifts[:, 1:-1] = inner
    trough = np.empty_like(cmndf, dtype=bool)
    trough[:, 1:-1] = (cmndf[:, 1:-1] < cmndf[:, :-2]) & (cmndf[:, 1:-1] <= cmndf[:, 2:])
    trough[:, -1] = cmndf[:, -1] < cmndf[:, -2]
    trough[:, 0] = cmndf[:, 0] < cmndf[:, 1]
    good = trough & (cmndf < d.yin_trough_threshold)
    period = np.where(good.any(axis=1), np.argmax(good, axis=1), np.argmin(cmndf, axis=1))
    rows = np.arange(len(frames))
    f0 = d.sr / (lo + period + shifts[rows, period])
    return f0.astype(np.float32), (1.0 - np.clip(cmndf[rows, period], 0.0, 1.0)).astype(np.float32)


def _reference(fe, x):
    """(stats, mfcc, f0 per pitch frame) of one window, computed the way version 1 was written, pitch on every
    second frame."""
    d = fe.definition
    half = d.n_fft // 2
    view = np.lib.stride_tricks.sliding_window_view
    zframes = view(np.pad(x, half, mode="constant"), d.n_fft)[:: d.hop_length]
    eframes = view(np.pad(x, half, mode="edge"), d.n_fft)[:: d.hop_length]
    S = np.abs(scipy.fft.rfft(zframes * fe._win, axis=1))
    P = S * S
    q = {}
    total = S.sum(axis=1, keepdims=True)
    Sn = S / np.where(total > _TINY32, total, 1.0)
    q["centroid"] = Sn @ fe.freqs
    dev = fe.freqs[None, :] - q["centroid"][:, None]
    q["bandwidth"] = np.sqrt(np.einsum("tf,tf->t", Sn, dev * dev))
    csum = np.cumsum(S, axis=1)
    q["rolloff"] = fe.freqs[np.argmax(csum >= d.rolloff_percent * csum[:, -1:], axis=1)]
    Sp = np.maximum(d.flatness_amin, P)
    q["flatness"] = np.exp(np.mean(np.log(Sp), axis=1)) / np.mean(Sp, axis=1)
    peak = np.empty((len(S), len(fe._contrast_bands)))
    valley = np.empty_like(peak)
    for k, (rows, n_q) in enumerate(fe._contrast_bands):
        sub = np.sort(S[:, rows], axis=1)
        valley[:, k] = sub[:, :n_q].mean(axis=1)
        peak[:, k] = sub[:, -n_q:].mean(axis=1)
    Pr = P.copy()
    Pr[:, 0] *= 0.5
    Pr[:, -1] *= 0.5
    q["rms"] = np.sqrt(2.0 * Pr.sum(axis=1) / d.n_fft**2)
    chroma = P @ fe._chroma.T
    cmax = np.max(np.abs(chroma), axis=1, keepdims=True)
    chroma = chroma / np.where(cmax > _TINY32, cmax, 1.0)
    c1 = np.sum(np.abs(chroma), axis=1, keepdims=True)
    q["tonnetz"] = (chroma / np.where(c1 > _TINY32, c1, 1.0)) @ fe._tonnetz.T
    signs = np.signbit(np.where(np.abs(eframes) <= d.zcr_threshold, 0.0, eframes))
    q["zcr"] = (np.count_nonzero(signs[:, 1:] != signs[:, :-1], axis=1) / d.n_fft).astype(np.float32)
    f0, periodicity = _yin(fe, zframes[:: d.pitch_hop_length // d.hop_length])
    # window level
    mfcc = fe._dct @ _power_to_db(P @ fe._mel.T, d.db_amin, d.mfcc_top_db).astype(np.float32).T
    q["contrast"] = (_power_to_db(peak.T, d.db_amin, 80.0) - _power_to_db(valley.T, d.db_amin, 80.0)).astype(np.float32)
    m = np.vstack([q[name] if name == "contrast" else np.atleast_2d(q[name].T) for name in FRAME_FEATURES])
    parts = [np.stack([np.mean(m, axis=1), np.min(m, axis=1), np.max(m, axis=1), np.std(m, axis=1)], axis=1).ravel()]
    voiced = (periodicity > 1.0 - d.voicing_threshold) & (f0 >= d.pitch_fmin) & (f0 <= d.pitch_fmax)
    if voiced.sum() < 3:
        parts.append(np.array([0, 0, 0, 0, 0, voiced.mean(), periodicity.mean()], dtype=np.float32))
    else:
        lf = np.log2(f0[voiced])
        p10, p50, p90 = np.percentile(lf, [10, 50, 90])
        parts.append(np.array([p50, lf.mean(), lf.std(), p10, p90, voiced.mean(), periodicity.mean()], dtype=np.float32))
    c = mfcc[: d.mfcc_summary_coeffs]
    parts.append(np.stack([c.mean(axis=1), c.std(axis=1)], axis=1).ravel())
    return np.concatenate(parts).astype(np.float32), mfcc, f0


@pytest.fixture(scope="module")
def stream_windows():
    """Consecutive windows 22 STFT hops (~0.5 s) apart, as the engine takes them, from 24 utterances
    spread over the corpus (readers of both genders): ~200 windows."""
    files = librispeech_files()
    step, n = 22 * DEFAULT.hop_length, DEFAULT.window_samples
    out = []
    for path in files[:: max(1, len(files) // 24)][:24]:
        y = load_audio(path)
        out.append([(s, y[s:s + n]) for s in range(0, min(len(y), 6 * DEFAULT.sr) - n + 1, step)])
    assert sum(map(len, out)) >= 150
    return out


def test_batch_and_streaming_equal_the_reference_implementation(stream_windows):
    fe = FeatureExtractor()
    voiced_frames = 0
    for windows in stream_windows:
        sx = StreamingExtractor(fe)
        for start, w in windows:
            s_ref, m_ref, f0_ref = _reference(fe, w)
            ff = fe.frame_features(w)
            np.testing.assert_allclose(ff["f0"][0], f0_ref, rtol=1e-5)
            voiced_frames += int(np.count_nonzero(ff["periodicity"][0] > 0.7))
            for stats, mfcc in (fe.extract(w), sx.extract(w, start)):
                assert stats.dtype == mfcc.dtype == np.float32
                np.testing.assert_allclose(mfcc, m_ref, rtol=1e-5, atol=1e-3)
                np.testing.assert_allclose(stats, s_ref, rtol=1e-4, atol=1e-4)
        assert sx.reused_frames >= (len(windows) - 1) * (DEFAULT.n_frames - 25)
        assert sx.reused_pitch_frames >= (len(windows) - 1) * (DEFAULT.n_pitch_frames - 14)  # 22 hops: 11 pitch hops
    assert voiced_frames > 2500  # real speech: the pitch comparison covered many voiced (pitch) frames


def test_percentiles_equal_numpy():
    """The pitch quantiles' shortcut is np.percentile's own arithmetic, to the bit, on sizes 3..87."""
    from realtime.features import _PITCH_QUANTILES, _percentiles

    rng = np.random.default_rng(0)
    for n in range(3, 88):
        x = np.log2(rng.uniform(60, 400, n)).astype(np.float32)
        np.testing.assert_array_equal(np.float32(_percentiles(x, _PITCH_QUANTILES)), np.float32(np.percentile(x, [10, 50, 90])))

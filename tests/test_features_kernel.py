"""The compiled feature kernel (realtime/_featurekernel.c) computes what the numpy reference computes.

The numpy code of realtime/features.py is the definition (tests/test_features_parity.py pins it to librosa,
tests/test_features_pinned.py to the implementation the models were trained on). The kernel is the same
arithmetic with sums accumulated in double, so it may differ by float32 rounding, and no more: these tests
compare the two on real voices of both corpora, per frame and per window, and through the shipped models.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from realtime import features
from realtime.audio import load_audio
from realtime.bundle import Bundle
from realtime.features import DEFAULT, FeatureExtractor, StreamingExtractor, extract_streams
from realtime.vad import VadGate

from .data import readers_by_gender, speechocean_sample

pytestmark = pytest.mark.skipif(not features.KERNEL_AVAILABLE and os.environ.get("VOICEGENDER_FEATURE_KERNEL") == "0",
                                reason="VOICEGENDER_FEATURE_KERNEL=0: the numpy reference alone was asked for")

HOP = 22 * DEFAULT.hop_length  # the engine's ~0.5 s hop, a whole number of pitch hops


@pytest.fixture(scope="module")
def voices():
    """Real voices: 3 LibriSpeech readers and 3 speechocean762 speakers of each gender, 3-6 s of each (short
    files tiled to three windows)."""
    paths = [p for ps in readers_by_gender(3).values() for p in ps]
    paths += [f for fs in speechocean_sample(3, files_per_speaker=1).values() for _, f in fs]
    out = []
    for p in paths:
        y = load_audio(p)
        y = np.resize(y, max(y.size, DEFAULT.window_samples + 2 * HOP))
        out.append(y[: 6 * DEFAULT.sr])
    return out


def _windows(y):
    n = DEFAULT.window_samples
    return [(s, y[s:s + n]) for s in range(0, len(y) - n + 1, HOP)]


def test_the_kernel_is_built_here():
    """CI and the README's setup build it (a C compiler and Python headers); without it everything still works
    on numpy, but the live path is ~2x slower per hop, so an install that lost it should be noticed."""
    assert features.KERNEL_AVAILABLE, "realtime/_featurekernel.c was not compiled: rerun ./setup.sh (needs cc)"
    assert FeatureExtractor().kernel and not FeatureExtractor(kernel=False).kernel


def test_per_frame_quantities_equal_the_numpy_reference(voices):
    ref, fast = FeatureExtractor(kernel=False), FeatureExtractor(kernel=True)
    tol = {"S": 1e-6, "centroid": 1e-5, "bandwidth": 1e-5, "flatness": 1e-5, "rms": 1e-5, "contrast": 1e-5,
           "tonnetz": 1e-3}
    n = 0
    for y in voices:
        for _, w in _windows(y):
            a, b = ref.frame_features(w), fast.frame_features(w)
            assert a.keys() == b.keys()
            for name in ("rolloff", "zcr", "f0", "periodicity"):  # bin choices and YIN lags: the same, exactly
                np.testing.assert_array_equal(b[name], a[name], err_msg=name)
            for name, rtol in tol.items():
                scale = np.abs(a[name]).max()
                np.testing.assert_allclose(b[name], a[name], rtol=rtol, atol=rtol * scale, err_msg=name)
            np.testing.assert_allclose(b["mfcc"], a["mfcc"], rtol=1e-5, atol=2e-2)
            n += 1
    assert n >= 40


def test_windows_streamed_batched_and_alone_equal_the_reference(voices):
    ref, fast = FeatureExtractor(kernel=False), FeatureExtractor(kernel=True)
    worst = 0.0
    for y in voices:
        sx = StreamingExtractor(fast)
        for start, w in _windows(y):
            s_ref, m_ref = ref.extract(w)
            for s, m in (fast.extract(w), sx.extract(w, start)):
                assert s.dtype == m.dtype == np.float32
                np.testing.assert_allclose(s, s_ref, rtol=1e-4, atol=1e-4)
                np.testing.assert_allclose(m, m_ref, rtol=1e-5, atol=2e-2)
                worst = max(worst, float(np.max(np.abs(s - s_ref) / (np.abs(s_ref) + 1e-3))))
        assert sx.reused_frames > 0
    assert worst > 0.0  # it is a second implementation, not the reference called twice
    # several streams' windows through one kernel call give each stream's own result, to the bit
    streams = [(StreamingExtractor(fast), y) for y in voices[:6]]
    alone = [StreamingExtractor(fast) for _ in streams]
    for k in range(4):
        items = [(sx, y[k * HOP:k * HOP + DEFAULT.window_samples], k * HOP) for sx, y in streams]
        for (s, m), (_, w, start), sx in zip(extract_streams(items), items, alone):
            s1, m1 = sx.extract(w, start)
            np.testing.assert_array_equal(s, s1)
            np.testing.assert_array_equal(m, m1)


def test_the_shipped_models_hear_the_same_voice_through_either(voices):
    """The models were trained on the numpy features: through the kernel's they give the same p_female."""
    bundle = Bundle.load()
    ref, fast = FeatureExtractor(kernel=False), FeatureExtractor(kernel=True)
    diffs = []
    for y in voices:
        for _, w in _windows(y)[::2]:
            p_ref = bundle.predict_one(*ref.extract(w))[0]
            p_fast = bundle.predict_one(*fast.extract(w))[0]
            diffs.append(abs(p_fast - p_ref))
    assert len(diffs) >= 20 and max(diffs) < 2e-3, max(diffs)


@pytest.mark.parametrize("make", [
    lambda rng: np.zeros(DEFAULT.window_samples, np.float32),  # digital silence
    lambda rng: np.sign(rng.standard_normal(DEFAULT.window_samples)).astype(np.float32),  # full-scale clipping
    lambda rng: (0.5 * np.sin(2 * np.pi * 220 * np.arange(DEFAULT.window_samples) / DEFAULT.sr)).astype(np.float32),
    lambda rng: (1e-6 * rng.standard_normal(DEFAULT.window_samples)).astype(np.float32),  # near silence
], ids=["silence", "clipped", "tone", "whisper"])
def test_odd_windows_give_the_reference_result(make):
    w = make(np.random.default_rng(0))
    s_ref, m_ref = FeatureExtractor(kernel=False).extract(w)
    s, m = FeatureExtractor(kernel=True).extract(w)
    assert np.all(np.isfinite(s)) and np.all(np.isfinite(m))
    np.testing.assert_allclose(s, s_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(m, m_ref, rtol=1e-5, atol=2e-2)


def test_bad_buffers_are_refused_not_read_past():
    k = features._kernel
    fe = FeatureExtractor(kernel=True)
    T, n_bins = 4, 513
    spec = np.zeros((T, n_bins), np.complex64)
    S, P = np.zeros((T, n_bins), np.float32), np.zeros((T, n_bins), np.float32)
    Q, D = np.zeros((fe._n_rows, T), np.float32), np.zeros((14, T))
    zcr = np.zeros(T, np.float32)
    args = [spec, S, P, Q, D, zcr, fe.freqs, fe._band_starts, fe._band_nq, fe._kernel_rows, T, n_bins, 1024, T,
            0.85, 1e-10, 1e-10]
    k.spectral(*args)  # the right buffers pass
    for i, bad, err in [(0, spec[:2], ValueError),  # too few frames
                        (1, S.astype(np.float64), ValueError),  # wrong item size
                        (1, S.view(np.int32), ValueError),  # right size, wrong type
                        (3, Q[:, ::2], (ValueError, BufferError)),  # not contiguous
                        (5, zcr[:2], ValueError),
                        (0, b"\x00" * 8, ValueError)]:
        with pytest.raises(err):
            k.spectral(*args[:i], bad, *args[i + 1:])
    with pytest.raises(BufferError):
        k.spectral(*args[:4], np.zeros((14, T)).tobytes(), *args[5:])  # read-only where the kernel writes
    x, out = np.zeros(32000, np.float32), np.zeros((2, 1024), np.float32)
    with pytest.raises(ValueError, match="past the window"):  # a frame index beyond the window's end
        k.frames(x, np.array([0, 87], np.int64), out, None, None, 2, x.size, 368, 1024, 0.0)
    with pytest.raises(ValueError, match="index"):
        k.frames(x, np.array([0], np.int64), out, None, None, 2, x.size, 368, 1024, 0.0)  # fewer indices than frames
    with pytest.raises(ValueError, match="yin"):
        k.yin(np.zeros((1, 300), np.float32), np.zeros((1, 1024), np.float32), np.zeros(1, np.float32),
              np.zeros(1, np.float32), 1, 300, 1024, 40, 300, 0.1, 16000.0)  # lags past the autocorrelation


def test_kernel_true_without_the_kernel_says_how_to_get_it(monkeypatch):
    import dataclasses

    uncentred = dataclasses.replace(DEFAULT, center=False)
    assert not FeatureExtractor(uncentred).kernel  # the kernel frames centred windows only: numpy there
    with pytest.raises(ValueError, match="centred"):
        FeatureExtractor(uncentred, kernel=True)
    monkeypatch.setattr(features, "_kernel", None)
    with pytest.raises(RuntimeError, match="pip install"):
        FeatureExtractor(kernel=True)


def test_a_kernel_built_from_other_sources_is_not_called():
    """A checkout updated without reinstalling leaves an extension of another calling convention: it is
    ignored, with a warning that says how to rebuild, and the numpy code runs."""
    class Stale:
        VERSION = features.KERNEL_VERSION - 1

    with pytest.warns(RuntimeWarning, match="pip install -e"):
        assert features._usable_kernel(Stale()) is None
    assert features._usable_kernel(features._kernel) is features._kernel
    assert features._kernel.VERSION == features.KERNEL_VERSION


def test_the_environment_switch_selects_the_numpy_reference():
    code = ("import realtime.features as f; "
            "print(f.KERNEL_AVAILABLE, f.FeatureExtractor().kernel)")
    env = {**os.environ, "VOICEGENDER_FEATURE_KERNEL": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    out = subprocess.run([sys.executable, "-m", "realtime", "--version"], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert "numpy" in out


def test_speech_gate_measures_equal_numpy(voices, monkeypatch):
    """The gate's PCM, mean square and flatness through the kernel and through numpy, and the same decisions."""
    import realtime.vad as vad

    frames = np.concatenate([y[: 480 * 40].reshape(40, 480) for y in voices])
    frames[:5] = 0.0  # silence has a flatness too
    gate = VadGate()
    ms, flat = gate._measures(frames)
    decisions = [VadGate().process(y) for y in voices]
    from realtime.audio import float_to_s16

    x = np.concatenate((frames.ravel(), np.array([1.5, -1.5, 1.0, -1.0, 0.99999, -0.99999, 3e-5, -3e-5], np.float32)))
    s16 = np.empty(x.size, np.int16)
    features._kernel.to_s16(x, s16, x.size)
    np.testing.assert_array_equal(s16, float_to_s16(x))  # the PCM webrtcvad hears, to the bit
    monkeypatch.setattr(vad, "_kernel", None)
    ms_ref, flat_ref = gate._measures(frames)
    np.testing.assert_allclose(ms, ms_ref, rtol=1e-12)
    np.testing.assert_allclose(flat, flat_ref, rtol=1e-9)
    for y, d in zip(voices, decisions):
        np.testing.assert_array_equal(VadGate().process(y), d)
        assert d.mean() > 0.3  # real speech passes the gate

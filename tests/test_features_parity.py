"""The shared feature definition equals the librosa 0.11 calls it stands for, on real LibriSpeech audio.

Tolerances are stated per feature as (relative to the reference's max magnitude). They cover
float32 FFT rounding; any real difference in definition shows up orders of magnitude larger.
"""
import numpy as np
import pytest

librosa = pytest.importorskip("librosa")

from realtime.audio import AudioError, load_audio
from realtime.features import DEFAULT, FeatureDefinition, FeatureExtractor, chroma_filterbank, fit_window, mel_filterbank

from .data import librispeech_files

SR, NFFT, HOP = DEFAULT.sr, DEFAULT.n_fft, DEFAULT.hop_length


@pytest.fixture(scope="module")
def windows():
    """Three real 2 s windows (two readers of each gender would be nicer; any voices do for parity)."""
    out = []
    for path in librispeech_files()[:3]:
        y = load_audio(path)
        out.append(np.ascontiguousarray(y[8000: 8000 + DEFAULT.window_samples]))
    return out


@pytest.fixture(scope="module")
def fe():
    return FeatureExtractor()


def _close(ref, mine, rel):
    ref = np.asarray(ref).reshape(np.shape(mine))
    err = np.max(np.abs(ref - mine)) / max(np.max(np.abs(ref)), 1e-12)
    assert err <= rel, f"relative error {err:.3g} > {rel}"


def _stft_mag(y):
    return np.abs(librosa.stft(y, n_fft=NFFT, hop_length=HOP, window="hann", center=True, pad_mode="constant"))


def test_filterbanks_match_librosa():
    _close(librosa.filters.mel(sr=SR, n_fft=NFFT, n_mels=DEFAULT.n_mels, fmin=DEFAULT.fmin, fmax=DEFAULT.fmax, htk=False, norm="slaney"), mel_filterbank(), 1e-6)
    _close(librosa.filters.chroma(sr=SR, n_fft=NFFT, n_chroma=12, tuning=0.0, ctroct=5.0, octwidth=2, norm=2, base_c=True), chroma_filterbank(), 1e-6)


def test_magnitude_spectrogram(windows, fe):
    for y in windows:
        _close(_stft_mag(y), fe.frame_features(y)["S"], 1e-6)


def test_mfcc_matches_librosa_mfcc(windows, fe):
    for y in windows:
        ref = librosa.feature.mfcc(y=y, sr=SR, n_mfcc=40, dct_type=2, norm="ortho", lifter=0, n_fft=NFFT, hop_length=HOP,
                                   window="hann", center=True, pad_mode="constant", n_mels=DEFAULT.n_mels, fmin=0.0,
                                   fmax=8000.0, htk=False, mel_norm="slaney")
        mine = fe.frame_features(y)["mfcc"]
        assert mine.shape == ref.shape == (40, 87)
        _close(ref, mine, 1e-5)


@pytest.mark.parametrize("name,call,rel", [
    ("centroid", lambda S, y: librosa.feature.spectral_centroid(S=S, sr=SR, n_fft=NFFT), 1e-5),
    ("bandwidth", lambda S, y: librosa.feature.spectral_bandwidth(S=S, sr=SR, n_fft=NFFT, p=2, norm=True), 1e-5),
    ("rolloff", lambda S, y: librosa.feature.spectral_rolloff(S=S, sr=SR, n_fft=NFFT, roll_percent=0.85), 1e-5),
    ("flatness", lambda S, y: librosa.feature.spectral_flatness(S=S, amin=1e-10, power=2.0), 1e-4),
    ("contrast", lambda S, y: librosa.feature.spectral_contrast(S=S, sr=SR, n_fft=NFFT, fmin=200.0, n_bands=6, quantile=0.02, linear=False), 1e-3),
    ("rms", lambda S, y: librosa.feature.rms(S=S, frame_length=NFFT), 1e-5),
    ("zcr", lambda S, y: librosa.feature.zero_crossing_rate(y, frame_length=NFFT, hop_length=HOP, center=True, threshold=1e-10), 1e-6),
    ("tonnetz", lambda S, y: librosa.feature.tonnetz(chroma=librosa.feature.chroma_stft(
        S=S**2, sr=SR, n_fft=NFFT, hop_length=HOP, tuning=0.0, n_chroma=12, norm=np.inf, ctroct=5.0, octwidth=2, base_c=True)), 1e-5),
    ("f0", lambda S, y: librosa.yin(y, fmin=60.0, fmax=400.0, sr=SR, frame_length=NFFT, hop_length=2 * HOP, center=True,
                                    pad_mode="constant", trough_threshold=0.1), 2e-5),  # our ACF: a shorter FFT
])
def test_frame_feature_matches_librosa(windows, fe, name, call, rel):
    for y in windows:
        ref = call(_stft_mag(y), y)
        mine = fe.frame_features(y)[name]
        frames = DEFAULT.n_pitch_frames if name == "f0" else DEFAULT.n_frames  # 44 pitch frames, 87 STFT frames
        assert mine.shape[-1] == np.asarray(ref).shape[-1] == frames
        _close(ref, mine, rel)


def test_stats_vector_shape_names_and_summaries(windows, fe):
    stats, mfcc = fe.extract(windows[0])
    assert stats.dtype == np.float32 and mfcc.dtype == np.float32
    assert stats.shape == (fe.n_stats,) == (len(fe.stat_names),)
    assert mfcc.shape == (40, 87)
    assert len(set(fe.stat_names)) == fe.n_stats
    ff = fe.frame_features(windows[0])
    by_name = dict(zip(fe.stat_names, stats))
    assert by_name["zcr_mean"] == pytest.approx(ff["zcr"].mean(), rel=1e-5)
    assert by_name["contrast3_max"] == pytest.approx(ff["contrast"][3].max(), rel=1e-5)
    assert by_name["rms_std"] == pytest.approx(ff["rms"].std(), rel=1e-4)
    assert by_name["mfcc1_mean"] == pytest.approx(ff["mfcc"][1].mean(), rel=1e-4)
    # a real utterance is voiced for part of the window, with a plausible adult F0 (60-400 Hz)
    assert 0.1 < by_name["voiced_fraction"] <= 1.0
    assert np.log2(60) < by_name["f0_median"] < np.log2(400)


def test_female_and_male_pitch_separate(fe):
    """The pitch summary carries the gender cue: median F0 of female readers above that of male readers."""
    from .data import readers_by_gender
    f0 = {}
    for g, paths in readers_by_gender(6).items():
        f0[g] = np.median([dict(zip(fe.stat_names, fe.stats(fit_window(load_audio(p)[16000:]))))["f0_median"] for p in paths])
    assert 2 ** f0["F"] > 160 > 2 ** f0["M"], f0


def test_silence_and_clipping_give_finite_features(fe):
    for y in (np.zeros(DEFAULT.window_samples, np.float32), np.ones(DEFAULT.window_samples, np.float32),
              np.sign(np.sin(np.arange(DEFAULT.window_samples) * 0.05)).astype(np.float32)):
        stats, mfcc = fe.extract(y)
        assert np.all(np.isfinite(stats)) and np.all(np.isfinite(mfcc))


def test_bad_windows_are_refused(fe):
    with pytest.raises(AudioError, match="32000 mono samples"):
        fe.extract(np.zeros(1000, np.float32))
    with pytest.raises(AudioError, match="mono"):
        fe.extract(np.zeros((DEFAULT.window_samples, 2), np.float32))
    bad = np.zeros(DEFAULT.window_samples, np.float32)
    bad[5] = np.nan
    with pytest.raises(AudioError, match="NaN"):
        fe.extract(bad)


def test_fit_window_pads_by_wrapping_and_refuses_too_short():
    x = np.arange(10000, dtype=np.float32)
    y = fit_window(x)
    assert y.shape == (DEFAULT.window_samples,) and np.array_equal(y[10000:20000], x)
    assert np.array_equal(fit_window(np.arange(40000, dtype=np.float32)), np.arange(32000, dtype=np.float32))
    with pytest.raises(AudioError, match="too short"):
        fit_window(np.zeros(100, np.float32))


def test_pitch_hop_must_be_a_whole_number_of_stft_hops():
    assert (DEFAULT.n_frames, DEFAULT.n_pitch_frames, DEFAULT.frame_alignment) == (87, 44, 736)
    with pytest.raises(ValueError, match="whole multiple of hop_length"):
        FeatureExtractor(FeatureDefinition(pitch_hop_length=500))


def test_definition_hash_is_stable_and_sensitive():
    assert DEFAULT.hash == FeatureDefinition().hash == FeatureDefinition.from_dict(DEFAULT.to_dict()).hash
    assert FeatureDefinition(n_mels=128).hash != DEFAULT.hash
    assert FeatureDefinition(version=DEFAULT.version + 1).hash != DEFAULT.hash
    assert len(DEFAULT.hash) == 16

"""Training augmentation on real audio: exact SNR, coloured spectra, determinism, bounded pitch shift."""
from __future__ import annotations


import numpy as np
import pytest
import scipy.signal

from offline.augment import (AugmentConfig, Augmenter, add_noise, band_limit, channel, colored_noise, gain,
                             pitch_shift, telephone)
from offline.librispeech import load_librispeech
from realtime.audio import load_audio
from .data import LIBRISPEECH

DATA = LIBRISPEECH  # $VOICEGENDER_DATA/LibriSpeech, else ../shared/data/LibriSpeech
SR = 16000


@pytest.fixture(scope="module")
def female() -> np.ndarray:
    """6 s of a real female reader (103, Karen Savage)."""
    u = next(u for u in load_librispeech(DATA / "train-clean-100") if u.reader == "103")
    assert u.gender == "F"
    return load_audio(u.path)[: 6 * SR]


def _snr(x, y):
    x64 = x.astype(np.float64)
    return 10 * np.log10(np.sum(x64**2) / np.sum((y.astype(np.float64) - x64) ** 2))


@pytest.mark.parametrize("color", ["white", "pink", "brown"])
@pytest.mark.parametrize("snr_db", [20.0, 10.0, 5.0])
def test_snr_is_exact(female, color, snr_db):
    y = add_noise(female, snr_db, color, np.random.default_rng(0))
    assert y.dtype == np.float32 and y.shape == female.shape and np.abs(y).max() <= 1.0
    assert abs(_snr(female, y) - snr_db) < 0.1


def test_snr_exact_when_mix_would_clip(female):
    loud = female / np.abs(female).max()
    y = add_noise(loud, 0.0, "pink", np.random.default_rng(0))
    assert np.abs(y).max() == pytest.approx(1.0, abs=1e-6)  # the mix was scaled down, not clipped
    noise = colored_noise(loud.size, "pink", np.random.default_rng(0))  # the same draw add_noise made
    (g, c), *_ = np.linalg.lstsq(np.stack([loud, noise], axis=1).astype(np.float64), y, rcond=None)
    assert g < 1.0
    assert 10 * np.log10(g**2 * np.sum(loud.astype(np.float64) ** 2) / (c**2 * np.sum(noise**2))) \
        == pytest.approx(0.0, abs=0.1)


@pytest.mark.parametrize("color, slope", [("white", 0.0), ("pink", -1.0), ("brown", -2.0)])
def test_noise_colours_have_their_spectral_slope(color, slope):
    n = colored_noise(8 * SR, color, np.random.default_rng(1))
    f, p = scipy.signal.welch(n, fs=SR, nperseg=4096)
    band = (f >= 100) & (f <= 6000)
    fitted = np.polyfit(np.log10(f[band]), np.log10(p[band]), 1)[0]
    assert fitted == pytest.approx(slope, abs=0.15)


def test_silence_is_left_alone():
    z = np.zeros(1000, np.float32)
    np.testing.assert_array_equal(add_noise(z, 10.0, "pink", np.random.default_rng(0)), z)


def test_gain(female):
    np.testing.assert_allclose(gain(female, -6.0), female * 10 ** (-6 / 20), rtol=1e-6)
    loud = gain(female, 40.0)
    assert np.abs(loud).max() == 1.0 and np.isfinite(loud).all()


def test_pitch_shift_limits(female):
    for bad in (1.5, -1.01, float("nan")):
        with pytest.raises(ValueError):
            pitch_shift(female, bad)
    with pytest.raises(ValueError):
        Augmenter(max_semitones=2.0)
    np.testing.assert_array_equal(pitch_shift(female, 0.0), female)


def _f0_voiced(x, voiced=None):
    import librosa

    f0 = librosa.yin(x, fmin=80, fmax=500, sr=SR, frame_length=1024, hop_length=256, trough_threshold=0.1,
                     center=True, pad_mode="constant")
    if voiced is None:
        rms = librosa.feature.rms(y=x, frame_length=1024, hop_length=256, center=True, pad_mode="constant")[0]
        voiced = (rms > np.median(rms)) & (f0 > 120) & (f0 < 400)
    return f0, voiced


def test_pitch_shift_moves_female_f0_by_a_semitone(female):
    y = pitch_shift(female, 1.0)
    assert y.shape == female.shape and np.isfinite(y).all() and np.abs(y).max() <= 1.0
    f0, voiced = _f0_voiced(female)
    assert voiced.sum() > 50
    f0_up, _ = _f0_voiced(y, voiced)
    # durations are kept, so frames line up: the per-frame ratio is robust to YIN's octave slips
    assert 1.04 < np.median(f0_up[voiced] / f0[voiced]) < 1.08  # 2 ** (1 / 12) = 1.0595
    assert 1.02 < np.median(f0_up[voiced]) / np.median(f0[voiced]) < 1.10
    f0_down, _ = _f0_voiced(pitch_shift(female, -1.0), voiced)
    assert 0.925 < np.median(f0_down[voiced] / f0[voiced]) < 0.965  # 2 ** (-1 / 12) = 0.9439


def test_augmenter_deterministic_by_seed(female):
    x = female[: 3 * SR]
    aug = Augmenter(seed=3, p_noise=1.0, p_pitch=1.0)
    a = aug(x, aug.rng_for("utt-1", 0))
    np.testing.assert_array_equal(a, aug(x, aug.rng_for("utt-1", 0)))
    assert not np.array_equal(a, aug(x, aug.rng_for("utt-1", 1)))
    assert not np.array_equal(a, aug(x, aug.rng_for("utt-2", 0)))
    other = Augmenter(seed=4, p_noise=1.0, p_pitch=1.0)
    assert not np.array_equal(a, other(x, other.rng_for("utt-1", 0)))
    np.testing.assert_array_equal(aug(x), aug(x))  # no rng: seeded from `seed`
    assert a.dtype == np.float32 and np.isfinite(a).all() and np.abs(a).max() <= 1.0
    assert aug.to_dict()["colors"] == ["white", "pink", "brown"]


def test_augmenter_output_bounded_on_loud_input(female):
    loud = np.clip(female * 50, -1, 1)
    aug = Augmenter(seed=0, snr_range=(5, 5), gain_db_range=(6, 6), p_noise=1.0, p_pitch=1.0)
    for copy in range(3):
        y = aug(loud[: 2 * SR], aug.rng_for("loud", copy))
        assert np.isfinite(y).all() and np.abs(y).max() <= 1.0


def _band_power_db(x: np.ndarray, lo: float, hi: float) -> float:
    """Share of the power of ``x`` between lo and hi Hz, in dB."""
    f, pxx = scipy.signal.welch(x.astype(np.float64), fs=SR, nperseg=1024)
    return 10 * np.log10(pxx[(f >= lo) & (f < hi)].sum() / pxx.sum())


def test_band_limit_removes_what_an_8k_source_cannot_hold(female):
    assert _band_power_db(female, 4200, 8000) > -35  # a wide-band recording has real content up there
    y = band_limit(female, 8000)
    assert y.shape == female.shape and y.dtype == np.float32
    assert _band_power_db(y, 4200, 8000) < -60
    # the voice band is kept: the signals agree below 3.5 kHz
    sos = scipy.signal.butter(8, 3500, fs=SR, output="sos")
    a, b = scipy.signal.sosfiltfilt(sos, female), scipy.signal.sosfiltfilt(sos, y)
    assert np.corrcoef(a, b)[0, 1] > 0.999
    assert np.array_equal(band_limit(female, 16000), female)


def test_telephone_keeps_only_the_voice_band(female):
    y = telephone(female)
    assert y.shape == female.shape and np.all(np.abs(y) <= 1.0)
    assert _band_power_db(y, 4200, 8000) < -50
    assert _band_power_db(y, 0, 150) < _band_power_db(female, 0, 150) - 15
    assert _band_power_db(y, 300, 3400) > -1.0
    with pytest.raises(ValueError, match="channel must be one of"):
        channel(female, "carrier-pigeon")


def test_augmenter_channels_off_reproduce_earlier_outputs(female):
    """p_channel=0 draws no extra random numbers and keeps the cache key of an augmenter without channels."""
    off = Augmenter(seed=3)
    assert "p_channel" not in off.to_dict()
    assert "p_channel" in Augmenter(seed=3, p_channel=0.5).to_dict()
    on = Augmenter(seed=3, p_channel=1.0, channels=("8k",), p_noise=0.0)
    a = on(female[:SR * 2], on.rng_for("u", 0))
    assert _band_power_db(a, 4200, 8000) < -60
    with pytest.raises(ValueError, match="channels must be"):
        Augmenter(channels=("cb-radio",))


@pytest.mark.parametrize("codec, min_corr", [("mp3", 0.9), ("opus", 0.8)])
def test_low_bitrate_codecs_round_trip(female, codec, min_corr):
    """MP3 (~21 kbit/s) and Opus (~9 kbit/s) at 16 kHz: same length and timing, the voice kept, the top
    octave gone (what a voice-call or podcast codec does), the same output every time."""
    y = channel(female, codec)
    assert y.shape == female.shape and y.dtype == np.float32 and np.all(np.abs(y) <= 1.0)
    assert np.corrcoef(y, female)[0, 1] > min_corr  # no delay: the codec's padding is trimmed
    assert _band_power_db(female, 5000, 8000) > -20 and _band_power_db(y, 5000, 8000) < -60
    assert np.array_equal(y, channel(female, codec))


@pytest.mark.parametrize("codec, max_hz, min_corr", [("aac", 8000, 0.9), ("amr", 4000, 0.6)])
def test_phone_codecs_round_trip_through_ffmpeg(female, codec, max_hz, min_corr):
    """AAC in M4A at 24 kbit/s (a voice memo) and AMR-NB at 12.2 kbit/s (a phone call, 8 kHz): same length, the
    codec's priming delay kept (as a real recording has it), the voice kept, AMR's band ends at 4 kHz; the
    same output every time; decoded by the engine's own reader (``realtime.decode``)."""
    y = channel(female, codec)
    assert y.shape == female.shape and y.dtype == np.float32 and np.all(np.abs(y) <= 1.0)
    xc = scipy.signal.correlate(y[:SR * 4], female[:SR * 4], mode="full", method="fft")
    lag = int(np.argmax(xc)) - (SR * 4 - 1)
    assert 0 <= lag < 0.1 * SR, lag  # a priming delay, not a shift of seconds
    n = female.size - lag
    assert np.corrcoef(y[lag:lag + n], female[:n])[0, 1] > min_corr
    if max_hz < 8000:
        assert _band_power_db(female, 4200, 8000) > -40 and _band_power_db(y, 4200, 8000) < -50
    assert np.array_equal(y, channel(female, codec))


def _spectral_centroid_of_envelope(x: np.ndarray) -> float:
    """Centroid (Hz) of the long-term average spectrum below 4 kHz: follows the formants, barely the pitch."""
    f, pxx = scipy.signal.welch(x, fs=SR, nperseg=1024)
    keep = (f > 300) & (f < 4000)
    return float(np.sum(f[keep] * pxx[keep]) / np.sum(pxx[keep]))


def test_world_voice_moves_pitch_and_keeps_formants(female):
    from offline.augment import world_voice

    x = female[: 4 * SR]
    f0, voiced = _f0_voiced(x)
    y = world_voice(x, 150.0)  # a female voice at a male-like pitch
    assert y.shape == x.shape and np.isfinite(y).all() and np.abs(y).max() <= 1.0
    assert abs(np.sqrt(np.mean(y ** 2)) - np.sqrt(np.mean(x ** 2))) < 1e-3  # level kept
    f0_y, _ = _f0_voiced(y, voiced)
    got = np.median(f0_y[voiced & (f0_y > 0)])
    # WORLD's median is over its own voiced frames, this one over YIN's: a few Hz apart
    assert 135 < got < 180 and got < 0.85 * np.median(f0[voiced]), (got, np.median(f0[voiced]))
    # the spectral envelope stays where it was (within 8 %) although the pitch fell by a third
    assert abs(_spectral_centroid_of_envelope(y) / _spectral_centroid_of_envelope(x) - 1) < 0.08
    # a formant warp moves the envelope up or down (against the unwarped re-synthesis)
    c = {w: _spectral_centroid_of_envelope(world_voice(x, None, w)) for w in (0.94, 1.0, 1.06)}
    assert c[0.94] < 0.985 * c[1.0] and c[1.06] > 1.015 * c[1.0], c


def test_augmenter_voice_changes_are_keyed_and_reproducible(female):
    x = female[: 2 * SR]
    off, on = Augmenter(seed=1), Augmenter(seed=1, p_voice=1.0)
    assert "p_voice" not in off.to_dict() and on.to_dict()["p_voice"] == 1.0
    a = on(x, on.rng_for("u", 0))
    assert np.array_equal(a, on(x, on.rng_for("u", 0)))
    assert not np.allclose(a, off(x, off.rng_for("u", 0)))


def test_augmenter_rooms_are_keyed_reproducible_and_reverberant(female):
    """p_room=0 keeps the earlier outputs and cache key; a room smears the voice in time (the autocorrelation of
    the envelope decays more slowly) at the same length, reproducibly."""
    x = female[: 2 * SR]
    off, on = Augmenter(seed=1, p_noise=0.0, p_pitch=0.0), Augmenter(seed=1, p_noise=0.0, p_pitch=0.0, p_room=1.0,
                                                                      room_rt60_range=(0.8, 0.9), room_drr_range=(0, 1))
    assert "p_room" not in off.to_dict() and on.to_dict()["p_room"] == 1.0
    # rooms off: the cache key of an augmenter without them, and no extra random draw (the noise after it is the same)
    noisy, room_off = Augmenter(seed=1, p_noise=1.0), Augmenter(seed=1, p_noise=1.0, p_room=0.0, room_rt60_range=(0.8, 0.9))
    assert room_off.to_dict() == noisy.to_dict()
    assert np.array_equal(noisy(x, noisy.rng_for("u", 0)), room_off(x, room_off.rng_for("u", 0)))
    a = on(x, on.rng_for("u", 0))
    assert a.shape == x.shape and np.array_equal(a, on(x, on.rng_for("u", 0)))

    def envelope_memory(y):  # correlation of the 10 ms energy envelope with itself 50 ms later
        e = np.log(np.square(y[: y.size // 160 * 160]).reshape(-1, 160).mean(axis=1) + 1e-8)
        return np.corrcoef(e[:-5], e[5:])[0, 1]

    assert envelope_memory(a) > envelope_memory(x) + 0.1, (envelope_memory(a), envelope_memory(x))
    with pytest.raises(ValueError, match="room_rt60_range"):
        Augmenter(room_rt60_range=(0.0, 0.5))


def test_recipe_augmenter_keeps_its_cache_key():
    """The training recipe's options (AugmentConfig, TrainConfig.augment) make the Augmenter they made before they
    were nested: the same cache key, so augmented features cached by earlier runs are found again."""
    aug = AugmentConfig().augmenter(seed=0)
    assert aug.to_dict() == {"seed": 0, "snr_range": [5.0, 30.0], "colors": ["white", "pink", "brown"],
                             "max_semitones": 1.0, "gain_db_range": [-6.0, 6.0], "p_noise": 0.8, "p_pitch": 0.5,
                             "p_channel": 0.4, "channels": ["8k", "11k", "telephone", "mp3", "opus"],
                             "p_voice": 0.5, "voice_f0_range": [140.0, 210.0], "voice_warp": 0.06}
    assert AugmentConfig(copies=1).augmenter(seed=0) == aug  # copies is the recipe's, not the augmenter's
    assert AugmentConfig(p_channel=0.0, p_voice=0.0).augmenter(seed=0) == Augmenter(seed=0)
    # without WORLD the recipe's augmenter has the key it had before p_voice joined the recipe
    assert set(AugmentConfig(p_voice=0.0).augmenter(seed=0).to_dict()) == set(aug.to_dict()) - {
        "p_voice", "voice_f0_range", "voice_warp"}
    with pytest.raises(ValueError, match="copies must be a whole number"):
        AugmentConfig(copies=-1)
    with pytest.raises(ValueError, match="p_noise must be in"):
        AugmentConfig(p_noise=1.5)


def test_reverb_smears_speech_over_time_and_keeps_length_and_level(female):
    """A room keeps the recording's length and RMS level, is reproducible by its generator, and spreads each
    sound over time: the envelope's autocorrelation 100 ms apart rises, and the tail decays as RT60 says."""
    from offline.augment import reverb, room_response

    x = female[: 4 * 16000]
    y = reverb(x, 0.6, 3.0, np.random.default_rng(0))
    assert y.shape == x.shape and y.dtype == np.float32 and np.all(np.isfinite(y))
    assert np.sqrt(np.mean(y ** 2)) == pytest.approx(np.sqrt(np.mean(x ** 2)), rel=1e-3)
    assert np.array_equal(y, reverb(x, 0.6, 3.0, np.random.default_rng(0)))

    def envelope_corr(z, lag=1600):
        e = np.abs(z).reshape(-1, 160).mean(axis=1)  # 10 ms envelope
        e = e - e.mean()
        k = lag // 160
        return float(np.dot(e[:-k], e[k:]) / np.dot(e, e))

    assert envelope_corr(y) > envelope_corr(x) + 0.1
    h = room_response(0.6, 3.0, np.random.default_rng(1))
    energy_db = 10 * np.log10(np.convolve(h[1:] ** 2, np.ones(800), "valid") + 1e-30)
    t0, t1 = int(0.1 * 16000), int(0.4 * 16000)
    slope_db_per_s = (energy_db[t1] - energy_db[t0]) / 0.3
    assert slope_db_per_s == pytest.approx(-60 / 0.6, rel=0.25)
    assert np.sum(h[1:] ** 2) == pytest.approx(10 ** (-0.3), rel=1e-6)  # direct / reverberant = 3 dB
    with pytest.raises(ValueError, match="rt60"):
        room_response(0.0, 3.0, np.random.default_rng(0))


def test_mic_response_follows_its_curve_and_keeps_pitch_length_and_level(female):
    """Another microphone: the band energies of a real voice move as the drawn curve says (to within 0.5 dB once
    the level is restored), the length, RMS and F0 stay, the generator reproduces it; p_mic=0 keeps the earlier
    outputs and cache key."""
    import librosa

    from offline.augment import mic_curve, mic_response

    x = female[: 4 * SR]
    y = mic_response(x, np.random.default_rng(3), max_db=6.0)
    assert y.shape == x.shape and y.dtype == np.float32 and np.all(np.isfinite(y))
    assert np.sqrt(np.mean(y.astype(np.float64) ** 2)) == pytest.approx(np.sqrt(np.mean(x.astype(np.float64) ** 2)),
                                                                      rel=1e-4)
    assert np.array_equal(y, mic_response(x, np.random.default_rng(3), max_db=6.0))
    f = np.fft.rfftfreq(x.size, 1 / SR)
    want = mic_curve(f, np.random.default_rng(3), max_db=6.0)
    X, Y = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2, np.abs(np.fft.rfft(y.astype(np.float64))) ** 2
    got_db, want_db = [], []
    for lo, hi in ((300, 500), (500, 900), (900, 1600), (1600, 2800), (2800, 5000)):
        band = (f >= lo) & (f < hi)
        got_db.append(10 * np.log10(Y[band].sum() / X[band].sum()))
        want_db.append(10 * np.log10(np.sum(X[band] * 10 ** (want[band] / 10)) / X[band].sum()))
    offset = np.mean(np.subtract(got_db, want_db))  # the level restored after filtering
    assert np.allclose(np.subtract(got_db, want_db), offset, atol=0.5), (got_db, want_db)
    assert np.ptp(want_db) > 2.0  # the curve does move the spectrum
    f0 = [np.nanmedian(librosa.pyin(z, fmin=80, fmax=400, sr=SR, frame_length=1024)[0]) for z in (x, y)]
    assert f0[1] == pytest.approx(f0[0], rel=0.02)
    plain, mic_off = Augmenter(seed=1, p_noise=1.0), Augmenter(seed=1, p_noise=1.0, p_mic=0.0, mic_db=2.0)
    assert mic_off.to_dict() == plain.to_dict()
    assert np.array_equal(plain(x, plain.rng_for("u", 0)), mic_off(x, mic_off.rng_for("u", 0)))
    on = Augmenter(seed=1, p_noise=0.0, p_pitch=0.0, p_mic=1.0)
    assert on.to_dict()["p_mic"] == 1.0 and np.array_equal(on(x, on.rng_for("u", 0)), on(x, on.rng_for("u", 0)))
    assert not np.allclose(on(x, on.rng_for("u", 0)), Augmenter(seed=1, p_noise=0.0, p_pitch=0.0)(x, on.rng_for("u", 0)))
    with pytest.raises(ValueError, match="mic_db"):
        Augmenter(mic_db=-1.0)

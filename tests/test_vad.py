
import numpy as np
import pytest

from realtime.audio import load_audio
from realtime.vad import VadGate
from .data import LIBRISPEECH

LIBRI = LIBRISPEECH  # $VOICEGENDER_DATA/LibriSpeech, else ../shared/data/LibriSpeech


def _flacs(n):
    files = sorted((LIBRI / "train-clean-100").glob("*/*/*.flac"))
    assert files, f"no LibriSpeech flacs under {LIBRI}"
    return files[:: max(1, len(files) // n)][:n]


def _raw_gate(**kw):
    return VadGate(energy_floor_dbfs=None, flatness_max=None, **kw)


def test_speech_found_in_real_utterances():
    for f in _flacs(4):
        x = load_audio(f)
        gate = VadGate()
        dec = gate.process(x)
        assert dec.size == len(x) // 480
        assert dec.mean() > 0.5, f"{f.name}: only {dec.mean():.0%} of frames called speech"


def test_no_speech_in_digital_silence():
    gate = VadGate()
    assert not gate.process(np.zeros(16000 * 3, np.float32)).any()


def test_no_speech_in_very_quiet_noise_and_energy_floor_is_what_helps():
    rng = np.random.default_rng(0)
    white = (rng.standard_normal(16000 * 5) * 10 ** (-70 / 20)).astype(np.float32)  # -70 dBFS
    spec = np.fft.rfft(rng.standard_normal(16000 * 5))
    f = np.arange(spec.size)
    f[0] = 1
    brown = np.fft.irfft(spec / f)
    brown = (brown / brown.std() * 10 ** (-65 / 20)).astype(np.float32)  # -65 dBFS
    for noise in (white, brown):
        assert not VadGate().process(noise).any()
    # plain webrtcvad calls its first frames of any input speech while it adapts
    assert _raw_gate().process(white).sum() > 0


def test_loud_white_noise_rejected_by_flatness_check():
    rng = np.random.default_rng(1)
    noise = (rng.standard_normal(16000 * 5) * 0.1).astype(np.float32)  # -20 dBFS hiss
    raw = _raw_gate().process(noise).mean()
    gated = VadGate().process(noise).mean()
    assert raw > 0.9  # webrtcvad alone: hiss is "speech"
    assert gated < 0.1


def test_chunking_does_not_change_decisions():
    x = load_audio(_flacs(1)[0])[: 16000 * 4]
    whole = VadGate().process(x)
    gate = VadGate()
    rng = np.random.default_rng(2)
    parts, pos = [], 0
    while pos < len(x):
        k = int(rng.integers(1, 1500))
        parts.append(gate.process(x[pos:pos + k]))
        pos += k
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert gate.pending_samples == len(x) % 480
    assert gate.frames == whole.size


def test_leftover_kept_and_reset():
    gate = VadGate(frame_ms=10)
    assert gate.frame_samples == 160 and gate.frames_per_second == 100
    assert gate.process(np.zeros(100, np.float32)).size == 0
    assert gate.process(np.zeros(100, np.float32)).size == 1
    assert gate.pending_samples == 40
    gate.reset()
    assert gate.pending_samples == 0 and gate.frames == 0


def test_int16_input_accepted():
    x = load_audio(_flacs(1)[0])[: 16000 * 2]
    pcm = (x * 32767).astype(np.int16)
    np.testing.assert_array_equal(VadGate().process(pcm), VadGate().process(x))


@pytest.mark.parametrize("kwargs, match", [
    ({"frame_ms": 25}, "10, 20 or 30"),
    ({"frame_ms": 40}, "10, 20 or 30"),
    ({"sample_rate": 44100}, "resample"),
    ({"aggressiveness": 4}, "aggressiveness"),
    ({"flatness_max": 0.0}, "flatness_max"),
])
def test_invalid_settings_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VadGate(**kwargs)


def test_rejects_multichannel_chunk():
    with pytest.raises(ValueError, match="1-D"):
        VadGate().process(np.zeros((480, 2), np.float32))

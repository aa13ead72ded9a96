"""The real microphone path: PulseAudio null sink -> ALSA pulse plugin -> PortAudio -> MicSource.

Plays a LibriSpeech flac into a private PulseAudio server (tests/pulse.py) and captures it through
``MicSource(device='pulse')``. Needs pulseaudio, pulseaudio-utils, libasound2-plugins and
libportaudio2; if they are missing this test fails (CI installs them), it does not skip.
"""
import time

import numpy as np
import pytest

from tests.pulse import virtual_microphone
from realtime.audio import load_audio
from realtime.sources import MicSource, list_devices
from realtime.vad import VadGate
from .data import LIBRISPEECH

LIBRI = LIBRISPEECH  # $VOICEGENDER_DATA/LibriSpeech, else ../shared/data/LibriSpeech
CAPTURE_S = 3.0


def _envelope(x, hop=160):
    n = len(x) // hop
    return np.sqrt(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1))


def _best_lag_corr(env_cap, env_ref, max_lag):
    best = (-1.0, 0)
    n = len(env_cap)
    for lag in range(-max_lag, max_lag + 1):
        # captured[i] ~ reference[i + lag]
        lo = max(0, -lag)
        hi = min(n, len(env_ref) - lag)
        if hi - lo < n // 2:
            continue
        c = np.corrcoef(env_cap[lo:hi], env_ref[lo + lag:hi + lag])[0, 1]
        if c > best[0]:
            best = (float(c), lag)
    return best


@pytest.mark.slow
def test_microphone_captures_played_speech():
    flac = sorted((LIBRI / "train-clean-100").glob("*/*/*.flac"))[0]
    reference = load_audio(flac)
    with virtual_microphone() as vm:
        names = [d["name"] for d in list_devices()]
        assert "pulse" in names, names
        mic = MicSource(device="pulse", chunk_seconds=0.05)
        assert mic.device_sample_rate == 16000  # the pulse device accepts 16 kHz directly
        mic.start()
        t0 = time.monotonic()
        vm.play(flac)
        parts, n = [], 0
        for chunk in mic.chunks():
            parts.append(chunk)
            n += chunk.size
            if n >= CAPTURE_S * 16000 or time.monotonic() - t0 > 15:
                break
        mic.close()
        overruns = mic.overruns
    captured = np.concatenate(parts)
    assert captured.size >= CAPTURE_S * 16000, f"only {captured.size} samples in {time.monotonic() - t0:.1f} s"
    assert overruns == 0

    speech = VadGate().process(captured)
    assert speech.mean() > 0.5, f"VAD found speech in only {speech.mean():.0%} of captured frames"

    env_cap = _envelope(captured)
    env_ref = _envelope(reference[: int((CAPTURE_S + 2) * 16000)])
    corr, lag = _best_lag_corr(env_cap, env_ref, max_lag=100)  # up to +-1 s
    assert corr > 0.5, f"envelope correlation {corr:.2f} at lag {lag * 10} ms"

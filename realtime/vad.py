"""Speech gate: webrtcvad plus two cheap checks that stop it calling silence or hiss "speech".

webrtcvad needs 16-bit mono PCM at 8/16/32/48 kHz in frames of exactly 10, 20 or 30 ms. Audio
arrives in chunks of any size, so :class:`VadGate` keeps the leftover samples of an incomplete
frame until the next call (as openWakeWord does) and returns one decision per complete frame.

The two extra checks (tests/test_vad.py shows what each one catches, on real speech and on noise):

* **Energy floor** (``energy_floor_dbfs``): webrtcvad marks the first frames of *any* non-silent input
  as speech while it adapts. A frame whose RMS is below the floor is never speech, so digital silence
  and very quiet noise give no speech at all. The price: near-silent hangover frames between words are
  dropped too.
* **Spectral-flatness ceiling** (``flatness_max``): webrtcvad calls loud white noise speech in every
  mode. The flatness of a frame (geometric / arithmetic mean of its power spectrum above 130 Hz) is
  high for white noise and low for speech, so a frame flatter than the ceiling is never speech. The
  price: of speech buried in white noise, fewer frames pass. Pink and brown noise are not flat, so this
  check does not catch them. ``flatness_max=None`` disables it.
"""
from __future__ import annotations

import numpy as np
import scipy.fft

from .audio import float_to_s16, s16_to_float
from .features import _kernel

__all__ = ["VadGate", "VALID_FRAME_MS", "VALID_SAMPLE_RATES"]

VALID_FRAME_MS = (10, 20, 30)
VALID_SAMPLE_RATES = (8000, 16000, 32000, 48000)
_FLATNESS_MIN_HZ = 130.0  # ignore DC / mains hum bins in the flatness measure
_POWER_EPS = 1e-12  # added to each bin's power: silence has a flatness too


class VadGate:
    """Per-frame speech decisions for a stream of float32 mono chunks of any size.

    Parameters
    ----------
    aggressiveness : 0..3, webrtcvad mode (3 = most aggressive at rejecting non-speech).
    frame_ms : 10, 20 or 30.
    sample_rate : 8000, 16000, 32000 or 48000 (the rate of the chunks passed to :meth:`process`).
    energy_floor_dbfs : frames with RMS below this (dB re full scale) are never speech; None disables.
    flatness_max : frames with spectral flatness above this are never speech; None disables.
    """

    def __init__(self, aggressiveness: int = 2, frame_ms: int = 30, sample_rate: int = 16000, *,
                 energy_floor_dbfs: float | None = -60.0, flatness_max: float | None = 0.5):
        import webrtcvad

        if isinstance(aggressiveness, bool) or aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"aggressiveness must be 0, 1, 2 or 3, got {aggressiveness!r}")
        if frame_ms not in VALID_FRAME_MS:
            raise ValueError(
                f"frame_ms must be 10, 20 or 30 (webrtcvad accepts only those frame lengths), got {frame_ms!r}")
        if sample_rate not in VALID_SAMPLE_RATES:
            raise ValueError(
                f"sample_rate must be one of {VALID_SAMPLE_RATES} for webrtcvad, got {sample_rate!r}; "
                "resample first (realtime.audio.to_16k_mono)")
        if flatness_max is not None and not 0.0 < flatness_max <= 1.0:
            raise ValueError(f"flatness_max must be in (0, 1] or None, got {flatness_max!r}")
        self._webrtcvad = webrtcvad
        self.aggressiveness = int(aggressiveness)
        self.frame_ms = int(frame_ms)
        self.sample_rate = int(sample_rate)
        self.frame_samples = self.sample_rate * self.frame_ms // 1000
        self.energy_floor_dbfs = energy_floor_dbfs
        self.flatness_max = flatness_max
        # mean-square threshold equivalent to the dBFS floor (full scale = amplitude 1.0)
        self._ms_floor = None if energy_floor_dbfs is None else 10.0 ** (energy_floor_dbfs / 10.0)
        self._window = np.hanning(self.frame_samples).astype(np.float32)
        self._flat_lo = int(np.ceil(_FLATNESS_MIN_HZ * self.frame_samples / self.sample_rate))
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget leftover samples and webrtcvad's adaptive state (e.g. between streams)."""
        self._vad = self._webrtcvad.Vad(self.aggressiveness)
        self._leftover = np.zeros(0, dtype=np.float32)
        self.frames = 0  # complete frames processed
        self.speech_frames = 0
        self.rejected_energy = 0  # frames webrtcvad called speech but the energy floor rejected
        self.rejected_flatness = 0  # ... that the flatness ceiling rejected

    @property
    def frames_per_second(self) -> float:
        return 1000.0 / self.frame_ms

    @property
    def frame_seconds(self) -> float:
        return self.frame_ms / 1000.0

    @property
    def pending_samples(self) -> int:
        """Samples held over until the next call (always < frame_samples)."""
        return int(self._leftover.shape[0])

    # ------------------------------------------------------------------ work
    def process(self, chunk) -> np.ndarray:
        """Return a bool array, one entry per complete frame now available (possibly empty).

        ``chunk`` is float audio in [-1, 1] (or int16 PCM) at ``sample_rate``, 1-D, any length.
        Samples that do not fill a frame are kept for the next call.
        """
        x = np.asarray(chunk)
        if x.ndim != 1:
            raise ValueError(f"VadGate.process needs a 1-D mono chunk, got shape {x.shape}")
        if x.dtype == np.int16:
            x = s16_to_float(x)
        else:
            x = x.astype(np.float32, copy=False)
        if self._leftover.shape[0]:
            x = np.concatenate((self._leftover, x))
        n_frames = x.shape[0] // self.frame_samples
        used = n_frames * self.frame_samples
        self._leftover = x[used:].copy()
        if n_frames == 0:
            return np.zeros(0, dtype=bool)
        frames = x[:used].reshape(n_frames, self.frame_samples)
        if _kernel is not None:
            s16 = np.empty(used, dtype=np.int16)
            _kernel.to_s16(frames, s16, used)
        else:
            s16 = float_to_s16(frames)
        pcm = memoryview(s16).cast("B")
        is_speech = self._vad.is_speech
        rate, size = self.sample_rate, 2 * self.frame_samples
        raw = [is_speech(pcm[i:i + size], rate) for i in range(0, len(pcm), size)]
        out = np.array(raw, dtype=bool)
        if any(raw):
            mean_square, flat = self._measures(frames)
            if self._ms_floor is not None:
                quiet = out & (mean_square < self._ms_floor)
                self.rejected_energy += int(np.count_nonzero(quiet))
                out ^= quiet
            if self.flatness_max is not None:
                too_flat = out & (flat > self.flatness_max)
                self.rejected_flatness += int(np.count_nonzero(too_flat))
                out ^= too_flat
        self.frames += n_frames
        self.speech_frames += int(np.count_nonzero(out))
        return out

    def _measures(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's mean square and spectral flatness (0 = tonal, ~0.56 = white noise) above ~130 Hz (the compiled
        kernel's loops where installed, else numpy)."""
        spec = scipy.fft.rfft(frames * self._window, axis=1)
        if _kernel is not None:
            mean_square, flat = np.empty(len(frames)), np.empty(len(frames))
            _kernel.vad_measures(np.ascontiguousarray(frames), spec, mean_square, flat, len(frames), frames.shape[1],
                                 spec.shape[1], self._flat_lo, _POWER_EPS)
            return mean_square, flat
        power = (spec.real.astype(np.float64) ** 2 + spec.imag.astype(np.float64) ** 2)[:, self._flat_lo:] + _POWER_EPS
        mean_square = np.mean(np.square(frames, dtype=np.float64), axis=1)
        return mean_square, np.exp(np.mean(np.log(power), axis=1)) / np.mean(power, axis=1)

    def __repr__(self) -> str:
        return (f"VadGate(aggressiveness={self.aggressiveness}, frame_ms={self.frame_ms}, "
                f"sample_rate={self.sample_rate}, energy_floor_dbfs={self.energy_floor_dbfs}, "
                f"flatness_max={self.flatness_max})")

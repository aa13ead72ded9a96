"""A second opinion for whole recordings: a pretrained speaker encoder's embedding of the voice, read by a
linear probe.

The window models learn gender from this project's few hundred voices. A speaker encoder has learnt what
tells voices apart from thousands: Resemblyzer's GE2E encoder (Jemine, after Wan et al., "Generalized
End-to-End Loss for Speaker Verification", ICASSP 2018; a 3-layer LSTM trained on LibriSpeech-other and
VoxCeleb 1 and 2; Apache-2.0), converted once to ONNX (``offline/voice_encoder.py``). Its embedding of a
recording, read by a logistic probe trained on this project's speakers, is a per-file gender opinion that
generalises across corpora better than the window models (models/MODEL_CARD.md). It costs ~7 ms of CPU per
second of speech, more than the whole window path per second of audio, so it runs once per recording, on at
most ``VoiceFrontend.max_speech_seconds`` of its speech, never per hop.

The frontend repeats Resemblyzer's: volume normalised to -30 dBFS (raised only), a power mel spectrogram
(``librosa.feature.melspectrogram(sr=16000, n_fft=400, hop_length=160, n_mels=40)``, transposed; tested
for parity), partial utterances of 160 frames at 1.3 a second, the partials' embeddings averaged and
L2-normalised. Silence is left out before it: the engine hands it the speech its VAD passed in hops the
speech check accepted (:class:`VoiceSample`), training the same VAD's speech (``offline.voice_probe``).
Like the feature definition, the frontend is versioned in the bundle and an engine refuses a bundle whose
frontend differs from its own.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import scipy.fft

from .features import definition_hash

__all__ = ["EMBEDDING_SIZE", "FRONTEND", "VoiceFrontend", "VoiceEncoder", "VoiceSample", "mel_power", "partial_slices", "vad_speech"]


EMBEDDING_SIZE = 256  # the encoder's output


@dataclass(frozen=True)
class VoiceFrontend:
    """Every parameter between speech samples and the encoder's input. Frozen: a change is another frontend."""

    version: int = 1
    sr: int = 16000
    n_fft: int = 400  # 25 ms (periodic Hann, centred, zero-padded: librosa.stft's defaults)
    hop_length: int = 160  # 10 ms
    n_mels: int = 40  # slaney mel filterbank, 0 - 8 kHz, power (not dB)
    partial_frames: int = 160  # 1.6 s per partial utterance
    partials_per_second: float = 1.3
    min_coverage: float = 0.75  # a last partial this much covered by audio is kept (zero-padded)
    target_dbfs: float = -30.0  # volume normalisation (raise only)
    max_speech_seconds: float = 12.0  # the encoder reads the first this much of a recording's speech
    min_speech_seconds: float = 1.0  # less speech: no opinion

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def hash(self) -> str:
        return definition_hash(self.to_dict())


FRONTEND = VoiceFrontend()


def _mel_basis(fe: VoiceFrontend) -> np.ndarray:
    from .features import FeatureDefinition, mel_filterbank

    return mel_filterbank(FeatureDefinition(sr=fe.sr, n_fft=fe.n_fft, n_mels=fe.n_mels, fmin=0.0, fmax=fe.sr / 2))


_BASIS: dict[VoiceFrontend, tuple[np.ndarray, np.ndarray]] = {}


def mel_power(x: np.ndarray, fe: VoiceFrontend = FRONTEND) -> np.ndarray:
    """(T, n_mels) float32 power mel spectrogram of 16 kHz mono ``x``:
    ``librosa.feature.melspectrogram(y=x, sr=16000, n_fft=400, hop_length=160, n_mels=40).T``."""
    if fe not in _BASIS:
        win = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(fe.n_fft) / fe.n_fft)).astype(np.float32)
        _BASIS[fe] = (win, np.ascontiguousarray(_mel_basis(fe).T))
    win, basis = _BASIS[fe]
    x = np.asarray(x, dtype=np.float32)
    half = fe.n_fft // 2
    pad = np.zeros(x.size + 2 * half, dtype=np.float32)
    pad[half: half + x.size] = x
    n = 1 + x.size // fe.hop_length
    frames = np.lib.stride_tricks.as_strided(pad, (n, fe.n_fft), (fe.hop_length * 4, 4), writeable=False)
    spec = scipy.fft.rfft(frames * win, axis=1)
    return ((spec.real ** 2 + spec.imag ** 2) @ basis).astype(np.float32)


def partial_slices(n_samples: int, fe: VoiceFrontend = FRONTEND) -> list[slice]:
    """The partial utterances (frame ranges) covering ``n_samples`` samples, as Resemblyzer cuts them: one
    every 1 / partials_per_second seconds, the last dropped if audio covers under ``min_coverage`` of it."""
    n_frames = int(np.ceil((n_samples + 1) / fe.hop_length))
    step = int(np.round(fe.sr / fe.partials_per_second / fe.hop_length))
    slices = [slice(i, i + fe.partial_frames) for i in range(0, max(1, n_frames - fe.partial_frames + step + 1), step)]
    coverage = (n_samples - slices[-1].start * fe.hop_length) / (fe.partial_frames * fe.hop_length)
    if coverage < fe.min_coverage and len(slices) > 1:
        slices.pop()
    return slices


def vad_speech(x: np.ndarray, aggressiveness: int = 2) -> np.ndarray:
    """The samples of 16 kHz mono ``x`` the engine's VAD passes as speech (its gate, its 20 ms frames), in
    order: what a :class:`VoiceSample` of a clean speech recording holds, for training the probe."""
    from .engine_config import VAD_FRAME_MS
    from .vad import VadGate

    gate = VadGate(aggressiveness, frame_ms=VAD_FRAME_MS, sample_rate=16000)
    x = np.asarray(x, dtype=np.float32)
    keep = gate.process(x)
    n = gate.frame_samples
    return x[: keep.size * n].reshape(-1, n)[keep].ravel()


class VoiceEncoder:
    """The speaker encoder's ONNX session and frontend: :meth:`embed` turns speech into a unit 256-d embedding."""

    def __init__(self, session, input_name: str, output_name: str, frontend: VoiceFrontend = FRONTEND):
        self.session, self.input_name, self.output_name, self.frontend = session, input_name, output_name, frontend

    def embed(self, speech: np.ndarray) -> np.ndarray | None:
        """The embedding (float32, unit norm) of 16 kHz mono speech (silence left out), from its first
        ``max_speech_seconds``; None for less than ``min_speech_seconds``."""
        fe = self.frontend
        x = np.asarray(speech, dtype=np.float32)[: int(fe.max_speech_seconds * fe.sr)]
        if x.size < fe.min_speech_seconds * fe.sr or not np.all(np.isfinite(x)):
            return None
        power = float(np.mean(np.square(x, dtype=np.float64)))
        if power <= 0:
            return None
        gain_db = fe.target_dbfs - 10.0 * np.log10(power)
        if gain_db > 0:
            x = x * np.float32(10.0 ** (gain_db / 20.0))
        slices = partial_slices(x.size, fe)
        need = slices[-1].stop * fe.hop_length
        if need > x.size:
            x = np.pad(x, (0, need - x.size))
        mel = mel_power(x, fe)
        parts = np.stack([mel[s] for s in slices])
        e = self.session.run([self.output_name], {self.input_name: parts})[0].astype(np.float64).mean(axis=0)
        norm = np.linalg.norm(e)
        return None if norm == 0 else (e / norm).astype(np.float32)


class VoiceSample:
    """The speech of one stream the encoder will read: what the VAD passed, kept only once a window of it
    passed the speech check (music and tones between the talk stay out), up to ``capacity`` samples."""

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self._buf: np.ndarray | None = None  # allocated with the first speech
        self.size = 0
        self._pending: list[np.ndarray] = []  # speech since the last window the speech check judged
        self._pending_size = 0

    def add(self, speech: np.ndarray) -> None:
        """Speech the VAD passed (kept pending until a window judges it; at most ``capacity`` of it, the newest)."""
        if self.size >= self.capacity or not speech.size:
            return
        self._pending.append(speech.copy())
        self._pending_size += speech.size
        while self._pending_size - self._pending[0].size >= self.capacity:
            self._pending_size -= self._pending.pop(0).size

    def judged(self, is_speech: bool) -> None:
        """A window was judged: keep the pending speech if it was speech, drop it if not."""
        pending, self._pending, self._pending_size = self._pending, [], 0
        if not is_speech or self.size >= self.capacity:
            return
        if self._buf is None:
            self._buf = np.empty(self.capacity, dtype=np.float32)
        for part in pending:
            n = min(part.size, self.capacity - self.size)
            self._buf[self.size: self.size + n] = part[:n]
            self.size += n

    def speech(self) -> np.ndarray:
        return np.zeros(0, dtype=np.float32) if self._buf is None else self._buf[: self.size]

    def clear(self) -> None:
        self._buf, self.size, self._pending, self._pending_size = None, 0, [], 0

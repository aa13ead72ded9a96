"""``EngineConfig``: every knob of the live engine, in a module light enough for the command line to build
its options from (``realtime.options``) without loading numpy, scipy or onnxruntime."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EngineConfig", "VAD_FRAME_MS"]

VAD_FRAME_MS = 20


@dataclass
class EngineConfig:
    """Every knob of the live engine (``realtime.engine``'s docstring says what each one does in the pipeline).

    ``hop_s``: seconds between events (a multiple of the 20 ms VAD frame); ``vad_aggressiveness``: webrtcvad's
    mode, 0-3; ``first_window_s``: speech buffered before a voice's first estimate (0.5-2 s);
    ``min_new_speech_s``: new speech a hop needs before it classifies another window; ``reset_after_silence_s``:
    silence after which the voice is forgotten; ``forget_s``, ``hysteresis``: the smoother's
    (:class:`realtime.smoother.Smoother`); ``level_range_dbfs``: the speech levels outside which
    ``summarise`` warns; the others are described where they are defined.
    """

    hop_s: float = 0.5
    vad_aggressiveness: int = 2
    first_window_s: float = 0.75
    min_new_speech_s: float = 0.1
    speech_fraction: float = 0.2  # share of a hop's frames that must be speech for it to count as speech
    reset_after_silence_s: float = 1.5
    forget_s: float = 2.0
    hysteresis: float = 0.1
    speech_only: bool = True  # False: windows hold all audio (pauses too), as training windows do
    # speech levels the models know: 98 % of the training windows lie in -39..-18 dBFS (median -25.5)
    level_range_dbfs: tuple[float, float] = (-42.0, -14.0)
    # the file verdict weighs in the bundle's voice opinion (a speaker encoder reading the first 12 s of speech
    # once, ~7 ms of CPU per second of it, <= ~0.1 s a recording; realtime.voice); False: the windows alone, nothing kept
    voice_opinion: bool = True
    # the live estimate weighs in the voice opinion of the voice's latest 2 s of speech, read at its first 1 s and
    # then every 2 s of new speech (~15-25 ms of CPU each, in the hop that reads it; realtime.engine)
    live_voice: bool = False

    def __post_init__(self):
        frame_s = VAD_FRAME_MS / 1000
        frames = self.hop_s / frame_s
        if self.hop_s <= 0 or abs(frames - round(frames)) > 1e-6:
            raise ValueError(f"hop must be a positive multiple of {VAD_FRAME_MS} ms, got {self.hop_s} s")
        if not 0.5 <= self.first_window_s <= 2.0:
            raise ValueError(f"first_window_s must be between 0.5 and 2.0 s, got {self.first_window_s}")

"""Fixed-length analysis windows over whole utterances."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from realtime.audio import SAMPLE_RATE


def window_starts(n_samples: int, window: int, hop: int) -> list[int]:
    """Start samples of the windows covering a clip of ``n_samples``.

    Full windows every ``hop`` samples. If at least half a window of audio is left uncovered after the last
    full window (possible only when ``hop > window / 2``), one more partial window starts at the next position
    (``last + min(hop, window)``) and is padded later. A clip shorter than a window gives one window at 0.
    """
    if window <= 0 or hop <= 0:
        raise ValueError(f"window and hop must be positive, got window={window}, hop={hop}")
    if n_samples <= 0:
        return []
    if n_samples < window:
        return [0]
    starts = list(range(0, n_samples - window + 1, hop))
    tail = n_samples - (starts[-1] + window)
    if 2 * tail >= window:
        starts.append(starts[-1] + min(hop, window))
    return starts


def iter_windows(audio: np.ndarray, window_s: float = 2.0, hop_s: float = 0.5, sr: int = SAMPLE_RATE, *,
                 min_samples: int | None = None) -> Iterator[tuple[float, np.ndarray]]:
    """Yield ``(start_seconds, window)`` with every window exactly ``round(window_s * sr)`` samples.

    Short pieces are padded by ``realtime.features.fit_window`` exactly as the live engine pads them, which
    raises AudioError for a clip below ``min_samples`` (default ``realtime.features.MIN_SAMPLES``).
    """
    from realtime.features import MIN_SAMPLES, fit_window

    min_samples = MIN_SAMPLES if min_samples is None else min_samples
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"audio must be 1-D, got shape {audio.shape}")
    window, hop = int(round(window_s * sr)), int(round(hop_s * sr))
    for start in window_starts(audio.shape[0], window, hop):
        piece = audio[start:start + window]
        if piece.shape[0] != window:
            piece = fit_window(piece, window, min_samples=min_samples)
        yield start / sr, piece

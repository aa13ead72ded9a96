"""Audio in: any file or buffer becomes 16 kHz mono float32 in [-1, 1].

16 kHz because webrtcvad and LibriSpeech both live there. soundfile reads, soxr resamples.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
RESAMPLE_QUALITY = "HQ"  # soxr quality of every resampler here, one-shot and streaming
DATA_ENV = "VOICEGENDER_DATA"  # environment variable: the folder holding LibriSpeech/ (and other corpora)


class AudioError(ValueError):
    """Input audio that cannot be used, with a message that says why."""


def to_mono(x: np.ndarray) -> np.ndarray:
    """(n,) or (n, channels) -> (n,) float32 by averaging channels."""
    x = np.asarray(x)
    if x.ndim == 2:
        x = x.mean(axis=1)
    elif x.ndim != 1:
        raise AudioError(f"audio must be 1-D or (frames, channels), got shape {x.shape}")
    return x.astype(np.float32, copy=False)


def resample(x: np.ndarray, sr_in: int, sr_out: int = SAMPLE_RATE) -> np.ndarray:
    """Resample mono float32 audio with soxr (high quality)."""
    if sr_in <= 0:
        raise AudioError(f"sample rate must be positive, got {sr_in}")
    if sr_in == sr_out:
        return np.asarray(x, dtype=np.float32)
    import soxr

    return soxr.resample(np.asarray(x, dtype=np.float32), sr_in, sr_out, quality=RESAMPLE_QUALITY).astype(np.float32, copy=False)


class StreamResampler:
    """Mono float32 streaming resampler to 16 kHz (``soxr.ResampleStream``; a pass-through at 16 kHz).

    State is kept across calls, so chunk boundaries leave no trace; ``last=True`` returns the tail.
    Output is clipped to [-1, 1]. Output that is not finite (finite but huge input overflows in the filter)
    raises AudioError naming the cause, so the engine never sees a NaN window.
    """

    def __init__(self, in_rate: float, name: str = "audio"):
        self.in_rate = float(in_rate)
        self.name = name
        if not self.in_rate > 0:
            raise AudioError(f"sample rate must be positive, got {in_rate}")
        if self.in_rate == SAMPLE_RATE:
            self._rs = None
        else:
            import soxr

            self._rs = soxr.ResampleStream(self.in_rate, SAMPLE_RATE, 1, dtype="float32", quality=RESAMPLE_QUALITY)

    def __call__(self, x: np.ndarray, last: bool = False) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self._rs is not None:
            y = self._rs.resample_chunk(x, last=last)
            if y.size and not np.all(np.isfinite(y)):
                peak = f" (largest |x| {float(np.max(np.abs(x))):.3g})" if x.size else ""
                raise AudioError(f"{self.name}: audio became NaN/infinite when resampled from {self.in_rate:g} Hz to "
                                 f"{SAMPLE_RATE} Hz: samples are far outside [-1, 1]{peak}")
            x = y
        else:
            x = x.copy() if not x.flags.owndata else x
        return np.clip(x, -1.0, 1.0, out=x)


def data_dir() -> Path:
    """The data folder (holding LibriSpeech/): ``$VOICEGENDER_DATA`` if set, else ../shared/data beside the repository."""
    import os

    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def to_16k_mono(x: np.ndarray, sr: int) -> np.ndarray:
    """Any (n,) or (n, channels) array at any rate -> 16 kHz mono float32, finite, clipped to [-1, 1]."""
    m = to_mono(x)
    if m.size and not np.all(np.isfinite(m)):
        raise AudioError("audio contains NaN or infinite samples")
    y = resample(m, int(sr), SAMPLE_RATE)
    if y.size and not np.all(np.isfinite(y)):  # finite but huge samples overflow in the resampling filter
        raise AudioError(f"audio became NaN/infinite when resampled from {int(sr)} Hz to {SAMPLE_RATE} Hz: samples are "
                         f"far outside [-1, 1] (largest |x| {float(np.max(np.abs(m))):.3g})")
    return np.clip(y, -1.0, 1.0, out=y)


def check_audio_path(path: str | Path) -> Path:
    """``path`` as a Path if it is a readable regular file; else AudioError saying precisely what it is
    (missing, a directory, a FIFO or device, unreadable)."""
    import os
    import stat

    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise AudioError(f"{path}: no such audio file") from None
    except PermissionError:
        raise AudioError(f"{path}: permission denied (cannot look up the file; check the folder's permissions)") from None
    except OSError as exc:
        raise AudioError(f"{path}: cannot access it ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise AudioError(f"{path}: is a directory, not an audio file")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a character device" if stat.S_ISCHR(st.st_mode)
                else "a block device" if stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "not a regular file")
        raise AudioError(f"{path}: is {kind}, not an audio file (for raw PCM from a pipe use --source stdin)")
    if not os.access(path, os.R_OK):
        raise AudioError(f"{path}: permission denied (the file is not readable by this user)")
    return path


def load_audio(path: str | Path, *, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Read any file soundfile can (flac, wav, ogg, ...) as mono float32 at ``sr``.

    Raises AudioError for a missing, corrupt, unsupported or empty file.
    """
    import soundfile as sf

    path = check_audio_path(path)
    try:
        data, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(f"{path}: cannot decode audio ({exc})") from exc
    if data.shape[0] == 0:
        raise AudioError(f"{path}: file holds no audio samples")
    y = to_mono(data)
    if sr == SAMPLE_RATE:
        y = to_16k_mono(y, file_sr)
    else:
        y = resample(y, file_sr, sr)
    return y


def pcm16_to_float(buf: bytes) -> np.ndarray:
    """Little-endian signed 16-bit PCM bytes -> float32 in [-1, 1). A trailing odd byte is an error."""
    if len(buf) % 2:
        raise AudioError(f"s16le PCM needs an even number of bytes, got {len(buf)}")
    return np.frombuffer(buf, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm16(x: np.ndarray) -> bytes:
    """float32 in [-1, 1] -> little-endian s16 PCM bytes (webrtcvad's input)."""
    return (np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()

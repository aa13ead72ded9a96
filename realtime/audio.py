"""Audio in: any file, buffer, array or PCM byte stream becomes 16 kHz mono float32 in [-1, 1].

16 kHz because webrtcvad and LibriSpeech both live there. soundfile reads (FFmpeg for the formats it cannot:
``realtime.decode``), soxr resamples. This module is
the one decoding path of the live package:

* :data:`PCM_ENCODINGS`: the raw PCM encodings every byte stream may use (stdin, the server's sockets);
* :func:`to_mono` averages channels; :func:`as_mono_float` takes an array as ``Engine.push`` does;
* :func:`decode_pcm` turns whole interleaved PCM frames into mono float32, :func:`float_to_s16` goes back;
* :class:`StreamResampler` resamples a stream to 16 kHz; :class:`PcmDecoder` is a PCM byte stream in any
  encoding, rate and channel count to 16 kHz mono, chunk boundaries anywhere (even inside a sample);
* :func:`resample`, :func:`to_16k_mono` and :func:`load_audio` do the same for a whole signal or file.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .errors import AudioError

SAMPLE_RATE = 16000
RESAMPLE_QUALITY = "HQ"  # soxr quality of every resampler here, one-shot and streaming
DATA_ENV = "VOICEGENDER_DATA"  # environment variable: the folder holding LibriSpeech/ (and other corpora)
#: raw PCM sample encoding -> (numpy dtype, full scale: a sample is divided by it to lie in [-1, 1])
PCM_ENCODINGS: dict[str, tuple[str, float]] = {"s16le": ("<i2", 32768.0), "f32le": ("<f4", 1.0)}
MIN_PCM_RATE, MAX_PCM_RATE = 4000, 384000  # the rates a PCM stream may declare (stdin, the server)
MAX_CHANNELS = 32  # more looks like a (channels, samples) array passed the wrong way round
_S16_SCALE = np.float32(1.0 / PCM_ENCODINGS["s16le"][1])  # a power of two: multiplying equals dividing


def _prefix(name: str) -> str:
    return f"{name}: " if name else ""


#: the average of channels keeping less than this share of their mean power means they cancel each other
CANCEL_SHARE = 0.25


def to_mono(x: np.ndarray) -> np.ndarray:
    """(n,) or (n, channels) -> (n,) float32 by averaging channels.

    Channels that cancel each other are averaged with their polarity aligned to the first channel instead:
    many laptops' digital microphone pairs deliver the second channel inverted (ALSA's "inverted internal
    mic" quirk), and a phase-flipped cable does the same, so the plain average erases the voice. The test,
    per call: the average keeps less than ``CANCEL_SHARE`` of the channels' mean power (uncorrelated channels
    keep half, correlated ones all of it, so those are averaged as they always were)."""
    x = np.asarray(x)
    if x.ndim == 2:
        if x.shape[1] == 1:
            x = x[:, 0]
        else:
            mono = x.mean(axis=1)
            x64 = x.astype(np.float64, copy=False)
            power = np.einsum("ij,ij->j", x64, x64)  # per channel
            if mono.size and float(np.dot(mono, mono)) < CANCEL_SHARE * float(power.mean()):
                signs = np.where(x64[:, 0] @ x64 < 0, -1.0, 1.0)  # each channel against the first
                mono = (x64 * signs).mean(axis=1)
            x = mono
    elif x.ndim != 1:
        raise AudioError(f"audio must be 1-D or (frames, channels), got shape {x.shape}")
    return x.astype(np.float32, copy=False)


def s16_to_float(x: np.ndarray) -> np.ndarray:
    """int16 samples -> float32 in [-1, 1) (divided by 32768)."""
    return np.asarray(x).astype(np.float32) * _S16_SCALE


def float_to_s16(x: np.ndarray) -> np.ndarray:
    """float samples in [-1, 1] (clipped) -> little-endian int16 (scaled by 32767)."""
    return (np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2")


def as_mono_float(chunk) -> np.ndarray:
    """An array as ``Engine.push`` takes it -> 1-D float32: int16 scaled by 1/32768, ``(N, channels)`` averaged.

    AudioError (a ValueError) that says what is wrong for NaN/inf, float samples far outside [-1, 1],
    other dtypes or shapes."""
    x = np.asarray(chunk)
    if x.dtype == np.int16:
        x = s16_to_float(x)
    elif x.dtype.kind == "f":
        x = x.astype(np.float32, copy=False)
    else:
        raise AudioError(f"audio must be a float array in [-1, 1] or int16, got dtype {x.dtype}")
    if x.ndim == 2 and x.shape[1] > MAX_CHANNELS:
        raise AudioError(f"audio must be (N,) or (N, channels), got shape {x.shape}: "
                         f"{x.shape[1]} channels? pass (samples, channels), e.g. x.T")
    if x.ndim not in (1, 2):
        raise AudioError(f"audio must be (N,) or (N, channels), got shape {x.shape}")
    x = to_mono(x)
    if x.size:
        peak = max(float(np.max(x)), -float(np.min(x)))  # NaN propagates; no temporaries (this runs every push)
        if not math.isfinite(peak):
            bad = x.size - int(np.count_nonzero(np.isfinite(x)))
            raise AudioError(f"audio contains NaN or infinite samples ({bad} of {x.size})")
        if peak > 2.0:
            raise AudioError(f"float audio must lie in [-1, 1], got a peak of {peak:g} "
                             f"(int16 values as floats? divide by 32768 or pass the int16 array)")
    return x


def decode_pcm(buf, encoding: str = "s16le", channels: int = 1, *, name: str = "",
               error: type[Exception] = AudioError) -> np.ndarray:
    """Whole interleaved PCM frames (bytes, or any buffer) -> mono float32 at their own rate.

    ``encoding``: a key of :data:`PCM_ENCODINGS`; ``channels`` are averaged. NaN or infinite f32le samples
    raise ``error`` (prefixed by ``name``). The buffer must hold whole frames."""
    dtype, scale = PCM_ENCODINGS[encoding]
    x = np.frombuffer(buf, dtype=dtype).astype(np.float32)
    if scale != 1.0:
        x *= np.float32(1.0 / scale)
    elif not np.all(np.isfinite(x)):
        raise error(f"{_prefix(name)}{encoding} audio contains NaN or infinite samples")
    return to_mono(x.reshape(-1, channels)) if channels > 1 else x


def resample(x: np.ndarray, sr_in: int, sr_out: int = SAMPLE_RATE) -> np.ndarray:
    """Resample mono float32 audio with soxr (high quality)."""
    if sr_in <= 0:
        raise AudioError(f"sample rate must be positive, got {sr_in}")
    if sr_in == sr_out:
        return np.asarray(x, dtype=np.float32)
    import soxr

    return soxr.resample(np.asarray(x, dtype=np.float32), sr_in, sr_out, quality=RESAMPLE_QUALITY).astype(np.float32, copy=False)


def _check_resampled(y: np.ndarray, x: np.ndarray, rate: float, name: str, error: type[Exception]) -> None:
    """Finite but huge input overflows in the resampling filter: say so, instead of passing NaN on."""
    if y.size and not np.all(np.isfinite(y)):
        peak = f" (largest |x| {float(np.max(np.abs(x))):.3g})" if x.size else ""
        raise error(f"{_prefix(name)}audio became NaN/infinite when resampled from {rate:g} Hz to {SAMPLE_RATE} Hz: "
                    f"samples are far outside [-1, 1]{peak}")


class StreamResampler:
    """Mono float32 streaming resampler to 16 kHz (``soxr.ResampleStream``; a pass-through at 16 kHz).

    State is kept across calls, so chunk boundaries leave no trace; ``last=True`` returns the tail.
    Output is clipped to [-1, 1]. Output that is not finite (finite but huge input overflows in the filter)
    raises ``error`` (AudioError unless given) naming the cause, so the engine never sees a NaN window.
    """

    def __init__(self, in_rate: float, name: str = "audio", *, error: type[Exception] = AudioError):
        self.in_rate = float(in_rate)
        self.name = name
        self.error = error
        if not self.in_rate > 0:
            raise error(f"sample rate must be positive, got {in_rate}")
        if self.in_rate == SAMPLE_RATE:
            self._rs = None
        else:
            import soxr

            self._rs = soxr.ResampleStream(self.in_rate, SAMPLE_RATE, 1, dtype="float32", quality=RESAMPLE_QUALITY)

    def __call__(self, x: np.ndarray, last: bool = False) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self._rs is not None:
            y = self._rs.resample_chunk(x, last=last)
            _check_resampled(y, x, self.in_rate, self.name, self.error)
            x = y
        else:
            x = x.copy() if not x.flags.owndata else x
        return np.clip(x, -1.0, 1.0, out=x)


class PcmDecoder:
    """A raw PCM byte stream -> 16 kHz mono float32, streaming.

    ``encoding`` (a key of :data:`PCM_ENCODINGS`), ``rate`` and ``channels`` describe the input. Bytes that
    do not complete a sample frame are held until the next :meth:`feed`, so chunks may end anywhere;
    channels are averaged and the result goes through one :class:`StreamResampler`. :meth:`flush` ends the
    stream (the resampler's tail; a held partial frame is dropped, counted in ``pending_bytes``). Unusable
    audio (NaN/inf f32le samples, samples so large that resampling overflows) raises ``error``, its
    message prefixed by ``name``.
    """

    def __init__(self, encoding: str = "s16le", rate: float = SAMPLE_RATE, channels: int = 1, *, name: str = "audio",
                 error: type[Exception] = AudioError):
        if encoding not in PCM_ENCODINGS:
            raise error(f"encoding must be one of {', '.join(PCM_ENCODINGS)}, got {encoding!r}")
        if int(channels) < 1:
            raise error(f"channels must be >= 1, got {channels}")
        self.encoding, self.rate, self.channels = encoding, rate, int(channels)
        self.name, self.error = name, error
        self.frame_bytes = np.dtype(PCM_ENCODINGS[encoding][0]).itemsize * self.channels  # one sample of every channel
        self._resample = StreamResampler(rate, name, error=error)
        self._pending = b""
        self.bytes_in = 0  # bytes fed
        self.frames_in = 0  # whole sample frames decoded (at the input rate)

    @property
    def pending_bytes(self) -> int:
        """Bytes held that do not make a whole sample frame yet."""
        return len(self._pending)

    @property
    def seconds_in(self) -> float:
        """Audio decoded so far, in seconds at the input rate."""
        return self.frames_in / self.rate

    def feed(self, data: bytes | bytearray | memoryview) -> np.ndarray:
        """The 16 kHz audio these bytes complete (possibly empty)."""
        self.bytes_in += len(data)
        buf = self._pending + bytes(data) if self._pending else bytes(data)
        usable = len(buf) // self.frame_bytes * self.frame_bytes
        self._pending = buf[usable:]
        if usable == 0:
            return np.zeros(0, dtype=np.float32)
        x = decode_pcm(memoryview(buf)[:usable], self.encoding, self.channels, name=self.name, error=self.error)
        self.frames_in += x.size
        return self._resample(x)

    def flush(self) -> np.ndarray:
        """End of stream: the resampler's remaining output."""
        return self._resample(np.zeros(0, dtype=np.float32), last=True)


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
    _check_resampled(y, m, int(sr), "", AudioError)
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
    """Read an audio file (wav, flac, ogg, mp3, ...; m4a, webm, mp4 and the other FFmpeg formats:
    ``realtime.decode``) as mono float32 at ``sr``.

    Raises AudioError for a missing, corrupt, unsupported or empty file.
    """
    from .decode import read

    path = check_audio_path(path)
    data, file_sr = read(path)
    y = to_mono(data)
    if sr == SAMPLE_RATE:
        y = to_16k_mono(y, file_sr)
    else:
        y = resample(y, file_sr, sr)
    return y


def pcm16_to_float(buf: bytes) -> np.ndarray:
    """Little-endian signed 16-bit mono PCM bytes -> float32 in [-1, 1). A trailing odd byte is an error."""
    if len(buf) % 2:
        raise AudioError(f"s16le PCM needs an even number of bytes, got {len(buf)}")
    return decode_pcm(buf, "s16le")


def float_to_pcm16(x: np.ndarray) -> bytes:
    """float32 in [-1, 1] -> little-endian s16 PCM bytes (webrtcvad's input)."""
    return float_to_s16(x).tobytes()

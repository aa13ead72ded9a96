"""Audio files of any common container and codec, as float32 sample frames at their own rate.

libsndfile (``soundfile``) reads what it knows: WAV, FLAC, Ogg Vorbis / Opus, MP3, AIFF, CAF and the rest of
``soundfile.available_formats()``. What users record on phones and in browsers mostly is not among them:
M4A / AAC (iPhone and Android voice memos), WebM / Opus (a browser's MediaRecorder), MP4 / MOV / MKV
(a video's soundtrack), AMR / 3GP (older phones), WMA. Those go through FFmpeg, bundled in PyAV's wheel
(``av``), imported only when libsndfile cannot read a file. Everything libsndfile reads is decoded by it
exactly as before.

:func:`read` gives a whole file (a path or a binary file-like object); :func:`open_blocks` streams one
(``realtime.sources.FileSource``). Both raise :class:`~realtime.audio.AudioError` naming the file for
anything that is not decodable audio (missing, corrupt, a video without sound, empty).
"""
from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import AudioError

__all__ = ["FFMPEG_EXTENSIONS", "AudioBlocks", "read", "open_blocks"]

#: file endings only FFmpeg reads here (folders given to ``classify`` include them)
FFMPEG_EXTENSIONS = frozenset({".m4a", ".m4b", ".aac", ".mp4", ".mov", ".3gp", ".3g2", ".amr", ".webm", ".mka",
                               ".mkv", ".wma", ".asf", ".ac3"})


def _soundfile_errors():
    import soundfile as sf

    return (sf.LibsndfileError, RuntimeError, TypeError, ValueError)


def _av():
    try:
        import av
    except ImportError:  # a core install has it (pyproject); a hand-made environment may not
        return None
    return av


def read(source, *, name: str | None = None) -> tuple[np.ndarray, int]:
    """A whole file -> ((frames, channels) float32, sample rate). ``source``: a path or a binary file-like
    object; ``name``: what errors call it (default: the path, or the object's type)."""
    import soundfile as sf

    name = name or (str(source) if isinstance(source, (str, Path)) else type(source).__name__)
    data = source if isinstance(source, (str, Path)) else _rewindable(source)
    try:
        x, rate = sf.read(str(data) if isinstance(data, Path) else data, dtype="float32", always_2d=True)
    except _soundfile_errors() as exc:
        x, rate = _read_ffmpeg(data, name, exc)
    if x.shape[0] == 0:
        raise AudioError(f"{name}: file holds no audio samples")
    return x, int(rate)


def _rewindable(obj):
    """The file-like object's bytes from where it stands, seekable back to their start (the second decoder
    starts where the first did): the object itself when it stands at 0 and can seek, else a copy."""
    try:
        if obj.seekable() and obj.tell() == 0:
            return obj
    except (AttributeError, OSError, ValueError):
        pass
    return io.BytesIO(obj.read())


def _read_ffmpeg(data, name: str, first: Exception) -> tuple[np.ndarray, int]:
    with _ffmpeg_blocks(data, name, first) as blocks:
        parts = list(blocks)
    x = np.concatenate(parts) if parts else np.zeros((0, blocks.channels), np.float32)
    return x, blocks.rate


class AudioBlocks:
    """A file's audio as successive (frames, channels) float32 blocks at its own rate: ``rate``, ``channels``,
    ``frames`` (the container's count or estimate), iterate for the blocks, ``close()`` when done."""

    def __init__(self, rate: int, channels: int, frames: int, blocks: Iterator[np.ndarray], close=None):
        self.rate, self.channels, self.frames = int(rate), int(channels), int(frames)
        self._blocks, self._close = blocks, close

    def __iter__(self) -> Iterator[np.ndarray]:
        return self._blocks

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None

    def __enter__(self) -> "AudioBlocks":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_blocks(path: str | Path, block_frames: int | None = None, block_seconds: float = 0.1) -> AudioBlocks:
    """Stream a file: blocks of ``block_frames`` sample frames (default ``block_seconds`` of them; the last one
    shorter). Raises AudioError at once when the file cannot be opened as audio, and from the iteration when
    decoding fails mid-file."""
    import soundfile as sf

    path = Path(path)
    try:
        f = sf.SoundFile(str(path))
    except _soundfile_errors() as exc:
        return _ffmpeg_blocks(path, str(path), exc, block_frames, block_seconds)
    block = block_frames or max(1, int(round(block_seconds * f.samplerate)))

    def blocks() -> Iterator[np.ndarray]:
        while True:
            try:
                data = f.read(block, dtype="float32", always_2d=True)
            except _soundfile_errors() as exc:
                raise AudioError(f"{path}: decode error mid-file ({exc})") from exc
            if not data.shape[0]:
                return
            yield data

    return AudioBlocks(f.samplerate, f.channels, f.frames, blocks(), f.close)


def _ffmpeg_blocks(data, name: str, first: Exception, block_frames: int | None = None,
                   block_seconds: float = 0.1) -> AudioBlocks:
    """The FFmpeg (PyAV) reader, once libsndfile refused the file with ``first``."""
    first = getattr(first, "error_string", None) or first  # libsndfile's reason, without the object's repr
    av = _av()
    if av is None:
        hint = " (this format needs FFmpeg: pip install av)" if Path(str(name)).suffix.lower() in FFMPEG_EXTENSIONS else ""
        raise AudioError(f"{name}: cannot decode audio ({first}){hint}") from first
    if hasattr(data, "seek"):
        data.seek(0)
    try:
        container = av.open(str(data) if isinstance(data, Path) else data, "r")
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise AudioError(f"{name}: cannot decode audio (libsndfile: {first}; FFmpeg: {why})") from exc
    streams = container.streams.audio
    if not streams:
        container.close()
        raise AudioError(f"{name}: holds no audio stream (libsndfile: {first})")
    stream = streams[0]
    rate, channels = int(stream.rate or 0), int(stream.channels or 0)
    if rate <= 0 or channels <= 0:
        container.close()
        raise AudioError(f"{name}: audio stream without a sample rate or channels")
    frames = int(round(float(stream.duration * stream.time_base) * rate)) if stream.duration else \
        int(round((container.duration or 0) / 1e6 * rate))
    block = block_frames or max(1, int(round(block_seconds * rate)))
    # every decoded frame as planar float32 at the stream's first rate and layout (a codec may change them)
    resampler = av.AudioResampler(format="fltp", layout=stream.layout, rate=rate)

    def decoded() -> Iterator[np.ndarray]:
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    yield out.to_ndarray().T
            for out in resampler.resample(None):
                yield out.to_ndarray().T
        except av.FFmpegError as exc:
            raise AudioError(f"{name}: decode error mid-file ({getattr(exc, 'strerror', None) or exc})") from exc

    def blocks() -> Iterator[np.ndarray]:
        held, n = [], 0
        for x in decoded():
            held.append(np.ascontiguousarray(x, dtype=np.float32))
            n += x.shape[0]
            while n >= block:
                buf = np.concatenate(held) if len(held) > 1 else held[0]
                yield buf[:block]
                held, n = ([buf[block:]] if buf.shape[0] > block else []), buf.shape[0] - block
        if n:
            yield np.concatenate(held) if len(held) > 1 else held[0]

    return AudioBlocks(rate, channels, frames, blocks(), container.close)

"""Audio sources: a file, raw PCM on stdin, or a microphone, all giving 16 kHz mono float32 chunks.

Every source has ``name``, ``sample_rate`` (always 16000: what comes out, whatever goes in),
``chunks()`` (a generator of 1-D float32 arrays in [-1, 1] of any length), ``close()``, and is a
context manager. Decoding and resampling are streaming (:class:`realtime.audio.PcmDecoder`,
:class:`realtime.audio.StreamResampler`), so memory does not grow with the input and a live source
stays live.

``parse_source(spec)`` maps a command-line spec to a source through the ``SOURCE_SCHEMES``
registry; adding a scheme is one entry (or ``register_source_scheme``)::

    file:PATH | PATH (an existing file) | mic | mic:DEVICE (index or name substring) | stdin | -

sounddevice (PortAudio) is imported only by the microphone code, so files and stdin work on a
machine without libportaudio.
"""
from __future__ import annotations

import abc
import re
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import numpy as np

from .audio import (MAX_PCM_RATE, MIN_PCM_RATE, PCM_ENCODINGS, SAMPLE_RATE, AudioError, PcmDecoder, StreamResampler,
                    check_audio_path, to_mono)
from .decode import open_blocks
from .ringbuffer import RingBuffer

__all__ = [
    "Source", "FileSource", "StdinSource", "MicSource", "list_devices", "rescan_devices",
    "parse_source", "register_source_scheme", "SOURCE_SCHEMES", "NO_MIC_MESSAGE",
]

NO_MIC_MESSAGE = "no microphone found; see --list-devices"


class Source(abc.ABC):
    """A stream of 16 kHz mono float32 chunks."""

    name: str = "source"

    @property
    def sample_rate(self) -> int:
        """Rate of what ``chunks()`` yields: always 16000."""
        return SAMPLE_RATE

    @abc.abstractmethod
    def chunks(self) -> Iterator[np.ndarray]:
        """Yield 1-D float32 arrays in [-1, 1] at 16 kHz, any length (never empty)."""

    def close(self) -> None:
        """Stop the source; a running ``chunks()`` ends soon after. Idempotent."""
        self._closed = True

    @property
    def closed(self) -> bool:
        return getattr(self, "_closed", False)

    def read_all(self) -> np.ndarray:
        """Consume ``chunks()`` and return everything as one array (for files and tests)."""
        parts = list(self.chunks())
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.chunks()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


# ---------------------------------------------------------------------------------------- file
class FileSource(Source):
    """Any audio file (flac, wav, ogg, mp3, m4a, webm, mp4, ...: ``realtime.decode``; any rate and channel count).

    Reads ``chunk_seconds`` blocks, averages channels, resamples streaming to 16 kHz. With
    ``realtime=True`` each chunk is released only when its audio would have finished playing
    (wall-clock pacing, like a microphone). A missing, unreadable or empty file raises
    :class:`AudioError` here, at construction; a decode error mid-file raises it from ``chunks()``.
    """

    def __init__(self, path: str | Path, realtime: bool = False, chunk_seconds: float = 0.1):
        self.path = Path(path)
        self.name = f"file:{self.path}"
        self.realtime = bool(realtime)
        if not chunk_seconds > 0:
            raise ValueError(f"chunk_seconds must be positive, got {chunk_seconds}")
        self.chunk_seconds = float(chunk_seconds)
        self._closed = False
        check_audio_path(self.path)
        with open_blocks(self.path) as blocks:
            if blocks.rate <= 0 or blocks.frames == 0 and next(iter(blocks), None) is None:
                raise AudioError(f"{self.path}: file holds no audio samples")
            self.file_sample_rate, self.channels, self.frames = blocks.rate, blocks.channels, blocks.frames

    @property
    def duration(self) -> float:
        """Seconds of audio in the file."""
        return self.frames / self.file_sample_rate

    def chunks(self) -> Iterator[np.ndarray]:
        resample = StreamResampler(self.file_sample_rate, str(self.path))
        emitted = 0
        t0 = None
        with open_blocks(self.path, block_seconds=self.chunk_seconds) as f:
            blocks = iter(f)
            while not self._closed:
                data = next(blocks, None)
                last = data is None
                x = np.zeros(0, dtype=np.float32) if last else to_mono(data)
                if x.size and not np.all(np.isfinite(x)):
                    raise AudioError(f"{self.path}: audio contains NaN or infinite samples")
                y = resample(x, last=last)
                if y.size:
                    if self.realtime:
                        if t0 is None:
                            t0 = time.monotonic()
                        wait = t0 + (emitted + y.size) / SAMPLE_RATE - time.monotonic()
                        if wait > 0:
                            time.sleep(wait)
                    emitted += y.size
                    yield y
                if last:
                    break


# ---------------------------------------------------------------------------------------- stdin
def _short_int(v) -> str:
    s = str(v) if not isinstance(v, int) or abs(v) < 10 ** 30 else f"{str(v)[:12]}... ({len(str(abs(v)))} digits)"
    return s if len(s) <= 40 else s[:37] + "..."


class StdinSource(Source):
    """Raw interleaved PCM from a binary stream (default ``sys.stdin.buffer``).

    ``fmt`` is 's16le' (signed 16-bit little-endian) or 'f32le' (float32 little-endian);
    ``rate`` and ``channels`` describe the input. Channels are averaged and the result resampled
    streaming to 16 kHz. Reads use ``read1`` when the stream has it, so a pipe delivers audio as it
    arrives instead of waiting for full blocks. Bytes that do not make a whole sample frame at end
    of stream are dropped with a ``RuntimeWarning``.
    """

    def __init__(self, rate: int = SAMPLE_RATE, channels: int = 1, fmt: str = "s16le",
                 stream: IO[bytes] | None = None, chunk_seconds: float = 0.1):
        if fmt not in PCM_ENCODINGS:
            raise ValueError(f"fmt must be one of {', '.join(PCM_ENCODINGS)}, got {fmt!r}")
        if not MIN_PCM_RATE <= int(rate) <= MAX_PCM_RATE:
            raise AudioError(f"stdin PCM rate must be between {MIN_PCM_RATE} and {MAX_PCM_RATE} Hz, got {_short_int(rate)} "
                             "(give the input's real rate with --rate)")
        if int(channels) < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if not chunk_seconds > 0:
            raise ValueError(f"chunk_seconds must be positive, got {chunk_seconds}")
        self.rate = int(rate)
        self.channels = int(channels)
        self.fmt = fmt
        self.stream = stream
        self.chunk_seconds = float(chunk_seconds)
        self.name = "stdin" if stream is None else f"stream:{getattr(stream, 'name', type(stream).__name__)}"
        self._closed = False
        self.dropped_bytes = 0

    def chunks(self) -> Iterator[np.ndarray]:
        stream = self.stream if self.stream is not None else sys.stdin.buffer
        decoder = PcmDecoder(self.fmt, self.rate, self.channels, name=self.name)
        want = max(1, int(round(self.chunk_seconds * self.rate))) * decoder.frame_bytes
        read = getattr(stream, "read1", None) or stream.read
        while not self._closed:
            buf = read(want)
            if not buf:
                break
            y = decoder.feed(buf)
            if y.size:
                yield y
        if decoder.pending_bytes:
            self.dropped_bytes = decoder.pending_bytes
            warnings.warn(
                f"{self.name}: dropped {decoder.pending_bytes} trailing byte(s) at end of stream "
                f"(not a whole {self.fmt} frame of {decoder.frame_bytes} bytes)", RuntimeWarning, stacklevel=2)
        tail = decoder.flush()
        if tail.size:
            yield tail


# ---------------------------------------------------------------------------------------- microphone
def _sd():
    try:
        import sounddevice as sd
    except OSError as exc:  # libportaudio missing
        raise AudioError(f"sounddevice cannot load PortAudio ({exc}); install libportaudio2") from exc
    return sd


def rescan_devices() -> None:
    """Make PortAudio re-enumerate devices (it lists them once, when sounddevice is imported).

    Needed after an audio server (e.g. PulseAudio) starts or stops in a running process. Must not
    be called while a stream is open.
    """
    sd = _sd()
    sd._terminate()
    sd._initialize()


def list_devices(rescan: bool = False) -> list[dict[str, Any]]:
    """Input devices as dicts: index, name, hostapi, max_input_channels, default_samplerate, default."""
    sd = _sd()
    if rescan:
        rescan_devices()
    try:
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
    except sd.PortAudioError as exc:
        raise AudioError(f"cannot list audio devices ({exc})") from exc
    try:
        default_in = sd.default.device[0]
        default_in = int(default_in) if default_in is not None else -1
    except (TypeError, ValueError, IndexError):
        default_in = -1
    out = []
    for d in devices:
        if d["max_input_channels"] > 0:
            out.append({
                "index": int(d["index"]),
                "name": d["name"],
                "hostapi": hostapis[d["hostapi"]]["name"],
                "max_input_channels": int(d["max_input_channels"]),
                "default_samplerate": float(d["default_samplerate"]),
                "default": int(d["index"]) == default_in,
            })
    return out


def _resolve_device(device: int | str | None) -> dict[str, Any]:
    inputs = list_devices()
    if not inputs:
        raise AudioError(NO_MIC_MESSAGE)
    if isinstance(device, str) and device.strip().lstrip("-").isdigit():
        device = int(device)
    if device is None:
        for d in inputs:
            if d["default"]:
                return d
        return inputs[0]
    if isinstance(device, int):
        for d in inputs:
            if d["index"] == device:
                return d
        raise AudioError(f"no input device with index {device}; input devices: "
                         + ", ".join(f"{d['index']}: {d['name']}" for d in inputs) + " (see --list-devices)")
    needle = str(device).strip().lower()
    exact = [d for d in inputs if d["name"].lower() == needle]
    if exact:
        return exact[0]
    sub = [d for d in inputs if needle in d["name"].lower()]
    if sub:
        return sub[0]
    raise AudioError(f"no input device matching {device!r}; input devices: "
                     + ", ".join(f"{d['index']}: {d['name']}" for d in inputs) + " (see --list-devices)")


MIC_CHANNELS = 2  # captured where the device has them, downmixed by to_mono (see MicSource)


class MicSource(Source):
    """A live microphone through sounddevice (PortAudio).

    ``device``: None (the default input), an index, or a name (exact, else case-insensitive
    substring, first match wins). The stream opens at 16 kHz when the device accepts it
    (``sd.check_input_settings``), else at the device's default rate, and ``chunks()`` resamples.
    It captures two channels where the device has them (``MIC_CHANNELS``): a laptop's digital microphone
    pair often delivers the second inverted, and the system's own downmix to one channel then erases the
    voice, where :func:`~realtime.audio.to_mono` aligns them. The PortAudio callback only copies the
    interleaved samples into ``ring`` (a :class:`RingBuffer`, by default ``ring_seconds`` long at the device
    rate, whole frames) and returns; ``chunks()`` waits on the ring's condition variable (no polling),
    downmixes, resamples, and yields. If the reader falls behind by more
    than the ring, the oldest audio is dropped and counted in ``overruns``.

    ``latency`` goes to PortAudio ("high" is sounddevice's own default; through ALSA's pulse
    plugin both "low" and "high" reported 0.1 s). Measured through a PulseAudio null-sink monitor:
    the first capture stream a process opens delivers its first block only after ~2.05 s; later
    streams after ~0.10 s (one block).
    """

    def __init__(self, device: int | str | None = None, chunk_seconds: float = 0.05,
                 ring: RingBuffer | None = None, *, ring_seconds: float = 5.0, latency: str | float = "high"):
        if not chunk_seconds > 0:
            raise ValueError(f"chunk_seconds must be positive, got {chunk_seconds}")
        self.chunk_seconds = float(chunk_seconds)
        self.latency = latency
        self._closed = False
        self._lock = threading.Lock()
        self._stream = None
        self.status_count = 0  # callbacks that reported a PortAudio status (e.g. input overflow)
        self.last_status = None
        sd = _sd()
        try:
            info = _resolve_device(device)
        except sd.PortAudioError as exc:
            raise AudioError(f"{NO_MIC_MESSAGE} ({exc})") from exc
        self.device_index: int = info["index"]
        self.device_name: str = info["name"]
        self.name = f"mic:{self.device_name}"
        self.channels = max(1, min(MIC_CHANNELS, int(info.get("max_input_channels") or 1)))
        rate = None
        for channels in dict.fromkeys((self.channels, 1)):  # two channels where the device takes them, else one
            for try_rate in (float(SAMPLE_RATE), float(info["default_samplerate"])):
                try:
                    sd.check_input_settings(device=self.device_index, samplerate=try_rate, channels=channels,
                                            dtype="float32")
                except Exception:  # PortAudioError or ValueError: rate/format/channels not supported
                    continue
                rate, self.channels = try_rate, channels
                break
            if rate is not None:
                break
        if rate is None:  # nothing checked out: one channel at the device's rate, and let opening say why
            rate, self.channels = float(info["default_samplerate"]), 1
        self.device_sample_rate = rate
        if ring is None:  # whole frames: a capacity of a multiple of the channels keeps every read aligned
            ring = RingBuffer(int(round(ring_seconds * self.device_sample_rate)) * self.channels, dtype=np.float32)
        elif ring.capacity % self.channels:
            raise ValueError(f"the ring's capacity ({ring.capacity}) must be a multiple of the {self.channels} channels")
        self._ring = ring

    @property
    def ring(self) -> RingBuffer:
        return self._ring

    @property
    def overruns(self) -> int:
        return self._ring.overruns

    @property
    def dropped_samples(self) -> int:
        """Sample frames lost to overruns (the ring counts interleaved samples)."""
        return self._ring.dropped_samples // self.channels

    def _callback(self, indata, frames, time_info, status) -> None:
        # Audio thread: copy and return. Nothing else belongs here.
        if status:
            self.status_count += 1
            self.last_status = status
        self._ring.write(indata.reshape(-1))  # interleaved frames

    def start(self) -> None:
        """Open and start the input stream (``chunks()`` does this itself if needed)."""
        sd = _sd()
        with self._lock:
            if self._closed:
                raise AudioError(f"{self.name}: source is closed")
            if self._stream is not None:
                return
            try:
                stream = sd.InputStream(
                    device=self.device_index, samplerate=self.device_sample_rate, channels=self.channels,
                    dtype="float32", blocksize=max(1, int(round(self.chunk_seconds * self.device_sample_rate))),
                    latency=self.latency, callback=self._callback)
                stream.start()
            except sd.PortAudioError as exc:
                raise AudioError(f"{NO_MIC_MESSAGE} (cannot open {self.device_name!r}: {exc})") from exc
            self._stream = stream

    def chunks(self) -> Iterator[np.ndarray]:
        self.start()
        resample = StreamResampler(self.device_sample_rate, self.name)
        try:
            while True:
                x = self._ring.read(timeout=1.0)
                if x.size:
                    y = resample(to_mono(x.reshape(-1, self.channels)) if self.channels > 1 else x)
                    if y.size:
                        yield y
                    continue
                if self._ring.closed or self._closed:
                    break
                stream = self._stream
                if stream is not None and not stream.active:
                    raise AudioError(f"{self.name}: the input stream stopped (device unplugged?)")
        finally:
            self.close()

    def close(self) -> None:
        self._closed = True
        self._ring.close()
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.stop()
            finally:
                stream.close()


# ---------------------------------------------------------------------------------------- specs
SourceFactory = Callable[[str, dict], Source]


def _file_factory(arg: str, opts: dict) -> Source:
    if not arg:
        raise ValueError("file: needs a path, e.g. file:speech.flac")
    return FileSource(arg, realtime=opts.get("realtime", False), chunk_seconds=opts.get("chunk_seconds", 0.1))


def _mic_factory(arg: str, opts: dict) -> Source:
    device: int | str | None = arg or opts.get("device")
    if isinstance(device, str) and device.strip().lstrip("-").isdigit():
        device = int(device)
    return MicSource(device, chunk_seconds=opts.get("chunk_seconds", 0.05))


def _stdin_factory(arg: str, opts: dict) -> Source:
    fmt = arg or opts.get("fmt", "s16le")
    return StdinSource(rate=opts.get("rate", SAMPLE_RATE), channels=opts.get("channels", 1), fmt=fmt,
                       stream=opts.get("stream"), chunk_seconds=opts.get("chunk_seconds", 0.1))


def _socket_factory(arg: str, opts: dict) -> Source:
    raise ValueError("tcp:// and ws:// are server addresses: stream to one with "
                     "`python -m realtime client PATH|mic --url tcp://HOST:PORT` (started by `python -m realtime serve`)")


#: scheme -> factory(argument after "scheme:", options). Add a scheme with one entry here.
SOURCE_SCHEMES: dict[str, SourceFactory] = {
    "file": _file_factory,
    "mic": _mic_factory,
    "stdin": _stdin_factory,
    "tcp": _socket_factory,
    "ws": _socket_factory,
    "wss": _socket_factory,
}

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):(.*)$", re.S)


def register_source_scheme(scheme: str, factory: SourceFactory) -> None:
    """Add or replace a scheme, e.g. ``register_source_scheme('tcp', make_tcp_source)``."""
    SOURCE_SCHEMES[scheme.lower()] = factory


def parse_source(spec: str, rate: int = SAMPLE_RATE, **options) -> Source:
    """Map a spec to a Source.

    ``file:PATH``, a bare existing path, ``mic``, ``mic:DEVICE`` (index or name substring),
    ``stdin`` / ``-`` (raw PCM at ``rate``; ``stdin:f32le`` for float input). A registered scheme
    wins over a file of the same name (use ``file:mic`` for a file called "mic"). Extra
    ``options`` (realtime, chunk_seconds, channels, fmt, stream, device) go to the factory.
    """
    spec = str(spec).strip()
    if not spec:
        raise ValueError("empty source spec; expected file:PATH, PATH, mic, mic:DEVICE or stdin")
    opts = dict(options, rate=rate)
    if spec == "-":
        return SOURCE_SCHEMES["stdin"]("", opts)
    if spec.lower() in SOURCE_SCHEMES:
        return SOURCE_SCHEMES[spec.lower()]("", opts)
    m = _SCHEME_RE.match(spec)
    if m and m.group(1).lower() in SOURCE_SCHEMES:
        return SOURCE_SCHEMES[m.group(1).lower()](m.group(2), opts)
    if Path(spec).is_file():
        return SOURCE_SCHEMES["file"](spec, opts)
    if Path(spec).exists():  # a directory, FIFO or device: say what it is
        check_audio_path(spec)
    raise AudioError(f"{spec!r} is not an existing file nor a known source; expected one of "
                     f"file:PATH, PATH, mic, mic:DEVICE, stdin ({', '.join(sorted(SOURCE_SCHEMES))})")

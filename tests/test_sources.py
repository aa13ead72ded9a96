import io
import threading
import time
import warnings

import numpy as np
import pytest
import soundfile as sf
import soxr

import realtime.sources as sources
from realtime.audio import AudioError, load_audio
from realtime.ringbuffer import RingBuffer
from realtime.sources import (SOURCE_SCHEMES, FileSource, MicSource, StdinSource, parse_source,
                              register_source_scheme)
from .data import LIBRISPEECH

LIBRI = LIBRISPEECH  # $VOICEGENDER_DATA/LibriSpeech, else ../shared/data/LibriSpeech


@pytest.fixture(scope="module")
def flac():
    files = sorted((LIBRI / "train-clean-100").glob("*/*/*.flac"))
    assert files, f"no LibriSpeech flacs under {LIBRI}"
    return files[0]


@pytest.fixture(scope="module")
def original(flac):
    return load_audio(flac)


def _corr(a, b):
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


def test_file_source_equals_load_audio(flac, original):
    src = FileSource(flac, chunk_seconds=0.1)
    assert src.sample_rate == 16000 and src.file_sample_rate == 16000 and src.name.startswith("file:")
    chunks = list(src.chunks())
    assert all(c.dtype == np.float32 and c.ndim == 1 and c.size for c in chunks)
    assert max(c.size for c in chunks) == 1600
    y = np.concatenate(chunks)
    assert y.shape == original.shape
    np.testing.assert_allclose(y, original, atol=1e-6)
    assert src.duration == pytest.approx(len(original) / 16000)


# 16k -> 44.1k -> 16k keeps all but the top of the band (soxr HQ passband ~91 %): corr ~0.998;
# 8 kHz throws away 4-8 kHz: corr 0.96 for this reader (0.994 for another)
@pytest.mark.parametrize("rate, channels, min_corr", [(44100, 2, 0.995), (8000, 1, 0.9)])
def test_file_source_resamples_any_rate_and_channels(tmp_path, original, rate, channels, min_corr):
    x = soxr.resample(original, 16000, rate)
    if channels == 2:
        x = np.stack([x, 0.5 * x], axis=1)
    path = tmp_path / f"x{rate}.wav"
    sf.write(path, x, rate, subtype="PCM_16")
    src = FileSource(path, chunk_seconds=0.05)
    y = src.read_all()
    assert src.file_sample_rate == rate and src.channels == channels
    expected_len = round(sf.info(path).frames * 16000 / rate)
    assert abs(len(y) - expected_len) <= 2
    assert abs(len(y) - len(original)) <= 2
    assert _corr(y, original) > min_corr
    # streaming equals one-shot resampling of the whole file
    np.testing.assert_allclose(y, load_audio(path)[: len(y)], atol=1e-4)


def test_file_source_realtime_paces_by_wall_clock(tmp_path, original):
    path = tmp_path / "half.wav"
    sf.write(path, original[:8000], 16000)  # 0.5 s
    t0 = time.monotonic()
    y = FileSource(path, realtime=True, chunk_seconds=0.1).read_all()
    elapsed = time.monotonic() - t0
    assert len(y) == 8000
    assert 0.45 < elapsed < 1.5


def test_file_source_errors(tmp_path):
    with pytest.raises(AudioError, match="no such audio file"):
        FileSource(tmp_path / "missing.flac")
    bad = tmp_path / "corrupt.flac"
    bad.write_bytes(b"fLaC" + bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)))
    with pytest.raises(AudioError, match="cannot decode"):
        FileSource(bad)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="no audio"):
        FileSource(empty)
    assert issubclass(AudioError, ValueError)


def test_close_stops_a_running_file_source(flac):
    src = FileSource(flac, chunk_seconds=0.1)
    got = 0
    for i, _ in enumerate(src.chunks()):
        got += 1
        if i == 2:
            src.close()
    assert got == 3


def _pcm16(x):
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def test_stdin_source_matches_file_source(flac, original):
    y = StdinSource(stream=io.BytesIO(_pcm16(original))).read_all()
    ref = FileSource(flac).read_all()
    assert y.shape == ref.shape
    assert np.abs(y - ref).max() <= 2.0 / 32768  # quantisation only


def test_stdin_source_resamples_interleaved_stereo(tmp_path, original):
    x = soxr.resample(original, 16000, 44100)
    stereo = np.stack([x, x], axis=1)
    path = tmp_path / "s.wav"
    sf.write(path, stereo, 44100, subtype="PCM_16")
    raw = sf.read(path, dtype="int16")[0].astype("<i2").tobytes()
    y = StdinSource(rate=44100, channels=2, stream=io.BytesIO(raw)).read_all()
    ref = FileSource(path).read_all()
    assert abs(len(y) - len(ref)) <= 1
    n = min(len(y), len(ref))
    assert np.abs(y[:n] - ref[:n]).max() < 1e-4


def test_stdin_source_f32le(original):
    y = StdinSource(fmt="f32le", stream=io.BytesIO(original.astype("<f4").tobytes())).read_all()
    np.testing.assert_array_equal(y, original)


class _Trickle(io.RawIOBase):
    """A pipe that hands out a few bytes per read, splitting samples across reads."""

    def __init__(self, data, step=3):
        self._data, self._pos, self._step = data, 0, step

    def readable(self):
        return True

    def read(self, n=-1):
        k = min(self._step, n if n >= 0 else self._step)
        out = self._data[self._pos:self._pos + k]
        self._pos += len(out)
        return out


def test_stdin_source_partial_reads_and_odd_trailing_byte(original):
    data = _pcm16(original[:16000])
    with pytest.warns(RuntimeWarning, match="dropped 1 trailing byte"):
        y = StdinSource(stream=_Trickle(data + b"\x01", step=777)).read_all()
    np.testing.assert_array_equal(y, np.frombuffer(data, "<i2").astype(np.float32) / 32768)
    # an even byte count raises no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        StdinSource(stream=io.BytesIO(data)).read_all()


@pytest.mark.parametrize("fmt", ["s16le", "f32le"])
def test_one_decoding_path_for_stdin_the_server_and_engine_push(original, fmt):
    """Real speech as 44.1 kHz stereo PCM: the streaming decoder fed bytes in odd pieces (splitting samples
    and frames), StdinSource reading a trickling pipe, the server's per-stream decoder, and the array path of
    Engine.push (as_mono_float + StreamResampler) give the same samples, bit for bit, as decoding it all at once."""
    from realtime.audio import PcmDecoder, StreamResampler, as_mono_float, decode_pcm
    from realtime.protocol import ProtocolError, StreamConfig

    x = soxr.resample(original[: 16000 * 4], 16000, 44100).astype(np.float32)
    stereo = np.stack([x, 0.6 * x], axis=1)
    raw = _pcm16(stereo) if fmt == "s16le" else stereo.astype("<f4").tobytes()
    whole = StreamResampler(44100)(decode_pcm(raw, fmt, 2), last=True)
    assert whole.size == pytest.approx(4 * 16000, abs=2) and np.abs(whole).max() > 0.1

    def pieces(decoder):
        out, i, sizes = [], 0, [1, 3, 7, 1001, 4097, 333, 65536, 5]
        for k in range(len(raw)):
            if i >= len(raw):
                break
            out.append(decoder.feed(raw[i:i + sizes[k % len(sizes)]]))
            i += sizes[k % len(sizes)]
        return np.concatenate(out + [decoder.flush()])

    np.testing.assert_array_equal(pieces(PcmDecoder(fmt, 44100, 2)), whole)
    np.testing.assert_array_equal(pieces(StreamConfig(rate=44100, encoding=fmt, channels=2).decoder()), whole)
    stdin = StdinSource(rate=44100, channels=2, fmt=fmt, stream=_Trickle(raw, 777))
    np.testing.assert_array_equal(stdin.read_all(), whole)
    as_array = stereo if fmt == "f32le" else np.frombuffer(raw, "<i2").reshape(-1, 2)
    np.testing.assert_array_equal(StreamResampler(44100)(as_mono_float(as_array), last=True), whole)
    if fmt == "f32le":  # unusable audio is the caller's kind of error: AudioError here, ProtocolError for a client
        bad = np.array([0.1, np.nan] * 4, "<f4").tobytes()
        with pytest.raises(AudioError, match="stream:BytesIO: f32le audio contains NaN"):
            StdinSource(fmt="f32le", stream=io.BytesIO(bad)).read_all()
        with pytest.raises(ProtocolError, match="NaN"):
            StreamConfig(encoding="f32le").decoder().feed(bad)


def test_stdin_source_rejects_bad_settings():
    with pytest.raises(ValueError, match="s16le, f32le"):
        StdinSource(fmt="u8")
    with pytest.raises(ValueError):
        StdinSource(rate=0)


def test_parse_source(flac, tmp_path):
    src = parse_source(f"file:{flac}")
    assert isinstance(src, FileSource) and src.path == flac
    assert isinstance(parse_source(str(flac)), FileSource)
    assert isinstance(parse_source(str(flac), realtime=True), FileSource)
    assert parse_source(str(flac), realtime=True).realtime
    s = parse_source("stdin", rate=8000, stream=io.BytesIO(b""))
    assert isinstance(s, StdinSource) and s.rate == 8000
    assert isinstance(parse_source("-"), StdinSource)
    assert parse_source("stdin:f32le").fmt == "f32le"
    for spec in ("tcp://localhost:9000", "ws://localhost:8765", "wss://x"):
        with pytest.raises(ValueError, match="python -m realtime client"):
            parse_source(spec)
    with pytest.raises(ValueError, match="not an existing file nor a known source"):
        parse_source(str(tmp_path / "nope.wav"))
    with pytest.raises(ValueError):
        parse_source("")


def test_adding_a_scheme_is_one_registry_entry(flac):
    register_source_scheme("demo", lambda arg, opts: FileSource(arg))
    try:
        assert isinstance(parse_source(f"demo:{flac}"), FileSource)
    finally:
        del SOURCE_SCHEMES["demo"]


# ---------------------------------------------------------------- microphone without hardware
def _fake_devices(monkeypatch, devices):
    monkeypatch.setattr(sources, "list_devices", lambda rescan=False: devices)


_DEV = [{"index": 3, "name": "USB Mic (hw:1,0)", "hostapi": "ALSA", "max_input_channels": 2,
         "default_samplerate": 44100.0, "default": False},
        {"index": 5, "name": "default", "hostapi": "ALSA", "max_input_channels": 32,
         "default_samplerate": 48000.0, "default": True}]


def test_mic_no_device_is_a_clear_error(monkeypatch):
    _fake_devices(monkeypatch, [])
    with pytest.raises(AudioError, match="no microphone found; see --list-devices"):
        MicSource()
    with pytest.raises(AudioError, match="no microphone found"):
        parse_source("mic")


def test_mic_device_selection(monkeypatch):
    import sounddevice as sd

    _fake_devices(monkeypatch, _DEV)
    monkeypatch.setattr(sd, "check_input_settings", lambda **kw: None)
    assert MicSource().device_index == 5  # the default input
    assert MicSource(3).device_name.startswith("USB")
    assert MicSource("usb").device_index == 3  # case-insensitive substring
    assert MicSource("default").device_index == 5
    assert parse_source("mic:3").device_index == 3
    with pytest.raises(AudioError, match="no input device with index 7"):
        MicSource(7)
    with pytest.raises(AudioError, match="no input device matching"):
        MicSource("bluetooth")


def test_mic_open_failure_becomes_audio_error(monkeypatch):
    import sounddevice as sd

    _fake_devices(monkeypatch, _DEV)
    monkeypatch.setattr(sd, "check_input_settings", lambda **kw: None)

    def broken(**kw):
        raise sd.PortAudioError("Error querying device -1")

    monkeypatch.setattr(sd, "InputStream", broken)
    with pytest.raises(AudioError, match="no microphone found; see --list-devices"):
        list(MicSource().chunks())


class _FakeStream:
    """Calls the callback from its own thread with 44.1 kHz blocks, like PortAudio would."""

    instances = []

    def __init__(self, device, samplerate, channels, dtype, blocksize, latency, callback):
        self.rate, self.block, self.callback, self.channels = samplerate, blocksize, callback, channels
        self.signal = None
        self.signs = [1.0, -1.0, 1.0, -1.0][:channels]  # a second channel arrives inverted, as laptop mic pairs do
        self.active = False
        self.callback_seconds = []
        _FakeStream.instances.append(self)

    def start(self):
        self.active = True
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        x = self.signal
        for i in range(0, len(x), self.block):
            if not self.active:
                return
            block = (x[i:i + self.block, None] * np.array(self.signs)).astype(np.float32)
            t0 = time.perf_counter()
            self.callback(block, len(block), None, None)
            self.callback_seconds.append(time.perf_counter() - t0)
            time.sleep(0.001)
        self.active = False

    def stop(self):
        self.active = False

    def close(self):
        pass


def _fake_mic(monkeypatch, original) -> MicSource:
    """A MicSource on the fake USB device, whose stream plays 2 s of ``original`` at 44.1 kHz."""
    import sounddevice as sd

    sig = soxr.resample(original[:32000], 16000, 44100)

    def make(**kw):
        s = _FakeStream(**kw)
        s.signal = sig
        return s

    monkeypatch.setattr(sd, "InputStream", make)
    return MicSource("usb", chunk_seconds=0.05)


def _capture(mic: MicSource, n_samples: int) -> np.ndarray:
    """What ``mic.chunks()`` yields until ``n_samples`` (16 kHz) have come, then closed."""
    got, n = [], 0
    for c in mic.chunks():
        got.append(c)
        n += len(c)
        if n >= n_samples:
            mic.close()
    return np.concatenate(got)


def test_mic_resamples_outside_the_callback(monkeypatch, original):
    import sounddevice as sd

    _fake_devices(monkeypatch, _DEV)

    def no_16k(**kw):
        raise sd.PortAudioError("Invalid sample rate")

    monkeypatch.setattr(sd, "check_input_settings", no_16k)
    mic = _fake_mic(monkeypatch, original)
    assert mic.device_sample_rate == 44100.0 and mic.sample_rate == 16000
    y = _capture(mic, 30000)
    assert _corr(y, original[:32000]) > 0.995  # 16k -> 44.1k -> 16k round trip: 0.998
    stream = _FakeStream.instances[-1]
    assert mic.overruns == 0 and mic.ring.total_written >= 30000 * 44100 // 16000
    assert np.median(stream.callback_seconds) < 1e-3  # the callback only copies


def test_mic_captures_two_channels_and_an_inverted_pair_keeps_its_voice(monkeypatch, original):
    """A laptop's microphone pair with the second channel inverted: captured as two channels (where the
    device takes them) and downmixed with their polarity aligned, the voice comes through; the callback
    still only copies."""
    import sounddevice as sd

    _fake_devices(monkeypatch, _DEV)
    asked = []

    def only_44k(**kw):
        asked.append((kw["samplerate"], kw["channels"]))
        if kw["samplerate"] != 44100:
            raise sd.PortAudioError("Invalid sample rate")

    monkeypatch.setattr(sd, "check_input_settings", only_44k)
    mic = _fake_mic(monkeypatch, original)
    assert (mic.device_sample_rate, mic.channels) == (44100.0, 2) and asked == [(16000, 2), (44100, 2)]
    y = _capture(mic, 30000)
    stream = _FakeStream.instances[-1]
    assert stream.channels == 2 and mic.ring.total_written >= 2 * 30000 * 44100 // 16000
    assert _corr(y, original[:32000]) > 0.995  # averaged plainly, the two would cancel
    assert np.median(stream.callback_seconds) < 1e-3


def test_mic_uses_a_given_ring(monkeypatch):
    import sounddevice as sd

    _fake_devices(monkeypatch, _DEV)
    monkeypatch.setattr(sd, "check_input_settings", lambda **kw: None)
    ring = RingBuffer(1234)
    mic = MicSource(3, ring=ring)
    assert mic.ring is ring and mic.device_sample_rate == 16000
    mic._callback(np.ones((10, 1), np.float32), 10, None, None)
    assert ring.available == 10

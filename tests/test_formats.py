"""Recordings as phones, laptops and browsers make them: M4A / AAC (voice memos), WebM / Opus (a browser's MediaRecorder),
MP4 (a video's soundtrack), 3GP / AMR-NB (older phones, 8 kHz), all of which libsndfile cannot read. Each is
encoded here from a real LibriSpeech utterance with FFmpeg (PyAV), then read back by every entry point:
``load_audio``, ``classify`` (API and command line, a folder of them), ``stream``; broken ones give a clear
error naming the file and nothing else breaks. And a laptop's inverted microphone pair, whose plain average
erases the voice."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.signal

from offline.augment import ffmpeg_encode
from realtime.api import classify
from realtime.audio import AudioError, load_audio
from realtime.decode import FFMPEG_EXTENSIONS, open_blocks, read
from realtime.engine import Engine
from realtime.sources import FileSource

from .data import readers_by_gender

av = pytest.importorskip("av", reason="PyAV (a core dependency) is not installed")

REPO = Path(__file__).resolve().parents[1]
GENDER = {"F": "female", "M": "male"}
# (suffix, container, codec, rate, channels): what each kind of device writes
FORMATS = [(".m4a", "ipod", "aac", 44100, 2),  # iPhone / Android voice memo
           (".webm", "webm", "libopus", 48000, 1),  # browser MediaRecorder
           (".mp4", "mp4", "aac", 48000, 2),  # a phone video's soundtrack
           (".3gp", "3gp", "libopencore_amrnb", 8000, 1)]  # AMR-NB, 8 kHz narrow band


def encode(x: np.ndarray, path: Path, container: str, codec: str, rate: int, channels: int) -> Path:
    """16 kHz mono ``x`` written as ``codec`` in ``container`` at ``rate`` with ``channels`` (the same on each)."""
    bit_rate = 12200 if codec == "libopencore_amrnb" else None
    path.write_bytes(ffmpeg_encode(x, 16000, container, codec, rate=rate, channels=channels, bit_rate=bit_rate))
    return path


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """{(gender, suffix): path} for one female and one male reader in every format, and the sources."""
    folder = tmp_path_factory.mktemp("phone")
    voices = readers_by_gender(2)
    out = {}
    for g in "FM":
        source = voices[g][1]
        x = load_audio(source)
        out[g, ".flac"] = source
        for suffix, container, codec, rate, channels in FORMATS:
            out[g, suffix] = encode(x, folder / f"{g}-{source.stem}{suffix}", container, codec, rate, channels)
    return out


@pytest.mark.parametrize("suffix", [f[0] for f in FORMATS])
def test_phone_and_browser_formats_read_back_as_the_recording(recordings, suffix):
    """Each encoded file reads back at 16 kHz mono with the recording's length (within the codec's priming
    and padding) and its waveform (correlation after alignment), and the engine hears the same voice."""
    for g in "FM":
        ref, got = load_audio(recordings[g, ".flac"]), load_audio(recordings[g, suffix])
        assert got.dtype == np.float32 and got.ndim == 1
        assert abs(got.size - ref.size) <= 0.1 * 16000, (suffix, got.size, ref.size)
        # codecs delay the audio by their priming (AAC ~1-2k samples at 44.1 kHz): align on the cross-correlation
        xc = scipy.signal.correlate(got[:80000], ref[:80000], mode="full", method="fft")
        lag = int(np.argmax(xc)) - 79999
        assert 0 <= lag < 1600, (suffix, lag)
        n = min(ref.size, got.size - lag)
        corr = float(np.corrcoef(ref[:n], got[lag:lag + n])[0, 1])
        assert corr > (0.7 if suffix == ".3gp" else 0.95), (suffix, corr)  # AMR-NB keeps only the phone band
        verdict = classify(recordings[g, suffix])
        assert verdict["label"] == GENDER[g], (suffix, verdict)
        assert abs(verdict["p_female"] - classify(recordings[g, ".flac"])["p_female"]) < 0.1, (suffix, verdict)


def test_a_file_like_object_and_the_streaming_reader_agree(recordings):
    """``classify(BytesIO)`` reads FFmpeg formats too; ``FileSource`` streams them block by block, and the
    engine gives the streamed file the events it gives the whole decoded array."""
    path = recordings["F", ".m4a"]
    assert classify(io.BytesIO(path.read_bytes()))["label"] == "female"
    ahead = io.BytesIO(b"head" + path.read_bytes())  # read from where the object stands, not from its byte 0
    ahead.read(4)
    assert classify(ahead)["label"] == "female"

    class Pipe(io.RawIOBase):  # a socket or pipe: no seeking
        def __init__(self, data: bytes):
            self._data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buf) -> int:
            chunk = self._data.read(min(len(buf), 1000))
            buf[:len(chunk)] = chunk
            return len(chunk)

    assert classify(io.BufferedReader(Pipe(path.read_bytes())))["label"] == "female"
    whole, rate = read(path)
    assert rate == 44100 and whole.shape[1] == 2
    with open_blocks(path, block_frames=4410) as blocks:
        assert (blocks.rate, blocks.channels) == (44100, 2) and abs(blocks.frames - whole.shape[0]) < 4096
        parts = list(blocks)
    assert all(p.shape == (4410, 2) for p in parts[:-1]) and 0 < parts[-1].shape[0] <= 4410
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    src = FileSource(path)
    assert src.file_sample_rate == 44100 and src.channels == 2 and abs(src.duration - whole.shape[0] / 44100) < 0.1
    streamed = [e.label for e in Engine().run(src)]
    assert streamed[-1] == "female" and len(streamed) > 10


def test_classify_a_folder_of_phone_recordings_and_stream_one(recordings):
    folder = recordings["F", ".m4a"].parent
    assert {".m4a", ".webm", ".mp4", ".3gp"} <= FFMPEG_EXTENSIONS
    out = subprocess.run([sys.executable, "-m", "realtime", "classify", folder, "--json"], capture_output=True,
                         text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = {Path(r["file"]).name: r for r in map(json.loads, out.stdout.splitlines())}
    assert len(rows) == 2 * len(FORMATS)
    for name, r in rows.items():
        assert r["label"] == GENDER[name[0]], r
    # a whole file piped on stdin (`-`), any container: classify and segments
    for cmd in (["classify", "-", "--json"], ["segments", "-", "--json"]):
        out = subprocess.run([sys.executable, "-m", "realtime", *cmd], input=recordings["F", ".m4a"].read_bytes(),
                             capture_output=True, cwd=REPO, timeout=300)
        assert out.returncode == 0, out.stderr
        rows = [json.loads(line) for line in out.stdout.splitlines()]
        assert rows and all(r["file"] == "-" and r["label"] == "female" for r in rows), rows
    out = subprocess.run([sys.executable, "-m", "realtime", "classify", "-", "--json"], input=b"not audio\n",
                         capture_output=True, cwd=REPO, timeout=300)
    assert out.returncode == 1 and b"Traceback" not in out.stderr
    assert "stdin: cannot decode audio" in json.loads(out.stdout)["error"]
    out = subprocess.run([sys.executable, "-m", "realtime", "stream", recordings["M", ".webm"], "--format", "jsonl"],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1])["label"] == "male"


def test_broken_phone_recordings_give_a_clear_error_and_the_rest_go_on(recordings, tmp_path):
    """Garbage with an .m4a name, a memo cut off in its header, a text file named .webm, a video without
    sound: each an AudioError naming the file (API, FileSource), and in a folder an error line while the
    good file beside them is still classified."""
    good = tmp_path / "good.m4a"
    good.write_bytes(recordings["M", ".m4a"].read_bytes())
    (tmp_path / "junk.m4a").write_bytes(bytes(range(256)) * 40)
    (tmp_path / "cut.m4a").write_bytes(good.read_bytes()[:20000])  # the moov atom (at the end) is gone
    (tmp_path / "notes.webm").write_text("not audio at all\n")
    video = tmp_path / "silent-video.mp4"
    with av.open(str(video), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(5):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    bad = {"junk.m4a": "cannot decode audio", "cut.m4a": "cannot decode audio", "notes.webm": "cannot decode audio",
           "silent-video.mp4": "holds no audio stream"}
    for name, why in bad.items():
        for read_it in (load_audio, FileSource, lambda p: classify(p)):
            with pytest.raises(AudioError, match=why) as caught:
                read_it(tmp_path / name)
            assert name in str(caught.value)
    with pytest.raises(AudioError, match="cannot decode audio"):
        classify(io.BytesIO(b"\x00" * 5000))
    out = subprocess.run([sys.executable, "-m", "realtime", "classify", tmp_path, "--json"], capture_output=True,
                         text=True, cwd=REPO, timeout=300)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    rows = {Path(r["file"]).name: r for r in map(json.loads, out.stdout.splitlines())}
    assert rows["good.m4a"]["label"] == "male"
    for name, why in bad.items():
        assert rows[name]["label"] is None and why in rows[name]["error"], rows[name]


def test_a_laptops_inverted_microphone_pair_is_not_averaged_into_silence(recordings, tmp_path):
    """Many laptops' digital microphone pairs give the second channel inverted: averaged, the voice cancels
    and the VAD hears nothing. Such stereo (a file, an array, raw PCM on stdin) is heard as the voice it is,
    while ordinary stereo is averaged exactly as before."""
    import soundfile as sf

    from realtime.audio import to_mono
    from realtime.sources import StdinSource

    for g in "FM":
        x = load_audio(recordings[g, ".flac"])
        rng = np.random.default_rng(1)
        noise = lambda: 0.002 * rng.standard_normal(x.size)  # noqa: E731  each capsule's own noise
        inverted = np.stack([x + noise(), -0.9 * x + noise()], axis=1).astype(np.float32)
        assert np.sum(inverted.mean(axis=1) ** 2) < 0.01 * np.sum(x.astype(np.float64) ** 2)  # the plain average
        alone = classify(x, 16000)
        path = tmp_path / f"{g}-laptop.wav"
        sf.write(path, inverted, 16000)  # a stereo WAV
        pcm = (np.clip(inverted, -1, 1) * 32767).astype("<i2").tobytes()
        for verdict in (classify(inverted, 16000), classify(path),
                        summarise_run(StdinSource(rate=16000, channels=2, stream=io.BytesIO(pcm)))):
            assert verdict["label"] == GENDER[g], verdict
            assert abs(verdict["p_female"] - alone["p_female"]) < 0.15, (verdict, alone)
        # ordinary stereo: correlated or independent channels are averaged as always (same bits)
        same = np.stack([x, 0.5 * x], axis=1)
        np.testing.assert_array_equal(to_mono(same), same.mean(axis=1))
        independent = np.stack([x, np.roll(x, 16000)], axis=1)
        np.testing.assert_array_equal(to_mono(independent), independent.mean(axis=1))


def summarise_run(source) -> dict:
    from realtime.engine import summarise

    engine = Engine()
    return summarise(list(engine.run(source)), engine)

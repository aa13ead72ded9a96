"""Values that used to slip past the checks of the command line and the audio sources (issue 14):
limits refused at parse time, stdin rates outside 4-384 kHz, paths that are not regular files, and
finite-but-huge float samples that turn into NaN in the resampler."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from realtime.audio import AudioError, load_audio, to_16k_mono
from realtime.sources import FileSource, StdinSource, parse_source

REPO = Path(__file__).resolve().parents[1]


def cli(*args, stdin: bytes | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "realtime", *args], cwd=REPO, input=stdin, capture_output=True,
                          timeout=timeout)


@pytest.mark.parametrize("args, words", [
    (["--max-stream-seconds", "inf"], "--max-stream-seconds: must be a positive, finite number"),
    (["--idle-timeout", "nan"], "--idle-timeout: must be a positive, finite number"),
    (["--port", "70000"], "--port: must be between 0 and 65535"),
    (["--tcp-port", "99999"], "--tcp-port: must be between -1 and 65535"),
    (["--processes", "0"], "--processes: must be between 1 and 1024, got 0"),
    (["--workers", "0"], "--workers: must be between 1 and 1024, got 0"),
    (["--max-connections", "9" * 3000], "--max-connections: must be between 1 and 1000000, got 999999999999... (3000 characters)"),
])
def test_serve_refuses_impossible_limits_at_parse_time(args, words):
    r = cli("serve", *args, timeout=60)
    err = r.stderr.decode()
    assert r.returncode == 2 and words in err and "Traceback" not in err, err
    assert len(err.splitlines()[-1]) < 200  # a 3,000-digit value is not echoed whole


def test_server_config_refuses_infinite_seconds_and_bad_ports():
    from realtime.server import ServerConfig

    with pytest.raises(ValueError, match="max_stream_seconds must be a positive finite"):
        ServerConfig(max_stream_seconds=float("inf"))
    with pytest.raises(ValueError, match="port must be 0-65535"):
        ServerConfig(port=70000)


@pytest.mark.parametrize("rate", [1, 16, 3999, 384001])
def test_stdin_rates_outside_4_to_384_khz_are_refused(rate):
    with pytest.raises(AudioError, match="between 4000 and 384000 Hz"):
        StdinSource(rate=rate)
    with pytest.raises(AudioError, match="between 4000 and 384000 Hz"):
        parse_source("stdin", rate=rate)


def test_stdin_rate_one_is_a_clear_cli_error():
    r = cli("stream", "--source", "stdin", "--rate", "1", stdin=b"\x00" * 450_000, timeout=60)
    err = r.stderr.decode()
    assert r.returncode == 2 and "between 4000 and 384000 Hz" in err and "Traceback" not in err, err


def test_directory_fifo_and_device_get_a_precise_message(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for path, words in ((tmp_path, "is a directory"), (fifo, "is a FIFO"), (Path("/dev/zero"), "is a character device"),
                        (tmp_path / "nothing.flac", "no such audio file")):
        for open_it in (FileSource, load_audio, parse_source):
            if open_it is parse_source and not path.exists():
                continue  # a bare spec that is no file: "not an existing file nor a known source"
            with pytest.raises(AudioError, match=words):
                open_it(str(path))
    r = cli("classify", "/dev/zero", str(tmp_path), timeout=120)
    err = r.stderr.decode()
    assert r.returncode == 1 and "is a character device" in err and "is a directory" in err, err
    assert "no such audio file" not in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_says_permission_denied(tmp_path):
    f = tmp_path / "locked.wav"
    sf.write(f, np.zeros(16000, dtype=np.float32), 16000)
    f.chmod(0)
    with pytest.raises(AudioError, match="permission denied"):
        FileSource(f)


def _huge_wav(path: Path, rate: int = 44100) -> Path:
    x = np.full(rate * 2, 3e38, dtype=np.float32)
    x[::2] *= -1
    sf.write(path, x, rate, subtype="FLOAT")
    return path


def test_huge_finite_samples_at_another_rate_name_the_cause(tmp_path):
    wav = _huge_wav(tmp_path / "huge.wav")
    with pytest.raises(AudioError, match=r"NaN/infinite when resampled from 44100 Hz.*far outside \[-1, 1\]"):
        FileSource(wav).read_all()
    with pytest.raises(AudioError, match="when resampled from 44100 Hz"):
        load_audio(wav)
    with pytest.raises(AudioError, match="when resampled from 44100 Hz"):
        to_16k_mono(np.full(4410, 3e38, dtype=np.float32) * np.tile([1, -1], 2205).astype(np.float32), 44100)
    r = cli("classify", str(wav))
    assert r.returncode == 1 and b"when resampled from 44100 Hz" in r.stderr, r.stderr
    raw = (np.tile(np.array([3e38, -3e38], dtype="<f4"), 44100)).tobytes()
    r = cli("stream", "--source", "stdin:f32le", "--rate", "44100", stdin=raw)
    err = r.stderr.decode()
    assert r.returncode == 2 and "when resampled from 44100 Hz" in err and "Traceback" not in err, err

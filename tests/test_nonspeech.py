"""Non-speech for the speech check: synthesised signals and real music, and what the engine makes of them."""
from __future__ import annotations

import numpy as np
import pytest

from offline.nonspeech import (KINDS, TEST_MUSIC, TRAIN_MUSIC, heldout_negatives, music_clips, music_files,
                               synthesize, synthetic_clips)

SR = 16000


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_is_finite_loud_enough_and_reproducible(kind):
    a = synthesize(kind, 2.0, np.random.default_rng(5))
    b = synthesize(kind, 2.0, np.random.default_rng(5))
    assert a.dtype == np.float32 and a.shape == (2 * SR,) and np.array_equal(a, b)
    assert np.isfinite(a).all() and np.abs(a).max() <= 0.99
    rms_db = 20 * np.log10(np.sqrt(np.mean(a.astype(np.float64) ** 2)))
    assert -40 < rms_db < -5, rms_db


def test_tones_sit_at_speech_like_pitches():
    from realtime.features import FeatureExtractor

    fe = FeatureExtractor()
    i = fe.stat_names.index("f0_median")
    f0 = [2 ** fe.extract(synthesize("tone", 2.0, np.random.default_rng(k)))[0][i] for k in range(8)]
    assert all(70 < f < 420 for f in f0), f0


def test_held_out_negatives_are_other_clips_than_training():
    train = {name: x for name, x in synthetic_clips(2, seed=0)}
    other = {name: x for name, x in synthetic_clips(2, seed=1000)}
    assert train.keys() == other.keys()
    assert not any(np.array_equal(train[k], other[k]) for k in train)
    held = heldout_negatives(n_per_kind=1)
    assert set(KINDS) <= set(held) and all(len(v) >= 1 for v in held.values())


def test_music_packages_are_split_between_training_and_test():
    assert not set(TRAIN_MUSIC) & set(TEST_MUSIC)
    files = music_files(TEST_MUSIC)
    if not files:
        pytest.skip("asc-music is not installed (setup.sh --dev installs it)")
    clips = music_clips(files[:1], seconds=4.0, every_s=30.0, max_per_file=3)
    assert len(clips) == 3 and all(x.shape == (4 * SR,) and np.isfinite(x).all() for _, x in clips)


# --- through the release bundle: no gender for what is not speech, live and per file -------------------------

HELD_OUT = [("tone", 3), ("vibrato_tone", 1), ("chord", 2), ("piano", 4), ("pluck", 0), ("sweep", 1), ("ring", 2),
            ("dtmf", 0), ("beeps", 1), ("hum", 0), ("buzz", 2), ("tone_in_noise", 0)]


def _held_out_clip(kind: str, i: int, seconds: float = 6.0) -> np.ndarray:
    return synthesize(kind, seconds, np.random.default_rng([4242, KINDS.index(kind), i]))


def _write(tmp_path, name: str, x: np.ndarray):
    import soundfile as sf

    path = tmp_path / f"{name}.wav"
    sf.write(path, x, SR, subtype="PCM_16")
    return path


def _classify_json(paths) -> list[dict]:
    import json
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.run([sys.executable, "-m", "realtime", "classify", *map(str, paths), "--json"],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def test_synthesised_non_speech_gets_no_gender_per_file_and_live(tmp_path):
    from realtime.engine import Engine

    clips = {f"{k}-{i}": _held_out_clip(k, i) for k, i in HELD_OUT}
    verdicts = _classify_json([_write(tmp_path, name, x) for name, x in clips.items()])
    gendered = [v["file"] for v in verdicts if v.get("decision", v["label"]) in ("female", "male")]
    assert len(gendered) <= 1, verdicts  # the bar: >= 95 % of tone windows given no gender
    engine = Engine()
    live = 0
    for x in clips.values():
        engine.reset()
        live += sum(e["label"] in ("female", "male") for e in engine.run([x[i:i + 1600] for i in range(0, len(x), 1600)]))
    hops = len(clips) * 6 * 2
    assert live <= 0.05 * hops, live


def test_real_music_gets_no_gender(tmp_path):
    from offline.nonspeech import music_clips, music_files

    files = music_files(TEST_MUSIC)
    if not files:
        pytest.fail("asc-music is not installed: ./setup.sh --dev installs it (real music the bundle never heard)")
    clips = music_clips(files, seconds=8.0, every_s=40.0, max_per_file=4)
    verdicts = _classify_json([_write(tmp_path, f"m{i}", x) for i, (_, x) in enumerate(clips)])
    gendered = sum(v.get("decision", v["label"]) in ("female", "male") for v in verdicts)
    assert gendered <= 0.1 * len(verdicts), verdicts


def test_speech_still_gets_its_gender(tmp_path):
    from tests.data import readers_by_gender, speechocean_sample

    files = [p for ps in readers_by_gender(4).values() for p in ps]
    files += [f for rows in speechocean_sample(3, 1).values() for _, f in rows]
    verdicts = _classify_json(files)
    assert sum(v.get("decision", v["label"]) in ("female", "male") for v in verdicts) >= len(files) - 1, verdicts


def test_server_gives_a_tone_no_gender():
    import json
    import socket

    from realtime.audio import float_to_pcm16
    from realtime.server import ServerConfig, ServerThread, engine_factory

    srv = ServerThread(engine_factory(), ServerConfig(host="127.0.0.1", port=0, tcp_port=0)).start()
    try:
        pcm = bytes(float_to_pcm16(_held_out_clip("chord", 5, 5.0)))
        with socket.create_connection(("127.0.0.1", srv.server.tcp_port), timeout=60) as s:
            s.sendall(json.dumps({"rate": SR, "encoding": "s16le"}).encode() + b"\n" + pcm)
            s.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        msgs = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
        assert msgs[0]["event"] == "ready" and msgs[-1]["event"] == "end"
        assert not any(m.get("label") in ("female", "male") for m in msgs[1:-1]), msgs
        assert msgs[-1].get("decision", msgs[-1].get("label")) not in ("female", "male"), msgs[-1]
    finally:
        srv.stop()

"""The live engine end to end, with the shipped bundle, on real LibriSpeech audio.

The release bundle was trained on all shared readers, so correct labels here show the pipeline
works (sources, VAD, windows, features, ensemble, smoother), not that it generalises: that is what
`python -m offline evaluate` measures on held-out readers.
"""
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from realtime.audio import AudioError, load_audio
from realtime.bundle import Bundle
from realtime.engine import Engine, EngineConfig, summarise
from realtime.events import LABELS
from realtime.features import FeatureExtractor
from realtime.sources import FileSource, StdinSource

from .data import readers_by_gender

GENDER = {"F": "female", "M": "male"}
REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle():
    return Bundle.load()


@pytest.fixture(scope="module")
def voices():
    return readers_by_gender(3)


def _events(bundle, chunks, **cfg):
    return list(Engine(bundle, EngineConfig(**cfg)).run(chunks))


def _chunks(x, n=1600):
    return [x[i:i + n] for i in range(0, len(x), n)]


def test_event_schema_and_one_event_per_hop(bundle, voices):
    path = voices["F"][0]
    y = load_audio(path)
    events = _events(bundle, _chunks(y))
    # one event per 0.5 s hop; the first estimate of a voice comes at once, and the hop clock restarts there
    first = next(i for i, e in enumerate(events) if e["window_p_female"] is not None)
    gaps = np.diff([0.0] + [e["t"] for e in events])
    assert np.allclose(gaps[:first], 0.5) and gaps[first] <= 0.5 + 1e-9
    assert np.allclose(gaps[first + 1:-1], 0.5) and 0 < gaps[-1] <= 0.5 + 1e-9  # the last, partial hop is flushed
    assert events[-1]["t"] == pytest.approx(len(y) // 320 * 0.02)
    for e in events:
        assert {"t", "label", "p_female", "window_p_female", "speech", "compute_ms", "confidence", "stages_ms"} <= e.keys()
        assert e["label"] in LABELS
        assert e["window_p_female"] is None or 0.0 <= e["window_p_female"] <= 1.0
    assert sum(e["window_p_female"] is not None for e in events) > 10


@pytest.mark.parametrize("g", ["F", "M"])
def test_converges_to_the_readers_gender(bundle, voices, g):
    for path in voices[g]:
        events = _events(bundle, _chunks(load_audio(path)))
        assert events[-1]["label"] == GENDER[g], (path, events[-1])


def test_first_estimate_soon_after_speech_onset(bundle, voices):
    events = _events(bundle, _chunks(load_audio(voices["M"][0])))
    onset = next(i for i, e in enumerate(events) if e["speech"])
    first = next(e for e in events if e["window_p_female"] is not None)
    # 0.75 s of speech, counted from the start of the hop in which speech began, plus short pauses
    assert first["t"] - (events[onset - 1]["t"] if onset else 0.0) <= 1.5


def test_file_and_stdin_give_the_same_per_hop_results(bundle, voices):
    path = voices["F"][1]
    with FileSource(path) as src:
        from_file = list(Engine(bundle).run(src))
    pcm = sf.read(path, dtype="int16")[0].tobytes()  # the flac's own 16-bit samples, as arecord would pipe them
    with StdinSource(rate=16000, stream=io.BytesIO(pcm)) as src:
        from_stdin = list(Engine(bundle).run(src))
    def strip(events):
        return [{k: v for k, v in e.items() if k not in ("compute_ms", "stages_ms")} for e in events]

    assert strip(from_file) == strip(from_stdin)


def test_samples_until_event_says_when_the_next_event_can_come(bundle, voices):
    """A push shorter than ``samples_until_event()`` returns no event; once a voice has its estimate, a push of
    exactly that many samples ends the hop. Real speech, a pause (the voice is forgotten), another voice,
    pushed in chunks of random sizes."""
    f, m = load_audio(voices["F"][0])[: 16000 * 6], load_audio(voices["M"][0])[: 16000 * 6]
    x = np.concatenate([np.zeros(8000, np.float32), f, np.zeros(16000 * 3, np.float32), m])
    rng = np.random.default_rng(0)
    for hop in (0.5, 1.0):
        engine = Engine(bundle, EngineConfig(hop_s=hop))
        i, label, quiet, exact = 0, "no speech", 0, 0
        while i < len(x):
            due = engine.samples_until_event()
            n = due if rng.random() < 0.3 else int(rng.integers(1, 3000))
            events = engine.push(x[i:i + n])
            i += n
            if n < due:
                assert events == [], (i, n, due)
                quiet += 1
            elif n == due and label in ("female", "male", "uncertain") and i <= len(x):
                assert len(events) == 1 and i % 320 == 0 and events[0].t == pytest.approx(i / 16000), (i, events)
                exact += 1
            if events:
                label = events[-1].label
        assert quiet > 10 and exact > 5, (quiet, exact)


def test_live_features_equal_offline_features_of_the_same_window(bundle, voices):
    """The engine's incremental features for each classified window equal a fresh offline extraction."""
    engine = Engine(bundle)
    fe = FeatureExtractor()
    checked = 0
    for chunk in _chunks(load_audio(voices["M"][1])):
        for e in engine.push(chunk):
            if e["window_p_female"] is None:
                continue
            window, stats, mfcc = engine.last_window
            s_off, m_off = fe.extract(window)
            np.testing.assert_allclose(stats, s_off, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(mfcc, m_off, rtol=1e-4, atol=1e-3)
            p = bundle.predict(s_off[None], m_off[None])["p_female"][0]
            assert e["window_p_female"] == pytest.approx(p, abs=1e-3)
            checked += 1
    assert checked >= 10
    assert engine.streaming.reused_frames > 0 and engine.streaming.reused_pitch_frames > 0  # windows aligned to pitch hops


@pytest.mark.parametrize("live_voice", [False, True])
def test_female_pause_male_flips_within_bound(bundle, voices, live_voice):
    """Stated bound: the label reads the new voice within 2.5 s of its onset after a pause
    (the pause resets the state, the live voice opinion too; 1.0 s of speech for the first window, plus hops)."""
    f = load_audio(voices["F"][0])
    m = load_audio(voices["M"][0])
    pause = np.zeros(int(3.0 * 16000), np.float32)
    x = np.concatenate([f, pause, m])
    events = _events(bundle, _chunks(x), live_voice=live_voice)
    onset = (len(f) + len(pause)) / 16000
    before = [e for e in events if e["t"] <= len(f) / 16000]
    assert before[-1]["label"] == "female"
    during_pause = [e for e in events if len(f) / 16000 + 2.1 <= e["t"] <= onset]  # 1.5 s of silence resets
    assert during_pause and all(e["label"] == "no speech" for e in during_pause)
    flip = next(e["t"] for e in events if e["t"] > onset and e["label"] == "male")
    assert flip - onset <= 2.5, flip - onset
    assert events[-1]["label"] == "male"


@pytest.mark.parametrize("live_voice", [False, True])
def test_voice_change_without_pause_flips_within_bound(bundle, voices, live_voice):
    """Without a pause the smoother must overturn the old voice: stated bound 5 s (with the live voice
    opinion, its next read of the speech buffer hears the new voice)."""
    f = load_audio(voices["F"][1])
    m = load_audio(voices["M"][1])
    events = _events(bundle, _chunks(np.concatenate([m, f])), live_voice=live_voice)
    onset = len(m) / 16000
    flip = next(e["t"] for e in events if e["t"] > onset and e["label"] == "female")
    assert flip - onset <= 5.0, flip - onset


def test_live_voice_opinion_reads_the_speech_buffer_on_schedule(bundle, voices):
    """--live-voice: the encoder reads the voice's latest speech after its first 1 s and then every 2 s of new
    speech; from the first read on the live p is the smoother's windows, scaled, plus the weighted opinion."""
    from realtime.engine import LIVE_VOICE_EVERY_S, LIVE_VOICE_FIRST_S
    from realtime.logodds import sigmoid

    for gender in ("F", "M"):
        path = voices[gender][2]
        engine = Engine(bundle, EngineConfig(live_voice=True))
        reads, speech_at_read, p_with, p_without = [], [], [], []
        plain = Engine(bundle, EngineConfig(live_voice=False))
        chunks = _chunks(load_audio(path))
        for chunk in chunks:
            for e, e0 in zip(engine.push(chunk), plain.push(chunk)):
                assert e["window_p_female"] == e0["window_p_female"]  # the windows are untouched
                if "voice" in e["stages_ms"]:
                    reads.append(e["t"])
                    speech_at_read.append(engine.speech_samples / 16000)
                if e["p_female"] is not None and reads:
                    p_with.append(e["p_female"])
                    p_without.append(e0["p_female"])
        assert len(reads) >= 2, reads
        assert speech_at_read[0] >= LIVE_VOICE_FIRST_S and speech_at_read[0] < LIVE_VOICE_FIRST_S + 0.6
        assert all(LIVE_VOICE_EVERY_S <= b - a < LIVE_VOICE_EVERY_S + 0.6 for a, b in zip(speech_at_read, speech_at_read[1:]))
        v = bundle.voice_logit(engine.speech.latest())  # the last read's speech is the buffer as the file ends
        assert (v > 0) == (gender == "F")
        assert p_with != p_without and (p_with[-1] > 0.5) == (gender == "F")
        o = bundle.voice_weight * v
        assert abs(o) > 0.1 and sigmoid(o) != pytest.approx(0.5)
    # a bundle loaded without the encoder (serve's default) runs the windows alone
    lean = Bundle.load(voice=False)
    events = _events(lean, _chunks(load_audio(voices["F"][2])), live_voice=True)
    assert not any("voice" in e["stages_ms"] for e in events)


@pytest.mark.parametrize("kind", ["silence", "white", "brown"])
def test_silence_and_noise_alone_yield_no_gender(bundle, kind):
    rng = np.random.default_rng(0)
    n = 8 * 16000
    if kind == "silence":
        x = np.zeros(n, np.float32)
    elif kind == "white":
        x = (0.05 * rng.standard_normal(n)).astype(np.float32)
    else:
        x = np.cumsum(rng.standard_normal(n)).astype(np.float32)
        x = (0.05 * (x - np.convolve(x, np.ones(400) / 400, mode="same")) / x.std()).astype(np.float32)
    events = _events(bundle, _chunks(x))
    assert not any(e["label"] in ("female", "male") for e in events), [e["label"] for e in events]


def test_other_rates_and_stereo_are_resampled(bundle, voices, tmp_path):
    path = voices["F"][2]
    y, sr = sf.read(path, dtype="float32")
    import soxr
    for rate, channels in ((44100, 2), (8000, 1), (48000, 1)):
        z = soxr.resample(y, sr, rate)
        if channels == 2:
            z = np.stack([z, 0.5 * z], axis=1)
        out = tmp_path / f"x_{rate}_{channels}.wav"
        sf.write(out, z, rate)
        engine = Engine(bundle)
        with FileSource(out) as src:
            events = list(engine.run(src))
        assert summarise(events, engine)["label"] == "female", (rate, channels)


def test_corrupt_truncated_and_empty_files(bundle, voices, tmp_path):
    bad = tmp_path / "bad.flac"
    bad.write_bytes(b"fLaC" + bytes(range(256)) * 8)
    with pytest.raises(AudioError):
        FileSource(bad)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError):
        FileSource(empty)
    data = voices["M"][2].read_bytes()
    cut = tmp_path / "cut.flac"
    cut.write_bytes(data[: len(data) // 2])
    # a truncated flac either decodes its first half or fails clearly; never a crash of another kind
    try:
        engine = Engine(bundle)
        with FileSource(cut) as src:
            events = list(engine.run(src))
        assert summarise(events, engine)["label"] in ("male", "uncertain", "no speech")
    except AudioError as exc:
        assert str(cut) in str(exc) or "decode" in str(exc)


def _run_cli(*args, input=None):
    return subprocess.run([sys.executable, "-m", "realtime", *map(str, args)], input=input, capture_output=True,
                          cwd=REPO, timeout=120)


def test_cli_stream_jsonl_and_stdin(voices):
    path = voices["M"][0]
    out = _run_cli("stream", "--source", f"file:{path}", "--format", "jsonl")
    assert out.returncode == 0, out.stderr.decode()
    events = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert events and events[-1]["label"] == "male"
    pcm = sf.read(path, dtype="int16")[0].tobytes()
    out2 = _run_cli("stream", "--source", "stdin", "--rate", "16000", "--format", "jsonl", input=pcm)
    assert out2.returncode == 0, out2.stderr.decode()
    events2 = [json.loads(line) for line in out2.stdout.decode().splitlines()]
    assert [e["label"] for e in events2] == [e["label"] for e in events]


def test_cli_classify_json_and_bad_file(voices, tmp_path):
    bad = tmp_path / "garbage.wav"
    bad.write_bytes(b"RIFF" + b"\x00" * 100)
    paths = [voices["F"][0], voices["M"][0], bad]
    out = _run_cli("classify", *paths, "--json")
    assert out.returncode == 1  # one file failed
    rows = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert [r["label"] for r in rows] == ["female", "male", None]
    assert rows[0]["windows"] > 5 and rows[0]["speech_seconds"] > 3 and 0.5 < rows[0]["p_female"] <= 1
    assert "error" in rows[2] and "garbage.wav" in rows[2]["error"]


def test_quiet_recording_is_flagged(voices, tmp_path):
    """Speech far below the training levels gets a warning (the features carry the level), normal speech none;
    every classified window reports its level."""
    path = voices["M"][1]
    y, sr = sf.read(path, dtype="float32")
    quiet = tmp_path / "quiet.wav"
    sf.write(quiet, y * 10 ** (-25 / 20), sr)
    out = _run_cli("classify", path, quiet, "--json")
    assert out.returncode == 0, out.stderr.decode()
    normal, low = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert normal["warning"] is None and -40 < normal["level_dbfs"] < -14
    assert low["level_dbfs"] < normal["level_dbfs"] - 20  # not exactly 25: the VAD keeps its louder frames
    assert "raise the input gain" in low["warning"]
    out = _run_cli("classify", quiet)
    assert "warning: speech at" in out.stderr.decode()
    events = _events(Bundle.load(), _chunks(y))
    assert all((e["level_dbfs"] is None) == (e["window_p_female"] is None) for e in events)


def test_cli_csv_and_wrong_rate_option(voices):
    out = _run_cli("stream", "--source", f"file:{voices['F'][0]}", "--format", "csv")
    lines = out.stdout.decode().splitlines()
    assert out.returncode == 0 and lines[0].startswith("t,label,p_female")
    out = _run_cli("stream", "--source", "stdin", "--rate", "0", "--format", "jsonl", input=b"\x00\x00" * 100)
    assert out.returncode == 2 and b"rate" in out.stderr.lower()


def test_live_path_imports_no_tensorflow_librosa_or_numba(voices):
    code = ("import sys; from realtime.engine import Engine; from realtime.sources import FileSource; "
            f"list(Engine().run(FileSource({str(voices['F'][0])!r}))); "
            "bad = [m for m in ('tensorflow', 'keras', 'librosa', 'numba', 'xgboost') if m in sys.modules]; "
            "assert not bad, bad")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr.decode()


def test_microphone_live_estimate_converges(bundle, voices):
    """A real audio server (PulseAudio null sink) plays a shared utterance; the engine hears it through sounddevice."""
    from realtime.sources import MicSource

    from .pulse import virtual_microphone

    path = voices["F"][0]
    duration = sf.info(path).duration
    with virtual_microphone() as vm:
        engine = Engine(bundle)
        events = []
        with MicSource(device=vm.device) as mic:
            vm.play(path)
            for e in engine.run(mic):
                events.append(e)
                if e["t"] >= duration + 0.5:
                    break
    labels = [e["label"] for e in events if e["speech"]]
    assert labels and labels[-1] == "female", labels
    assert sum(e["window_p_female"] is not None for e in events) >= 5


def test_engine_eval_scores_the_live_label_with_and_without_the_live_voice(bundle, voices):
    """`offline engine-eval`'s live-label rows on real voices (the shipped bundle knows these readers, so this
    checks the scoring, not generalisation): every file's live label is mostly right, with the voice too."""
    from types import SimpleNamespace

    from offline.engine_eval import SETTINGS, score_setting

    utts = [SimpleNamespace(gender=g) for g in ("F", "F", "M", "M")]
    audio = [load_audio(voices[g][i]) for g, i in (("F", 0), ("F", 1), ("M", 0), ("M", 1))]
    for name in ("speech-only, first 0.75 s", "speech-only, first 0.75 s, live voice"):
        r = score_setting(bundle, utts, audio, **SETTINGS[name])
        assert 0.8 <= r["live_label_balanced_accuracy"] <= 1.0, (name, r)
        assert r["last_estimate_balanced_accuracy"] == 1.0, (name, r)

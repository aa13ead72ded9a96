"""The Python API on real LibriSpeech audio with the shipped bundle: ``classify``, ``segments``, ``Engine.push``
with any dtype / rate / channel layout, ``Engine.run`` from a clean state. Each defect of issue 11 is a test here."""
from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import soxr

from realtime.audio import load_audio
from realtime.engine import EngineConfig

from .data import readers_by_gender

GENDER = {"F": "female", "M": "male"}


@pytest.fixture(scope="module")
def voices():
    return readers_by_gender(3)


@pytest.fixture(scope="module")
def female(voices):
    return load_audio(voices["F"][0])


def _labels(events):
    return [(e.t, e.label, e.p_female, e.window_p_female) for e in events]


def test_package_exports_the_api():
    """Defect: `from realtime import Engine` failed, the package exported nothing."""
    import realtime
    from realtime import Engine, EngineConfig, Event, FileSource, StdinSource, classify, segments  # noqa: F401

    assert callable(classify) and callable(segments)
    assert set(realtime.__all__) >= {"Engine", "EngineConfig", "classify", "segments", "FileSource", "Event"}
    assert realtime.__version__


def test_classify_a_path_and_a_file_like_object(voices):
    from realtime import classify

    for g in "FM":
        for path in voices[g][:2]:
            r = classify(path)
            assert set(r) == {"label", "p_female", "speech_seconds", "windows", "level_dbfs", "warning",
                              "voice_p_female"}
            assert r["label"] == GENDER[g], (path, r)
            assert r["windows"] > 3 and r["speech_seconds"] > 2 and r["warning"] is None
            with open(path, "rb") as f:
                assert classify(f) == r
    assert classify(str(voices["F"][0])) == classify(voices["F"][0])


def test_classify_an_array_at_44k_int16_and_stereo(voices, female):
    """The same voice as float at 44.1 kHz, int16 at 44.1 kHz, stereo, and 8 kHz all get the file's answer."""
    from realtime import classify

    ref = classify(voices["F"][0])
    x44 = soxr.resample(female, 16000, 44100).astype(np.float32)
    for x, rate in [(x44, 44100), ((x44 * 32767).astype(np.int16), 44100), (np.stack([x44, x44], axis=1), 44100),
                    (female[:, None], 16000), (soxr.resample(female, 16000, 8000).astype(np.float32), 8000)]:
        r = classify(x, rate)
        assert r["label"] == "female" and r["p_female"] > 0.9, (x.dtype, x.shape, rate, r)
        assert abs(r["speech_seconds"] - ref["speech_seconds"]) < 0.5
    with pytest.raises(ValueError, match="sample_rate"):
        classify(female)


def test_push_converts_int16_rates_and_channels(voices):
    """Defect: push() took an int16 array as floats (+66 dBFS, 'uncertain'), a 44.1 or 8 kHz array as 16 kHz
    (the wrong gender) and refused (N, 1). Now chunks of any size at any rate give the 16 kHz file's answer."""
    from realtime import Engine, classify
    from realtime.engine import summarise

    path = voices["F"][1]
    y, sr = sf.read(path, dtype="int16")
    assert sr == 16000
    want = classify(path)
    engine = Engine()
    for chunk_rate, x in [(16000, y), (44100, soxr.resample(y, 16000, 44100)), (8000, soxr.resample(y, 16000, 8000)),
                          (48000, np.stack([soxr.resample(y, 16000, 48000)] * 2, axis=1))]:
        engine.reset()
        events = []
        step = 999  # chunk boundaries that fall anywhere
        for i in range(0, len(x), step):
            events += engine.push(x[i:i + step], sample_rate=chunk_rate)
        events += engine.flush()
        r = summarise(events, engine)
        assert r["label"] == "female", (chunk_rate, r)
        assert abs(r["p_female"] - want["p_female"]) < 0.05 and -40 < r["level_dbfs"] < -20, (chunk_rate, r)
        assert events[-1].t == pytest.approx(len(y) / 16000, abs=0.05)


def test_push_refuses_nan_inf_and_int16_values_as_floats(female):
    from realtime import Engine

    engine = Engine()
    for bad, what in [(np.array([0.1, np.nan, 0.2], np.float32), "NaN or infinite"),
                      (np.array([0.1, np.inf], np.float64), "NaN or infinite"),
                      (female * 32767.0, "divide by 32768"),
                      (np.zeros(10, np.uint8), "dtype"),
                      (np.zeros((2, 16000), np.float32), "channels"),
                      (np.zeros((2, 2, 2), np.float32), "shape")]:
        with pytest.raises(ValueError, match=what):
            engine.push(bad)
    with pytest.raises(ValueError, match="sample_rate"):
        engine.push(female[:100], sample_rate=0)


def test_one_engine_for_two_files_equals_two_fresh_engines(voices):
    """Defect: a reused Engine carried the female file's state into the male file ('female' for its first 2 s)
    and t kept counting across files."""
    from realtime import Engine

    f, m = voices["F"][0], voices["M"][0]
    engine = Engine()
    first, second = list(engine.run(f)), list(engine.run(m))
    assert _labels(first) == _labels(list(Engine().run(f)))
    assert _labels(second) == _labels(list(Engine().run(m)))
    assert second[0].t == 0.5 and "female" not in [e.label for e in second]


def test_run_takes_a_path_and_events_are_typed(voices):
    """Defect: engine.run("file.flac") failed with 'could not convert string to float'."""
    from realtime import Engine, Event

    events = list(Engine().run(str(voices["M"][0])))
    assert events and all(isinstance(e, Event) for e in events)
    assert events[-1].label == "male"
    assert events[0].label in ("waiting", "no speech")  # 'uncertain' only when windows cannot decide
    assert "waiting" in [e.label for e in events]


def test_a_stream_too_short_or_too_quiet_says_why(female):
    from realtime import classify

    silence = np.zeros(16000 * 3, np.float32)
    r = classify(np.concatenate([silence, female[16000 * 2:16000 * 2 + 8000], silence]), 16000)  # 0.5 s of speech
    assert r["label"] == "no speech" and r["windows"] == 0 and r["p_female"] is None
    assert "less than the 0.75 s" in r["warning"]
    r = classify(silence, 16000)
    assert r["label"] == "no speech" and "no speech" in r["warning"]
    quiet = female * 10 ** (-33 / 20)  # about -64 dBFS
    r = classify(quiet, 16000)
    assert "quieter than the training audio" in r["warning"], r


def _turns_of(segs, lo, hi):
    return [s for s in segs if lo <= (s["start"] + s["end"]) / 2 < hi]


@pytest.mark.parametrize("k", [0, 1, 2])
def test_segments_female_pause_male(voices, k):
    """Female reader, a 2 s pause, a male reader: every turn has the right label and the turns begin and end
    within 1.5 s of the true boundaries."""
    from realtime import segments

    f, m = load_audio(voices["F"][k]), load_audio(voices["M"][k])
    pause = 2.0
    x = np.concatenate([f, np.zeros(int(pause * 16000), np.float32), m])
    t_f, t_m0, t_end = len(f) / 16000, len(f) / 16000 + pause, len(x) / 16000
    segs = segments(x, 16000)
    assert all(set(s) == {"start", "end", "label", "p_female", "voice_p_female"} for s in segs)
    assert all(a["end"] <= b["start"] for a, b in zip(segs, segs[1:]))
    fem, mal = _turns_of(segs, 0, t_f + pause / 2), _turns_of(segs, t_f + pause / 2, t_end + 1)
    assert fem and mal and len(fem) + len(mal) == len(segs)
    assert all(s["label"] == "female" for s in fem) and all(s["label"] == "male" for s in mal), segs
    assert abs(fem[0]["start"] - 0) <= 1.5 and abs(fem[-1]["end"] - t_f) <= 1.5, segs
    assert abs(mal[0]["start"] - t_m0) <= 1.5 and abs(mal[-1]["end"] - t_end) <= 1.5, segs
    # each turn's own voice opinion (its speech, not the first 12 s of the recording) leans its own way
    long_turns = [(s, "F" if s in fem else "M") for s in segs if s["end"] - s["start"] >= 2.0]
    assert long_turns and all(s["voice_p_female"] is not None for s, _ in long_turns)
    assert all((s["voice_p_female"] >= 0.5) == (g == "F") for s, g in long_turns), segs
    # without the voice opinion the turns are judged by their windows alone
    off = segments(x, 16000, config=EngineConfig(voice_opinion=False))
    assert [s["label"] for s in off] == [s["label"] for s in segs] and all(s["voice_p_female"] is None for s in off)


def test_segments_split_at_a_change_of_voice_without_a_pause(voices):
    from realtime import segments

    f, m = load_audio(voices["F"][2]), load_audio(voices["M"][2])
    segs = segments(np.concatenate([f, m]), 16000)
    change = len(f) / 16000
    cut = next(s["start"] for s in segs if s["label"] == "male")
    assert abs(cut - change) <= 1.5, segs
    assert all(s["label"] == ("female" if s["end"] <= cut else "male") for s in segs), segs


def test_classify_wav_bytes_in_memory(female):
    from realtime import classify

    buf = io.BytesIO()
    sf.write(buf, female, 16000, format="WAV")
    buf.seek(0)
    assert classify(buf)["label"] == "female"


def test_every_deliberate_error_is_a_voicegender_error(tmp_path, female):
    """One ``except VoiceGenderError`` catches bad audio, a broken bundle and a refused stream config, and each
    error is still the built-in type it always was."""
    import shutil

    from realtime import AudioError, Bundle, BundleError, Engine, VoiceGenderError, classify
    from realtime.bundle import DEFAULT_MODELS_DIR
    from realtime.protocol import ProtocolError, parse_config

    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"fLaC" + bytes(range(256)) * 8)
    with pytest.raises(VoiceGenderError, match="corrupt.flac") as caught:
        classify(corrupt)
    assert isinstance(caught.value, (AudioError, ValueError))
    with pytest.raises(VoiceGenderError, match="NaN"):
        Engine().push(np.full(1600, np.nan, np.float32))
    broken = tmp_path / "models"
    shutil.copytree(DEFAULT_MODELS_DIR, broken)
    (broken / "cnn1d.onnx").write_bytes(b"not a model")
    with pytest.raises(VoiceGenderError) as caught:
        Bundle.load(broken)
    assert isinstance(caught.value, BundleError) and isinstance(caught.value, ValueError)
    with pytest.raises(VoiceGenderError) as caught:
        parse_config('{"rate": 16000, "encoding": "u8"}')
    assert isinstance(caught.value, ProtocolError)

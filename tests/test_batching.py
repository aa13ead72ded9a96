"""Batching across streams (realtime.batching, ``serve --batch-ms``): many streams' windows classified in one
pass give each stream exactly the events its own Engine gives, on real speech, for streams that differ in
offset, sample rate, hop, chunk size and settings, with resets, non-speech and flushes among them.

Exact: every event field but the timings (``compute_ms``, ``stages_ms``), and below the rounding, every
classified window's stats and MFCC to the bit and its p_speech and p_female as the same floats.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
import soxr

from offline.nonspeech import synthesize
from realtime.audio import SAMPLE_RATE, AudioError, float_to_pcm16, load_audio, pcm16_to_float
from realtime.batching import classify_many, run_many
from realtime.bundle import Bundle
from realtime.engine import Engine, EngineConfig, WindowJob, drive
from realtime.features import FeatureExtractor, StreamingExtractor, extract_streams

from .data import librispeech_files, readers_by_gender
from .test_server import check_stream, session

TIMINGS = ("compute_ms", "stages_ms")


class RecordingEngine(Engine):
    """An Engine that keeps every window result it finishes a hop with (the real results, recorded)."""

    def reset(self) -> None:
        super().reset()
        self.results = getattr(self, "results", [])

    def _finish_hop(self, job, result):
        if result is not None:
            self.results.append(result)
        return super()._finish_hop(job, result)


def _fields(events) -> list[dict]:
    return [{k: v for k, v in e.to_dict().items() if k not in TIMINGS} for e in events]


def _same_results(a, b) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert np.array_equal(ra.stats, rb.stats) and np.array_equal(ra.mfcc, rb.mfcc)
        assert (ra.p_speech, ra.p_female) == (rb.p_speech, rb.p_female)


@pytest.fixture(scope="module")
def bundle():
    return Bundle.load()


@pytest.fixture(scope="module")
def streams():
    """(engine config, rate, chunk seconds, ops) per stream: real utterances of six readers at different offsets,
    rates, hops and chunk sizes; one with a reset mid-stream, one with synthetic chords between its speech
    (windows the speech check turns away), one of all audio (speech_only False)."""
    voices = readers_by_gender(3)
    speech = [load_audio(p)[: 9 * SAMPLE_RATE] for g in "FM" for p in voices[g]]
    rng = np.random.default_rng(7)
    chords = synthesize("chord", 3.0, rng)
    plans = [  # (hop_s, rate, chunk_s, leading silence s, extra EngineConfig)
        (0.5, 16000, 0.1, 0.0, {}), (0.5, 16000, 0.1, 0.13, {}), (0.3, 16000, 0.25, 0.4, {}),
        (0.2, 8000, 0.06, 0.0, {}), (1.0, 44100, 0.5, 0.27, {}), (0.5, 48000, 1.3, 0.0, {}),
        (0.4, 16000, 0.02, 1.1, {"first_window_s": 1.0}), (0.5, 22050, 0.35, 0.05, {"speech_only": False}),
        (0.5, 16000, 2.0, 0.6, {}), (0.2, 16000, 0.7, 0.0, {"vad_aggressiveness": 3}),
        (0.5, 16000, 0.1, 0.0, {}), (0.6, 16000, 0.15, 0.31, {}),
    ]
    out = []
    for k, (hop, rate, chunk_s, lead, extra) in enumerate(plans):
        x = np.concatenate([np.zeros(int(lead * SAMPLE_RATE), np.float32), speech[k % len(speech)]])
        if k == 10:  # speech, chords (turned away), speech again
            x = np.concatenate([speech[0][: 4 * SAMPLE_RATE], chords, speech[3][: 4 * SAMPLE_RATE]])
        if rate != SAMPLE_RATE:
            x = soxr.resample(x, SAMPLE_RATE, rate).astype(np.float32)
        step = max(1, int(chunk_s * rate))
        ops = [x[i:i + step] for i in range(0, len(x), step)]
        if k == 2:
            ops.insert(len(ops) // 2, "reset")
        out.append((EngineConfig(hop_s=hop, **extra), rate, ops + ["flush"]))
    return out


def _no_steps():
    return []
    yield  # a generator: steps that classify nothing


def _op_steps(engine, op, rate):
    """One operation of a stream as the engine's steps: audio (a push), "flush", or "reset" (done now, no steps)."""
    if isinstance(op, str):
        if op == "reset":
            engine.reset()
            return _no_steps()
        return engine.flush_steps()
    return engine.push_steps(op, rate)


def _single(bundle, cfg, rate, ops):
    """The stream alone: its own engine, each operation classified inline (as Engine.push does)."""
    engine = RecordingEngine(bundle, cfg)
    events = []
    for op in ops:
        events += drive(_op_steps(engine, op, rate))
    return events, engine.results


def test_batched_streams_give_each_stream_its_own_events_exactly(bundle, streams):
    engines = [RecordingEngine(bundle, cfg) for cfg, _, _ in streams]
    got = [[] for _ in streams]
    rounds = max(len(ops) for _, _, ops in streams)
    widest = 0  # the most streams that classified a window in one run_many call
    for r in range(rounds):  # every stream's r-th operation in one run_many call, as a server tick would
        live = [k for k, (_, _, ops) in enumerate(streams) if r < len(ops)]
        steps = [_op_steps(engines[k], streams[k][2][r], streams[k][1]) for k in live]
        out = run_many(steps)
        for k, events in zip(live, out):
            assert not isinstance(events, Exception), events
            got[k] += events
        widest = max(widest, sum(any(e["p_speech"] is not None for e in events) for events in out))
    assert widest >= 4  # so windows of several streams did share a batch
    rejected = 0
    for k, (cfg, rate, ops) in enumerate(streams):
        want, want_results = _single(bundle, cfg, rate, ops)
        assert _fields(got[k]) == _fields(want), f"stream {k}"
        _same_results(engines[k].results, want_results)
        assert sum(e["window_p_female"] is not None for e in want) >= 5, f"stream {k}: too few windows to compare"
        rejected += sum(r.p_female is None for r in want_results)
    assert rejected >= 2  # the chords were classified and turned away, in the batch too


def test_extract_streams_equals_each_streams_extract_to_the_bit():
    """Fresh frames of many windows in one _frame_block call: the same bits as each stream alone, whatever
    the shifts (first windows, whole-hop moves, unaligned starts)."""
    fe = FeatureExtractor()
    n, hop = fe.definition.window_samples, fe.definition.hop_length
    ys = [load_audio(p) for p in librispeech_files()[:6]]
    moves = [(0, 22, 22, 5, 87, 1), (None, 3, 30, 0, 40, 22), (0, 1, 2, 3, 4, 5)]
    alone = [StreamingExtractor(fe) for _ in range(len(ys) * len(moves))]
    together = [StreamingExtractor(FeatureExtractor()) for _ in alone]
    pos = [0] * len(alone)
    for step in range(6):
        items, want = [], []
        for k, y in enumerate(ys * len(moves)):
            move = moves[k // len(ys)][step]
            start = None if move is None else pos[k] + move * hop + (k % 2) * (step == 4) * 7  # some unaligned
            pos[k] = start or 0
            w = y[pos[k]: pos[k] + n]
            items.append((together[k], w, start))
            want.append(alone[k].extract(w, start))
        for (s, m), (ws, wm) in zip(extract_streams(items), want):
            assert np.array_equal(s, ws) and np.array_equal(m, wm)
    assert sum(sx.reused_frames for sx in together) == sum(sx.reused_frames for sx in alone) > 0


def test_models_give_each_row_the_same_bits_whatever_the_batch(bundle):
    """predict_many and the speech check on N windows at once equal predict_one / one-row p_speech, for batch
    sizes 1 to 64 (onnxruntime's CPU kernels compute each row alone)."""
    fe = FeatureExtractor()
    n = fe.definition.window_samples
    wins = [y[s:s + n] for y in (load_audio(p) for p in librispeech_files()[:8]) for s in range(0, len(y) - n, 9000)]
    feats = [fe.extract(w) for w in wins[:64]]
    stats, mfcc = np.stack([f[0] for f in feats]), np.stack([f[1] for f in feats])
    one = [bundle.predict_one(s, m)[0] for s, m in feats]
    speech_one = [float(bundle.p_speech(s)[0]) for s, _ in feats]
    for size in (1, 7, 64):
        many = [p for i in range(0, 64, size) for p in bundle.predict_many(stats[i:i + size], mfcc[i:i + size])[0]]
        assert many == one, size
        speech_many = [p for i in range(0, 64, size) for p in bundle.p_speech(stats[i:i + size]).tolist()]
        assert speech_many == speech_one, size


def test_a_failing_stream_fails_alone(bundle, voices_pcm):
    """A stream whose push raises gets its exception; the other streams of the batch get their events."""
    x = voices_pcm[0][: 3 * SAMPLE_RATE]
    out = run_many([Engine(bundle).push_steps(x), Engine(bundle).push_steps(np.full(100, np.nan, np.float32)),
                    Engine(bundle).push_steps(x)])
    assert isinstance(out[1], ValueError) and "NaN" in str(out[1])
    assert len(out[0]) >= 4 and _fields(out[0]) == _fields(out[2]) == _fields(Engine(bundle).push(x))

    def broken(engine):  # steps whose window cannot be classified (NaN samples), in the same batch as good ones
        yield WindowJob(engine, np.full(engine.window_samples, np.nan, np.float32), None)
        return []

    out = run_many([Engine(bundle).push_steps(x), broken(Engine(bundle)), Engine(bundle).push_steps(x)])
    assert isinstance(out[1], AudioError) and "NaN" in str(out[1])
    assert _fields(out[0]) == _fields(out[2]) == _fields(Engine(bundle).push(x))


@pytest.fixture(scope="module")
def voices_pcm():
    voices = readers_by_gender(2)
    return [load_audio(p) for g in "FM" for p in voices[g]]


def test_classify_many_of_no_windows_is_empty():
    assert classify_many([]) == [] and run_many([]) == []


@pytest.mark.parametrize("transport", ["tcp", "ws"])
def test_server_with_batching_sends_each_stream_its_own_events(make_server, voices_pcm, transport):
    """Eight clients at once through a server with --batch-ms 20: each gets exactly the events of its own
    Engine on the same messages, and the server did classify several streams' windows in one batch."""
    from realtime.server.batcher import hop_batcher

    srv = make_server(batch_ms=20.0, workers=1)
    config = {"rate": 16000, "encoding": "s16le", "channels": 1}
    clips = [y[k * 1600:] for k in range(2) for y in voices_pcm]  # eight streams, two offsets each
    results: list = [None] * len(clips)

    def client(i):
        data = float_to_pcm16(clips[i])
        chunks = [data[j:j + 3200 * (1 + i % 3)] for j in range(0, len(data), 3200 * (1 + i % 3))]
        results[i] = (chunks, session(srv, transport, config, chunks))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(clips))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    bundle = srv.server.engine_factory().bundle
    for chunks, msgs in results:
        _, events, _ = check_stream(msgs)
        engine = Engine(bundle)
        want = engine.push(pcm16_to_float(b"".join(chunks))) + engine.flush()
        assert [{k: v for k, v in e.items() if k not in TIMINGS} for e in events] == _fields(want)
    batcher = hop_batcher(srv.server.executor, srv.server.config)
    assert batcher.batches > 0 and batcher.largest >= 2, (batcher.batches, batcher.largest)


def _cli(*args, timeout: float = 300):
    import subprocess
    import sys
    from pathlib import Path

    return subprocess.run([sys.executable, "-m", "realtime", *args], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.parametrize("args, words", [
    (["serve", "--batch-ms", "-1"], "--batch-ms: must be between 0 and 100, got -1"),
    (["serve", "--batch-ms", "nan"], "--batch-ms: must be between 0 and 100"),
    (["serve", "--batch-ms", "soon"], "--batch-ms: expected a number of milliseconds"),
    (["bench", "--batch", "0,8"], "--batch sizes must be 1..4096"),
    (["bench", "--batch", "8,x"], "--batch wants batch sizes like 1,8,32,128"),
])
def test_bad_batch_options_are_refused_clearly(args, words):
    r = _cli(*args, timeout=60)
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_server_config_refuses_a_batch_tick_out_of_range():
    from realtime.server import ServerConfig

    for bad in (-1.0, 100.5, float("nan"), "5"):
        with pytest.raises(ValueError, match="batch_ms must be 0"):
            ServerConfig(batch_ms=bad)
    assert ServerConfig(batch_ms=0).batch_ms == 0 and ServerConfig(batch_ms=100).batch_ms == 100


def test_bench_batch_reports_each_size_and_identical_events():
    import json

    r = _cli("bench", "--batch", "1,3", "--batch-rounds", "6", "--files", "4", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    assert [row["size"] for row in res["batch"]] == [1, 3] and res["rounds"] == 6
    for row in res["batch"]:
        assert row["identical"] is True and row["windows"] > 0
        for way in ("one_at_a_time", "batched"):
            assert row[way]["cpu_ms"] > 0 and row[way]["wall_ms"] > 0
            assert {"features", "speech_check", "xgb", "cnn1d", "cnn2d"} <= set(row[way]["stages_ms"])
    assert res["command"].startswith("python -m realtime bench --batch")

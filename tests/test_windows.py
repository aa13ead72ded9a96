"""Windowing of whole utterances, WindowSet and cached corpus extraction on real audio."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from offline.augment import Augmenter
from offline.dataset import WindowSet, extract_corpus
from offline.librispeech import load_librispeech
from offline.windows import iter_windows, window_starts
from realtime.audio import AudioError, load_audio
from realtime.features import DEFAULT, MIN_SAMPLES, FeatureExtractor, fit_window
from .data import LIBRISPEECH

DATA = LIBRISPEECH  # $VOICEGENDER_DATA/LibriSpeech, else ../shared/data/LibriSpeech
SR = 16000
W, HOP = 2 * SR, SR // 2


@pytest.fixture(scope="module")
def corpus():
    return load_librispeech(DATA)


@pytest.mark.parametrize("n, hop, expected", [
    (W, HOP, [0]),
    (W + HOP, HOP, [0, HOP]),
    (W + HOP - 1, HOP, [0]),
    (W + 2 * HOP + 100, HOP, [0, HOP, 2 * HOP]),  # a short tail (< half a window) is dropped
    (10 * SR, SR // 2, list(range(0, 8 * SR + 1, SR // 2))),
    (W + W // 2, W, [0, W]),  # non-overlapping: half a window left -> one partial window
    (W + W // 2 - 1, W, [0]),
    (88000, 40000, [0, 40000, 72000]),  # hop > window: the tail window starts where the last one ended
    (SR, HOP, [0]),  # shorter than a window: one (padded) window
    (0, HOP, []),
])
def test_window_starts(n, hop, expected):
    assert window_starts(n, W, hop) == expected


def test_window_starts_rejects_bad_sizes():
    with pytest.raises(ValueError):
        window_starts(100, 0, 10)
    with pytest.raises(ValueError):
        window_starts(100, 10, 0)


def test_iter_windows_on_real_utterance(corpus):
    u = next(u for u in corpus if 10 < u.duration < 15)
    x = load_audio(u.path)
    wins = list(iter_windows(x, 2.0, 0.5))
    assert len(wins) == 1 + (x.size - W) // HOP
    assert [s for s, _ in wins] == pytest.approx([i * 0.5 for i in range(len(wins))])
    for start, w in wins:
        assert w.shape == (W,) and w.dtype == np.float32
        i = int(round(start * SR))
        np.testing.assert_array_equal(w, x[i:i + W])


def test_short_clip_is_padded_like_live_engine(corpus):
    u = min(corpus, key=lambda u: u.duration)  # 1.645 s, shorter than a window
    x = load_audio(u.path)
    assert x.size < W
    (start, w), = list(iter_windows(x))
    assert start == 0.0 and w.shape == (W,)
    np.testing.assert_array_equal(w, fit_window(x, W))
    np.testing.assert_array_equal(w[:x.size], x)
    with pytest.raises(AudioError):
        list(iter_windows(x[:MIN_SAMPLES - 1]))


def test_tail_window_is_padded():
    x = np.random.default_rng(0).uniform(-0.5, 0.5, W + W // 2).astype(np.float32)
    wins = list(iter_windows(x, 2.0, 2.0))
    assert [s for s, _ in wins] == [0.0, 2.0]
    np.testing.assert_array_equal(wins[1][1], fit_window(x[W:], W))


def test_windowset_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    ws = WindowSet(stats=rng.standard_normal((5, 3)), mfcc=rng.standard_normal((5, 40, 87)),
                   y=[1, 0, 1, 0, 1], reader=list("aabbc"), utt=["u1", "u1", "u2", "u3", "u4"],
                   start=[0, 0.5, 0, 0, 0], meta={"feature_hash": "h"})
    assert len(ws) == 5 and ws.stats.dtype == np.float32 and ws.y.dtype == np.int8
    sub = ws.subset(ws.y == 1)
    assert len(sub) == 3 and list(sub.reader) == ["a", "b", "c"]
    assert len(ws.subset([0, 4])) == 2
    both = WindowSet.concat([ws, sub])
    assert len(both) == 8 and both.meta["feature_hash"] == "h"
    back = WindowSet.load(ws.save(tmp_path / "w.npz"))
    for name in ("stats", "mfcc", "y", "reader", "utt", "start"):
        np.testing.assert_array_equal(getattr(back, name), getattr(ws, name))
    assert back.meta == ws.meta
    with pytest.raises(ValueError):
        WindowSet.concat([ws, WindowSet(**{**ws.__dict__, "meta": {"feature_hash": "other"}})])
    with pytest.raises(ValueError):
        WindowSet(stats=ws.stats, mfcc=ws.mfcc, y=ws.y[:2], reader=ws.reader, utt=ws.utt, start=ws.start)


def test_extract_corpus_shapes_and_cache(corpus, tmp_path):
    # six real utterances, both genders, including the one shorter than a window
    shortest = min(corpus, key=lambda u: u.duration)
    utts = [shortest] + [u for u in corpus if u.gender == "F" and u.duration < 5][:2] \
        + [u for u in corpus if u.gender == "M" and u.duration < 5][:3]
    cache = tmp_path / "cache"
    t0 = time.perf_counter()
    ws = extract_corpus(utts, jobs=1, cache_dir=cache, progress=False)
    first = time.perf_counter() - t0
    expected = sum(len(window_starts(round(u.duration * SR), W, HOP)) for u in utts)
    fe = FeatureExtractor(DEFAULT)
    assert len(ws) == expected
    assert ws.stats.shape == (expected, fe.n_stats) and ws.mfcc.shape == (expected, 40, 87)
    assert np.isfinite(ws.stats).all() and np.isfinite(ws.mfcc).all()
    assert set(ws.utt) == {u.utt_id for u in utts}
    for u in utts:
        rows = ws.utt == u.utt_id
        assert set(ws.reader[rows]) == {u.reader} and set(ws.y[rows]) == {u.label}
    # row 0 is the first window of the first utterance, computed directly
    s0, m0 = fe.extract(fit_window(load_audio(utts[0].path), W))
    np.testing.assert_allclose(ws.stats[0], s0, rtol=1e-6)
    np.testing.assert_allclose(ws.mfcc[0], m0, rtol=1e-6)
    assert ws.meta["feature_hash"] == DEFAULT.hash and ws.meta["stat_names"] == fe.stat_names
    path = Path(ws.meta["cache_path"])
    assert not ws.meta["cache_hit"] and path.is_file() and DEFAULT.hash in path.name

    t0 = time.perf_counter()
    again = extract_corpus(utts, jobs=1, cache_dir=cache, progress=False)
    assert again.meta["cache_hit"] and again.meta["cache_path"] == str(path)
    assert time.perf_counter() - t0 < first
    np.testing.assert_array_equal(again.stats, ws.stats)
    assert list(cache.iterdir()) == [path]
    # a different hop is a different cache entry
    other = extract_corpus(utts[:1], hop_s=1.0, jobs=1, cache_dir=cache, progress=False)
    assert other.meta["cache_path"] != str(path) and not other.meta["cache_hit"]


def test_extract_corpus_augmented_copies(corpus, tmp_path):
    utts = [u for u in corpus if u.duration < 3][:2]
    aug = Augmenter(seed=1, p_noise=1.0, p_pitch=1.0)
    a = extract_corpus(utts, augment=aug, copies=2, jobs=1, cache_dir=None, progress=False)
    clean = extract_corpus(utts, jobs=1, cache_dir=None, progress=False)
    assert len(a) == 2 * len(clean)
    assert not np.allclose(a.stats[: len(clean)], clean.stats)
    b = extract_corpus(list(reversed(utts)), augment=aug, copies=2, jobs=2, cache_dir=None, progress=False)
    for u in utts:  # same augmentation per utterance regardless of order and worker
        np.testing.assert_allclose(a.stats[a.utt == u.utt_id], b.stats[b.utt == u.utt_id], rtol=1e-5, atol=1e-6)


def test_extract_corpus_skips_unusable(tmp_path, corpus):
    import soundfile as sf
    from dataclasses import replace

    short = tmp_path / "short.flac"
    sf.write(short, np.zeros(MIN_SAMPLES // 2, np.float32), SR)
    utts = [min(corpus, key=lambda u: u.duration), replace(corpus[0], path=short, utt_id="short")]
    with pytest.warns(UserWarning, match="short"):
        ws = extract_corpus(utts, jobs=1, cache_dir=None, progress=False)
    assert set(ws.utt) == {utts[0].utt_id}
    with pytest.raises(AudioError):
        extract_corpus(utts, jobs=1, cache_dir=None, progress=False, strict=True)
    with pytest.raises(ValueError, match="window"):
        extract_corpus(utts, window_s=3.0, cache_dir=None, progress=False)

"""``python -m realtime bench`` (the live engine alone) and ``python -m offline bench`` (the naive pipeline
beside it) on a few real utterances: the JSON keys are there and the figures are sane.

No timing thresholds: the machine is shared, so timings are not asserted, only their consistency.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from .data import LIBRISPEECH

REPO = Path(__file__).resolve().parents[1]

needs_bundle_and_data = pytest.mark.skipif(
    not (REPO / "models" / "bundle.json").is_file() or not (LIBRISPEECH / "SPEAKERS.TXT").is_file(),
    reason="needs the model bundle in models/ and LibriSpeech under ../shared/data")


def _bench(*argv: str, package: str = "realtime", timeout: float = 300) -> dict:
    proc = subprocess.run([sys.executable, "-m", package, "bench", "--data", str(LIBRISPEECH), "--json", *argv],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def _positive_pcts(d: dict, keys=("p50", "p95", "p99")) -> None:
    vals = [d[k] for k in keys if k in d]
    assert vals and all(v is not None and v > 0 for v in vals), d
    assert vals == sorted(vals), f"percentiles out of order: {d}"


@pytest.fixture(scope="module")
def live_only():
    return _bench("--files", "3", "--cold-runs", "1", "--rss-files", "2", "--save-raw")


@needs_bundle_and_data
def test_json_keys_are_stable(live_only):
    for key in ("per_hop_ms", "stages_ms", "baseline_per_window_ms", "speedup", "rtf", "streams_per_core",
                "first_estimate_s", "stable_estimate_s", "cold_start_s", "peak_rss_mb", "machine", "command",
                "date", "goals"):
        assert key in live_only, key
    assert set(live_only["goals"]) == {"speedup", "per_hop_p50_ms", "per_hop_p99_ms", "cpu_ms_per_audio_s",
                                       "first_estimate_p50_s", "streams_per_core"}
    assert live_only["baseline_per_window_ms"] == {"p50": None} and live_only["speedup"] is None
    assert live_only["goals"]["speedup"]["met"] is None and "baseline" not in live_only
    assert live_only["data"]["utterances"] == 3
    assert live_only["command"].startswith("python -m realtime bench")


@needs_bundle_and_data
def test_live_figures_are_sane(live_only):
    r = live_only
    _positive_pcts(r["per_hop_ms"])
    _positive_pcts(r["per_window_ms"])
    assert r["per_window_ms"]["n"] <= r["per_hop_ms"]["n"]
    for stage in ("vad", "features", "smoother", "total"):
        assert stage in r["stages_ms"], stage
    for stage, v in r["stages_ms"].items():
        assert v["p50"] is not None and v["p50"] >= 0 and v["p50"] <= v["p99"], (stage, v)
    assert r["stages_ms"]["features"]["n"] == r["per_window_ms"]["n"]
    assert 0 < r["rtf"] < 1
    assert r["streams_per_core"] > 1
    f, s = r["first_estimate_s"], r["stable_estimate_s"]
    assert f["n"] == 3 and 0 < f["p50"] <= f["p90"]
    # each utterance: the first estimate comes after enough speech, and never after the stable one
    for u in r["utterances"]:
        assert u["first_s"] >= r["engine"]["first_window_s"] - 0.02, u
        assert u["stable_s"] is None or u["stable_s"] >= u["first_s"], u
    if s["p50"] is not None:
        assert s["p50"] >= f["p50"]


@needs_bundle_and_data
def test_cold_start_and_rss_subprocesses(live_only):
    r = live_only
    assert r["cold_start_s"] > 0 and r["cold_start"]["first_line_s"] <= r["cold_start_s"]
    assert r["peak_rss_mb"] > 10
    assert r["rss"]["tensorflow_loaded"] is False
    assert r["rss"]["heavy_modules_loaded"] == []


@needs_bundle_and_data
def test_one_baseline_window():
    """`python -m offline bench`: the naive pipeline (TensorFlow, librosa, xgboost) on one real window, in the
    same run as the live engine, and the speedup is the ratio of the two per-window medians."""
    for extra in ("tensorflow", "librosa", "xgboost"):
        pytest.importorskip(extra)
    r = _bench("--files", "2", "--baseline-windows", "1", "--cold-runs", "0", "--rss-files", "0", package="offline",
               timeout=600)
    assert r["command"].startswith("python -m offline bench")
    b = r["baseline_per_window_ms"]
    assert b["n"] == 1 and b["p50"] > 0
    assert set(b["parts"]) >= {"features", "cnn1d", "cnn2d", "xgb"}
    assert sum(v["p50"] for v in b["parts"].values()) <= b["p50"] * 1.01
    assert r["speedup"] > 0 and math.isfinite(r["speedup"])
    assert r["speedup"] == pytest.approx(b["p50"] / r["per_window_ms"]["p50"], rel=1e-3)
    assert r["goals"]["speedup"]["value"] == pytest.approx(r["speedup"], rel=1e-3)
    x = r["baseline"]["xgboost"]
    assert x["trees"] >= 1 and x["n_estimators"] >= 1
    assert r["cold_start_s"] is None and r["peak_rss_mb"] is None
    assert r["data"]["utterances"] == 2 and r["per_hop_ms"]["n"] > 0


def test_module_import_is_light():
    """The live benchmark's modules load no training or plotting package, and nothing of offline/."""
    code = ("import sys, realtime.bench, realtime.bench_live, realtime.bench_probes, realtime.bench_report; "
            "print([m for m in ('tensorflow', 'keras', 'librosa', 'numba', 'xgboost', 'matplotlib', 'offline') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@needs_bundle_and_data
def test_plots_are_written(live_only, tmp_path):
    from realtime.bench_plot import plot

    pytest.importorskip("matplotlib")
    paths = plot(live_only, tmp_path)  # from the saved JSON (--save-raw)
    assert [p.name for p in paths] == ["latency_hist.png", "stages.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def _ev(t, label, p=0.7, compute_ms=1.0):
    return {"t": t, "label": label, "p_female": p, "compute_ms": compute_ms}


def test_decision_times_first_and_stable():
    from realtime.bench_live import decision_times

    events = [{"t": 0.5, "label": "no speech", "p_female": None, "compute_ms": 0.1},
              _ev(1.5, "uncertain", 0.55), _ev(2.0, "male", 0.3), _ev(2.5, "female"), _ev(3.0, "female"),
              _ev(3.5, "no speech", None)]  # the trailing pause does not break stability
    d = decision_times(events, onset=0.3, truth="female")
    assert d["first"] == pytest.approx(1.5 + 0.001 - 0.3)
    assert d["stable"] == pytest.approx(2.5 + 0.001 - 0.3)
    assert decision_times(events, onset=0.3, truth="male")["stable"] == math.inf
    assert decision_times(events, onset=None, truth="male") == {"first": None, "stable": None}


def test_first_estimate_breakdown_adds_up():
    import numpy as np

    from realtime.bench_live import first_estimate_breakdown

    dec = np.zeros(200, dtype=bool)
    dec[10:40] = True   # 0.6 s of speech from 0.2 s
    dec[60:120] = True  # a 0.4 s pause, then more speech
    b = first_estimate_breakdown(dec, onset=0.2, first_s=1.9, frame_s=0.02, first_window_s=1.0)
    assert b["speech_needed"] == 1.0
    assert b["pauses"] == pytest.approx(0.4)
    assert b["speech_needed"] + b["pauses"] + b["hop_alignment"] == pytest.approx(1.9)


def test_utterances_alternate_readers_and_carry_their_gender():
    """The benchmark's own reader of the corpus layout: LibriSpeech (genders from SPEAKERS.TXT) and a CSV
    manifest, female and male readers alternating, by path."""
    from realtime.bench_live import select_utterances

    from .data import SPEECHOCEAN, gender_of

    utts = select_utterances(LIBRISPEECH, 8)
    assert [u.gender for u in utts] == ["F", "M"] * 4
    assert all(u.gender == gender_of(u.path) and u.path.is_file() and u.utt_id == u.path.stem for u in utts)
    females = [u.path for u in utts if u.gender == "F"]
    assert females == sorted(females, key=lambda p: p.parts)
    one_subset = select_utterances(LIBRISPEECH / "train-clean-100", 4)  # its parent holds SPEAKERS.TXT
    assert [u.gender for u in one_subset] == ["F", "M", "F", "M"]
    so = select_utterances(SPEECHOCEAN / "manifest.csv", 4)
    assert [u.gender for u in so] == ["F", "M", "F", "M"] and all(u.path.is_file() for u in so)
    with pytest.raises(ValueError, match="LibriSpeech root"):
        select_utterances(LIBRISPEECH / "SPEAKERS.TXT", 4)


def test_bad_data_folder_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "realtime", "bench", "--data", str(tmp_path), "--files", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and f"{tmp_path}: no SPEAKERS.TXT" in proc.stderr, proc.stderr[-500:]

"""``python -m realtime bench``: what the live engine costs and how fast it decides, on real utterances.

What one run measures (all compute on **one core**: BLAS/OpenMP pools limited to one thread with
threadpoolctl, ONNX Runtime sessions are single-threaded):

* **per hop**: each utterance is pushed into the engine one hop at a time, the way a live source
  delivers it; the wall time of ``Engine.push`` is the per-hop cost (``per_hop_ms``) and the engine's
  own ``stages_ms`` split it into VAD, features (stats + MFCC, streaming), each model, ensemble and
  smoother (``stages_ms``). Hops that classify a window are also reported alone (``per_window_ms``).
  One utterance is streamed first as a warm-up and not counted.
* **real-time factor** (compute / audio duration) and **streams per core** (hop seconds / per-hop p50;
  also from the mean cost, which is what a loaded core really pays).
* **decision latency** per utterance, from speech onset (the first frame the VAD calls speech) to the
  first estimate and to the first *correct stable* estimate (the label equals the reader's gender in
  SPEAKERS.TXT and stays so to the end; 'no speech' hops do not break it), plus the compute of that hop.
* **cold start**, **peak RSS** and, with ``--concurrent``, streams held on the real server: in fresh
  processes (``realtime.bench_probes``).

A :class:`Comparison` pipeline can be timed in the same run, window by window, interleaved with ours
utterance by utterance so that load from other jobs hits both alike: ``python -m offline bench`` does
that with the naive librosa + Keras + XGBoost pipeline (``offline/bench_naive.py``, which needs the
training extras) and reports the speedup. This module only runs it; it imports nothing from ``offline``.

``--batch 1,8,32,128`` measures something else instead: the per-window cost of features and models when
that many streams' windows are classified as one batch (``serve --batch-ms``) against one at a time
(``bench_batch``).

The parts: ``bench_live`` (utterances, per-hop timing, decision latency, the summary), ``bench_probes``
(subprocesses), ``bench_report`` (goals, text), ``bench_plot`` (figures), ``bench_stats`` (numbers),
``bench_batch`` (batching across streams).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import numpy as np

from .audio import data_dir
from .bench_live import select_utterances, spread_windows, stream_utterance, summarise, utterance_record
from .bench_stats import loadavg, machine, num

DEFAULT_DATA = data_dir() / "LibriSpeech"  # $VOICEGENDER_DATA/LibriSpeech, else ../shared/data/LibriSpeech


class Comparison(Protocol):
    """A pipeline timed beside the engine, one window at a time, on the same utterances."""

    #: windows to time in all, spread over the utterances
    n_windows: int

    def prepare(self, engine, utterances: list, audios: list[np.ndarray], log) -> None:
        """Build and warm up (called on one thread, after the engine's warm-up)."""

    def window(self, window: np.ndarray, stats: np.ndarray, mfcc: np.ndarray) -> dict[str, float]:
        """Time one window (``stats``, ``mfcc``: our features of it, for model inputs): wall ms per part,
        ``total`` (wall ms of all parts) and ``total_cpu`` (process CPU ms)."""

    def describe(self, engine) -> dict:
        """What was timed, for the result's ``baseline`` entry."""

    def report_lines(self, result: dict) -> list[str]:
        """Lines for the text report, under the comparison's figures."""


def _command(prog: str) -> str:
    argv = sys.argv[1:]
    if "bench" in argv:
        argv = argv[argv.index("bench"):]
    return prog + " " + " ".join(shlex.quote(a) for a in argv)


def run_bench(args, log=print, comparison: Comparison | None = None, prog: str = "python -m realtime") -> dict:
    """One benchmark run with the parsed options of :func:`add_arguments`; the result as a dict (``_raw``:
    every per-hop time, taken out before printing unless --save-raw)."""
    from threadpoolctl import threadpool_limits

    from .audio import load_audio
    from .bench_probes import cold_start, concurrent_figure, peak_rss
    from .bench_report import goals
    from .options import make_engine

    utts = select_utterances(args.data, args.files)
    if not utts:
        raise ValueError(f"no utterances under {args.data}")
    engine = make_engine(args)
    config, hop_s, n_win = engine.config, float(engine.config.hop_s), engine.window_samples
    info = machine()
    log(f"bench: {len(utts)} utterances from {args.data}; one core; hop {hop_s} s")

    audios = [load_audio(u.path) for u in utts]
    n_base = comparison.n_windows if comparison else 0
    with threadpool_limits(1):
        stream_utterance(engine, audios[0])  # warm-up, not counted
        if comparison:
            comparison.prepare(engine, utts, audios, log)
        # ours and the comparison alternate utterance by utterance, so load from other jobs hits both alike;
        # its windows are spread evenly over the utterances
        hops, base_rows, per_utt = [], [], []
        for i, (u, audio) in enumerate(zip(utts, audios)):
            recs = stream_utterance(engine, audio)
            per_utt.append(utterance_record(u, audio, recs, engine))
            hops += recs
            k = (i + 1) * n_base // len(utts) - i * n_base // len(utts)
            for w in spread_windows(audio, k, n_win):
                base_rows.append(comparison.window(w, *engine.extractor.extract(w)))
            if args.progress:
                first = per_utt[-1]["first_s"]
                log(f"  {i + 1}/{len(utts)} {u.utt_id}: {len(recs)} hops, first estimate "
                    f"{'-' if first is None else f'{first:.2f} s'}")

    result = summarise(hops, base_rows, per_utt, hop_s, engine.extractor.definition.n_frames)
    if comparison:
        result["baseline"] = comparison.describe(engine)
    result["engine"] = {"hop_s": hop_s, "vad": config.vad_aggressiveness, "first_window_s": config.first_window_s,
                        "reset_after_s": config.reset_after_silence_s, "models": str(engine.bundle.path),
                        "feature_hash": engine.bundle.definition.hash}
    result["data"] = {"root": str(args.data), "utterances": len(utts),
                      "female": sum(u.gender == "F" for u in utts), "male": sum(u.gender == "M" for u in utts),
                      "audio_s": num(sum(len(a) for a in audios) / 16000)}

    if args.cold_runs > 0:
        log(f"bench: cold start x{args.cold_runs} ...")
        result["cold_start"] = cold_start(utts[0].path, config, args.models, args.cold_runs)
    result["cold_start_s"] = result["cold_start"]["first_estimate_s"] if args.cold_runs > 0 else None
    if args.rss_files > 0:
        log("bench: peak RSS of the live engine ...")
        result["rss"] = peak_rss([u.path for u in utts[: args.rss_files]], config, args.models)
    result["peak_rss_mb"] = num(result["rss"]["peak_rss_mb"]) if args.rss_files > 0 else None
    if args.concurrent:
        log(f"bench: server load test at {args.concurrent} streams ...")
        result["concurrent"] = concurrent_figure(args.concurrent, config, args.models)

    result["goals"] = goals(result)
    if loadavg() is not None:
        info["loadavg_end"] = loadavg()
    result["machine"] = info
    result["command"] = _command(prog)
    result["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return result


def run_batch(args, prog: str = "python -m realtime") -> dict:
    """``--batch``: the per-window cost of features and models, one window at a time vs batched across streams
    (``realtime.bench_batch``), instead of the live benchmark."""
    from .audio import load_audio
    from .bench_batch import batch_figures, parse_sizes
    from .options import make_engine

    sizes = parse_sizes(args.batch)
    if args.batch_rounds < 1:
        raise ValueError(f"--batch-rounds must be >= 1, got {args.batch_rounds}")
    utts = select_utterances(args.data, args.files)
    if not utts:
        raise ValueError(f"no utterances under {args.data}")
    bundle = make_engine(args).bundle
    info = machine()
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    log(f"bench --batch: {len(utts)} utterances from {args.data}; one core; hop {make_engine(args, bundle).config.hop_s} s")
    res = batch_figures(lambda: make_engine(args, bundle), [load_audio(u.path) for u in utts], sizes,
                        args.batch_rounds, log)
    if loadavg() is not None:
        info["loadavg_end"] = loadavg()
    res.update(machine=info, command=_command(prog), date=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return res


def run(args, comparison: Comparison | None = None, prog: str = "python -m realtime") -> int:
    """Run, then print the result (text, or JSON with --json) and write the plots (--plot)."""
    from .bench_report import report_text

    if getattr(args, "batch", None):
        from .bench_batch import report_lines

        res = run_batch(args, prog)
        print(json.dumps(res, indent=2) if args.json else "\n".join(report_lines(res)))
        return 0
    if args.plot:
        from .sinks import check_plotting

        check_plotting()  # before minutes of benchmarking, not after
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    res = run_bench(args, log=log, comparison=comparison, prog=prog)
    if args.plot:
        from .bench_plot import plot

        for p in plot(res, args.plot):
            log(f"bench: wrote {p}")
    raw = res.pop("_raw")
    if args.save_raw:
        res["raw"] = raw
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(report_text(res, comparison.report_lines(res) if comparison else []))
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of a live benchmark run (``python -m offline bench`` adds its comparison's own)."""
    from .options import add_engine_arguments

    p.add_argument("--data", type=Path, default=DEFAULT_DATA, metavar="DIR",
                   help="LibriSpeech root with SPEAKERS.TXT, or a CSV manifest (default: $VOICEGENDER_DATA/LibriSpeech, "
                        "else ../shared/data/LibriSpeech beside the repository)")
    p.add_argument("--files", type=int, default=40, metavar="N",
                   help="utterances to stream, alternating female / male readers (default: %(default)s)")
    p.add_argument("--cold-runs", type=int, default=3, metavar="N",
                   help="cold-start subprocess runs, median reported; 0 skips (default: %(default)s)")
    p.add_argument("--rss-files", type=int, default=5, metavar="N",
                   help="files the peak-RSS subprocess streams; 0 skips (default: %(default)s)")
    p.add_argument("--concurrent", default=None, metavar="N[,N...]",
                   help="also measure concurrent streams on the real server: `python -m realtime loadtest --spawn` "
                        "at these stream counts (takes minutes)")
    p.add_argument("--json", action="store_true", help="print the result as JSON (progress goes to stderr)")
    p.add_argument("--plot", type=Path, default=None, metavar="PATH",
                   help="write plots: a folder gets latency_hist.png and stages.png; X.png gets X.png and X_stages.png")
    p.add_argument("--save-raw", action="store_true", help="include every per-hop time in the JSON")
    p.add_argument("--progress", action="store_true", help="one line per utterance")
    p.add_argument("--batch", default=None, metavar="N[,N...]",
                   help="instead: the per-window cost of features + models for N streams' windows classified "
                        "as one batch (serve --batch-ms) vs one at a time, for each N (e.g. 1,8,32,128)")
    p.add_argument("--batch-rounds", type=int, default=30, metavar="HOPS",
                   help="with --batch: hops pushed per stream, per batch size (default: %(default)s)")
    add_engine_arguments(p)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="latency benchmark of the live engine",
        description="Per-hop compute of each stage (p50/p95/p99, one core), real-time factor, streams per core, "
                    "decision latency after speech onset, cold start and peak RSS, on real utterances. "
                    "The naive librosa + Keras + XGBoost pipeline side by side and the speedup: "
                    "`python -m offline bench` (training extras).")
    add_arguments(p)
    p.set_defaults(func=run)

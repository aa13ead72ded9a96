"""Command line for the offline pipeline: ``python -m offline <command> ...`` (or ``voicegender-train``).

Built in: ``features``. The other commands live in their modules, each exposing ``add_parser(subparsers)``,
which adds its subparser and sets ``func=<callable(args) -> int>`` with ``set_defaults``: ``train``,
``evaluate``, ``reweigh``, ``engine-eval``, ``candidates``, ``bench-features`` and ``bench`` (the live engine beside the
naive pipeline). Those modules keep their heavy imports (TensorFlow, xgboost, librosa) inside ``func``, so
that ``--help`` stays fast. Options shared by the corpus commands: ``offline/options.py``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter

from . import bench_features, bench_naive, candidates, engine_eval, evaluate, reweigh, train
from .options import add_corpus_arguments

COMMANDS = (train, evaluate, reweigh, bench_features, engine_eval, candidates, bench_naive)


def _features(args: argparse.Namespace) -> int:
    from realtime.features import DEFAULT

    from .dataset import extract_corpus
    from .librispeech import load_corpora

    if int(round(args.window * DEFAULT.sr)) != DEFAULT.window_samples:
        print(f"error: --window {args.window} does not match the feature definition's "
              f"{DEFAULT.window_seconds} s window", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    utterances = load_corpora(args.data, subsets=args.subsets, strict=args.strict)
    ws = extract_corpus(utterances, definition=DEFAULT, window_s=args.window, hop_s=args.hop, jobs=args.jobs,
                        cache_dir=None if args.no_cache else args.cache, progress=not args.no_progress,
                        strict=args.strict)
    readers = {u.reader: u.gender for u in utterances}
    by_gender = Counter(readers.values())
    summary = {
        "data": " ".join(map(str, args.data)),
        "utterances": len(utterances),
        "utterances_used": int(ws.meta.get("n_utterances", len(set(ws.utt)))),
        "skipped": len(ws.meta.get("skipped", [])),
        "readers": len(readers),
        "readers_female": by_gender.get("F", 0),
        "readers_male": by_gender.get("M", 0),
        "audio_hours": round(sum(u.duration for u in utterances) / 3600.0, 3),
        "windows": len(ws),
        "windows_female": int((ws.y == 1).sum()),
        "windows_male": int((ws.y == 0).sum()),
        "window_s": args.window,
        "hop_s": args.hop,
        "n_stats": ws.n_stats,
        "mfcc_shape": list(ws.mfcc.shape[1:]),
        "feature_hash": DEFAULT.hash,
        "seconds": round(time.perf_counter() - t0, 2),
        "cache_hit": bool(ws.meta.get("cache_hit")),
        "cache_path": ws.meta.get("cache_path"),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        width = max(map(len, summary))
        for key, value in summary.items():
            print(f"{key:<{width}}  {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m offline",
        description="Offline pipeline of the speaker-gender classifier: read a corpus, extract windowed "
                    "features, train and evaluate models, and time the live engine beside the naive pipeline.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser(
        "features", help="extract and cache windowed features of a whole corpus, then print a summary",
        description="Load every utterance of a corpus, cut it into overlapping windows, compute the shared "
                    "feature definition (statistics vector and MFCC matrix) for each window in parallel, "
                    "cache the result on disk, and print a summary. A second run with the same inputs "
                    "reads the cache.")
    add_corpus_arguments(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_features)
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: sys.argv[1:]) and run the chosen command; returns the exit status."""
    from .librispeech import DatasetError
    from realtime.audio import AudioError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (DatasetError, AudioError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Command line for the offline pipeline: ``python -m offline <command> ...`` (or ``voicegender-train``).

Built in: ``features``. More commands plug in by module: each module named in ``COMMAND_MODULES`` that
exists must expose ``add_parser(subparsers)``, which adds its subparser and sets ``func=<callable(args) -> int>``
with ``set_defaults``. Missing modules are skipped. Keep heavy imports (TensorFlow, xgboost) inside ``func``
so that ``--help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import time
from collections import Counter
from pathlib import Path

COMMAND_MODULES = ("offline.train", "offline.evaluate", "offline.bench_features", "offline.engine_eval",
                   "offline.candidates")
DEFAULT_CACHE = Path(".cache/features")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def add_corpus_arguments(p: argparse.ArgumentParser) -> None:
    """--data/--subsets/--strict/--window/--hop/--jobs/--cache/--no-progress, shared by corpus commands."""
    from realtime.audio import data_dir

    p.add_argument("--data", type=Path, nargs="+", metavar="DIR_OR_CSV",
                   default=[data_dir() / "LibriSpeech", data_dir() / "speechocean762" / "manifest.csv"],
                   help="one or more corpora: a LibriSpeech root (holding SPEAKERS.TXT and "
                        "<subset>/<reader>/<chapter>/*.flac), one subset folder of it, or a CSV manifest with "
                        "columns path,speaker,gender (e.g. speechocean762/manifest.csv); speakers must not repeat "
                        "across corpora (default: LibriSpeech and speechocean762 under $VOICEGENDER_DATA, else "
                        "../shared/data beside the repository)")
    p.add_argument("--subsets", nargs="+", metavar="NAME",
                   help="LibriSpeech subset folders to use (default: all found), e.g. train-clean-100")
    p.add_argument("--strict", action="store_true",
                   help="fail on unlisted readers and unreadable or too-short files instead of skipping them")
    p.add_argument("--window", type=_positive_float, default=2.0, metavar="SECONDS",
                   help="analysis window length; must match the feature definition (default: %(default)s)")
    p.add_argument("--hop", type=_positive_float, default=0.5, metavar="SECONDS",
                   help="step between window starts within an utterance (default: %(default)s)")
    p.add_argument("--jobs", type=_positive_int, default=2, metavar="N",
                   help="worker processes for feature extraction; 1 runs in this process (default: %(default)s)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, metavar="DIR",
                   help="folder for cached feature files, keyed by feature definition and inputs "
                        "(default: %(default)s)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


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
                    "features, and (where installed) train and evaluate models.")
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
    for name in COMMAND_MODULES:
        try:
            if importlib.util.find_spec(name) is None:
                continue
        except ModuleNotFoundError:  # its parent package is missing
            continue
        importlib.import_module(name).add_parser(sub)
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

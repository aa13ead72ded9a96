"""Command-line options the offline commands share: the corpora to read and the feature cache.

``add_corpus_arguments`` gives ``features``, ``train``, ``evaluate`` and ``candidates`` the same
--data/--subsets/--strict/--window/--hop/--jobs/--cache/--no-cache/--no-progress.
"""
from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_CACHE = Path(".cache/features")


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a number above 0."""
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
    p.add_argument("--window", type=positive_float, default=2.0, metavar="SECONDS",
                   help="analysis window length; must match the feature definition (default: %(default)s)")
    p.add_argument("--hop", type=positive_float, default=0.5, metavar="SECONDS",
                   help="step between window starts within an utterance (default: %(default)s)")
    p.add_argument("--jobs", type=positive_int, default=2, metavar="N",
                   help="worker processes for feature extraction; 1 runs in this process (default: %(default)s)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, metavar="DIR",
                   help="folder for cached feature files, keyed by feature definition and inputs "
                        "(default: %(default)s)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")

"""Where the tests find real audio: $VOICEGENDER_DATA/LibriSpeech, else ../shared/data/LibriSpeech beside the repository."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from realtime.audio import data_dir

LIBRISPEECH = data_dir() / "LibriSpeech"


@lru_cache(maxsize=None)
def speakers() -> dict[str, str]:
    """reader id -> 'F' | 'M' from SPEAKERS.TXT."""
    out = {}
    for line in (LIBRISPEECH / "SPEAKERS.TXT").read_text().splitlines():
        if line.startswith(";") or "|" not in line:
            continue
        fields = [f.strip() for f in line.split("|")]
        out[fields[0]] = fields[1]
    return out


@lru_cache(maxsize=None)
def librispeech_files() -> list[Path]:
    files = sorted(LIBRISPEECH.glob("*/*/*/*.flac"))
    assert files, f"no LibriSpeech audio under {LIBRISPEECH}"
    return files


def gender_of(path: Path) -> str:
    return speakers()[path.name.split("-")[0]]


def readers_by_gender(n: int) -> dict[str, list[Path]]:
    """The first ``n`` utterances of each gender (sorted by path, so stable)."""
    out: dict[str, list[Path]] = {"F": [], "M": []}
    for p in librispeech_files():
        g = gender_of(p)
        if len(out[g]) < n:
            out[g].append(p)
    return out

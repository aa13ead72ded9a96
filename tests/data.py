"""Where the tests find real audio: $VOICEGENDER_DATA/LibriSpeech, else ../shared/data/LibriSpeech beside the repository."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from realtime.audio import data_dir

LIBRISPEECH = data_dir() / "LibriSpeech"
SPEECHOCEAN = data_dir() / "speechocean762"


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


@lru_cache(maxsize=None)
def speechocean_speakers() -> dict[str, tuple[str, list[Path]]]:
    """speechocean762 adults: speaker -> (gender, files in manifest order), from its manifest.csv."""
    import csv

    out: dict[str, tuple[str, list[Path]]] = {}
    with (SPEECHOCEAN / "manifest.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            g, files = out.setdefault(row["speaker"], (row["gender"], []))
            files.append(SPEECHOCEAN / row["path"])
    assert out, f"no speechocean762 speakers in {SPEECHOCEAN / 'manifest.csv'}"
    return out


def speechocean_sample(n_per_gender: int, files_per_speaker: int = 2) -> dict[str, list[tuple[str, Path]]]:
    """The first ``n_per_gender`` speakers of each gender (sorted by id): {'F'|'M': [(speaker, file), ...]}."""
    out: dict[str, list[tuple[str, Path]]] = {"F": [], "M": []}
    counts = {"F": 0, "M": 0}
    for spk in sorted(speechocean_speakers()):
        g, files = speechocean_speakers()[spk]
        if counts[g] < n_per_gender:
            counts[g] += 1
            out[g] += [(spk, f) for f in files[:files_per_speaker]]
    return out

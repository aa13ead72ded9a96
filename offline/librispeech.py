"""Corpus ingestion: LibriSpeech directories and CSV manifests -> a list of ``Utterance``.

Only file headers are read here (``soundfile.info``); audio is decoded later, one file at a time.
"""
from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from realtime.errors import VoiceGenderError

SPEAKERS_FILE = "SPEAKERS.TXT"
_GENDERS = {"f": "F", "female": "F", "m": "M", "male": "M"}
_LIST_LIMIT = 20  # how many skipped files a warning names


class DatasetError(VoiceGenderError, ValueError):
    """A corpus that cannot be read as asked, with a message that says why."""


@dataclass(frozen=True)
class Utterance:
    """One recording of one reader. ``gender`` is 'F' or 'M'; ``duration`` in seconds."""

    path: Path
    reader: str
    gender: str
    subset: str
    chapter: str
    utt_id: str
    duration: float
    corpus: str = ""   # which corpus it came from (the LibriSpeech root's or the manifest folder's name)

    @property
    def label(self) -> int:
        """1 for female, 0 for male (the WindowSet convention)."""
        return 1 if self.gender == "F" else 0


def normalize_gender(value: str) -> str:
    """'F'/'M'/'female'/'male' in any case -> 'F' or 'M'; anything else raises DatasetError."""
    g = _GENDERS.get(str(value).strip().lower())
    if g is None:
        raise DatasetError(f"gender must be F, M, female or male, got {value!r}")
    return g


def read_speakers(root: str | Path) -> dict[str, tuple[str, str, str]]:
    """Parse ``root/SPEAKERS.TXT`` -> {reader: (gender, subset, name)}. Lines starting with ';' are comments."""
    path = Path(root) / SPEAKERS_FILE
    if not path.is_file():
        raise DatasetError(f"{path}: not found; a LibriSpeech root must hold {SPEAKERS_FILE}")
    speakers: dict[str, tuple[str, str, str]] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(";"):
            continue
        parts = [p.strip() for p in line.split("|")]
        if len(parts) < 5:
            raise DatasetError(f"{path}:{lineno}: expected 'ID | SEX | SUBSET | MINUTES | NAME', got {line!r}")
        try:
            gender = normalize_gender(parts[1])
        except DatasetError as exc:
            raise DatasetError(f"{path}:{lineno}: {exc}") from None
        # Names may themselves contain '|': keep everything after MINUTES.
        speakers[parts[0]] = (gender, parts[2], "|".join(parts[4:]).strip())
    return speakers


def _duration(path: Path) -> float:
    """Seconds from the file header; raises DatasetError for unreadable or empty files."""
    try:
        info = sf.info(str(path))
    except Exception as exc:  # libsndfile raises several types for corrupt headers
        raise DatasetError(f"{path}: cannot read audio header ({exc})") from exc
    if info.frames <= 0 or info.samplerate <= 0:
        raise DatasetError(f"{path}: file holds no audio samples")
    return info.frames / info.samplerate


def _report(problems: list[str], what: str, strict: bool) -> None:
    """Raise (strict) or warn once about everything that was skipped."""
    if not problems:
        return
    shown = "\n  ".join(problems[:_LIST_LIMIT])
    more = f"\n  ... and {len(problems) - _LIST_LIMIT} more" if len(problems) > _LIST_LIMIT else ""
    msg = f"{len(problems)} {what}:\n  {shown}{more}"
    if strict:
        raise DatasetError(msg)
    warnings.warn(f"skipped {msg}", stacklevel=3)


def load_librispeech(root: str | Path, subsets: list[str] | None = None, *, strict: bool = False) -> list[Utterance]:
    """All ``<subset>/<reader>/<chapter>/*.flac`` under ``root``, labelled from SPEAKERS.TXT, sorted by path.

    ``root`` may also be a single subset folder whose parent holds SPEAKERS.TXT. Readers missing from
    SPEAKERS.TXT and unreadable files are skipped with one warning each kind (DatasetError if ``strict``).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory")
    if not (root / SPEAKERS_FILE).is_file() and (root.parent / SPEAKERS_FILE).is_file():
        root, subset_dirs = root.parent, [root]
    else:
        subset_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    speakers = read_speakers(root)
    if subsets is not None:
        wanted = set(subsets)
        missing = wanted - {p.name for p in subset_dirs}
        if missing:
            raise DatasetError(f"{root}: no subset folder(s) {sorted(missing)}")
        subset_dirs = [p for p in subset_dirs if p.name in wanted]

    utterances: list[Utterance] = []
    unknown: list[str] = []
    bad: list[str] = []
    for subset_dir in subset_dirs:
        for reader_dir in sorted(p for p in subset_dir.iterdir() if p.is_dir()):
            reader = reader_dir.name
            if reader not in speakers:
                unknown.append(f"{reader_dir} (reader {reader} not in {SPEAKERS_FILE})")
                continue
            gender = speakers[reader][0]
            for path in sorted(reader_dir.glob("*/*.flac")):
                try:
                    duration = _duration(path)
                except DatasetError as exc:
                    bad.append(str(exc))
                    continue
                utterances.append(Utterance(path=path, reader=reader, gender=gender, subset=subset_dir.name,
                                            chapter=path.parent.name, utt_id=path.stem, duration=duration,
                                            corpus=root.name))
    _report(unknown, "reader folder(s) not listed in SPEAKERS.TXT", strict)
    _report(bad, "unreadable audio file(s)", strict)
    if not utterances:
        raise DatasetError(f"{root}: no usable .flac files found under <subset>/<reader>/<chapter>/")
    return utterances


def load_manifest(csv_path: str | Path, *, strict: bool = False) -> list[Utterance]:
    """A CSV with header columns ``path,speaker,gender`` (extra columns ignored) -> utterances, in file order.

    Relative paths are resolved against the CSV's folder. Missing or unreadable audio files are skipped with a
    warning (DatasetError if ``strict``); a bad header or gender is always an error.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: no such manifest")
    utterances: list[Utterance] = []
    bad: list[str] = []
    seen_ids: set[str] = set()
    with csv_path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = {(f or "").strip().lower(): f for f in (reader.fieldnames or [])}
        missing = [c for c in ("path", "speaker", "gender") if c not in fields]
        if missing:
            raise DatasetError(f"{csv_path}: header lacks column(s) {missing}; need path,speaker,gender")
        for lineno, row in enumerate(reader, 2):
            raw_path = (row[fields["path"]] or "").strip()
            speaker = (row[fields["speaker"]] or "").strip()
            if not raw_path or not speaker:
                raise DatasetError(f"{csv_path}:{lineno}: empty path or speaker")
            try:
                gender = normalize_gender(row[fields["gender"]] or "")
            except DatasetError as exc:
                raise DatasetError(f"{csv_path}:{lineno}: {exc}") from None
            path = Path(raw_path)
            if not path.is_absolute():
                path = csv_path.parent / path
            if not path.is_file():
                bad.append(f"{path}: no such file (line {lineno})")
                continue
            try:
                duration = _duration(path)
            except DatasetError as exc:
                bad.append(f"{exc} (line {lineno})")
                continue
            utt_id = path.stem if path.stem not in seen_ids else str(Path(raw_path).with_suffix(""))
            seen_ids.add(utt_id)
            utterances.append(Utterance(path=path, reader=speaker, gender=gender, subset=csv_path.stem,
                                        chapter="", utt_id=utt_id, duration=duration,
                                        corpus=csv_path.resolve().parent.name))
    _report(bad, "missing or unreadable audio file(s)", strict)
    if not utterances:
        raise DatasetError(f"{csv_path}: no usable rows")
    return utterances


def load_corpora(paths, *, subsets: list[str] | None = None, strict: bool = False) -> list[Utterance]:
    """Several corpora (LibriSpeech directories and/or CSV manifests) -> one list of utterances.

    ``paths`` may also be a single path. Speaker and utterance IDs must not repeat across corpora: a
    speaker in two corpora would break speaker-disjoint splits, so that is an error.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise DatasetError("no corpus given")
    out: list[Utterance] = []
    owner: dict[str, str] = {}
    seen_utts: set[str] = set()
    for path in paths:
        utts = load_corpus(path, subsets=subsets if Path(path).is_dir() else None, strict=strict)
        for u in utts:
            if owner.setdefault(u.reader, str(path)) != str(path):
                raise DatasetError(f"speaker {u.reader} appears in both {owner[u.reader]} and {path}")
            if u.utt_id in seen_utts:
                raise DatasetError(f"utterance id {u.utt_id} appears twice ({path})")
            seen_utts.add(u.utt_id)
        out.extend(utts)
    return out


def load_corpus(path: str | Path, *, subsets: list[str] | None = None, strict: bool = False) -> list[Utterance]:
    """A LibriSpeech directory or a ``.csv`` manifest -> utterances."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or directory")
    if path.is_dir():
        return load_librispeech(path, subsets, strict=strict)
    if path.suffix.lower() == ".csv":
        if subsets is not None:
            raise DatasetError("subsets apply to LibriSpeech directories, not CSV manifests")
        return load_manifest(path, strict=strict)
    raise DatasetError(f"{path}: expected a LibriSpeech directory or a .csv manifest")

"""Corpus ingestion on the real LibriSpeech sample, plus the failure modes on small temp corpora."""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest
import soundfile as sf

from offline.librispeech import (DatasetError, Utterance, load_corpus, load_librispeech, load_manifest,
                                 read_speakers)
from .data import LIBRISPEECH

DATA = LIBRISPEECH  # $VOICEGENDER_DATA/LibriSpeech, else ../shared/data/LibriSpeech
SUBSET = DATA / "train-clean-100"


@pytest.fixture(scope="module")
def corpus() -> list[Utterance]:
    return load_librispeech(DATA)


def _flac(reader: str) -> Path:
    return next((SUBSET / reader).glob("*/*.flac"))


def _layout(root: Path, readers: list[str], speakers: list[str] | None) -> Path:
    """A LibriSpeech-layout copy (symlinks) of one utterance per reader; SPEAKERS.TXT lists ``speakers``."""
    for reader in readers:
        src = _flac(reader)
        dst = root / "train-clean-100" / reader / src.parent.name / src.name
        dst.parent.mkdir(parents=True)
        dst.symlink_to(src)
    if speakers is not None:
        lines = ["; comment line", ";ID  |SEX| SUBSET | MINUTES | NAME"]
        lines += [line for line in (DATA / "SPEAKERS.TXT").read_text().splitlines()
                  if line.split("|")[0].strip() in speakers]
        (root / "SPEAKERS.TXT").write_text("\n".join(lines) + "\n")
    return root


def test_real_corpus_counts(corpus):
    assert len(corpus) == 251
    genders = {u.reader: u.gender for u in corpus}
    assert len(genders) == 251
    assert Counter(genders.values()) == {"F": 125, "M": 126}
    assert [u.path for u in corpus] == sorted(u.path for u in corpus)


def test_labels_match_speakers_txt(corpus):
    by_reader = {u.reader: u for u in corpus}
    for reader, gender in {"19": "F", "26": "M", "27": "M", "32": "F", "103": "F"}.items():
        assert by_reader[reader].gender == gender
        assert by_reader[reader].label == (1 if gender == "F" else 0)
    speakers = read_speakers(DATA)
    assert speakers["19"] == ("F", "train-clean-100", "Kara Shallenberg")
    assert all(speakers[u.reader][0] == u.gender for u in corpus)


def test_utterance_fields(corpus):
    u = next(u for u in corpus if u.reader == "19")
    assert u.subset == "train-clean-100" and u.chapter == "198" and u.utt_id == "19-198-0000"
    assert u.path.is_file()
    assert u.duration == pytest.approx(sf.info(str(u.path)).duration)
    assert all(u.utt_id.startswith(f"{u.reader}-{u.chapter}-") for u in corpus)


def test_subset_folder_and_subsets_argument():
    assert len(load_librispeech(SUBSET)) == 251
    assert len(load_librispeech(DATA, ["train-clean-100"])) == 251
    with pytest.raises(DatasetError, match="dev-clean"):
        load_librispeech(DATA, ["dev-clean"])


def test_missing_speakers_txt(tmp_path):
    root = _layout(tmp_path, ["19"], speakers=None)
    with pytest.raises(DatasetError, match="SPEAKERS.TXT"):
        load_librispeech(root)


def test_unlisted_reader_warns_or_fails(tmp_path):
    root = _layout(tmp_path, ["19", "26"], speakers=["19"])
    with pytest.warns(UserWarning, match="not listed in SPEAKERS.TXT") as record:
        utts = load_librispeech(root)
    assert [u.reader for u in utts] == ["19"]
    assert "26" in str(record[0].message)
    with pytest.raises(DatasetError, match="26"):
        load_librispeech(root, strict=True)


def test_corrupt_flac_warns_or_fails(tmp_path):
    root = _layout(tmp_path, ["19", "26"], speakers=["19", "26"])
    bad = root / "train-clean-100" / "26" / "999" / "26-999-0000.flac"
    bad.parent.mkdir()
    bad.write_bytes(b"fLaC this is not really flac" * 10)
    with pytest.warns(UserWarning, match="unreadable") as record:
        utts = load_librispeech(root)
    assert len(utts) == 2 and bad not in [u.path for u in utts]
    assert str(bad) in str(record[0].message)
    with pytest.raises(DatasetError, match="26-999-0000.flac"):
        load_librispeech(root, strict=True)


def test_csv_manifest(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    (audio / "a.flac").symlink_to(_flac("19"))
    rows = [("audio/a.flac", "spk1", "female"), (str(_flac("26")), "spk2", "MALE"), (str(_flac("32")), "spk3", "f")]
    manifest = tmp_path / "list.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "speaker", "gender", "extra"])
        w.writerows([(*r, "x") for r in rows])
    utts = load_manifest(manifest)
    assert [(u.reader, u.gender) for u in utts] == [("spk1", "F"), ("spk2", "M"), ("spk3", "F")]
    assert utts[0].path == audio / "a.flac" and utts[0].duration > 1.0
    assert [u.utt_id for u in load_corpus(manifest)] == [u.utt_id for u in utts]


def test_csv_manifest_errors(tmp_path):
    bad_gender = tmp_path / "g.csv"
    bad_gender.write_text(f"path,speaker,gender\n{_flac('19')},s,x\n")
    with pytest.raises(DatasetError, match="g.csv:2"):
        load_manifest(bad_gender)
    no_column = tmp_path / "c.csv"
    no_column.write_text(f"path,gender\n{_flac('19')},F\n")
    with pytest.raises(DatasetError, match="speaker"):
        load_manifest(no_column)
    missing = tmp_path / "m.csv"
    missing.write_text(f"path,speaker,gender\n{_flac('19')},s,F\nnope.flac,t,M\n")
    with pytest.warns(UserWarning, match="nope.flac"):
        assert len(load_manifest(missing)) == 1
    with pytest.raises(DatasetError, match="nope.flac"):
        load_manifest(missing, strict=True)
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(DatasetError, match="expected a LibriSpeech directory"):
        load_corpus(tmp_path / "x.txt")
    with pytest.raises(DatasetError, match="no such file"):
        load_corpus(tmp_path / "absent")


def test_cli_features_on_manifest(tmp_path, capsys):
    from offline.cli import main

    manifest = tmp_path / "two.csv"
    manifest.write_text(f"path,speaker,gender\n{_flac('19')},a,F\n{_flac('26')},b,M\n")
    argv = ["features", "--data", str(manifest), "--jobs", "1", "--cache", str(tmp_path / "c"), "--json",
            "--no-progress"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["utterances"] == 2 and out["readers_female"] == 1 and out["readers_male"] == 1
    assert out["windows"] > 2 and out["n_stats"] > 0 and out["mfcc_shape"] == [40, 87]
    assert not out["cache_hit"] and Path(out["cache_path"]).is_file()
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["cache_hit"]
    assert main(["features", "--data", str(tmp_path / "none.csv"), "--no-progress"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_every_offline_command_explains_itself_without_loading_tensorflow():
    """Each command of `python -m offline` is registered and its --help works; building the parser imports
    no TensorFlow, librosa or xgboost (they load inside the commands)."""
    import subprocess
    import sys

    code = ("import argparse, contextlib, io, json, sys\n"
            "from offline.cli import build_parser\n"
            "parser = build_parser()\n"
            "names = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices\n"
            "helps = {}\n"
            "for name in names:\n"
            "    out = io.StringIO()\n"
            "    with contextlib.redirect_stdout(out):\n"
            "        try:\n"
            "            parser.parse_args([name, '--help'])\n"
            "        except SystemExit as exc:\n"
            "            helps[name] = (exc.code, out.getvalue())\n"
            "heavy = [m for m in ('tensorflow', 'keras', 'librosa', 'xgboost') if m in sys.modules]\n"
            "print(json.dumps({'helps': helps, 'heavy': heavy}))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert set(out["helps"]) == {"features", "train", "evaluate", "reweigh", "bench-features", "engine-eval",
                                 "candidates", "bench"}
    for name, (code_, text) in out["helps"].items():
        assert code_ == 0 and text.startswith(f"usage: python -m offline {name}"), (name, text[:200])
    assert "--data" in out["helps"]["features"][1] and "--baseline-windows" in out["helps"]["bench"][1]
    assert "--weights WINDOW VOICE" in out["helps"]["reweigh"][1]
    assert out["heavy"] == []


def test_two_corpora_load_as_one_with_their_names():
    from offline.librispeech import load_corpora

    so = DATA.parent / "speechocean762" / "manifest.csv"
    utts = load_corpora([DATA, so])
    corpora = {u.corpus for u in utts}
    assert corpora == {"LibriSpeech", "speechocean762"}
    speakers = {c: {(u.reader, u.gender) for u in utts if u.corpus == c} for c in corpora}
    assert len(speakers["LibriSpeech"]) == 251 and len(speakers["speechocean762"]) == 128
    assert sum(g == "F" for _, g in speakers["speechocean762"]) == 72
    assert len({u.utt_id for u in utts}) == len(utts)
    # the same corpus twice would put its speakers on both sides of a split
    with pytest.raises(DatasetError, match="appears in both|appears twice"):
        load_corpora([so, so])


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_killed_feature_run_takes_its_workers_along(tmp_path):
    """``kill PID`` (SIGTERM) of a running ``offline features --jobs 2`` ends its worker processes too: SIGTERM
    ends Python without closing its pool, and the workers used to sleep on, orphaned."""
    import os
    import signal
    import subprocess
    import sys
    import time

    def children(pid: int) -> set[int]:
        try:
            text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        except OSError:
            return set()
        return {int(c) for c in text.split()}

    def alive(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state != "Z"

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "offline", "features", "--data", str(LIBRISPEECH), "--no-cache",
                             "--no-progress", "--jobs", "2"], cwd=root, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        workers: set[int] = set()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            # the spawn context's workers (a resource tracker may be a child too: it exits on its own)
            workers = {c for c in children(proc.pid)
                       if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()} if children(proc.pid) else set()
            if len(workers) >= 2:
                break
            time.sleep(0.2)
        assert len(workers) >= 2, "the feature run never started two workers"
        time.sleep(1.0)  # they are extracting now
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(alive(w) for w in workers):
            time.sleep(0.1)
        assert not any(alive(w) for w in workers), "workers outlived the killed run"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

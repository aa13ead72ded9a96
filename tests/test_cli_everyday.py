"""The command line as a new user meets it: positional paths, folders, segments, --version, a broken pipe,
--plot without matplotlib, and a core install (no train or plot extras) running the core commands."""
from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from realtime.audio import load_audio

from .data import readers_by_gender

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
GENDER = {"F": "female", "M": "male"}


@pytest.fixture(scope="module")
def voices():
    return readers_by_gender(3)


def _cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "realtime", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout, env=env)


def test_version():
    out = _cli("--version")
    assert out.returncode == 0 and re.fullmatch(r"voicegender \d+\.\d+\.\d+ \(features: compiled kernel\)\s*", out.stdout)


def test_stream_and_live_take_a_positional_path(voices):
    """Defect: `stream PATH` / `live PATH` were refused (only --source file:PATH)."""
    path = voices["M"][0]
    out = _cli("stream", path, "--format", "jsonl")
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert events[-1]["label"] == "male"
    assert _cli("stream", "--source", f"file:{path}", "--format", "jsonl").stdout.count("\n") == len(events)
    live = _cli("live", path)  # not a terminal: one plain line per hop
    assert live.returncode == 0, live.stderr
    assert len(live.stdout.splitlines()) == len(events) and "male" in live.stdout.splitlines()[-1]
    both = _cli("stream", path, "--source", f"file:{path}")
    assert both.returncode == 2 and "either a PATH or --source" in both.stderr
    assert _cli("stream").returncode == 2


def test_stream_and_live_weigh_in_the_live_voice_opinion_by_default(voices):
    """`stream` (like the console) has the speaker encoder read the voice during the stream: hops with a
    `voice` stage; `--no-live-voice` leaves it out, and the windows themselves are the same either way."""
    for gender in ("F", "M"):
        path = voices[gender][1]
        on = [json.loads(line) for line in _cli("stream", path, "--format", "jsonl").stdout.splitlines()]
        off = [json.loads(line) for line in
               _cli("stream", path, "--format", "jsonl", "--no-live-voice").stdout.splitlines()]
        assert len(on) == len(off) > 10
        reads = [e["t"] for e in on if "voice" in e["stages_ms"]]
        assert 1 <= len(reads) <= len(on) // 3, reads  # after 1 s of speech, then every 2 s of it: not every hop
        assert not any("voice" in e["stages_ms"] for e in off)
        assert [e["window_p_female"] for e in on] == [e["window_p_female"] for e in off]
        assert on[-1]["label"] == GENDER[gender], on[-1]


def test_classify_a_folder_recursively_audio_files_only(voices, tmp_path):
    """Defect: `classify DIR` said 'no such audio file'."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    for i, g in enumerate("FM"):
        (tmp_path / ("a" if g == "F" else "a/b") / voices[g][0].name).write_bytes(voices[g][0].read_bytes())
    (tmp_path / "a" / "notes.txt").write_text("not audio")
    (tmp_path / "a" / "b" / "x.trans.txt").write_text("not audio")
    out = _cli("classify", tmp_path, "--json")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert sorted(Path(r["file"]).name for r in rows) == sorted(voices[g][0].name for g in "FM")
    for r in rows:
        assert r["label"] == GENDER["F" if Path(r["file"]).parent.name == "a" else "M"]
        assert "decision" not in r and set(r) == {"file", "label", "p_female", "speech_seconds", "windows",
                                                  "level_dbfs", "warning", "voice_p_female"}
        assert 0 <= r["voice_p_female"] <= 1 and (r["voice_p_female"] >= 0.5) == (r["label"] == "female")
    empty = tmp_path / "empty"
    empty.mkdir()
    out = _cli("classify", empty)
    assert out.returncode == 2 and "no audio files" in out.stderr


def test_segments_command_json_and_csv(voices, tmp_path):
    f, m = load_audio(voices["F"][2]), load_audio(voices["M"][2])
    wav = tmp_path / "dialogue.wav"
    sf.write(wav, np.concatenate([f, np.zeros(32000, np.float32), m]), 16000)
    out = _cli("segments", wav, "--json")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["label"] for r in rows] == ["female", "male"]
    assert all(set(r) == {"file", "start", "end", "label", "p_female", "voice_p_female"} for r in rows)
    assert [r["voice_p_female"] >= 0.5 for r in rows] == [True, False]  # each turn's own voice opinion
    assert abs(rows[1]["start"] - (len(f) / 16000 + 2)) <= 1.5
    out = _cli("segments", wav, "--csv")
    table = list(csv.DictReader(io.StringIO(out.stdout)))
    assert list(table[0]) == ["file", "start", "end", "label", "p_female", "voice_p_female"]
    assert [r["label"] for r in table] == ["female", "male"] and float(table[1]["start"]) == rows[1]["start"]


def test_a_broken_pipe_ends_quietly(voices):
    """Defect: `... | head` printed 'error: [Errno 32] Broken pipe' with exit status 2."""
    folder = voices["F"][0].parents[2]  # a LibriSpeech subset: hundreds of files, one line each, flushed as they come
    assert len(list(folder.glob("*/*/*.flac"))) > 20
    proc = subprocess.Popen([sys.executable, "-m", "realtime", "classify", str(folder), "--no-progress"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # what `head -1` does
    _, err = proc.communicate(timeout=300)
    assert first and proc.returncode == 0, err
    assert b"Broken pipe" not in err and b"Traceback" not in err


def test_stream_warns_when_speech_never_reaches_a_window(voices, tmp_path):
    y = load_audio(voices["F"][0])
    short = tmp_path / "short.wav"
    sf.write(short, np.concatenate([np.zeros(16000, np.float32), y[32000:32000 + 8000], np.zeros(16000, np.float32)]),
             16000)
    out = _cli("stream", short, "--format", "jsonl")
    assert out.returncode == 0
    assert "warning:" in out.stderr and "less than the 0.75 s" in out.stderr
    quiet = tmp_path / "quiet.wav"
    sf.write(quiet, y * 10 ** (-33 / 20), 16000)  # about -64 dBFS
    out = _cli("stream", quiet, "--format", "csv")
    assert "quieter than the training audio" in out.stderr


# ---------------------------------------------------------------------------------------- core install
#: what the train and plot extras bring (import names), blocked to stand for a core install
EXTRA_MODULES = ("tensorflow", "keras", "tf2onnx", "onnx", "xgboost", "onnxmltools", "skl2onnx", "sklearn", "librosa",
                 "numba", "python_speech_features", "matplotlib", "tqdm",
                 "charset_normalizer")  # numpy.f2py tries it, optionally; installed here only for TensorFlow's sake

_CORE = textwrap.dedent("""
    import json, os, sys
    for name in {blocked!r}:
        sys.modules[name] = None  # `import name` fails, find_spec(name) is None: as if not installed
    from realtime.cli import main
    try:
        rc = main(sys.argv[1:])
    except SystemExit as exc:
        rc = exc.code
    with open(os.environ["MODULES_OUT"], "w") as f:
        json.dump(sorted({{m.split(".")[0] for m, mod in sys.modules.items() if mod is not None}}), f)
    sys.exit(rc)
""").format(blocked=EXTRA_MODULES)


def _core(tmp_path, *args):
    out_json = tmp_path / "modules.json"
    env = dict(os.environ, MODULES_OUT=str(out_json))
    res = subprocess.run([sys.executable, "-c", _CORE, *map(str, args)], capture_output=True, text=True, cwd=REPO,
                         env=env, timeout=300)
    return res, json.loads(out_json.read_text())


def _core_distributions() -> set[str]:
    """The core dependencies of pyproject.toml and everything they require, as normalised distribution names."""
    from importlib.metadata import PackageNotFoundError, requires

    norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()  # noqa: E731
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    todo = [norm(re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0]) for d in deps]
    seen: set[str] = set()
    while todo:
        d = todo.pop()
        if d in seen:
            continue
        seen.add(d)
        try:
            reqs = requires(d) or []
        except PackageNotFoundError:
            continue
        todo += [norm(re.split(r"[<>=!~\[; (]", r, maxsplit=1)[0]) for r in reqs if "extra ==" not in r]
    return seen


def test_core_install_runs_classify_bench_help_and_plot_says_what_to_install(voices, tmp_path):
    """Defects: on a core install `--plot` streamed the whole file and then failed (with a hint that installed
    TensorFlow), `bench` failed on threadpoolctl. Every module the core commands import must come from the
    core dependencies (or the standard library, or this project)."""
    from importlib.metadata import packages_distributions

    path = voices["F"][0]
    res, modules = _core(tmp_path, "classify", path, "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["label"] == "female"

    core = _core_distributions()
    dist_of = packages_distributions()

    def outside_core(modules):
        out = []
        for m in modules:
            if m in sys.stdlib_module_names or m in ("realtime", "offline", "models", "__main__", "cython_runtime") \
                    or m.startswith("_"):
                continue
            dists = {re.sub(r"[-_.]+", "-", d).lower() for d in dist_of.get(m, [])}
            if not dists & core:
                out.append((m, sorted(dists)))
        return out

    assert not outside_core(modules), f"classify imports modules outside the core dependencies: {outside_core(modules)}"
    res, modules = _core(tmp_path, "bench", "--files", "2", "--cold-runs", "0", "--rss-files", "0", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["speedup"] is None  # the live engine alone; the naive pipeline is offline's
    assert not outside_core(modules), f"bench imports modules outside the core dependencies: {outside_core(modules)}"

    png = tmp_path / "trace.png"
    res, modules = _core(tmp_path, "stream", path, "--format", "jsonl", "--plot", png)
    assert res.returncode == 2 and "voicegender[plot]" in res.stderr and "train" not in res.stderr
    assert res.stdout == "" and not png.exists()  # refused before streaming anything
    res, _ = _core(tmp_path, "bench", "--files", "2", "--plot", tmp_path / "figs")
    assert res.returncode == 2 and "voicegender[plot]" in res.stderr and "bench:" not in res.stdout + res.stderr
    res, _ = _core(tmp_path, "bench", "--help")
    assert res.returncode == 0 and "--cold-runs" in res.stdout, res.stderr
    res, _ = _core(tmp_path, "segments", path, "--json")
    assert res.returncode == 0 and json.loads(res.stdout.splitlines()[0])["label"] == "female", res.stderr


def test_plot_with_matplotlib_writes_the_trace(voices, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "trace.png"
    out = _cli("stream", voices["M"][0], "--format", "jsonl", "--plot", png)
    assert out.returncode == 0, out.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_classify_shows_progress_on_a_terminal_only(voices, tmp_path):
    """Many files: a progress bar on stderr when it is a terminal; nothing on stderr when it is not."""
    import pty
    import select

    folder = tmp_path / "many"
    folder.mkdir()
    for p in voices["F"] + voices["M"]:
        (folder / p.name).symlink_to(p)
    n = len(voices["F"] + voices["M"])
    master, slave = pty.openpty()
    env = dict(os.environ, TERM="xterm-256color", COLUMNS="100")
    proc = subprocess.Popen([sys.executable, "-m", "realtime", "classify", str(folder), "--json"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    err = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        err += chunk
    out, _ = proc.communicate(timeout=300)
    os.close(master)
    assert proc.returncode == 0
    assert len(out.decode().splitlines()) == n
    assert b"classifying" in err and f"/{n}".encode() in err, err[-500:]
    plain = _cli("classify", folder, "--json")
    assert plain.returncode == 0 and plain.stderr == ""


def test_train_out_defaults_to_a_new_run_folder_never_models(tmp_path, monkeypatch):
    """Defect: `offline train` defaulted --out to models/, overwriting the shipped bundle."""
    from offline.cli import build_parser
    from offline.train import default_run_dir

    args = build_parser().parse_args(["train"])
    assert args.out is None
    monkeypatch.chdir(tmp_path)
    first = default_run_dir()
    assert first.parent == Path("runs") and re.fullmatch(r"\d{8}-\d{6}", first.name)
    first.mkdir(parents=True)
    assert default_run_dir() != first  # a taken folder is never reused
    assert "models" not in default_run_dir().parts


def test_data_folder_comes_from_voicegender_data(tmp_path):
    """One variable points bench, loadtest, the training commands and the tests at the data."""
    code = ("from realtime.audio import data_dir; from realtime import bench, loadtest; from offline.cli import build_parser;"
            "print(data_dir()); print(bench.DEFAULT_DATA); print(loadtest._LIBRISPEECH);"
            "print(build_parser().parse_args(['train']).data[0]); import tests.data as d; print(d.LIBRISPEECH);"
            "print(build_parser().parse_args(['train']).data[1])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                         env=dict(os.environ, VOICEGENDER_DATA=str(tmp_path)))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert lines[0] == str(tmp_path) and all(line == str(tmp_path / "LibriSpeech") for line in lines[1:5]), lines
    assert lines[5] == str(tmp_path / "speechocean762" / "manifest.csv"), lines  # training reads both corpora
    env = {k: v for k, v in os.environ.items() if k != "VOICEGENDER_DATA"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120, env=env)
    assert out.stdout.split("\n")[0] == str(REPO.parent / "shared" / "data")


def test_packaging_metadata():
    """Defects: no LICENSE though pyproject said MIT; the licence table and `realtime.web` as package data gave
    deprecation warnings on every install; --plot's hint installed the whole training stack."""
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    project = meta["project"]
    assert project["license"] == "MIT" and "MIT License" in (REPO / "LICENSE").read_text()
    assert any(r.startswith("setuptools>=") and int(r.split(">=")[1].split(".")[0]) >= 77
               for r in meta["build-system"]["requires"])  # the first setuptools that takes an SPDX string
    assert "realtime.web" in meta["tool"]["setuptools"]["packages"]
    assert [d.split(">")[0] for d in project["optional-dependencies"]["plot"]] == ["matplotlib"]
    assert any(d.startswith("threadpoolctl") for d in project["dependencies"])
    assert all((REPO / "realtime" / "web" / f).is_file() for f in ("index.html", "worklet.js"))

"""``python -m realtime bench``: what the live engine costs, how fast it decides, and how that compares
with the naive pipeline the original study implies, measured side by side on real utterances.

What one run measures (all compute on **one core**: BLAS/OpenMP pools limited to one thread with
threadpoolctl, ONNX Runtime sessions are single-threaded, TensorFlow set to one intra/inter-op thread):

* **per hop**: each utterance is pushed into the engine one hop at a time, the way a live source
  delivers it; the wall time of ``Engine.push`` is the per-hop cost (``per_hop_ms``) and the engine's
  own ``stages_ms`` split it into VAD, features (stats + MFCC, streaming), each model, ensemble and
  smoother (``stages_ms``). Hops that classify a window are also reported alone (``per_window_ms``).
  One utterance is streamed first as a warm-up and not counted.
* **real-time factor** (compute / audio duration) and **streams per core** (hop seconds / per-hop p50;
  also from the mean cost, which is what a loaded core really pays).
* **naive baseline**, interleaved with ours utterance by utterance so that load from other jobs hits
  both alike: each librosa feature its own call from the waveform (tonnetz over ``chroma_cqt``, YIN,
  MFCC; ``offline.bench_features._librosa_calls``), both Keras CNNs of ``offline/models.py`` predicting
  natively on one window (the faster of ``model(x)`` and ``predict_on_batch``), and an XGBoost booster
  with the bundle's number of trees and ``xgb_params`` (max_depth ...) predicting one row with
  ``inplace_predict``. The Keras models are freshly built (weights do not change the cost) and the
  booster is trained on the offline feature cache if there is one, else on the benchmark utterances'
  windows (its cost depends on trees x depth, not on what they learned). The models get inputs from
  our extractor, computed outside the timer.
  ``speedup`` = baseline per-window p50 / our per-window p50 (hops that classify a window), wall time;
  ``speedup_cpu`` the same in process CPU time, which leaves out preemption by other jobs (on a shared
  machine that stretches the baseline's 40-60 ms calls far more than our ~1 ms ones).
* **decision latency** per utterance, from speech onset (the first frame the VAD calls speech) to the
  first estimate and to the first *correct stable* estimate (the label equals the reader's gender in
  SPEAKERS.TXT and stays so to the end; 'no speech' hops do not break it), plus the compute of that hop.
* **cold start**: process start to the first estimate of ``python -m realtime stream --source file:X
  --format jsonl`` run as a subprocess (median of ``--cold-runs``).
* **peak RSS** of a subprocess running the live engine over files (VmHWM; ``resource.getrusage``'s
  ru_maxrss is reported too, but on Linux it keeps the parent's peak across fork + exec), which also
  reports whether TensorFlow, Keras, librosa or numba were imported (they must not be).

TensorFlow, librosa, xgboost and matplotlib are imported only inside the baseline and plotting code.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
def _default_data() -> Path:
    from .audio import data_dir

    return data_dir() / "LibriSpeech"


DEFAULT_DATA = _default_data()  # $VOICEGENDER_DATA/LibriSpeech, else ../shared/data/LibriSpeech
DEFAULT_MODELS = REPO / "models"
HEAVY_MODULES = ("tensorflow", "keras", "librosa", "numba", "xgboost", "torch")

GOALS = {
    "speedup": (">=", 50.0, "x the naive pipeline (per-window p50)"),
    "per_hop_p99_ms": ("<=", 5.0, "ms per hop, p99"),
    "rtf": ("<=", 0.01, "real-time factor"),
    "first_estimate_p50_s": ("<=", 1.0, "s from speech onset to first estimate, median"),
    "streams_per_core": (">=", 100.0, "real-time streams per core"),
}


# --- small helpers ----------------------------------------------------------------------------------

def _pct(values, qs=(50, 95, 99)) -> dict:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {f"p{q}": None for q in qs}
    return {f"p{q}": _num(np.percentile(a, q)) for q in qs}


def _num(x, nd: int = 4):
    """A float for JSON: ``nd`` decimals, or ``nd`` significant digits when smaller; None for inf/NaN."""
    if x is None:
        return None
    x = float(x)
    if not math.isfinite(x):
        return None
    if x == 0:
        return 0.0
    return round(x, max(nd, nd - int(math.floor(math.log10(abs(x)))) - 1))


def _machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "onnxruntime": onnxruntime.__version__, "platform": platform.platform(terse=True)}
    if hasattr(os, "getloadavg"):
        info["loadavg_start"] = [round(v, 2) for v in os.getloadavg()]
    return info


def _command() -> str:
    argv = sys.argv[1:]
    if "bench" in argv:
        argv = argv[argv.index("bench"):]
    return "python -m realtime " + " ".join(shlex.quote(a) for a in argv)


def _engine_argv(args) -> list[str]:
    """The engine options of ``args`` as command-line words, for the subprocesses."""
    out = ["--hop", str(args.hop_s), "--vad", str(args.vad_aggressiveness), "--first-window",
           str(args.first_window_s), "--reset-after", str(args.reset_after_silence_s)]
    if args.models:
        out += ["--models", str(args.models)]
    return out


# --- the utterances ---------------------------------------------------------------------------------

def select_utterances(data: Path, n: int):
    """``n`` utterances of a LibriSpeech root (or manifest), alternating female / male readers, by path."""
    from offline.librispeech import load_corpus

    utts = load_corpus(data)
    by = {"F": [u for u in utts if u.gender == "F"], "M": [u for u in utts if u.gender == "M"]}
    out = []
    for i in range(max(len(by["F"]), len(by["M"]))):
        for g in ("F", "M"):
            if i < len(by[g]):
                out.append(by[g][i])
    return out[:n]


def speech_onset_s(audio: np.ndarray, engine) -> tuple[float | None, np.ndarray]:
    """Time of the first frame the engine's VAD settings call speech, and all frame decisions."""
    from .vad import VadGate

    gate = VadGate(engine.vad.aggressiveness, frame_ms=engine.vad.frame_ms, sample_rate=engine.vad.sample_rate)
    dec = gate.process(audio)
    idx = np.flatnonzero(dec)
    return (None if idx.size == 0 else idx[0] * gate.frame_seconds), dec


# --- our engine ---------------------------------------------------------------------------------------

def stream_utterance(engine, audio: np.ndarray) -> list[dict]:
    """Push ``audio`` one hop at a time, as a live source delivers it. One record per hop: the event,
    the wall and process-CPU time (ms) of its ``push``, and the STFT frames the features computed afresh
    (``engine.extractor.definition.n_frames`` = a full window: the first windows of a voice are wrap-padded
    and cannot reuse frames)."""
    hop = int(round(engine.config.hop_s * 16000))
    engine.reset()
    sx = engine.streaming
    records = []
    for start in range(0, len(audio), hop):
        chunk = audio[start:start + hop]
        frames0 = sx.computed_frames
        c0, t0 = time.process_time(), time.perf_counter()
        out = engine.push(chunk)
        wall, cpu = (time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000
        for ev in out:
            records.append({"event": ev, "wall_ms": wall / len(out), "cpu_ms": cpu / len(out),
                            "new_frames": (sx.computed_frames - frames0) // len(out)})
    return records


def decision_times(events: list[dict], onset: float | None, truth: str | None) -> dict:
    """Seconds from speech onset to the first estimate and to the first correct stable estimate.

    An event at stream time ``t`` closes the hop that ends at ``t``; its estimate is available
    ``compute_ms`` after ``t``. ``None`` where there was no speech; ``inf`` where the label never settled on the truth.
    """
    out = {"first": None, "stable": None}
    if onset is None:
        return out
    avail = [e["t"] + e["compute_ms"] / 1000 - onset for e in events]
    first = next((i for i, e in enumerate(events) if e["p_female"] is not None), None)
    if first is None:
        return out
    out["first"] = avail[first]
    if truth is None:
        return out
    stable = None
    for i in range(len(events) - 1, -1, -1):
        label = events[i]["label"]
        if label == truth:
            stable = i
        elif label != "no speech":
            break
    out["stable"] = math.inf if stable is None else max(avail[stable], out["first"])
    return out


def first_estimate_breakdown(decisions: np.ndarray, onset: float, first_s: float | None, frame_s: float,
                             first_window_s: float) -> dict | None:
    """Split onset -> first estimate into the speech the engine waits for, pauses inside it, and the
    wait for the hop boundary (plus the hop speech rules)."""
    if first_s is None:
        return None
    speech = np.cumsum(decisions) * frame_s
    need = int(np.searchsorted(speech, first_window_s - 1e-9))
    if need >= len(speech):
        return None
    t_buffered = (need + 1) * frame_s
    return {"speech_needed": first_window_s, "pauses": t_buffered - onset - first_window_s,
            "hop_alignment": first_s - (t_buffered - onset)}


# --- the naive baseline -------------------------------------------------------------------------------

class NaiveBaseline:
    """The original study's pipeline per window: librosa calls, Keras CNNs, native XGBoost (one core)."""

    def __init__(self, definition, meta: dict, train: tuple[np.ndarray, np.ndarray, str], *, log=print):
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # TF already initialised in this process: keep its pools
            log("note: TensorFlow was already initialised; its thread pools were not limited to one thread")
        import warnings

        import xgboost as xgb

        from offline.bench_features import _librosa_calls
        from offline.models import BUILDERS

        # chroma_cqt's low octaves are 2000 samples against its n_fft 2048: librosa warns, harmlessly, each call
        warnings.filterwarnings("ignore", message=r"n_fft=\d+ is too large", category=UserWarning)

        self.features = _librosa_calls(definition, cqt_tonnetz=True)
        config, n_trees, source = self._training_config(meta)
        # the bundle's architecture of each CNN (per-model variant, older configs: one for both)
        self.variants = {name: config.get(f"{name}_variant") or config.get("cnn_variant") or "regularised"
                         for name in BUILDERS}
        self.keras = {name: build(variant=self.variants[name]) for name, build in BUILDERS.items()}
        history = (meta.get("training") or {}).get("history") or {}
        self.keras_params = {name: {"built": int(m.count_params()), "bundle": (history.get(name) or {}).get("params")}
                             for name, m in self.keras.items()}
        params = dict(config.get("xgb_params") or {})
        kw = {k: params[k] for k in ("max_depth", "min_child_weight", "subsample", "colsample_bytree", "gamma",
                                     "tree_method", "max_bin") if k in params}
        kw.update({new: params[old] for old, new in (("eta", "learning_rate"), ("lambda", "reg_lambda")) if old in params})
        X, y, data_note = train
        clf = xgb.XGBClassifier(n_estimators=n_trees, n_jobs=1, random_state=0, **kw)
        clf.fit(np.asarray(X, dtype=np.float32), np.asarray(y))
        self.booster = clf.get_booster()
        self.booster.set_param({"nthread": 1})
        trees = self.booster.get_dump()
        self.xgb_info = {"n_estimators": n_trees, "max_depth": kw.get("max_depth", 6), "params": kw,
                         "params_from": source, "trained_on": data_note, "trees": len(trees),
                         "leaves_per_tree": _num(np.mean([t.count("leaf=") for t in trees]), 3)}
        self.keras_call = None

    @staticmethod
    def _training_config(meta: dict) -> tuple[dict, int, str]:
        """(training config, number of trees, where they came from): the bundle's, else TrainConfig's defaults."""
        training = meta.get("training") or {}
        config = training.get("config") or {}
        rounds = ((training.get("history") or {}).get("xgb") or {}).get("rounds")
        if config.get("xgb_params") and rounds:
            return config, int(rounds), "bundle.json (training.config.xgb_params, training.history.xgb.rounds)"
        if importlib.util.find_spec("offline.train") is not None:
            from offline.train import TrainConfig

            config = {**TrainConfig().to_dict(), **config}
            return config, int(rounds or config["xgb_rounds"]), \
                "offline.train.TrainConfig" + ("" if rounds else " (xgb_rounds: the early-stopping ceiling)")
        return config, int(rounds or 300), "defaults (xgboost's, 300 trees)"

    def warm_up(self, window: np.ndarray, stats: np.ndarray, mfcc: np.ndarray, repeats: int = 5) -> None:
        """JIT / graph tracing / FFT plans; then pick the faster native Keras call for one window."""
        self.features(window)
        x = mfcc[None].astype(np.float32)
        times = {"model(x)": [], "predict_on_batch": []}
        for _ in range(repeats):
            for m in self.keras.values():
                for how in times:
                    t0 = time.perf_counter()
                    (m(x, training=False).numpy() if how == "model(x)" else m.predict_on_batch(x))
                    times[how].append(time.perf_counter() - t0)
        self.keras_call = min(times, key=lambda k: np.median(times[k][len(self.keras):]))
        self.booster.inplace_predict(stats[None])

    def window(self, window: np.ndarray, stats: np.ndarray, mfcc: np.ndarray) -> dict:
        """One window through the naive pipeline: wall ms per part, 'total' (wall over all parts) and
        'total_cpu' (process CPU ms, TensorFlow's own threads included)."""
        ms = {}
        x = mfcc[None].astype(np.float32)
        row = stats[None]
        c_start = time.process_time()
        t_start = t0 = time.perf_counter()
        self.features(window)
        ms["features"] = (time.perf_counter() - t0) * 1000
        ps = []
        for name, m in self.keras.items():
            t0 = time.perf_counter()
            p = m(x, training=False).numpy() if self.keras_call == "model(x)" else m.predict_on_batch(x)
            ps.append(float(np.ravel(p)[0]))
            ms[name] = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        ps.append(float(self.booster.inplace_predict(row)[0]))
        ms["xgb"] = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        float(np.mean(ps))
        ms["ensemble"] = (time.perf_counter() - t0) * 1000
        ms["total"] = (time.perf_counter() - t_start) * 1000
        ms["total_cpu"] = (time.process_time() - c_start) * 1000
        return ms


def xgb_training_set(definition, utts, audios, extractor, hop_s: float, max_rows: int = 4000):
    """Rows to train the baseline booster on: the offline feature cache for this feature definition when
    there is one (real training windows, so the trees grow like the bundle's), else the windows of the
    benchmark utterances. Returns (X, y, description)."""
    from offline.cli import DEFAULT_CACHE
    from offline.dataset import WindowSet

    for path in sorted((REPO / DEFAULT_CACHE).glob(f"windows-{definition.hash}-*.npz")):
        try:
            ws = WindowSet.load(path)
        except (OSError, ValueError, KeyError):
            continue
        if len(np.unique(ws.y)) == 2 and ws.n_stats == extractor.n_stats:
            idx = np.random.default_rng(0).permutation(len(ws))[:max_rows]
            return ws.stats[idx], ws.y[idx], f"{idx.size} cached training windows ({path.name})"
    X, y = [], []
    for u, a in zip(utts, audios):
        for w in _baseline_windows(a, max(1, int(len(a) / 16000 / hop_s) - 3), definition.window_samples):
            X.append(extractor.extract(w)[0])
            y.append(u.label)
    y = np.asarray(y)
    if len(np.unique(y)) < 2:  # one gender only: any labels give the same number and depth of trees
        y[::2] = 1 - y[::2]
    return np.stack(X), y, f"{len(y)} windows of the benchmark utterances"


def onnx_tree_stats(path: Path) -> dict | None:
    """Trees and leaves per tree of a tree-ensemble ONNX model (the bundle's XGBoost), for comparison."""
    try:
        import onnx

        model = onnx.load(str(path))
    except Exception:  # no onnx package, or no such file
        return None
    for node in model.graph.node:
        if node.op_type.startswith("TreeEnsemble"):
            attrs = {a.name: a for a in node.attribute}
            if "nodes_treeids" in attrs and "nodes_modes" in attrs:
                trees = len(set(attrs["nodes_treeids"].ints))
                leaves = sum(m == b"LEAF" for m in attrs["nodes_modes"].strings)
                return {"trees": trees, "leaves_per_tree": _num(leaves / max(trees, 1), 3)}
    return None


def _baseline_windows(audio: np.ndarray, k: int, n: int) -> list[np.ndarray]:
    from .features import fit_window

    if k <= 0:
        return []
    if len(audio) <= n:
        return [fit_window(audio, n)] * k
    return [audio[s:s + n] for s in np.linspace(0, len(audio) - n, k).astype(int)]


# --- subprocess measurements -------------------------------------------------------------------------

def _time_process(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - t0


def _time_in_process(code: str, *argv: str) -> float:
    """Seconds ``code`` takes inside a fresh interpreter (start-up and teardown left out)."""
    wrapped = f"import time; _t0 = time.perf_counter()\n{code}\nprint(time.perf_counter() - _t0)"
    out = subprocess.run([sys.executable, "-c", wrapped, *argv], cwd=REPO, check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def cold_start(path: Path, engine_argv: list[str], runs: int, timeout: float = 120.0) -> dict:
    """Spawn ``python -m realtime stream --source file:PATH --format jsonl``; seconds to its first line and
    to its first line carrying an estimate (median over ``runs``). Also the parts: a bare interpreter, and
    the time an interpreter takes to import the engine and load the bundle (without its start-up and exit)."""
    cmd = [sys.executable, "-m", "realtime", "stream", "--source", f"file:{path}", "--format", "jsonl", *engine_argv]
    models = engine_argv[engine_argv.index("--models") + 1] if "--models" in engine_argv else None
    load = ("import sys; from realtime.engine import Engine; from realtime.bundle import Bundle; "
            "Engine(Bundle.load(*sys.argv[1:]))")
    firsts, estimates, bare, loaded = [], [], [], []
    for _ in range(runs):
        bare.append(_time_process([sys.executable, "-c", "pass"]))
        loaded.append(_time_in_process(load, *([models] if models else [])))
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = est = None
        try:
            for line in proc.stdout:
                now = time.perf_counter() - t0
                if first is None:
                    first = now
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if ev.get("p_female") is not None:
                    est = now
                    break
                if now > timeout:
                    break
        finally:
            proc.kill()
            _, err = proc.communicate()
        if est is None:
            raise RuntimeError(f"cold start: no estimate from {' '.join(cmd)}: {err.strip()[-500:]}")
        firsts.append(first)
        estimates.append(est)
    return {"first_line_s": _num(np.median(firsts)), "first_estimate_s": _num(np.median(estimates)),
            "interpreter_s": _num(np.median(bare)), "import_engine_and_load_bundle_s": _num(np.median(loaded)),
            "runs": runs, "command": " ".join(shlex.quote(c) for c in cmd[1:])}


def _rss_child(argv: list[str]) -> int:
    """Child of :func:`peak_rss`: run the live engine over files; print peak RSS and heavy imports as JSON.

    ``argv``: engine options (as for ``python -m realtime classify``), then ``--``, then audio files.
    """
    import resource

    from .options import add_engine_arguments, make_engine
    from .sources import FileSource

    split = argv.index("--")
    p = argparse.ArgumentParser()
    add_engine_arguments(p)
    args = p.parse_args(argv[:split])
    rss_start = _vm_hwm_mb()
    engine = make_engine(args)
    events = 0
    for path in argv[split + 1:]:
        engine.reset()
        with FileSource(path) as src:
            events += sum(1 for _ in engine.run(src))
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    hwm = _vm_hwm_mb()
    loaded = sorted(m for m in HEAVY_MODULES if m in sys.modules)
    print(json.dumps({"peak_rss_mb": hwm if hwm is not None else maxrss, "ru_maxrss_mb": maxrss,
                      "rss_before_engine_mb": rss_start, "events": events,
                      "heavy_modules_loaded": loaded, "tensorflow_loaded": "tensorflow" in sys.modules}))
    return 0


def _vm_hwm_mb() -> float | None:
    """Peak RSS of this process image (Linux VmHWM). ``getrusage``'s ru_maxrss survives fork + exec, so a
    child of a big parent (this benchmark, after TensorFlow) reports the parent's peak there."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss(files: list[Path], engine_argv: list[str]) -> dict:
    code = "import sys; from realtime.bench import _rss_child; sys.exit(_rss_child(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, *engine_argv, "--", *map(str, files)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"peak RSS child failed: {proc.stderr.strip()[-800:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["files"] = len(files)
    return out


def concurrent_figure(streams: str, engine_argv: list[str], seconds: float = 15.0) -> dict:
    """The measured counterpart of ``streams_per_core``: ``python -m realtime loadtest --spawn`` (when
    realtime/loadtest.py exists) at each concurrency in ``streams``; per run, streams held in real time and the
    server's CPU cores, and the best held-streams-per-server-core of the runs where every stream held."""
    if importlib.util.find_spec("realtime.loadtest") is None:
        return {"available": False, "note": "realtime/loadtest.py not found"}
    server_args = " ".join(shlex.quote(a) for a in engine_argv if a)
    cmd = [sys.executable, "-m", "realtime", "loadtest", "--spawn", "--streams", streams, "--seconds", str(seconds),
           "--json", "--server-args", server_args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    held = [r["streams"] / r["server_cpu_cores"] for r in rows
            if r.get("held") == r.get("streams") and r.get("server_cpu_cores")]
    return {"available": True, "command": " ".join(shlex.quote(c) for c in cmd[1:]), "runs": rows,
            "streams_per_core_measured": _num(max(held)) if held else None,
            "note": "streams / server CPU cores in runs where every stream held (lag below loadtest's --max-lag); "
                    "clients share the machine"}


# --- the run -------------------------------------------------------------------------------------------

def _goal_met(target: str, value) -> bool | None:
    op, bound = target.split()
    return None if value is None else (value >= float(bound) if op == ">=" else value <= float(bound))


def _goal(name: str, value) -> dict:
    op, target, what = GOALS[name]
    return {"value": _num(value), "target": f"{op} {target:g}", "what": what, "met": _goal_met(f"{op} {target}", value)}


def _holder(stages: dict, key: str, of: float | None = None) -> str:
    """The stage with the largest ``stages[stage][key]``, with its value (and ``of`` what)."""
    cand = {name: v[key] for name, v in stages.items() if v.get(key) is not None}
    if not cand:
        return "unknown"
    name = max(cand, key=cand.get)
    return f"{name} ({cand[name]:.3g} of {of:.3g} ms)" if of else f"{name} ({cand[name]:.3g} ms)"


def run_bench(args, log=print) -> dict:
    from threadpoolctl import threadpool_limits

    from .audio import load_audio
    from .options import make_engine

    hop_s = float(args.hop_s)
    utts = select_utterances(args.data, args.files)
    if not utts:
        raise SystemExit(f"error: no utterances under {args.data}")
    machine = _machine()
    engine = make_engine(args)
    meta = getattr(engine.bundle, "meta", None) or {}
    truth = {"F": "female", "M": "male"}
    n_win = engine.window_samples
    log(f"bench: {len(utts)} utterances from {args.data}; one core; hop {hop_s} s")

    audios = [load_audio(u.path) for u in utts]
    with threadpool_limits(1):
        stream_utterance(engine, audios[0])  # warm-up, not counted
        baseline = None
        missing = [m for m in ("tensorflow", "librosa", "xgboost") if importlib.util.find_spec(m) is None]
        if args.baseline and args.baseline_windows > 0 and missing:
            log(f"bench: the naive baseline is skipped: it needs {', '.join(missing)} "
                "(pip install 'voicegender[train]'); --no-baseline silences this")
        elif args.baseline and args.baseline_windows > 0:
            log("bench: building the naive baseline (TensorFlow, librosa, xgboost) ...")
            train = xgb_training_set(engine.bundle.definition, utts, audios, engine.extractor, hop_s)
            baseline = NaiveBaseline(engine.bundle.definition, meta, train, log=log)
            w0 = _baseline_windows(audios[0], 1, n_win)[0]
            baseline.warm_up(w0, *engine.extractor.extract(w0))

        # ours and the baseline alternate utterance by utterance, so load from other jobs hits both alike;
        # the baseline windows are spread evenly over the utterances
        n_base = args.baseline_windows if baseline else 0
        hops, base_rows, per_utt = [], [], []
        for i, (u, audio) in enumerate(zip(utts, audios)):
            recs = stream_utterance(engine, audio)
            events = [r["event"] for r in recs]
            onset, dec = speech_onset_s(audio, engine)
            dt = decision_times(events, onset, truth.get(u.gender))
            brk = None if onset is None else first_estimate_breakdown(
                dec, onset, dt["first"], engine.vad.frame_seconds, engine.config.first_window_s)
            per_utt.append({"utt": u.utt_id, "gender": u.gender, "duration_s": len(audio) / 16000, "onset_s": onset,
                            "first_s": dt["first"], "stable_s": dt["stable"], "breakdown": brk,
                            "compute_ms": float(sum(r["wall_ms"] for r in recs)), "hops": len(recs)})
            hops += recs
            k = (i + 1) * n_base // len(utts) - i * n_base // len(utts)
            for w in _baseline_windows(audio, k, n_win):
                base_rows.append(baseline.window(w, *engine.extractor.extract(w)))
            if args.progress:
                first = "-" if dt["first"] is None else f"{dt['first']:.2f} s"
                log(f"  {i + 1}/{len(utts)} {u.utt_id}: {len(recs)} hops, first estimate {first}")

    result = summarise(hops, base_rows, per_utt, hop_s, engine.extractor.definition.n_frames)
    if baseline:
        bundle_trees = onnx_tree_stats(Path(args.models or DEFAULT_MODELS) / "xgb.onnx")
        params = ", ".join(f"{k} {v['built']}/{v['bundle']}" for k, v in baseline.keras_params.items())
        result["baseline"] = {
            "features": "librosa, each feature its own call from the waveform (tonnetz over chroma_cqt, yin, mfcc)",
            "keras": f"offline/models.py CNNs {baseline.variants}, freshly built (weights do not change the cost; "
                     f"parameters built/bundle: {params}), "
                     f"native {baseline.keras_call} on one window (the faster of model(x) and predict_on_batch), "
                     "TensorFlow on one thread",
            "keras_params": baseline.keras_params,
            "xgboost": {**baseline.xgb_info, "bundle_xgb_onnx": bundle_trees,
                        "call": "Booster.inplace_predict on one row",
                        "note": "cost depends on trees x depth, not on what the trees learned"},
            "inputs": "model inputs come from our extractor, outside the timer (the naive pipeline's summary "
                      "step is not charged to it)",
        }
    result["engine"] = {"hop_s": hop_s, "vad": args.vad_aggressiveness, "first_window_s": args.first_window_s,
                        "reset_after_s": args.reset_after_silence_s, "models": str(args.models or DEFAULT_MODELS),
                        "feature_hash": engine.bundle.definition.hash}
    result["data"] = {"root": str(args.data), "utterances": len(utts),
                      "female": sum(u.gender == "F" for u in utts), "male": sum(u.gender == "M" for u in utts),
                      "audio_s": _num(sum(len(a) for a in audios) / 16000)}

    engine_argv = _engine_argv(args)
    if args.cold_runs > 0:
        log(f"bench: cold start x{args.cold_runs} ...")
        result["cold_start"] = cold_start(utts[0].path, engine_argv, args.cold_runs)
    result["cold_start_s"] = result["cold_start"]["first_estimate_s"] if args.cold_runs > 0 else None
    if args.rss_files > 0:
        log("bench: peak RSS of the live engine ...")
        result["rss"] = peak_rss([u.path for u in utts[: args.rss_files]], engine_argv)
    result["peak_rss_mb"] = _num(result["rss"]["peak_rss_mb"]) if args.rss_files > 0 else None
    if args.concurrent:
        log(f"bench: server load test at {args.concurrent} streams ...")
        result["concurrent"] = concurrent_figure(args.concurrent, engine_argv)

    result["goals"] = goals(result)
    if hasattr(os, "getloadavg"):
        machine["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    result["machine"] = machine
    result["command"] = _command()
    result["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return result


def _dist(values, qs=(50, 95, 99)) -> dict:
    a = np.asarray(values, dtype=np.float64)
    return {**_pct(a, qs), "mean": _num(a.mean()) if a.size else None, "n": int(a.size)}


def summarise(hops: list[dict], base_rows: list[dict], per_utt: list[dict], hop_s: float, n_frames: int) -> dict:
    events = [h["event"] for h in hops]
    wall = np.array([h["wall_ms"] for h in hops])
    cpu = np.array([h["cpu_ms"] for h in hops])
    classified = np.array([e["window_p_female"] is not None for e in events], dtype=bool)
    full = classified & (np.array([h["new_frames"] for h in hops]) >= n_frames)
    order: list[str] = []
    for e in events:
        order += [k for k in e["stages_ms"] if k not in order]
    order.sort(key=lambda k: k == "smoother")  # pipeline order: the smoother runs last, on every hop
    stages = {name: _dist([e["stages_ms"][name] for e in events if name in e["stages_ms"]]) for name in order}
    # what push() spends outside the timed stages: VAD framing, speech buffer, window cut, ensemble arithmetic
    # (the bundle times only the three model runs), the event dict
    stages["other"] = _dist([max(h["wall_ms"] - e["compute_ms"], 0.0) for h, e in zip(hops, events)])
    stages["total"] = _dist([e["compute_ms"] for e in events])
    feats = np.array([e["stages_ms"].get("features", np.nan) for e in events])

    audio_s = sum(u["duration_s"] for u in per_utt)
    per_hop = _dist(wall)
    per_window = _dist(wall[classified])
    res = {
        "per_hop_ms": per_hop,
        "per_window_ms": per_window,
        "stages_ms": stages,
        "cpu_ms": {"per_hop": _dist(cpu), "per_window": _dist(cpu[classified])},
        "windows": {
            "incremental": {"n": int((classified & ~full).sum()), "push_ms": _pct(wall[classified & ~full]),
                            "features_ms": _pct(feats[classified & ~full])},
            "full": {"n": int(full.sum()), "push_ms": _pct(wall[full]), "features_ms": _pct(feats[full]),
                     "note": "windows that computed all their frames: the first windows of each voice (less than "
                             "2 s of speech, wrap-padded, so no frames to reuse)"},
        },
        "rtf": _num(wall.sum() / 1000 / audio_s),
        "rtf_cpu": _num(cpu.sum() / 1000 / audio_s),
        "streams_per_core": _num(hop_s * 1000 / per_hop["p50"]),
        "streams_per_core_mean": _num(hop_s * 1000 / per_hop["mean"]),
        "streams_per_core_cpu": _num(hop_s * 1000 / np.median(cpu)),
    }
    if base_rows:
        parts = {k: _pct([r[k] for r in base_rows], (50, 95)) for k in base_rows[0] if not k.startswith("total")}
        res["baseline_per_window_ms"] = {**_dist([r["total"] for r in base_rows]), "parts": parts,
                                         "cpu": _pct([r["total_cpu"] for r in base_rows], (50, 95))}
        res["speedup"] = _num(res["baseline_per_window_ms"]["p50"] / per_window["p50"], 3)
        res["speedup_cpu"] = _num(res["baseline_per_window_ms"]["cpu"]["p50"] / res["cpu_ms"]["per_window"]["p50"], 3)
        res["speedup_by_stage"] = {part: _num(v["p50"] / stages[part]["p50"], 3) for part, v in parts.items()
                                   if stages.get(part, {}).get("p50")}
    else:
        res["baseline_per_window_ms"] = {"p50": None}
        res["speedup"] = None
    firsts = [u["first_s"] for u in per_utt if u["first_s"] is not None]
    stables = [u["stable_s"] for u in per_utt if u["stable_s"] is not None]
    res["first_estimate_s"] = {**_dist(firsts, (50, 90)),
                               "no_estimate": sum(1 for u in per_utt if u["first_s"] is None and u["onset_s"] is not None)}
    res["stable_estimate_s"] = {**_pct(stables, (50, 90)), "n": len(stables),
                                "never": int(sum(1 for s in stables if math.isinf(s)))}
    brks = [u["breakdown"] for u in per_utt if u["breakdown"]]
    res["first_estimate_breakdown_s"] = {k: _num(np.median([b[k] for b in brks])) for k in brks[0]} if brks else None
    res["utterances"] = [{k: (_num(v) if isinstance(v, float) else v) for k, v in u.items() if k != "breakdown"}
                         for u in per_utt]
    res["_raw"] = {"push_ms": wall.tolist(), "cpu_ms": cpu.tolist(), "classified": classified.tolist(),
                   "baseline_ms": [r["total"] for r in base_rows], "baseline_cpu_ms": [r["total_cpu"] for r in base_rows]}
    return res


def goals(res: dict) -> dict:
    """Each goal: value, target, met, and where missed, the stage that holds it."""
    stages = {k: v for k, v in res["stages_ms"].items() if k != "total"}
    cpu = res["cpu_ms"]
    out = {
        "speedup": _goal("speedup", res.get("speedup")),
        "per_hop_p99_ms": _goal("per_hop_p99_ms", res["per_hop_ms"]["p99"]),
        "rtf": _goal("rtf", res["rtf"]),
        "first_estimate_p50_s": _goal("first_estimate_p50_s", res["first_estimate_s"]["p50"]),
        "streams_per_core": _goal("streams_per_core", res["streams_per_core"]),
    }
    out["speedup"]["cpu_time_value"] = res.get("speedup_cpu")
    out["per_hop_p99_ms"]["cpu_time_value"] = cpu["per_hop"]["p99"]
    out["rtf"]["cpu_time_value"] = res["rtf_cpu"]
    out["streams_per_core"]["cpu_time_value"] = res["streams_per_core_cpu"]
    for g in out.values():  # process CPU time leaves out preemption by other jobs on a shared machine
        if g.get("cpu_time_value") is not None:
            g["met_cpu_time"] = _goal_met(g["target"], g["cpu_time_value"])
    out["speedup"]["held_by"] = _holder(stages, "p50", res["per_window_ms"]["p50"])
    w = res["windows"]
    out["per_hop_p99_ms"]["held_by"] = (
        _holder(stages, "p99", res["per_hop_ms"]["p99"])
        + f"; full-window hops (first windows of a voice, n={w['full']['n']}) p50 {_fmt(w['full']['push_ms']['p50'])} ms"
        f" vs incremental p50 {_fmt(w['incremental']['push_ms']['p50'])} ms")
    total = sum((v["mean"] or 0) * v["n"] for v in stages.values())
    share = {k: {"share": 100 * (v["mean"] or 0) * v["n"] / total} for k, v in stages.items()} if total else {}
    name = max(share, key=lambda k: share[k]["share"]) if share else None
    out["rtf"]["held_by"] = f"{name} ({share[name]['share']:.0f}% of all compute)" if name else "unknown"
    out["streams_per_core"]["held_by"] = _holder(stages, "p50", res["per_hop_ms"]["p50"])
    b = res.get("first_estimate_breakdown_s")
    if b:
        out["first_estimate_p50_s"]["held_by"] = (
            f"engine buffering, not compute: first_window_s={b['speech_needed']:g} s of speech before the first "
            f"window + pauses {b['pauses']:.2f} s + wait for the hop boundary {b['hop_alignment']:.2f} s (medians)")
    return out


# --- output ------------------------------------------------------------------------------------------

def _fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def report_text(res: dict) -> str:
    m, st = res["machine"], res["stages_ms"]
    row = "  {:30s} {:>8s} {:>8s} {:>8s} {:>8s} {:>6}"
    lines = [f"voicegender bench  {res['date']}  {res['command']}",
             f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, onnxruntime {m['onnxruntime']}, "
             f"load avg {m.get('loadavg_start')} -> {m.get('loadavg_end')}",
             f"data: {res['data']['utterances']} utterances ({res['data']['female']} F / {res['data']['male']} M), "
             f"{res['data']['audio_s']:.0f} s of audio; hop {res['engine']['hop_s']} s; one core",
             "", row.format("ms per hop (wall)", "p50", "p95", "p99", "mean", "n")]

    def add(label, v):
        lines.append(row.format(label, *(_fmt(v[k], ".3f") for k in ("p50", "p95", "p99", "mean")), v["n"]))

    for name, v in st.items():
        add({"total": "total (sum of timed stages)", "other": "other (push minus stages)"}.get(name, name), v)
    add("push, every hop", res["per_hop_ms"])
    add("push, hops classifying a window", res["per_window_ms"])
    add("  same, process CPU time", res["cpu_ms"]["per_window"])
    w = res["windows"]
    lines.append(f"  windows reusing frames: n={w['incremental']['n']}, features p50 "
                 f"{_fmt(w['incremental']['features_ms']['p50'], '.3f')} ms; full windows (first of a voice): "
                 f"n={w['full']['n']}, features p50 {_fmt(w['full']['features_ms']['p50'], '.3f')} ms")
    lines.append("")
    b = res["baseline_per_window_ms"]
    if b.get("p50") is not None:
        parts = ", ".join(f"{k} {v['p50']:.2f}" for k, v in b["parts"].items())
        lines.append(f"naive baseline per window: p50 {b['p50']:.1f} ms ({parts}); n={b['n']}")
        lines.append(f"  {res['baseline']['features']}")
        lines.append(f"  {res['baseline']['keras']}")
        x = res["baseline"]["xgboost"]
        lines.append(f"  xgboost: {x['trees']} trees, max_depth {x['max_depth']} ({x['params_from']}), "
                     f"{x['leaves_per_tree']} leaves/tree (bundle's xgb.onnx: {x['bundle_xgb_onnx']}); "
                     f"trained on {x['trained_on']}; {x['note']}")
        by = ", ".join(f"{k} {v:.0f}x" for k, v in res["speedup_by_stage"].items())
        lines.append(f"speedup (naive per-window p50 / ours): {res['speedup']:.1f}x wall, "
                     f"{res['speedup_cpu']:.1f}x CPU time; by stage: {by}")
    else:
        lines.append("naive baseline: not run (--no-baseline)")
    lines.append(f"real-time factor: {res['rtf']:.5f} (CPU time {res['rtf_cpu']:.5f});  streams per core: "
                 f"{res['streams_per_core']:.0f} from p50, {res['streams_per_core_mean']:.0f} from the mean")
    f, s = res["first_estimate_s"], res["stable_estimate_s"]
    lines.append(f"first estimate after speech onset: median {_fmt(f['p50'])} s, p90 {_fmt(f['p90'])} s "
                 f"({f['no_estimate']} utterances with speech got no estimate at all)")
    brk = res.get("first_estimate_breakdown_s")
    if brk:
        lines.append(f"  = speech needed {brk['speech_needed']:g} s + pauses {brk['pauses']:.2f} s + hop alignment "
                     f"{brk['hop_alignment']:.2f} s (medians)")
    lines.append(f"first correct stable estimate: median {_fmt(s['p50'])} s, p90 {_fmt(s['p90'])} s "
                 f"({s['never']} of {s['n']} utterances never settled on the reader's gender)")
    if res.get("cold_start"):
        c = res["cold_start"]
        lines.append(f"cold start (process start -> first estimate): {c['first_estimate_s']:.2f} s "
                     f"(first line {c['first_line_s']:.2f} s; median of {c['runs']}); measured apart: interpreter "
                     f"start {c['interpreter_s']:.2f} s, importing the engine and loading the bundle "
                     f"{c['import_engine_and_load_bundle_s']:.2f} s")
    if res.get("rss"):
        r = res["rss"]
        lines.append(f"peak RSS of the live engine: {r['peak_rss_mb']:.0f} MB over {r['files']} files (VmHWM; "
                     f"getrusage ru_maxrss says {r['ru_maxrss_mb']:.0f} MB, inherited from this process across "
                     f"fork + exec); heavy modules loaded: {', '.join(r['heavy_modules_loaded']) or 'none'}")
    c = res.get("concurrent")
    if c:
        lines.append(f"measured on the server (loadtest): {_fmt(c.get('streams_per_core_measured'), '.0f')} streams "
                     f"per server core" if c["available"] else f"measured concurrency: {c['note']}")
        for r in c.get("runs", []):
            lines.append(f"  {r['streams']} streams: held {r['held']}, lag p95 {r['lag_p95_s']} s, "
                         f"server {r.get('server_cpu_cores')} cores, client {r.get('client_cpu_cores')} cores")
    lines += ["", "goals (wall time; CPU time in brackets):"]
    for name, g in res["goals"].items():
        mark = "n/a " if g["met"] is None else ("MET " if g["met"] else "MISS")
        cpu = ""
        if g.get("cpu_time_value") is not None:
            cpu = f" [{_fmt(g['cpu_time_value'], '.4g')}: {'met' if g['met_cpu_time'] else 'missed'}]"
        held = f"  <- held by {g['held_by']}" if g["met"] is False and g.get("held_by") else ""
        lines.append(f"  [{mark}] {name}: {_fmt(g['value'], '.4g')}{cpu} (goal {g['target']}){held}")
    return "\n".join(lines)


def plot(res: dict, target: Path) -> list[Path]:
    """Write the latency histogram and the per-stage bars; ``target`` is a folder or a .png path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target = Path(target)
    if target.suffix.lower() == ".png":
        hist_path, stage_path = target, target.with_name(target.stem + "_stages.png")
    else:
        hist_path, stage_path = target / "latency_hist.png", target / "stages.png"
    hist_path.parent.mkdir(parents=True, exist_ok=True)
    raw = res.get("_raw") or res["raw"]  # a result in memory, or one saved with --save-raw
    cls = np.asarray(raw["classified"], dtype=bool)
    panels = [("wall time", np.asarray(raw["push_ms"]), np.asarray(raw["baseline_ms"]),
               res["per_hop_ms"]["p99"], res["baseline_per_window_ms"].get("p50"), res.get("speedup")),
              ("process CPU time (no preemption by other jobs)", np.asarray(raw["cpu_ms"]),
               np.asarray(raw.get("baseline_cpu_ms", [])), res["cpu_ms"]["per_hop"]["p99"],
               (res["baseline_per_window_ms"].get("cpu") or {}).get("p50"), res.get("speedup_cpu"))]
    allv = np.concatenate([np.concatenate([p[1], p[2]]) for p in panels])
    allv = allv[allv > 0]
    bins = np.logspace(np.log10(allv.min()) - 0.05, np.log10(allv.max()) + 0.05, 80)

    fig, axes = plt.subplots(2, 1, figsize=(8, 6.4), sharex=True)
    for ax, (what, ours, base, p99, base50, speedup) in zip(axes, panels):
        ax.hist(ours[cls], bins=bins, alpha=0.8, color="C0", label=f"ours, hops that classify a window (n={cls.sum()})")
        if (~cls).any():
            ax.hist(ours[~cls], bins=bins, alpha=0.6, color="C1", label=f"ours, hops without a window (n={(~cls).sum()})")
        if base.size:
            ax.hist(base, bins=bins, alpha=0.8, color="C2",
                    label=f"naive librosa + Keras + XGBoost, per window (n={base.size})")
        ax.set_xscale("log")
        top = ax.get_ylim()[1]
        for v, name, c in ((p99, "ours p99", "C0"), (base50, "naive p50", "C2")):
            if v:
                ax.axvline(v, color=c, ls="--", lw=1)
                ax.text(v * 1.05, top * 0.6, f"{name}\n{v:.3g} ms", color=c, va="top", fontsize=8)
        ax.set_ylabel("count")
        ax.set_title(f"{what}" + (f": naive / ours per window (p50) = {speedup:.0f}x" if speedup else ""), fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    axes[-1].set_xlabel("compute per hop (ours) / per window (naive), ms, one core, log scale")
    load = res["machine"].get("loadavg_start")
    fig.suptitle(f"Per-hop compute, {res['data']['utterances']} LibriSpeech utterances"
                 + (f" (machine load avg {load[0]:g} on {res['machine']['cores']} cores)" if load else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(hist_path, dpi=120)
    plt.close(fig)

    floor = 1e-3  # the engine reports stages to the microsecond
    rows = [(f"ours: {'total' if n == 'total' else n}", v["p50"], v["p99"], "C0") for n, v in res["stages_ms"].items()]
    rows += [(f"naive: {n}", v["p50"], v["p95"], "C2") for n, v in res["baseline_per_window_ms"].get("parts", {}).items()]
    rows = rows[::-1]
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(8, 0.42 * len(rows) + 1.4))
    p50 = [max(r[1] or 0, floor) for r in rows]
    ax.barh(y, p50, color=[r[3] for r in rows], alpha=0.85)
    ax.scatter([max(r[2] or 0, floor) for r in rows], y, marker="|", s=200, color="k", zorder=3,
               label="p99 (naive: p95)")
    for yi, r, v in zip(y, rows, p50):
        ax.text(max(v, r[2] or 0) * 1.2, yi, f"{r[1]:.3g}" if (r[1] or 0) >= floor else "<0.001", va="center", fontsize=7)
    ax.set_yticks(y, [r[0] for r in rows], fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(floor / 2, max(max(p50), max(r[2] or 0 for r in rows)) * 3)
    ax.set_xlabel("ms per hop (ours, bar = p50) / per window (naive), one core, log scale")
    ax.set_title("Where the time goes: live engine stages vs the naive pipeline", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(stage_path, dpi=120)
    plt.close(fig)
    return [hist_path, stage_path]


def run(args) -> int:
    if args.plot:
        from .sinks import check_plotting

        check_plotting()  # before minutes of benchmarking, not after
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    res = run_bench(args, log=log)
    if args.plot:
        for p in plot(res, args.plot):
            log(f"bench: wrote {p}")
    raw = res.pop("_raw")
    if args.save_raw:
        res["raw"] = raw
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(report_text(res))
    return 0


def add_parser(subparsers) -> None:
    from .options import add_engine_arguments

    p = subparsers.add_parser(
        "bench", help="latency benchmark of the live engine beside the naive pipeline",
        description="Per-hop compute of each stage (p50/p95/p99, one core), real-time factor, streams per core, "
                    "the naive librosa + Keras + XGBoost pipeline measured side by side and the speedup, "
                    "decision latency after speech onset, cold start and peak RSS, on real utterances.")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, metavar="DIR",
                   help="LibriSpeech root with SPEAKERS.TXT, or a CSV manifest (default: $VOICEGENDER_DATA/LibriSpeech, "
                        "else ../shared/data/LibriSpeech beside the repository)")
    p.add_argument("--files", type=int, default=40, metavar="N",
                   help="utterances to stream, alternating female / male readers (default: %(default)s)")
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the naive pipeline (imports TensorFlow, librosa, xgboost) (default: on)")
    p.add_argument("--baseline-windows", type=int, default=60, metavar="N",
                   help="naive-pipeline windows in all, spread over the utterances and interleaved with ours "
                        "(default: %(default)s)")
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
    add_engine_arguments(p)
    p.set_defaults(func=run)

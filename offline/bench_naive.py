"""``python -m offline bench``: the live engine's benchmark with the naive pipeline timed beside it, and the speedup.

The naive pipeline is what the original study implies, per 2 s window, on one core: each librosa feature
its own call from the waveform (tonnetz over ``chroma_cqt``, YIN, MFCC;
:func:`offline.bench_features.librosa_calls`), both Keras CNNs of ``offline/models.py`` predicting natively
on one window (the faster of ``model(x)`` and ``predict_on_batch``, TensorFlow on one intra/inter-op
thread), and an XGBoost booster with the bundle's number of trees and ``xgb_params`` (max_depth ...)
predicting one row with ``inplace_predict``. The Keras models are freshly built (weights do not change the
cost) and the booster is trained on the offline feature cache if there is one, else on the benchmark
utterances' windows (its cost depends on trees x depth, not on what they learned). The models get inputs
from our extractor, computed outside the timer.

Everything else is ``python -m realtime bench`` (``realtime/bench.py``), which streams the utterances and
interleaves these windows with its own, utterance by utterance. ``speedup`` = naive per-window p50 / our
per-window p50 (hops that classify a window), wall time; ``speedup_cpu`` the same in process CPU time,
which leaves out preemption by other jobs (on a shared machine that stretches the naive 40-60 ms calls far
more than our ~1 ms ones). Needs the training extras (TensorFlow, librosa, xgboost).
"""
from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np

from realtime import bench
from realtime.bench_live import spread_windows
from realtime.bench_stats import num

from .options import DEFAULT_CACHE, positive_int

EXTRAS = ("tensorflow", "librosa", "xgboost")


def xgb_training_set(definition, utts, audios, extractor, hop_s: float, cache_dir: Path, max_rows: int = 4000):
    """Rows to train the baseline booster on: the offline feature cache for this feature definition when
    there is one (real training windows, so the trees grow like the bundle's), else the windows of the
    benchmark utterances. Returns (X, y, description)."""
    from .dataset import WindowSet

    for path in sorted(Path(cache_dir).glob(f"windows-{definition.hash}-*.npz")):
        try:
            ws = WindowSet.load(path)
        except (OSError, ValueError, KeyError):
            continue
        if len(np.unique(ws.y)) == 2 and ws.n_stats == extractor.n_stats:
            idx = np.random.default_rng(0).permutation(len(ws))[:max_rows]
            return ws.stats[idx], ws.y[idx], f"{idx.size} cached training windows ({path.name})"
    X, y = [], []
    for u, a in zip(utts, audios):
        for w in spread_windows(a, max(1, int(len(a) / 16000 / hop_s) - 3), definition.window_samples):
            X.append(extractor.extract(w)[0])
            y.append(1 if u.gender == "F" else 0)
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
                return {"trees": trees, "leaves_per_tree": num(leaves / max(trees, 1), 3)}
    return None


def training_config(meta: dict) -> tuple[dict, int, str]:
    """(training config, number of trees, where they came from): the bundle's, else TrainConfig's defaults."""
    from .train import TrainConfig

    training = meta.get("training") or {}
    config = training.get("config") or {}
    rounds = ((training.get("history") or {}).get("xgb") or {}).get("rounds")
    if config.get("xgb_params") and rounds:
        return config, int(rounds), "bundle.json (training.config.xgb_params, training.history.xgb.rounds)"
    config = {**TrainConfig().to_dict(), **config}
    return config, int(rounds or config["xgb_rounds"]), \
        "offline.train.TrainConfig" + ("" if rounds else " (xgb_rounds: the early-stopping ceiling)")


class NaiveBaseline:
    """The original study's pipeline per window: librosa calls, Keras CNNs, native XGBoost (one core); a
    ``realtime.bench.Comparison``."""

    def __init__(self, n_windows: int, cache_dir: Path = DEFAULT_CACHE):
        self.n_windows = n_windows
        self.cache_dir = Path(cache_dir)
        self.keras_call = None

    def prepare(self, engine, utterances, audios, log) -> None:
        """Import TensorFlow (one thread), build the CNNs and train the booster; warm all of them up."""
        log("bench: building the naive baseline (TensorFlow, librosa, xgboost) ...")
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # TF already initialised in this process: keep its pools
            log("note: TensorFlow was already initialised; its thread pools were not limited to one thread")
        import warnings

        import xgboost as xgb

        from .bench_features import librosa_calls
        from .models import BUILDERS

        # chroma_cqt's low octaves are 2000 samples against its n_fft 2048: librosa warns, harmlessly, each call
        warnings.filterwarnings("ignore", message=r"n_fft=\d+ is too large", category=UserWarning)

        definition = engine.bundle.definition
        meta = getattr(engine.bundle, "meta", None) or {}
        self.features = librosa_calls(definition, cqt_tonnetz=True)
        config, n_trees, source = training_config(meta)
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
        X, y, data_note = xgb_training_set(definition, utterances, audios, engine.extractor, engine.config.hop_s,
                                           self.cache_dir)
        clf = xgb.XGBClassifier(n_estimators=n_trees, n_jobs=1, random_state=0, **kw)
        clf.fit(np.asarray(X, dtype=np.float32), np.asarray(y))
        self.booster = clf.get_booster()
        self.booster.set_param({"nthread": 1})
        trees = self.booster.get_dump()
        self.xgb_info = {"n_estimators": n_trees, "max_depth": kw.get("max_depth", 6), "params": kw,
                         "params_from": source, "trained_on": data_note, "trees": len(trees),
                         "leaves_per_tree": num(np.mean([t.count("leaf=") for t in trees]), 3)}
        w0 = spread_windows(audios[0], 1, engine.window_samples)[0]
        self.warm_up(w0, *engine.extractor.extract(w0))

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

    def describe(self, engine) -> dict:
        params = ", ".join(f"{k} {v['built']}/{v['bundle']}" for k, v in self.keras_params.items())
        return {
            "features": "librosa, each feature its own call from the waveform (tonnetz over chroma_cqt, yin, mfcc)",
            "keras": f"offline/models.py CNNs {self.variants}, freshly built (weights do not change the cost; "
                     f"parameters built/bundle: {params}), "
                     f"native {self.keras_call} on one window (the faster of model(x) and predict_on_batch), "
                     "TensorFlow on one thread",
            "keras_params": self.keras_params,
            "xgboost": {**self.xgb_info, "bundle_xgb_onnx": onnx_tree_stats(Path(engine.bundle.path) / "xgb.onnx"),
                        "call": "Booster.inplace_predict on one row",
                        "note": "cost depends on trees x depth, not on what the trees learned"},
            "inputs": "model inputs come from our extractor, outside the timer (the naive pipeline's summary "
                      "step is not charged to it)",
        }

    def report_lines(self, result: dict) -> list[str]:
        b = result["baseline"]
        x = b["xgboost"]
        return [b["features"], b["keras"],
                f"xgboost: {x['trees']} trees, max_depth {x['max_depth']} ({x['params_from']}), "
                f"{x['leaves_per_tree']} leaves/tree (bundle's xgb.onnx: {x['bundle_xgb_onnx']}); "
                f"trained on {x['trained_on']}; {x['note']}"]


def run(args) -> int:
    missing = [m for m in EXTRAS if importlib.util.find_spec(m) is None]
    if missing:
        print(f"error: the naive pipeline needs {', '.join(missing)} (pip install 'voicegender[train]'); "
              "`python -m realtime bench` measures the live engine alone", file=sys.stderr)
        return 2
    try:
        return bench.run(args, comparison=NaiveBaseline(args.baseline_windows, args.cache), prog="python -m offline")
    except ValueError as exc:  # bad --data, engine options the config refuses
        print(f"error: {exc}", file=sys.stderr)
        return 2


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="the live engine's benchmark with the naive librosa + Keras + XGBoost pipeline beside it",
        description="Everything `python -m realtime bench` measures (per-hop compute of each stage, real-time "
                    "factor, streams per core, decision latency, cold start, peak RSS), with the naive pipeline "
                    "(each librosa feature its own call, Keras CNNs, native XGBoost; one core) timed in the same "
                    "run, window by window, and the speedup per window. Needs the training extras.")
    bench.add_arguments(p)
    p.add_argument("--baseline-windows", type=positive_int, default=60, metavar="N",
                   help="naive-pipeline windows in all, spread over the utterances and interleaved with ours "
                        "(default: %(default)s)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, metavar="DIR",
                   help="feature cache of `python -m offline features` whose windows train the naive booster; "
                        "without one, the benchmark utterances' windows do (default: %(default)s)")
    p.set_defaults(func=run)

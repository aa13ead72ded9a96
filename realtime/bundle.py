"""The model bundle of the live engine: three ONNX models, their calibrated ensemble and its checks.

A bundle is a folder (``models/`` in the repository, written by ``python -m offline train``) with
``xgb.onnx``, ``cnn1d.onnx``, ``cnn2d.onnx`` and ``bundle.json``. ``Bundle.load`` refuses, with a
``BundleError`` that says why, a bundle whose files are missing, whose JSON is broken, whose model
files do not match their recorded sha256, or whose feature definition differs from the one this
engine computes (``realtime.features.DEFAULT``): a model is only valid on the exact features it was
trained on.

Live path: imports numpy, onnxruntime, json and hashlib only (plus realtime.features for the
definition); never TensorFlow, XGBoost or librosa. Each model gets its own one-thread onnxruntime
session.

    bundle = Bundle.load()                       # models/ of the repository
    out = bundle.predict(stats, mfcc)            # (N, 123), (N, 40, 87) -> dict of (N,) arrays
    p, components, stage_ms = bundle.predict_one(stats, mfcc)   # one window, lowest latency
    bundle.label(p)                              # 'female' | 'male' | 'uncertain'
"""
from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .features import DEFAULT, FeatureDefinition

__all__ = ["Bundle", "BundleError", "DEFAULT_MODELS_DIR", "MODEL_NAMES", "SUPPORTED_VERSIONS"]

DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
BUNDLE_FORMAT = "voicegender-bundle"
SUPPORTED_VERSIONS = (1,)
MODEL_NAMES = ("xgb", "cnn1d", "cnn2d")
SPEECH_MODEL = "speech"  # optional: XGBoost speech / non-speech on the stats vector
LABELS = ("female", "male", "uncertain")


class BundleError(ValueError):
    """A model bundle that cannot be used, with a message that says why."""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (what bundle.json records for every model file)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sigmoid(z):
    z = np.asarray(z, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _sigmoid1(z: float) -> float:
    return 0.5 * (1.0 + math.tanh(0.5 * z))


def _session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def _verified_session(path: Path, jpath: Path, field: str, m) -> ort.InferenceSession:
    """The onnxruntime session of one model entry ({file, sha256, input, output}) after checking its file."""
    if not isinstance(m, dict) or not {"file", "sha256", "input", "output"} <= set(m):
        raise BundleError(f"{jpath}: {field} must give file, sha256, input and output")
    fpath = path / str(m["file"])
    if Path(str(m["file"])).name != m["file"]:
        raise BundleError(f"{jpath}: model file name {m['file']!r} must be a plain file name")
    if not fpath.is_file():
        raise BundleError(f"{fpath}: model file missing from the bundle")
    digest = sha256_file(fpath)
    if digest != m["sha256"]:
        raise BundleError(f"{fpath.name}: sha256 {digest[:16]}... does not match bundle.json "
                          f"({str(m['sha256'])[:16]}...): the file was modified or corrupted")
    try:
        sess = _session(fpath)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise BundleError(f"{fpath.name}: onnxruntime cannot load it ({exc})") from exc
    ins = [i.name for i in sess.get_inputs()]
    outs = [o.name for o in sess.get_outputs()]
    if ins != [m["input"]] or m["output"] not in outs:
        raise BundleError(f"{fpath.name}: inputs {ins} / outputs {outs} do not match bundle.json "
                          f"({m['input']!r} -> {m['output']!r})")
    return sess


def _load_speech_model(path: Path, jpath: Path, entry) -> ort.InferenceSession:
    sess = _verified_session(path, jpath, "speech", entry)
    t = entry.get("threshold")
    if not (isinstance(t, (int, float)) and not isinstance(t, bool) and 0.0 < t < 1.0):
        raise BundleError(f"{jpath}: speech.threshold must be a number in (0, 1), got {t!r}")
    return sess


def _check_file_decision(jpath: Path, fd) -> None:
    if fd is None:
        return
    if not isinstance(fd, dict):
        raise BundleError(f"{jpath}: file_decision must be an object")
    scale, tf_, tm = fd.get("scale"), fd.get("female"), fd.get("male")
    nums = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (scale, tf_, tm))
    if not nums or not scale > 0 or not 0.0 < tm <= 0.5 <= tf_ < 1.0:
        raise BundleError(f"{jpath}: file_decision needs scale > 0 and 0 < male <= 0.5 <= female < 1, got "
                          f"scale={scale!r}, male={tm!r}, female={tf_!r}")


def _require(meta: dict, dotted: str):
    cur = meta
    for key in dotted.split("."):
        if not isinstance(cur, dict) or key not in cur:
            raise BundleError(f"bundle.json lacks '{dotted}'")
        cur = cur[key]
    return cur


class _Single:
    """Pre-allocated single-window buffers bound once to each session (IOBinding); one per thread."""

    def __init__(self, bundle: "Bundle"):
        self.stats = np.zeros((1, bundle.n_stats), dtype=np.float32)
        self.mfcc = np.zeros((1, *bundle.mfcc_shape), dtype=np.float32)
        self.tmp = np.zeros(bundle.mfcc_shape, dtype=np.float32)
        self.bind = {}
        self.out = {}
        for name in MODEL_NAMES:
            sess = bundle._sessions[name]
            io = sess.io_binding()
            buf = self.stats if name == "xgb" else self.mfcc
            io.bind_input(bundle._in[name], "cpu", 0, np.float32, list(buf.shape), buf.ctypes.data)
            for o in sess.get_outputs():
                if o.name != bundle._out[name]:  # e.g. the xgb 'label' output: onnxruntime allocates it
                    io.bind_output(o.name, "cpu")
                    continue
                ob = np.zeros((1, 2) if name == "xgb" else (1, 1), dtype=np.float32)
                io.bind_output(o.name, "cpu", 0, np.float32, list(ob.shape), ob.ctypes.data)
                self.out[name] = ob
            self.bind[name] = io


class Bundle:
    """A loaded, verified bundle. Build with ``Bundle.load``. One Bundle can serve many streams and
    threads: onnxruntime sessions are thread-safe and ``predict_one`` keeps its buffers per thread."""

    def __init__(self, path: Path, meta: dict, sessions: dict[str, ort.InferenceSession],
                 definition: FeatureDefinition):
        self.path = Path(path)
        self.meta = meta
        self.definition = definition
        self.stat_names: list[str] = list(meta["feature"]["stat_names"])
        self.n_stats = len(self.stat_names)
        self.mfcc_shape = (definition.n_mfcc, definition.n_frames)
        self.mfcc_mean = np.asarray(meta["normalisation"]["mfcc_mean"], dtype=np.float32)
        self.mfcc_std = np.asarray(meta["normalisation"]["mfcc_std"], dtype=np.float32)
        self._mean_col = np.ascontiguousarray(self.mfcc_mean[:, None])
        self._inv_std_col = np.ascontiguousarray((1.0 / self.mfcc_std)[:, None].astype(np.float32))
        ens = meta["ensemble"]
        order = list(ens.get("order", MODEL_NAMES))
        w = dict(zip(order, ens["weights"]))
        self.weights = {n: float(w[n]) for n in MODEL_NAMES}
        self.bias = float(ens["bias"])
        self.p_clip = float(ens.get("p_clip", 1e-6))
        self._logit_clip = math.log((1.0 - self.p_clip) / self.p_clip)
        th = meta["thresholds"]
        self.thresholds = {"female": float(th["female"]), "male": float(th["male"])}
        self._sessions = sessions
        models = meta["models"]
        self._in = {n: models[n]["input"] for n in MODEL_NAMES}
        self._out = {n: models[n]["output"] for n in MODEL_NAMES}
        # optional speech / non-speech check on the stats vector (music, tones, noise get no gender)
        self.speech_threshold: float | None = None
        if SPEECH_MODEL in sessions:
            self.speech_threshold = float(meta["speech"]["threshold"])
            self._in[SPEECH_MODEL] = meta["speech"]["input"]
            self._out[SPEECH_MODEL] = meta["speech"]["output"]
        # file verdicts: p_file = sigmoid(scale * mean window log-odds), its own uncertain band
        fd = meta.get("file_decision") or {}
        self.file_scale = float(fd.get("scale", 1.0))
        self.file_thresholds = {"female": float(fd.get("female", self.thresholds["female"])),
                                "male": float(fd.get("male", self.thresholds["male"]))}
        self._setup_single()

    # -- loading -------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path = DEFAULT_MODELS_DIR, *, definition: FeatureDefinition = DEFAULT) -> "Bundle":
        """Load and verify the bundle in ``path`` for an engine computing ``definition`` features.

        Raises BundleError for: a missing folder, bundle.json or model file; unreadable or incomplete JSON;
        an unsupported format version; a model file whose sha256 differs from the recorded one; a bundle
        trained on another feature definition; normalisation / stat vectors of the wrong size.
        """
        path = Path(path)
        if not path.is_dir():
            raise BundleError(f"{path}: no such bundle folder")
        jpath = path / "bundle.json"
        if not jpath.is_file():
            raise BundleError(f"{jpath}: missing (not a model bundle?)")
        try:
            meta = json.loads(jpath.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{jpath}: cannot read bundle JSON ({exc})") from exc
        if not isinstance(meta, dict):
            raise BundleError(f"{jpath}: expected a JSON object")
        if meta.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{jpath}: format is {meta.get('format')!r}, expected {BUNDLE_FORMAT!r}")
        if meta.get("format_version") not in SUPPORTED_VERSIONS:
            raise BundleError(f"{jpath}: format_version {meta.get('format_version')!r} not supported "
                              f"(this engine reads {list(SUPPORTED_VERSIONS)})")
        for key in ("feature.definition", "feature.hash", "feature.stat_names", "normalisation.mfcc_mean",
                    "normalisation.mfcc_std", "ensemble.weights", "ensemble.bias", "thresholds.female",
                    "thresholds.male", "models"):
            _require(meta, key)

        # feature definition: hash and full dict must both equal this engine's
        stored, stored_hash = meta["feature"]["definition"], meta["feature"]["hash"]
        if stored_hash != definition.hash or stored != definition.to_dict():
            diff = []
            if isinstance(stored, dict):
                mine = definition.to_dict()
                diff = [f"{k}: bundle {stored.get(k)!r} vs engine {mine.get(k)!r}"
                        for k in sorted(set(stored) | set(mine)) if stored.get(k) != mine.get(k)]
            detail = f" ({'; '.join(diff[:6])})" if diff else ""
            raise BundleError(f"bundle was trained with feature definition {stored_hash}, this engine computes "
                              f"{definition.hash}{detail}; retrain the bundle or use the matching engine version")
        try:
            fdef = FeatureDefinition.from_dict(stored)
        except TypeError as exc:
            raise BundleError(f"{jpath}: bad feature definition ({exc})") from exc

        # sizes
        n_mfcc = fdef.n_mfcc
        if len(meta["normalisation"]["mfcc_mean"]) != n_mfcc or len(meta["normalisation"]["mfcc_std"]) != n_mfcc:
            raise BundleError(f"{jpath}: MFCC normalisation must have {n_mfcc} values per vector")
        if not np.all(np.asarray(meta["normalisation"]["mfcc_std"], dtype=np.float64) > 0):
            raise BundleError(f"{jpath}: MFCC std must be positive")
        if len(meta["ensemble"]["weights"]) != len(MODEL_NAMES):
            raise BundleError(f"{jpath}: ensemble needs {len(MODEL_NAMES)} weights")
        tf_, tm = meta["thresholds"]["female"], meta["thresholds"]["male"]
        if not (isinstance(tf_, (int, float)) and isinstance(tm, (int, float)) and 0.0 < tm <= 0.5 <= tf_ < 1.0):
            raise BundleError(f"{jpath}: thresholds must satisfy 0 < male <= 0.5 <= female < 1, got {tm}, {tf_}")

        # model files: present, untampered, loadable, right interface
        sessions = {}
        for name in MODEL_NAMES:
            sessions[name] = _verified_session(path, jpath, f"models.{name}", meta["models"].get(name))
        if "speech" in meta:
            sessions[SPEECH_MODEL] = _load_speech_model(path, jpath, meta["speech"])
        _check_file_decision(jpath, meta.get("file_decision"))
        return cls(path, meta, sessions, fdef)

    # -- batch prediction ------------------------------------------------------------------------------
    def _check_inputs(self, stats, mfcc) -> tuple[np.ndarray, np.ndarray]:
        s = np.asarray(stats, dtype=np.float32)
        m = np.asarray(mfcc, dtype=np.float32)
        if s.ndim == 1:
            s = s[None]
        if m.ndim == 2:
            m = m[None]
        if s.ndim != 2 or s.shape[1] != self.n_stats:
            raise ValueError(f"stats must be (N, {self.n_stats}), got {np.shape(stats)}")
        if m.shape[1:] != self.mfcc_shape or m.ndim != 3:
            raise ValueError(f"mfcc must be (N, {self.mfcc_shape[0]}, {self.mfcc_shape[1]}), got {np.shape(mfcc)}")
        if s.shape[0] != m.shape[0]:
            raise ValueError(f"stats and mfcc hold different numbers of windows: {s.shape[0]} vs {m.shape[0]}")
        return np.ascontiguousarray(s), m

    def component_logits(self, stats, mfcc) -> dict[str, np.ndarray]:
        """Each model's logit (N,) float64 as the ensemble uses it."""
        s, m = self._check_inputs(stats, mfcc)
        x = np.ascontiguousarray((m - self._mean_col) * self._inv_std_col, dtype=np.float32)
        probs = self._sessions["xgb"].run([self._out["xgb"]], {self._in["xgb"]: s})[0]
        p = np.clip(np.asarray(probs, dtype=np.float64)[:, 1], self.p_clip, 1.0 - self.p_clip)
        out = {"xgb": np.log(p) - np.log1p(-p)}
        for name in ("cnn1d", "cnn2d"):
            z = self._sessions[name].run([self._out[name]], {self._in[name]: x})[0]
            out[name] = np.asarray(z, dtype=np.float64).reshape(-1)
        return out

    def predict(self, stats, mfcc) -> dict[str, np.ndarray]:
        """stats (N, n_stats), mfcc (N, 40, 87) -> {'xgb', 'cnn1d', 'cnn2d', 'p_female'}: (N,) float64 p_female."""
        z = self.component_logits(stats, mfcc)
        out = {n: _sigmoid(z[n]) for n in MODEL_NAMES}
        out["p_female"] = _sigmoid(self.bias + sum(self.weights[n] * z[n] for n in MODEL_NAMES))
        return out

    # -- single-window prediction ------------------------------------------------------------------------
    def _setup_single(self) -> None:
        self._local = threading.local()
        self._single()  # build the calling thread's buffers now, not on the first window

    def _single(self) -> _Single:
        st = getattr(self._local, "state", None)
        if st is None:
            st = self._local.state = _Single(self)
        return st

    def predict_one(self, stats, mfcc) -> tuple[float, dict[str, float], dict[str, float]]:
        """One window: stats (n_stats,), mfcc (40, 87) -> (p_female, {model: p_female}, {model: ms}).

        The window is copied into pre-allocated buffers (one set per thread) that are bound to the
        sessions once, so a call allocates nothing but onnxruntime's own scratch.
        """
        s = np.asarray(stats, dtype=np.float32).reshape(-1)
        if s.shape[0] != self.n_stats:
            raise ValueError(f"stats must have {self.n_stats} values, got {np.shape(stats)}")
        m = np.asarray(mfcc, dtype=np.float32)
        if m.shape != self.mfcc_shape:
            raise ValueError(f"mfcc must be {self.mfcc_shape}, got {np.shape(mfcc)}")
        st = self._single()
        st.stats[0] = s
        np.subtract(m, self._mean_col, out=st.tmp)
        np.multiply(st.tmp, self._inv_std_col, out=st.mfcc[0])
        stage_ms: dict[str, float] = {}
        comps: dict[str, float] = {}
        zsum = self.bias
        for name in MODEL_NAMES:
            t0 = time.perf_counter()
            self._sessions[name].run_with_iobinding(st.bind[name])
            stage_ms[name] = (time.perf_counter() - t0) * 1000.0
            if name == "xgb":
                p = float(st.out[name][0, 1])
                pc = min(max(p, self.p_clip), 1.0 - self.p_clip)
                z = math.log(pc / (1.0 - pc))
            else:
                z = float(st.out[name][0, 0])
                p = _sigmoid1(z)
            comps[name] = p
            zsum += self.weights[name] * z
        return _sigmoid1(zsum), comps, stage_ms

    @property
    def has_speech_model(self) -> bool:
        return self.speech_threshold is not None

    def p_speech(self, stats) -> np.ndarray:
        """Probability that each window (stats (N, n_stats) or (n_stats,)) is speech; ones without the model."""
        s = np.ascontiguousarray(np.asarray(stats, dtype=np.float32).reshape(-1, self.n_stats))
        if not self.has_speech_model:
            return np.ones(s.shape[0])
        out = self._sessions[SPEECH_MODEL].run([self._out[SPEECH_MODEL]], {self._in[SPEECH_MODEL]: s})[0]
        return np.asarray(out, dtype=np.float64)[:, 1]

    # -- decisions --------------------------------------------------------------------------------------
    def file_verdict(self, window_ps) -> tuple[str, float | None]:
        """(label, p_female) of a whole recording from its classified windows' p_female: the mean log-odds,
        scaled as fitted on held-out speakers' files, against the file-level uncertain band. No windows:
        ('no speech', None)."""
        ps = np.clip(np.asarray(list(window_ps), dtype=np.float64), 1e-4, 1 - 1e-4)
        if ps.size == 0:
            return "no speech", None
        p = _sigmoid1(self.file_scale * float(np.mean(np.log(ps) - np.log1p(-ps))))
        th = self.file_thresholds
        return ("female" if p >= th["female"] else "male" if p <= th["male"] else "uncertain"), p

    def label(self, p: float) -> str:
        """'female' if p >= thresholds['female'], 'male' if p <= thresholds['male'], else 'uncertain'."""
        p = float(p)
        if p >= self.thresholds["female"]:
            return "female"
        if p <= self.thresholds["male"]:
            return "male"
        return "uncertain"

    def __repr__(self) -> str:
        return (f"Bundle({str(self.path)!r}, features {self.definition.hash}, weights {self.weights}, "
                f"thresholds {self.thresholds})")

"""The model bundle of the live engine: its format, its three ONNX models, their calibrated ensemble, its checks.

A bundle is a folder (``models/`` in the repository, written by ``python -m offline train``) with
``xgb.onnx``, ``cnn1d.onnx``, ``cnn2d.onnx`` (``MODEL_FILES``), optionally ``speech.onnx`` and ``voice.onnx``
(the speaker encoder of the file verdict's voice opinion, ``realtime.voice``), and ``bundle.json``. This
module owns the format: the format name and version, the model names and file names, the sections
(``SECTIONS`` required, ``OPTIONAL_SECTIONS``: ``speech``, ``file_decision``, ``voice``), the
clip constants, ``bundle_meta`` (the one function that builds a bundle.json dict, used by
``offline.export``) and ``check_meta`` (its validation, shared by ``bundle_meta`` and ``Bundle.load``).

``Bundle.load`` refuses, with a ``BundleError`` that says why, a bundle whose files are missing, whose
JSON is broken, whose model files do not match their recorded sha256, or whose feature definition differs
from the one this engine computes (``realtime.features.DEFAULT``): a model is only valid on the exact
features it was trained on; likewise a voice opinion whose frontend is not ``realtime.voice.FRONTEND``.

Live path: imports numpy, onnxruntime, json and hashlib only (plus realtime.features for the definition and
realtime.logodds); never TensorFlow, XGBoost or librosa. Each model gets its own one-thread onnxruntime
session.

    bundle = Bundle.load()                       # models/ of the repository
    out = bundle.predict(stats, mfcc)            # (N, 123), (N, 40, 87) -> dict of (N,) arrays
    p, components, stage_ms = bundle.predict_one(stats, mfcc)   # one window, lowest latency
    ps, stage_ms = bundle.predict_many(stats, mfcc)  # many windows (many streams), each equal to predict_one's
    bundle.label(p)                              # 'female' | 'male' | 'uncertain'
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .errors import VoiceGenderError
from .features import DEFAULT, FeatureDefinition
from .logodds import logit, sigmoid
from .voice import EMBEDDING_SIZE, FRONTEND, VoiceEncoder

__all__ = ["BUNDLE_FILE", "BUNDLE_FORMAT", "DEFAULT_MODELS_DIR", "FILE_P_CLIP", "FORMAT_VERSION", "MODEL_FILES",
           "MODEL_NAMES", "P_CLIP", "SPEECH_MODEL", "SUPPORTED_VERSIONS", "VOICE_MODEL", "Bundle", "BundleError", "bundle_digest",
           "bundle_meta", "check_meta", "model_entry", "onnx_session", "seal", "seal_file", "sha256_file", "write_meta"]

DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
BUNDLE_FILE = "bundle.json"
BUNDLE_FORMAT = "voicegender-bundle"
FORMAT_VERSION = 1                      # what offline.export writes
SUPPORTED_VERSIONS = (FORMAT_VERSION,)  # what Bundle.load reads
MODEL_NAMES = ("xgb", "cnn1d", "cnn2d")  # the ensemble's models, in ensemble.order
SPEECH_MODEL = "speech"  # optional: XGBoost speech / non-speech on the stats vector
VOICE_MODEL = "voice"  # optional: the speaker encoder whose embedding the file verdict's probe reads
MODEL_FILES = {"xgb": "xgb.onnx", "cnn1d": "cnn1d.onnx", "cnn2d": "cnn2d.onnx", SPEECH_MODEL: "speech.onnx",
               VOICE_MODEL: "voice.onnx"}
P_CLIP = 1e-6       # ensemble.p_clip: xgb's probability is clipped to [P_CLIP, 1 - P_CLIP] before its logit
FILE_RULE = ("p_file = sigmoid(scale * mean of the file's window logits + voice_weight * voice logit) where the "
             "recording has a voice opinion, else sigmoid(scale_without_voice (default: scale) * mean of the file's "
             "window logits); female if p_file >= female, male if p_file <= male, else uncertain")
FILE_P_CLIP = 1e-4  # a file verdict clips each window's p_female to [FILE_P_CLIP, 1 - FILE_P_CLIP] before its logit
CNN_ROWS = 16  # windows per CNN run in predict_many: fewer pay the per-run cost, more outgrow the CPU caches


class BundleError(VoiceGenderError, ValueError):
    """A model bundle that cannot be used, with a message that says why."""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (what bundle.json records for every model file)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def onnx_session(path: str | Path) -> ort.InferenceSession:
    """The onnxruntime session of one model file as the engine runs it: CPU, one thread, all graph optimisations."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def _verified_file(path: Path, jpath: Path, m) -> Path:
    """The file of one model entry ({file, sha256, ...}, checked by ``check_meta``): present and untampered."""
    fpath = path / str(m["file"])
    if Path(str(m["file"])).name != m["file"]:
        raise BundleError(f"{jpath}: model file name {m['file']!r} must be a plain file name")
    if not fpath.is_file():
        raise BundleError(f"{fpath}: model file missing from the bundle")
    digest = sha256_file(fpath)
    if digest != m["sha256"]:
        raise BundleError(f"{fpath.name}: sha256 {digest[:16]}... does not match bundle.json "
                          f"({str(m['sha256'])[:16]}...): the file was modified or corrupted")
    return fpath


def _verified_session(path: Path, jpath: Path, field: str, m) -> ort.InferenceSession:
    """The onnxruntime session of one model entry ({file, sha256, input, output}, checked by ``check_meta``)
    after checking its file."""
    fpath = _verified_file(path, jpath, m)
    try:
        sess = onnx_session(fpath)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise BundleError(f"{fpath.name}: onnxruntime cannot load it ({exc})") from exc
    ins = [i.name for i in sess.get_inputs()]
    outs = [o.name for o in sess.get_outputs()]
    if ins != [m["input"]] or m["output"] not in outs:
        raise BundleError(f"{fpath.name}: inputs {ins} / outputs {outs} do not match bundle.json "
                          f"({m['input']!r} -> {m['output']!r})")
    return sess


def _require(meta: dict, dotted: str):
    cur = meta
    for key in dotted.split("."):
        if not isinstance(cur, dict) or key not in cur:
            raise BundleError(f"bundle.json lacks '{dotted}'")
        cur = cur[key]
    return cur


# -- value validation, one function per section ---------------------------------------------------------
# Each checks every number and name of its section and raises one BundleError naming the field. A new
# section is one function plus one entry in SECTIONS (required) or OPTIONAL_SECTIONS (checked when present).
def _short(v, n: int = 40) -> str:
    s = repr(v) if not isinstance(v, (dict, list)) else f"{type(v).__name__} of {len(v)}"
    return s if len(s) <= n else s[: n - 3] + "..."


def _number(field: str, v, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
            hi_open: bool = False) -> float:
    """``v`` as a finite float within the bounds, else BundleError naming ``field``."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise BundleError(f"bundle.json: {field} must be a number, got {_short(v)}")
    x = float(v)
    if not math.isfinite(x):
        raise BundleError(f"bundle.json: {field} must be finite, got {x}")
    if lo is not None and (x < lo or (lo_open and x == lo)):
        raise BundleError(f"bundle.json: {field} must be {'>' if lo_open else '>='} {lo:g}, got {x:g}")
    if hi is not None and (x > hi or (hi_open and x == hi)):
        raise BundleError(f"bundle.json: {field} must be {'<' if hi_open else '<='} {hi:g}, got {x:g}")
    return x


def _numbers(field: str, v, n: int, **bounds) -> list[float]:
    if not isinstance(v, list) or len(v) != n:
        got = f"{len(v)} values" if isinstance(v, list) else _short(v)
        raise BundleError(f"bundle.json: {field} must be a list of {n} numbers, got {got}")
    return [_number(f"{field}[{i}]", x, **bounds) for i, x in enumerate(v)]


def _name(field: str, v) -> str:
    if not isinstance(v, str) or not v:
        raise BundleError(f"bundle.json: {field} must be a non-empty string, got {_short(v)}")
    return v


def _check_feature(meta: dict, fdef: FeatureDefinition) -> None:
    from .features import FeatureExtractor

    names = meta["feature"]["stat_names"]
    expected = FeatureExtractor(fdef).stat_names
    if not isinstance(names, list):
        raise BundleError(f"bundle.json: feature.stat_names must be a list of names, got {_short(names)}")
    if len(names) != len(expected):
        raise BundleError(f"bundle.json: feature.stat_names has {len(names)} names, the feature definition gives "
                          f"{len(expected)}")
    for i, (got, want) in enumerate(zip(names, expected)):
        if got != want:
            raise BundleError(f"bundle.json: feature.stat_names[{i}] is {_short(got)}, the feature definition names "
                              f"it {want!r}")


def _check_normalisation(meta: dict, fdef: FeatureDefinition) -> None:
    norm = meta["normalisation"]
    _numbers("normalisation.mfcc_mean", norm["mfcc_mean"], fdef.n_mfcc)
    _numbers("normalisation.mfcc_std", norm["mfcc_std"], fdef.n_mfcc, lo=0.0, lo_open=True)


def _check_models(meta: dict, fdef: FeatureDefinition) -> None:
    models = meta["models"]
    if not isinstance(models, dict) or not models:
        raise BundleError(f"bundle.json: models must be an object naming the model files {list(MODEL_NAMES)}, got "
                          f"{_short(models)}")
    missing = [n for n in MODEL_NAMES if n not in models]
    if missing:
        raise BundleError(f"bundle.json: models lacks {', '.join(missing)} (the engine needs {', '.join(MODEL_NAMES)})")
    for name, m in models.items():
        _check_model_entry(f"models.{name}", m)


def _check_model_entry(field: str, m, extra: tuple[str, ...] = ()) -> None:
    """One model file's entry: file, sha256, input and output (and ``extra`` keys) present and well formed."""
    keys = ("file", "sha256", "input", "output", *extra)
    if not isinstance(m, dict) or not set(keys) <= set(m):
        raise BundleError(f"bundle.json: {field} must give {', '.join(keys[:-1])} and {keys[-1]}")
    for key in ("file", "input", "output"):
        _name(f"{field}.{key}", m[key])
    digest = m["sha256"]
    if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        raise BundleError(f"bundle.json: {field}.sha256 must be 64 lowercase hex digits, got {_short(digest)}")


def _check_ensemble(meta: dict, fdef: FeatureDefinition) -> None:
    ens = meta["ensemble"]
    if not isinstance(ens, dict):
        raise BundleError(f"bundle.json: ensemble must be an object, got {_short(ens)}")
    order = ens.get("order", list(MODEL_NAMES))
    if not isinstance(order, list) or sorted(map(str, order)) != sorted(MODEL_NAMES) or len(set(order)) != len(order):
        unknown = [o for o in order if o not in MODEL_NAMES] if isinstance(order, list) else []
        hint = f" (unknown: {', '.join(map(_short, unknown))})" if unknown else ""
        raise BundleError(f"bundle.json: ensemble.order must name each of {', '.join(MODEL_NAMES)} once, got "
                          f"{_short(order, 80)}{hint}")
    _numbers("ensemble.weights", ens["weights"], len(order))
    _number("ensemble.bias", ens["bias"])
    if "p_clip" in ens:
        _number("ensemble.p_clip", ens["p_clip"], lo=0.0, hi=0.5, lo_open=True, hi_open=True)


def _check_band(field: str, th: dict) -> None:
    """An uncertain band: 0 < male <= 0.5 <= female < 1."""
    female = _number(f"{field}.female", th.get("female"), lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    male = _number(f"{field}.male", th.get("male"), lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    if not male <= 0.5 <= female:
        raise BundleError(f"bundle.json: {field} must satisfy 0 < male <= 0.5 <= female < 1, got male {male:g}, "
                          f"female {female:g}")


def _check_thresholds(meta: dict, fdef: FeatureDefinition) -> None:
    _check_band("thresholds", meta["thresholds"])


SECTIONS = (("feature", _check_feature), ("normalisation", _check_normalisation), ("models", _check_models),
            ("ensemble", _check_ensemble), ("thresholds", _check_thresholds))


def _check_speech(meta: dict, fdef: FeatureDefinition) -> None:
    sp = meta["speech"]
    _check_model_entry("speech", sp, extra=("threshold",))
    _number("speech.threshold", sp["threshold"], lo=0.0, hi=1.0, lo_open=True, hi_open=True)


def _check_file_decision(meta: dict, fdef: FeatureDefinition) -> None:
    fd = meta["file_decision"]
    if not isinstance(fd, dict):
        raise BundleError(f"bundle.json: file_decision must be an object, got {_short(fd)}")
    _number("file_decision.scale", fd.get("scale"), lo=0.0, lo_open=True)
    if "scale_without_voice" in fd:
        _number("file_decision.scale_without_voice", fd["scale_without_voice"], lo=0.0, lo_open=True)
    if "voice_weight" in fd:
        _number("file_decision.voice_weight", fd["voice_weight"], lo=0.0)
        if VOICE_MODEL not in meta:
            raise BundleError("bundle.json: file_decision.voice_weight needs the voice section (its encoder and probe)")
    _check_band("file_decision", fd)


def _check_voice(meta: dict, fdef: FeatureDefinition) -> None:
    v = meta[VOICE_MODEL]
    _check_model_entry(VOICE_MODEL, v, extra=("frontend", "probe"))
    mine = FRONTEND.to_dict()
    if v["frontend"] != mine:
        got = v["frontend"] if isinstance(v["frontend"], dict) else {}
        diff = [f"{k}: bundle {got.get(k)!r} vs engine {mine[k]!r}" for k in sorted(mine) if got.get(k) != mine[k]]
        raise BundleError(f"bundle.json: the voice opinion was trained on another encoder frontend than this engine's "
                          f"({FRONTEND.hash}: {'; '.join(diff[:4]) or _short(v['frontend'])}); retrain the bundle")
    probe = v["probe"]
    if not isinstance(probe, dict):
        raise BundleError(f"bundle.json: voice.probe must be an object, got {_short(probe)}")
    _numbers("voice.probe.weights", probe.get("weights"), EMBEDDING_SIZE)
    _number("voice.probe.bias", probe.get("bias"))


# (name, check) of sections an older bundle may lack: the speech check, the file-level decision, the voice opinion
OPTIONAL_SECTIONS: tuple = ((SPEECH_MODEL, _check_speech), ("file_decision", _check_file_decision),
                            (VOICE_MODEL, _check_voice))
# keys that must be present before the sections are checked (the rest of each section is checked by its function)
REQUIRED_KEYS = ("feature.definition", "feature.hash", "feature.stat_names", "normalisation.mfcc_mean",
                 "normalisation.mfcc_std", "ensemble.weights", "ensemble.bias", "thresholds.female", "thresholds.male",
                 "models")


def check_meta(meta, definition: FeatureDefinition = DEFAULT, *, where: str | Path = BUNDLE_FILE) -> FeatureDefinition:
    """Validate a bundle.json dict for an engine computing ``definition`` features; returns the bundle's feature
    definition. Raises BundleError (``where`` names the file) for: not an object; another format or an
    unsupported format version; a missing required key; a bundle trained on another feature definition; any
    impossible number or name of a section (``SECTIONS``, and ``OPTIONAL_SECTIONS`` when present). The digest
    and the model files are ``Bundle.load``'s to check."""
    if not isinstance(meta, dict):
        raise BundleError(f"{where}: expected a JSON object")
    if meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{where}: format is {meta.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    if meta.get("format_version") not in SUPPORTED_VERSIONS:
        raise BundleError(f"{where}: format_version {meta.get('format_version')!r} not supported "
                          f"(this engine reads {list(SUPPORTED_VERSIONS)})")
    for key in REQUIRED_KEYS:
        _require(meta, key)

    # feature definition: hash and full dict must both equal this engine's
    stored, stored_hash = meta["feature"]["definition"], meta["feature"]["hash"]
    if stored_hash != definition.hash or stored != definition.to_dict():
        raise BundleError(_feature_mismatch(stored, stored_hash, definition))
    try:
        fdef = FeatureDefinition.from_dict(stored)
    except TypeError as exc:
        raise BundleError(f"{where}: bad feature definition ({exc})") from exc

    # every number and name, section by section
    for section, check in SECTIONS:
        check(meta, fdef)
    for section, check in OPTIONAL_SECTIONS:
        if section in meta:
            check(meta, fdef)
    return fdef


# -- building bundle.json (offline.export fills it in) ------------------------------------------------------
def model_entry(folder: str | Path, name: str, *, input: str, output: str, **records) -> dict:
    """bundle.json's entry for the model file ``MODEL_FILES[name]`` already written into ``folder``: its file
    name, input and output names, sha256 and size, plus ``records`` (e.g. ``export_check``, ``threshold``)."""
    path = Path(folder) / MODEL_FILES[name]
    return {"file": path.name, "input": input, "output": output, **records, "sha256": sha256_file(path),
            "bytes": path.stat().st_size}


def bundle_meta(*, definition: FeatureDefinition, stat_names, mfcc_mean, mfcc_std, models: dict, weights,
                bias: float, thresholds: dict, p_clip: float = P_CLIP, speech: dict | None = None,
                file_decision: dict | None = None, voice: dict | None = None, training=None, metrics=None,
                versions=None, created: str | None = None) -> dict:
    """The content of bundle.json in this module's schema, checked as ``Bundle.load`` checks it (``check_meta``);
    not yet sealed (``write_meta`` seals and writes it).

    ``models``: {name: ``model_entry``} for each of ``MODEL_NAMES``; ``weights``: the ensemble's, in
    ``MODEL_NAMES`` order; ``thresholds``: {'female', 'male'}; ``speech`` (optional): the speech check's
    ``model_entry`` with its ``threshold``; ``file_decision`` (optional): {'scale', 'female', 'male', ...,
    'voice_weight' with ``voice``}; ``voice`` (optional): the speaker encoder's ``model_entry`` with its
    ``frontend`` and ``probe`` ({'weights', 'bias'});
    ``training``, ``metrics``, ``versions``: records, stored as given; ``created``: default now (UTC).
    """
    from datetime import datetime, timezone

    meta = {
        "format": BUNDLE_FORMAT,
        "format_version": FORMAT_VERSION,
        "created": created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "feature": {"definition": definition.to_dict(), "hash": definition.hash, "stat_names": list(stat_names)},
        "normalisation": {"mfcc_mean": np.asarray(mfcc_mean, dtype=np.float64).tolist(),
                          "mfcc_std": np.asarray(mfcc_std, dtype=np.float64).tolist(),
                          "rule": "mfcc_in = (mfcc - mean[:, None]) / std[:, None], per MFCC coefficient; "
                                  "stats go to xgb unscaled"},
        "models": models,
        "ensemble": {"order": list(MODEL_NAMES), "weights": [float(w) for w in weights], "bias": float(bias),
                     "p_clip": p_clip,
                     "rule": "p_female = sigmoid(bias + sum_i weights[i] * logit_i); logit_xgb = "
                             "logit(clip(p_xgb, p_clip, 1 - p_clip)), logit_cnn = the model output"},
        "thresholds": {"female": float(thresholds["female"]), "male": float(thresholds["male"]),
                       "rule": "female if p_female >= female; male if p_female <= male; else uncertain"},
        "training": training,
        "metrics": metrics,
        "versions": versions,
    }
    if speech is not None:
        meta[SPEECH_MODEL] = {**speech, "rule": "a window is speech if probabilities[:, 1] >= threshold; other "
                                                "windows get no gender"}
    if voice is not None:
        meta[VOICE_MODEL] = {**voice, "rule": "embedding = the encoder's (realtime.voice) of the recording's speech; "
                                              "voice logit = probe.weights . embedding + probe.bias"}
    if file_decision:
        meta["file_decision"] = {**file_decision,
                                 "rule": FILE_RULE}
    check_meta(meta, definition)
    return meta


# -- the digest over bundle.json ----------------------------------------------------------------------------
DIGEST_KEY = "digest"


def bundle_digest(meta: dict) -> str:
    """sha256 of bundle.json's content without its ``digest`` key, as canonical JSON (sorted keys, no
    whitespace), so it does not depend on indentation. It covers the model files' sha256 values too."""
    body = {k: v for k, v in meta.items() if k != DIGEST_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)  # NaN: refused by the value checks
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seal(meta: dict) -> dict:
    """``meta`` with its digest (what ``offline.export`` writes and :meth:`Bundle.load` verifies)."""
    body = {k: v for k, v in meta.items() if k != DIGEST_KEY}
    return {**body, DIGEST_KEY: {"sha256": bundle_digest(body),
                                 "covers": "this file without this key, as JSON with sorted keys and no whitespace"}}


def write_meta(folder: str | Path, meta: dict) -> Path:
    """Seal ``meta`` (plain JSON values; NaN is refused) and write it as ``folder/bundle.json``, atomically."""
    jpath = Path(folder) / BUNDLE_FILE
    tmp = jpath.with_name(f".{BUNDLE_FILE}.tmp")
    tmp.write_text(json.dumps(seal(meta), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, jpath)
    return jpath


def seal_file(folder: str | Path) -> str:
    """Add (or renew) the digest of ``folder/bundle.json`` in place; returns it. For bundles exported before
    digests existed, or after a deliberate edit: ``python -m realtime.bundle seal models/``."""
    meta = json.loads((Path(folder) / BUNDLE_FILE).read_text(encoding="utf-8"))
    write_meta(folder, meta)
    return bundle_digest(meta)


def _check_digest(meta: dict, jpath: Path) -> bool:
    """True if bundle.json carries a digest (it must match); False for a bundle from before digests."""
    if DIGEST_KEY not in meta:
        return False
    d = meta[DIGEST_KEY]
    want = d.get("sha256") if isinstance(d, dict) else None
    if not isinstance(want, str):
        raise BundleError(f"{jpath}: digest must be an object with a sha256 string")
    got = bundle_digest(meta)
    if got != want:
        raise BundleError(f"{jpath}: content does not match its digest (sha256 {got[:16]}... vs recorded {want[:16]}...): "
                          "bundle.json was modified or corrupted after export; if the edit is deliberate, renew the "
                          "digest with `python -m realtime.bundle seal DIR`")
    return True


def _feature_mismatch(stored, stored_hash, definition: FeatureDefinition) -> str:
    """Why the bundle's feature definition is not this engine's, naming each distinct hash once."""
    mine = definition.to_dict()
    actual = None
    if isinstance(stored, dict):
        try:
            actual = FeatureDefinition.from_dict(stored).hash
        except (TypeError, ValueError):
            actual = None
    diff = []
    if isinstance(stored, dict):
        diff = [f"{k}: bundle {stored.get(k)!r} vs engine {mine.get(k)!r}"
                for k in sorted(set(stored) | set(mine)) if stored.get(k) != mine.get(k)]
    detail = f" ({'; '.join(diff[:6])})" if diff else ""
    fix = "; retrain the bundle or use the matching engine version"
    if stored == mine:  # only the recorded hash differs
        return (f"bundle was trained with feature definition {stored_hash}, this engine computes {definition.hash}, "
                f"yet its feature.definition is this engine's: feature.hash in bundle.json was edited or corrupted")
    if stored_hash == definition.hash or actual is not None and actual != stored_hash:
        shown = actual if actual is not None else "(unreadable)"
        stale = "" if stored_hash == definition.hash else f"; feature.hash in bundle.json ({stored_hash}) is stale"
        return (f"bundle was trained with feature definition {shown}, this engine computes {definition.hash}{detail}"
                + (stale or "; feature.hash in bundle.json is stale") + fix)
    return f"bundle was trained with feature definition {stored_hash}, this engine computes {definition.hash}{detail}{fix}"


class _WindowBuffers:
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

    sealed = False  # whether bundle.json carried a digest (verified by load); bundles from before digests lack one

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
        self.p_clip = float(ens.get("p_clip", P_CLIP))
        th = meta["thresholds"]
        self.thresholds = {"female": float(th["female"]), "male": float(th["male"])}
        self._sessions = sessions
        models = meta["models"]
        self._in = {n: models[n]["input"] for n in MODEL_NAMES}
        self._out = {n: models[n]["output"] for n in MODEL_NAMES}
        # optional speech / non-speech check on the stats vector (music, tones, noise get no gender)
        self.speech_threshold: float | None = None
        if SPEECH_MODEL in sessions:
            self.speech_threshold = float(meta[SPEECH_MODEL]["threshold"])
            self._in[SPEECH_MODEL] = meta[SPEECH_MODEL]["input"]
            self._out[SPEECH_MODEL] = meta[SPEECH_MODEL]["output"]
        # file verdicts: p_file = sigmoid(scale * mean window log-odds), its own uncertain band
        fd = meta.get("file_decision") or {}  # older bundles: scale 1 and the window band
        self.file_scale = float(fd.get("scale", 1.0))
        # the windows alone (no voice opinion: too little speech, --no-voice-opinion) have their own scale: the
        # cross-corpus window weight is small because the voice carries most of the evidence beside it
        self.file_scale_without_voice = float(fd.get("scale_without_voice", self.file_scale))
        self.file_thresholds = {"female": float(fd.get("female", self.thresholds["female"])),
                                "male": float(fd.get("male", self.thresholds["male"]))}
        # the voice opinion (optional): a speaker encoder's embedding of the recording, read by a linear probe
        self.voice_encoder: VoiceEncoder | None = None
        self.voice_weight = float(fd.get("voice_weight", 0.0))
        if VOICE_MODEL in sessions:
            v = meta[VOICE_MODEL]
            self.voice_encoder = VoiceEncoder(sessions[VOICE_MODEL], v["input"], v["output"], FRONTEND)
            self._probe_w = np.asarray(v["probe"]["weights"], dtype=np.float64)
            self._probe_b = float(v["probe"]["bias"])
        self._setup_window_buffers()

    # -- loading -------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path = DEFAULT_MODELS_DIR, *, definition: FeatureDefinition = DEFAULT,
             voice: bool = True) -> "Bundle":
        """Load and verify the bundle in ``path`` for an engine computing ``definition`` features.

        ``voice=False``: the voice opinion's encoder is verified (its sha256) but not loaded, and the bundle
        gives no voice opinion; a process that never asks for one (``serve`` without ``--voice-opinion``)
        saves its ~17 MB and ~65 ms.

        Raises BundleError for: a missing folder, bundle.json or model file; unreadable JSON; whatever
        ``check_meta`` refuses (format, version, feature definition, every value); a digest that does not
        match; a model file whose sha256 differs from the recorded one or that onnxruntime cannot load.
        """
        path = Path(path)
        if not path.is_dir():
            raise BundleError(f"{path}: no such bundle folder")
        jpath = path / BUNDLE_FILE
        if not jpath.is_file():
            raise BundleError(f"{jpath}: missing (not a model bundle?)")
        try:
            meta = json.loads(jpath.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{jpath}: cannot read bundle JSON ({exc})") from exc
        fdef = check_meta(meta, definition, where=jpath)
        sealed = _check_digest(meta, jpath)  # the digest over the whole file

        # model files: present, untampered, loadable, right interface
        sessions = {}
        for name in MODEL_NAMES:
            sessions[name] = _verified_session(path, jpath, f"models.{name}", meta["models"][name])
        for optional in (SPEECH_MODEL, VOICE_MODEL):
            if optional == VOICE_MODEL and optional in meta and not voice:
                _verified_file(path, jpath, meta[optional])
            elif optional in meta:
                sessions[optional] = _verified_session(path, jpath, optional, meta[optional])
        bundle = cls(path, meta, sessions, fdef)
        bundle.sealed = sealed
        return bundle

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
        out = {"xgb": logit(np.asarray(probs, dtype=np.float64)[:, 1], self.p_clip)}
        for name in ("cnn1d", "cnn2d"):
            z = self._sessions[name].run([self._out[name]], {self._in[name]: x})[0]
            out[name] = np.asarray(z, dtype=np.float64).reshape(-1)
        return out

    def predict(self, stats, mfcc) -> dict[str, np.ndarray]:
        """stats (N, n_stats), mfcc (N, 40, 87) -> {'xgb', 'cnn1d', 'cnn2d', 'p_female'}: (N,) float64 p_female."""
        z = self.component_logits(stats, mfcc)
        out = {n: sigmoid(z[n]) for n in MODEL_NAMES}
        out["p_female"] = sigmoid(self.bias + sum(self.weights[n] * z[n] for n in MODEL_NAMES))
        return out

    # -- single-window prediction ------------------------------------------------------------------------
    def _setup_window_buffers(self) -> None:
        self._local = threading.local()
        self._window_buffers()  # build the calling thread's buffers now, not on the first window

    def _window_buffers(self) -> _WindowBuffers:
        st = getattr(self._local, "state", None)
        if st is None:
            st = self._local.state = _WindowBuffers(self)
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
        st = self._window_buffers()
        st.stats[0] = s
        np.subtract(m, self._mean_col, out=st.tmp)
        np.multiply(st.tmp, self._inv_std_col, out=st.mfcc[0])
        stage_ms: dict[str, float] = {}
        raw: dict[str, float] = {}
        for name in MODEL_NAMES:
            t0 = time.perf_counter()
            self._sessions[name].run_with_iobinding(st.bind[name])
            stage_ms[name] = (time.perf_counter() - t0) * 1000.0
            raw[name] = float(st.out[name][0, 1 if name == "xgb" else 0])
        p, comps = self._combine(raw)
        return p, comps, stage_ms

    def _combine(self, raw: dict[str, float]) -> tuple[float, dict[str, float]]:
        """The ensemble of one window from its models' raw outputs (xgb: P(female); the CNNs: a logit):
        (p_female, {model: p_female}), in Python floats, in ``MODEL_NAMES`` order."""
        comps: dict[str, float] = {}
        zsum = self.bias
        for name in MODEL_NAMES:
            if name == "xgb":
                p = raw[name]
                z = logit(p, self.p_clip)
            else:
                z = raw[name]
                p = sigmoid(z)
            comps[name] = p
            zsum += self.weights[name] * z
        return sigmoid(zsum), comps

    def predict_many(self, stats, mfcc) -> tuple[list[float], dict[str, float]]:
        """Many windows through each model in one run: stats (N, n_stats), mfcc (N, 40, 87) -> ([p_female] * N,
        {model: ms for all N}). Each p_female is ``predict_one``'s for that window, to the bit: the same
        normalisation, the same combination (:meth:`_combine`), and onnxruntime's CPU kernels give each row
        the same result whatever the batch size (tests/test_batching.py checks it on real windows)."""
        s, m = self._check_inputs(stats, mfcc)
        if s.shape[0] == 0:
            return [], {}
        x = np.empty(m.shape, dtype=np.float32)
        np.subtract(m, self._mean_col, out=x)
        np.multiply(x, self._inv_std_col, out=x)
        stage_ms: dict[str, float] = {}
        outs = {}
        for name in MODEL_NAMES:
            t0 = time.perf_counter()
            sess, inp = self._sessions[name], s if name == "xgb" else x
            step = len(inp) if name == "xgb" else CNN_ROWS
            out = np.concatenate([sess.run([self._out[name]], {self._in[name]: inp[i:i + step]})[0]
                                  for i in range(0, len(inp), step)])
            stage_ms[name] = (time.perf_counter() - t0) * 1000.0
            outs[name] = np.asarray(out, dtype=np.float32)[:, 1 if name == "xgb" else 0].tolist()
        return [self._combine({n: outs[n][i] for n in MODEL_NAMES})[0] for i in range(s.shape[0])], stage_ms

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
    @property
    def has_voice_opinion(self) -> bool:
        return self.voice_encoder is not None and self.voice_weight > 0

    def voice_logit(self, speech: np.ndarray) -> float | None:
        """The voice opinion of a recording's speech (16 kHz mono, silence left out): the probe's log-odds
        that the speaker is female; None without the encoder or with too little speech."""
        if self.voice_encoder is None:
            return None
        e = self.voice_encoder.embed(speech)
        return None if e is None else float(e.astype(np.float64) @ self._probe_w + self._probe_b)

    def file_verdict(self, window_ps, voice_logit: float | None = None) -> tuple[str, float | None]:
        """(label, p_female) of a whole recording from its classified windows' p_female: the mean log-odds,
        scaled as fitted on held-out speakers' files, plus the weighted voice opinion (``voice_logit``, from
        :meth:`voice_logit`) when there is one, against the file-level uncertain band. No windows:
        ('no speech', None), whatever the voice opinion."""
        ps = np.asarray(list(window_ps), dtype=np.float64)
        if ps.size == 0:
            return "no speech", None
        z = float(np.mean(logit(ps, FILE_P_CLIP)))
        if voice_logit is not None and self.has_voice_opinion:
            z = self.file_scale * z + self.voice_weight * float(voice_logit)
        else:
            z = self.file_scale_without_voice * z
        p = sigmoid(z)
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


def main(argv: list[str] | None = None) -> int:
    """``python -m realtime.bundle seal DIR``: add or renew bundle.json's digest (no retraining), then load
    the bundle to check it. ``python -m realtime.bundle check DIR``: load and verify only."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m realtime.bundle", description=main.__doc__)
    ap.add_argument("command", choices=("seal", "check"))
    ap.add_argument("folder", type=Path, nargs="?", default=DEFAULT_MODELS_DIR)
    args = ap.parse_args(argv)
    try:
        if args.command == "seal":
            print(f"{args.folder / 'bundle.json'}: digest sha256 {seal_file(args.folder)}")
        b = Bundle.load(args.folder)
    except (BundleError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"ok: {b!r}{'' if b.sealed else ' (no digest: run `seal` to add one)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

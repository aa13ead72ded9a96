"""Export a ``TrainedModels`` to the ONNX release bundle that ``realtime.bundle.Bundle`` loads.

Files written into the output folder:

* ``xgb.onnx``   - XGBoost on the stats vector (onnxmltools), input ``stats`` (N, n_stats) float32,
  outputs ``label`` and ``probabilities`` (N, 2); column 1 is p_female.
* ``cnn1d.onnx`` / ``cnn2d.onnx`` - the CNNs without their final sigmoid (tf2onnx), input ``mfcc``
  (N, 40, 87) float32 *standardised* with the bundle's per-coefficient mean/std, output ``logit`` (N, 1).
  Exporting the logit keeps full precision for the ensemble; p_female = sigmoid(logit).
* ``bundle.json`` - format version, feature definition + hash + stat names, MFCC normalisation, ensemble
  weights/bias, thresholds, sha256 of every model file, library versions, training data summary, training
  configuration and validation, XGBoost feature importances, metrics (filled by evaluation), timestamp, and
  ``digest``: the sha256 of all the rest (``realtime.bundle.seal``), verified by ``Bundle.load``.

Every exported model is run with onnxruntime on real windows and compared with the in-memory model:
p_female must agree within ``TOLERANCE`` (1e-4) or ``ExportError`` is raised. Finally the written bundle
is loaded with ``realtime.bundle.Bundle`` and its ensemble p_female compared with ``TrainedModels.predict``.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path

import numpy as np

from realtime.bundle import seal, sha256_file

from .metrics import json_safe

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BUNDLE_FORMAT = "voicegender-bundle"
BUNDLE_VERSION = 1
TOLERANCE = 1e-4
ONNX_OPSET = 17
XGB_OPSET = 15  # the highest onnxmltools 1.16 converts XGBoost to
MODEL_FILES = {"xgb": "xgb.onnx", "cnn1d": "cnn1d.onnx", "cnn2d": "cnn2d.onnx", "speech": "speech.onnx"}


class ExportError(RuntimeError):
    """An exported model does not reproduce the original."""


def _session(path_or_bytes):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    src = str(path_or_bytes) if isinstance(path_or_bytes, Path) else path_or_bytes
    return ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])


def _sigmoid(z):
    z = np.asarray(z, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def logit_model(model):
    """The same Keras model with its last sigmoid replaced by the identity (shares the weights)."""
    import keras

    last = model.get_layer("p_female")
    dense = keras.layers.Dense(1, activation=None, name="logit")
    out = dense(last.input)
    dense.set_weights(last.get_weights())
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, out, name=f"{model.name}_logit")


def export_keras(model, path: str | Path, check_x: np.ndarray, *, tolerance: float = TOLERANCE) -> dict:
    """Keras CNN (sigmoid output) -> ONNX graph of its logit at ``path``; checked on ``check_x`` (standardised MFCC).

    Returns {'max_abs_diff_p': ..., 'max_abs_diff_logit': ...}. Raises ExportError above ``tolerance``.
    """
    import tensorflow as tf
    import tf2onnx

    path = Path(path)
    lm = logit_model(model)
    shape = (None, *[int(d) for d in model.inputs[0].shape[1:]])
    spec = (tf.TensorSpec(shape, tf.float32, name="mfcc"),)
    onnx_model, _ = tf2onnx.convert.from_keras(lm, input_signature=spec, opset=ONNX_OPSET)
    # name the output 'logit' whatever tf2onnx called it
    old = onnx_model.graph.output[0].name
    if old != "logit":
        for node in onnx_model.graph.node:
            node.output[:] = ["logit" if o == old else o for o in node.output]
        onnx_model.graph.output[0].name = "logit"
    onnx_model.doc_string = f"voicegender {model.name}: standardised MFCC (N, 40, 87) -> logit of p_female (N, 1)"
    path.write_bytes(onnx_model.SerializeToString())
    x = np.ascontiguousarray(check_x, dtype=np.float32)
    from .train import keras_forward

    ref_logit = keras_forward(lm, x).astype(np.float64).reshape(-1)
    ref_p = keras_forward(model, x).astype(np.float64).reshape(-1)
    got = np.asarray(_session(path).run(["logit"], {"mfcc": x})[0], dtype=np.float64).reshape(-1)
    d_p = float(np.max(np.abs(_sigmoid(got) - ref_p))) if x.shape[0] else 0.0
    d_l = float(np.max(np.abs(got - ref_logit))) if x.shape[0] else 0.0
    if not d_p <= tolerance:
        raise ExportError(f"{path.name}: ONNX p_female differs from Keras by {d_p:.3g} (> {tolerance})")
    return {"max_abs_diff_p": d_p, "max_abs_diff_logit": d_l, "windows_checked": int(x.shape[0])}


def export_xgb(booster, path: str | Path, check_stats: np.ndarray, *, tolerance: float = TOLERANCE) -> dict:
    """XGBoost Booster -> ONNX at ``path`` (input 'stats' (N, n_stats)); checked on ``check_stats``."""
    import xgboost as xgb
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    path = Path(path)
    n = int(booster.num_features())
    if booster.feature_names is not None and list(booster.feature_names) != [f"f{i}" for i in range(n)]:
        booster = booster.copy()
        booster.feature_names = None  # the converter wants the default 'f%d' names
    onnx_model = convert_xgboost(booster, initial_types=[("stats", FloatTensorType([None, n]))],
                                 target_opset=XGB_OPSET)
    onnx_model.doc_string = "voicegender xgb: stats (N, n_stats) -> probabilities (N, 2), column 1 = p_female"
    path.write_bytes(onnx_model.SerializeToString())
    s = np.ascontiguousarray(check_stats, dtype=np.float32)
    ref = np.asarray(booster.predict(xgb.DMatrix(s)), dtype=np.float64).reshape(-1)
    sess = _session(path)
    out_names = [o.name for o in sess.get_outputs()]
    got = np.asarray(sess.run([out_names[1]], {"stats": s})[0], dtype=np.float64)[:, 1]
    d = float(np.max(np.abs(got - ref))) if s.shape[0] else 0.0
    if not d <= tolerance:
        raise ExportError(f"{path.name}: ONNX p_female differs from XGBoost by {d:.3g} (> {tolerance})")
    return {"max_abs_diff_p": d, "windows_checked": int(s.shape[0]), "outputs": out_names}


def library_versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("numpy", "tensorflow-cpu", "keras", "tf2onnx", "onnx", "onnxruntime", "xgboost-cpu", "xgboost",
                "onnxmltools", "scikit-learn"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def export_bundle(trained, out_dir: str | Path, *, metrics: dict | None = None, data_summary: dict | None = None,
                  check=None, tolerance: float = TOLERANCE) -> Path:
    """Write the bundle of ``trained`` (a ``offline.train.TrainedModels``) into ``out_dir``; returns the folder.

    ``check``: a WindowSet of real windows for the parity checks (default: the calibration windows kept
    by ``fit_all``).
    """
    from realtime.bundle import Bundle

    from .train import MODEL_NAMES, P_CLIP

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    check = check if check is not None else trained.check_windows
    if check is None or len(check) == 0:
        raise ExportError("export needs real windows to check the converted models against")
    x = trained.normalise_mfcc(check.mfcc)
    parity = {"xgb": export_xgb(trained.xgb, out / MODEL_FILES["xgb"], check.stats, tolerance=tolerance)}
    for name in ("cnn1d", "cnn2d"):
        parity[name] = export_keras(getattr(trained, name), out / MODEL_FILES[name], x, tolerance=tolerance)

    d = trained.definition
    models = {
        "xgb": {"file": MODEL_FILES["xgb"], "input": "stats", "input_shape": [None, len(trained.stat_names)],
                "output": parity["xgb"]["outputs"][1], "output_kind": "probabilities",
                "trees": int(trained.history.get("xgb", {}).get("rounds", 0))},
        "cnn1d": {"file": MODEL_FILES["cnn1d"], "input": "mfcc", "input_shape": [None, d.n_mfcc, d.n_frames],
                  "output": "logit", "output_kind": "logit", "params": int(trained.cnn1d.count_params())},
        "cnn2d": {"file": MODEL_FILES["cnn2d"], "input": "mfcc", "input_shape": [None, d.n_mfcc, d.n_frames],
                  "output": "logit", "output_kind": "logit", "params": int(trained.cnn2d.count_params())},
    }
    for name, m in models.items():
        m["sha256"] = sha256_file(out / m["file"])
        m["bytes"] = (out / m["file"]).stat().st_size
        m["export_check"] = {k: v for k, v in parity[name].items() if k != "outputs"}
    bundle = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "feature": {"definition": d.to_dict(), "hash": d.hash, "stat_names": list(trained.stat_names)},
        "normalisation": {"mfcc_mean": trained.mfcc_mean.astype(float).tolist(),
                          "mfcc_std": trained.mfcc_std.astype(float).tolist(),
                          "rule": "mfcc_in = (mfcc - mean[:, None]) / std[:, None], per MFCC coefficient; "
                                  "stats go to xgb unscaled"},
        "models": models,
        "ensemble": {"order": list(MODEL_NAMES), "weights": [float(w) for w in trained.weights],
                     "bias": float(trained.bias), "p_clip": P_CLIP,
                     "rule": "p_female = sigmoid(bias + sum_i weights[i] * logit_i); logit_xgb = "
                             "logit(clip(p_xgb, p_clip, 1 - p_clip)), logit_cnn = the model output"},
        "thresholds": {"female": float(trained.thresholds["female"]), "male": float(trained.thresholds["male"]),
                       "rule": "female if p_female >= female; male if p_female <= male; else uncertain"},
        "training": {"data": data_summary, "split": trained.data, "config": trained.config.to_dict(),
                     "history": trained.history, "validation": trained.validation,
                     "xgb_feature_importance_gain": trained.xgb_importance},
        "metrics": metrics,
        "versions": library_versions(),
    }
    if getattr(trained, "speech_model", None) is not None:
        sp = export_xgb(trained.speech_model, out / MODEL_FILES["speech"], check.stats, tolerance=tolerance)
        bundle["speech"] = {"file": MODEL_FILES["speech"], "input": "stats", "output": sp["outputs"][1],
                            "sha256": sha256_file(out / MODEL_FILES["speech"]),
                            "bytes": (out / MODEL_FILES["speech"]).stat().st_size,
                            "threshold": float(trained.speech_threshold),
                            "export_check": {k: v for k, v in sp.items() if k != "outputs"},
                            "rule": "a window is speech if probabilities[:, 1] >= threshold; other windows get "
                                    "no gender", "training": trained.speech_info}
    if getattr(trained, "file_decision", None):
        bundle["file_decision"] = {**trained.file_decision,
                                   "rule": "p_file = sigmoid(scale * mean of the file's window logits); female if "
                                           "p_file >= female, male if p_file <= male, else uncertain"}
    tmp = out / ".bundle.json.tmp"
    # the digest covers every byte of meaning in bundle.json (and, through models.*.sha256, the model files)
    tmp.write_text(json.dumps(seal(json_safe(bundle, nan_to_none=False)), indent=1, allow_nan=False) + "\n")
    os.replace(tmp, out / "bundle.json")

    # end-to-end: the written bundle, loaded as the live engine loads it, reproduces TrainedModels.predict
    b = Bundle.load(out)
    got = b.predict(check.stats, check.mfcc)["p_female"]
    ref = trained.predict(check)
    diff = float(np.max(np.abs(got - ref)))
    if not diff <= tolerance:
        raise ExportError(f"bundle p_female differs from the trained ensemble by {diff:.3g} (> {tolerance})")
    return out


def update_metrics(out_dir: str | Path, metrics: dict) -> Path:
    """Replace the ``metrics`` of an existing bundle.json (model files and hashes untouched)."""
    path = Path(out_dir) / "bundle.json"
    data = json.loads(path.read_text())
    data["metrics"] = json_safe(metrics, nan_to_none=False)
    data = seal(data)  # renewed: the metrics are part of what the digest covers
    tmp = path.with_name(".bundle.json.tmp")
    tmp.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path

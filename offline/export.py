"""Export a ``TrainedModels`` (``offline.train``) to the ONNX release bundle that ``realtime.bundle.Bundle`` loads.

Training produces the models; this module writes them in the format ``realtime.bundle`` owns (file names,
sections, ``bundle_meta``). Files written into the output folder:

* ``xgb.onnx``   - XGBoost on the stats vector (onnxmltools), input ``stats`` (N, n_stats) float32,
  outputs ``label`` and ``probabilities`` (N, 2); column 1 is p_female.
* ``cnn1d.onnx`` / ``cnn2d.onnx`` - the CNNs without their final sigmoid (tf2onnx), input ``mfcc``
  (N, 40, 87) float32 *standardised* with the bundle's per-coefficient mean/std, output ``logit`` (N, 1).
  Exporting the logit keeps full precision for the ensemble; p_female = sigmoid(logit).
* ``speech.onnx`` - the speech check (XGBoost on the stats vector), like ``xgb.onnx``, when trained.
* ``bundle.json`` - ``realtime.bundle.bundle_meta``: format version, feature definition + hash + stat names,
  MFCC normalisation, ensemble weights/bias, thresholds, sha256 of every model file, speech check, file
  decision, library versions, training data summary, training configuration and validation, XGBoost feature
  importances, metrics (given by the caller), timestamp, and ``digest``: the sha256 of all the rest
  (``realtime.bundle.seal``), verified by ``Bundle.load``.

Every exported model is run with onnxruntime on real windows and compared with the in-memory model:
p_female must agree within ``TOLERANCE`` (1e-4) or ``ExportError`` is raised. Finally the written bundle
is loaded with ``realtime.bundle.Bundle`` and its ensemble p_female compared with ``TrainedModels.predict``.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np

from realtime.bundle import MODEL_FILES, SPEECH_MODEL, VOICE_MODEL, Bundle, bundle_meta, model_entry, onnx_session, write_meta
from realtime.errors import VoiceGenderError
from realtime.logodds import sigmoid

from .metrics import json_safe
from .models import keras_forward, logit_model

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TOLERANCE = 1e-4
ONNX_OPSET = 17
XGB_OPSET = 15  # the highest onnxmltools 1.16 converts XGBoost to


class ExportError(VoiceGenderError, RuntimeError):
    """An exported model does not reproduce the original."""


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
    ref_logit = keras_forward(lm, x).astype(np.float64).reshape(-1)
    ref_p = keras_forward(model, x).astype(np.float64).reshape(-1)
    got = np.asarray(onnx_session(path).run(["logit"], {"mfcc": x})[0], dtype=np.float64).reshape(-1)
    d_p = float(np.max(np.abs(sigmoid(got) - ref_p))) if x.shape[0] else 0.0
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
    sess = onnx_session(path)
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


def export_voice(voice: dict, out: Path) -> dict:
    """The voice opinion into the bundle: the speaker encoder (``offline/assets/voice_encoder.onnx``, copied as
    ``voice.onnx``) and its probe; bundle.json's ``voice`` entry."""
    import shutil

    from realtime.voice import FRONTEND

    from .voice_encoder import ASSET, INPUT, LICENSE, OUTPUT

    shutil.copyfile(ASSET, Path(out) / MODEL_FILES[VOICE_MODEL])
    shutil.copyfile(ASSET.with_name(LICENSE), Path(out) / LICENSE)  # Apache-2.0: the licence goes with the weights
    w, b = voice["probe"]
    return model_entry(out, VOICE_MODEL, input=INPUT, output=OUTPUT, frontend=FRONTEND.to_dict(),
                       probe={"weights": [float(x) for x in w], "bias": float(b)},
                       source="Resemblyzer 0.1.4 GE2E speaker encoder (Apache-2.0), converted by offline/voice_encoder.py",
                       training=voice.get("info", {}))


def export_bundle(trained, out_dir: str | Path, *, metrics: dict | None = None, data_summary: dict | None = None,
                  check=None, tolerance: float = TOLERANCE) -> Path:
    """Write the bundle of ``trained`` (an ``offline.train.TrainedModels``) into ``out_dir``; returns the folder.

    ``check``: a WindowSet of real windows for the parity checks (default: the calibration windows kept
    by ``fit_all``). ``metrics`` and ``data_summary`` are recorded in bundle.json as given.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    check = check if check is not None else trained.check_windows
    if check is None or len(check) == 0:
        raise ExportError("export needs real windows to check the converted models against")
    x = trained.normalise_mfcc(check.mfcc)
    parity = {"xgb": export_xgb(trained.xgb, out / MODEL_FILES["xgb"], check.stats, tolerance=tolerance)}
    for name in ("cnn1d", "cnn2d"):
        parity[name] = export_keras(getattr(trained, name), out / MODEL_FILES[name], x, tolerance=tolerance)

    def checked(result: dict) -> dict:
        return {k: v for k, v in result.items() if k != "outputs"}

    d = trained.definition
    mfcc_shape = [None, d.n_mfcc, d.n_frames]
    models = {
        "xgb": model_entry(out, "xgb", input="stats", output=parity["xgb"]["outputs"][1],
                           input_shape=[None, len(trained.stat_names)], output_kind="probabilities",
                           trees=int(trained.history.get("xgb", {}).get("rounds", 0)),
                           export_check=checked(parity["xgb"])),
        **{name: model_entry(out, name, input="mfcc", output="logit", input_shape=mfcc_shape, output_kind="logit",
                             params=int(getattr(trained, name).count_params()), export_check=checked(parity[name]))
           for name in ("cnn1d", "cnn2d")},
    }
    speech = None
    if getattr(trained, "speech_model", None) is not None:
        sp = export_xgb(trained.speech_model, out / MODEL_FILES[SPEECH_MODEL], check.stats, tolerance=tolerance)
        speech = model_entry(out, SPEECH_MODEL, input="stats", output=sp["outputs"][1],
                             threshold=float(trained.speech_threshold), export_check=checked(sp),
                             training=trained.speech_info)
    voice = None
    if getattr(trained, "voice", None):
        voice = export_voice(trained.voice, out)
    meta = bundle_meta(
        definition=d, stat_names=trained.stat_names, mfcc_mean=trained.mfcc_mean, mfcc_std=trained.mfcc_std,
        models=models, weights=trained.weights, bias=trained.bias, thresholds=trained.thresholds, speech=speech,
        file_decision=getattr(trained, "file_decision", None), voice=voice,
        training={"data": data_summary, "split": trained.data, "config": trained.config.to_dict(),
                  "history": trained.history, "validation": trained.validation,
                  "xgb_feature_importance_gain": trained.xgb_importance},
        metrics=metrics, versions=library_versions())
    # the digest covers every byte of meaning in bundle.json (and, through models.*.sha256, the model files)
    write_meta(out, json_safe(meta, nan_to_none=False))

    # end-to-end: the written bundle, loaded as the live engine loads it, reproduces TrainedModels.predict
    b = Bundle.load(out)
    got = b.predict(check.stats, check.mfcc)["p_female"]
    ref = trained.predict(check)
    diff = float(np.max(np.abs(got - ref)))
    if not diff <= tolerance:
        raise ExportError(f"bundle p_female differs from the trained ensemble by {diff:.3g} (> {tolerance})")
    return out

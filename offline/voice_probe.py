"""The voice opinion's training side: each utterance's speaker-encoder embedding (``realtime.voice``), cached,
and the logistic probe that reads gender from it.

The embedding of an utterance is the encoder's reading of the speech the engine's VAD passes
(``realtime.voice.vad_speech``: what a live stream's ``VoiceSample`` holds of a clean recording), up to the
frontend's ``max_speech_seconds``. ``fit_all`` fits the probe on the fit speakers, the file decision that
weighs it against the window models on the calibration speakers, and refits the probe on both
(``offline.train``).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from realtime.voice import FRONTEND, VoiceEncoder, vad_speech

from .voice_encoder import ASSET, INPUT, OUTPUT

__all__ = ["encoder", "embed_utterances", "fit_probe", "probe_logits", "PROBE_C"]

PROBE_C = 0.1  # inverse L2 strength; of 0.1, 1 and 10, the one that held best across corpora (MODEL_CARD.md)
CACHE_FORMAT = 1


def encoder(path: str | Path = ASSET) -> VoiceEncoder:
    """The encoder as the live engine runs it (``realtime.bundle.onnx_session``: one thread, same graph options)."""
    from realtime.bundle import onnx_session

    return VoiceEncoder(onnx_session(path), INPUT, OUTPUT, FRONTEND)


def _cache_path(cache_dir: Path, utterances, vad: int) -> Path:
    from .dataset import hash_utterances

    h = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, "frontend": FRONTEND.hash, "vad": vad,
                                   "encoder": os.stat(ASSET).st_size}).encode())
    hash_utterances(h, utterances)
    return Path(cache_dir) / f"voice-{FRONTEND.hash}-{h.hexdigest()[:16]}.npz"


def embed_utterances(utterances, *, cache_dir: str | Path | None = None, progress: bool = False,
                     vad_aggressiveness: int = 2) -> dict[str, np.ndarray]:
    """{utt_id: embedding (256,) float32} for every utterance with enough speech (others are left out)."""
    from tqdm import tqdm

    from realtime.audio import AudioError, load_audio

    utterances = list(utterances)
    path = _cache_path(Path(cache_dir), utterances, vad_aggressiveness) if cache_dir else None
    if path is not None and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return dict(zip(z["utt"].tolist(), z["embedding"]))
    enc = encoder()
    out: dict[str, np.ndarray] = {}
    for u in tqdm(utterances, desc="voice embeddings", unit="utt", disable=not progress, dynamic_ncols=True):
        try:
            e = enc.embed(vad_speech(load_audio(u.path), vad_aggressiveness))
        except AudioError:
            continue
        if e is not None:
            out[u.utt_id] = e
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, utt=np.array(list(out), dtype=str),
                     embedding=np.stack(list(out.values())) if out else np.zeros((0, 256), np.float32))
        os.replace(tmp, path)
    return out


def fit_probe(E: np.ndarray, y: np.ndarray, reader: np.ndarray, C: float = PROBE_C) -> tuple[np.ndarray, float]:
    """Logistic regression of the label on the embeddings, every speaker weighing the same: (weights, bias)."""
    from sklearn.linear_model import LogisticRegression

    from .splits import per_speaker_weights

    w = per_speaker_weights(reader)
    lr = LogisticRegression(C=C, max_iter=2000).fit(E, y, sample_weight=w * len(w) / w.sum())
    return lr.coef_[0].astype(np.float64), float(lr.intercept_[0])


def probe_logits(E: np.ndarray, probe: tuple[np.ndarray, float]) -> np.ndarray:
    w, b = probe
    return np.asarray(E, dtype=np.float64) @ w + b

"""Train the three models and their calibrated ensemble; ``python -m offline train`` ships the bundle.

Protocol of ``fit_all`` (one call = one trained ensemble):

1. The training READERS are split, gender-balanced, into *fit* readers (80 %) and *calibration* readers
   (20 %, ``TrainConfig.calib_fraction``). No window of a calibration reader is used to fit a model
   (until the optional final refit, step 8).
2. Augmentation. Audio domain, when the utterances are given (``train_utterances``): every utterance is
   also decoded ``TrainConfig.augment.copies`` (2) times through ``offline.augment.Augmenter`` with the
   options of ``TrainConfig.augment`` (``offline.augment.AugmentConfig``; by default coloured noise
   white/pink/brown at 5-30 dB SNR with p=0.8, pitch shift up to +-1 semitone with p=0.5, gain +-6 dB, and
   with p=0.4 a capture channel: an 8 or 11.025 kHz source, a telephone line, MP3 or Opus at a low bitrate) and
   its windows' features are computed exactly as the live engine computes them. They are cached per
   utterance (``cache_dir``/per-utterance), so the folds of a cross-validation and later runs reuse them.
   Feature domain, on the fly for the CNNs, fresh every epoch (``MfccAugment``): a random smooth channel
   equalisation (up to +-6 dB: convolution is addition in the cepstrum) and a time mask; optionally
   frequency warping and same-class mixing.
3. Input normalisation: per-MFCC-coefficient mean and std over the fit readers' clean windows. XGBoost
   takes the raw stats (trees need no scaling).
4. XGBoost on the stats vector, early-stopped on the calibration readers' log-loss; gain importances
   kept (per stat name) for the bundle.
5. Both CNNs (``offline.models``): Adam, binary cross-entropy, ``ReduceLROnPlateau``, ``EarlyStopping``
   with ``restore_best_weights`` and a ``ModelCheckpoint`` of the best epoch, all on the calibration
   readers' AUC (``monitor``; their loss is dominated by a few confidently misclassified voices).
6. Ensemble = logistic regression *without intercept* on the three models' logits, fitted on the
   calibration readers' windows (clean and augmented): its weights combine the models and scale the
   result (Platt calibration). ``p_female = sigmoid(w . logits)``; the bias is stored (0): a fitted
   intercept learns the quirks of the few calibration voices (``ensemble_intercept``).
7. Thresholds: ``label = female if p >= t_f, male if p <= t_m, else uncertain`` with ``t_f = 1 - t_m =
   0.5 + delta``. ``delta`` is the smallest value in 0.10, 0.15, ..., 0.40 for which the calibration
   windows outside the band are at least ``TrainConfig.confident_accuracy`` (98 %) correct; so
   'uncertain' is the low-confidence band in which the calibrated ensemble is wrong too often.
8. ``refit``: retrain the three models on fit + calibration readers with the number of trees, epochs and
   the learning-rate path found in steps 4-5, keeping the ensemble weights and thresholds of step 6-7.

What each choice was measured to give: models/MODEL_CARD.md ("Validation used to choose the recipe").
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from realtime.bundle import MODEL_NAMES, P_CLIP
from realtime.features import DEFAULT, FeatureDefinition, dct_matrix, hz_to_mel, mel_to_hz
from realtime.logodds import logit, sigmoid

from .augment import AugmentConfig, Augmenter
from .dataset import WindowSet, cache_file, extract_corpus
from .label_audit import suspect_readers
from .metrics import binary_metrics
from .models import keras_forward
from .splits import per_speaker_weights


# --- configuration -----------------------------------------------------------------------------------

def _default_xgb_params() -> dict:
    return {"objective": "binary:logistic", "eval_metric": "logloss", "eta": 0.05, "max_depth": 4,
            "min_child_weight": 5.0, "subsample": 0.8, "colsample_bytree": 0.5, "lambda": 2.0,
            "tree_method": "hist", "max_bin": 256}


@dataclass
class TrainConfig:
    """Everything that decides a training run (stored in bundle.json)."""

    seed: int = 0
    calib_fraction: float = 0.2           # share of training readers (per gender) held out for calibration
    # audio augmentation of the training utterances: copies and the Augmenter's options (offline.augment)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # on-the-fly MFCC augmentation for the CNNs (MfccAugment)
    channel_db: float = 6.0                # on-the-fly random channel EQ for the CNNs (0: off)
    time_masks: int = 1                    # on-the-fly time masks per window for the CNNs (0: off)
    warp: float = 0.0                      # on-the-fly frequency warping 1 +- warp for the CNNs (0: off)
    mix_p: float = 0.0                     # on-the-fly same-class mixing probability for the CNNs (0: off)
    time_mask_frames: int = 10
    # CNNs
    cnn1d_variant: str = "temporal"        # see offline/models.py; chosen on reader-disjoint CV
    cnn2d_variant: str = "timepool"
    epochs: int = 24
    batch_size: int = 64
    patience: int = 5
    lr: float = 1e-3
    lr_schedule: str = "plateau"           # 'plateau' (ReduceLROnPlateau) or 'cosine'
    monitor: str = "val_auc"               # early stopping / checkpoint / plateau criterion on calibration readers
    lr_factor: float = 0.5
    lr_patience: int = 2
    min_lr: float = 1e-5
    # XGBoost
    xgb_params: dict = field(default_factory=_default_xgb_params)
    xgb_rounds: int = 1500
    xgb_early_stopping: int = 60
    # ensemble
    speaker_balance: bool = True          # every speaker weighs the same in every model's loss
    # leave the label audit's speakers (offline/label_audit.py: labels the evidence contradicts) out of
    # training; evaluation still scores them. Measured +4.4 points per file speechocean762 -> LibriSpeech; the
    # release bundle is trained with it (2026-12-02); --set label_audit=false trains on every adult as labelled
    label_audit: bool = True
    speech_check: bool = True             # train the speech / non-speech model (offline/nonspeech.py negatives)
    speech_recall: float = 0.995          # share of calibration speech windows the speech check must keep
    nonspeech_per_kind: int = 40          # synthetic negative clips per kind
    nonspeech_music: tuple[str, ...] = ("singularity-music", "drascula-music")  # Debian music packages (if installed)
    file_confident_accuracy: float = 0.985  # decided files of calibration speakers at least this often right,
    file_max_undecided: float = 0.03        # ... with at most this share of them left undecided
    # the file verdict's voice opinion (offline/voice_probe.py): a probe on a pretrained speaker encoder's
    # embedding of each file, weighed against the windows on the calibration speakers' files (model card)
    voice_opinion: bool = True
    # (window weight, voice weight) of the file decision, measured leave-one-corpus-out (MODEL_CARD.md, "Weighing
    # the two opinions"): scale = the first, voice_weight = the second x the probe's own Platt scale on the
    # calibration files; None fits both on the calibration files (in-domain: the fits vary widely, and the
    # release's gave the voice ~1/15 of the say)
    file_weights: tuple[float, float] | None = (0.12, 0.5)
    ensemble_intercept: bool = False       # a fitted bias learns the calibration readers' quirks (model card)
    ensemble_C: float = 1.0
    confident_accuracy: float = 0.98
    refit: bool = True                     # finally retrain the models on fit + calibration readers (step 8)
    # plumbing
    jobs: int = 2
    cache_dir: str | None = ".cache/features"
    threads: int = 2                       # TensorFlow / XGBoost threads

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):  # e.g. {'p_channel': 0.3} from --set augment.p_channel=0.3
            self.augment = AugmentConfig(**self.augment)
        elif not isinstance(self.augment, AugmentConfig):
            raise TypeError(f"augment must be an AugmentConfig or a dict of its fields, got {self.augment!r}")

    def excluded_readers(self) -> tuple[str, ...]:
        """The readers training leaves out (``label_audit``: offline/label_audit.py's)."""
        return suspect_readers() if self.label_audit else ()

    @classmethod
    def quick(cls, **overrides) -> "TrainConfig":
        """A tiny run for tests and CI: one augmented copy, two epochs, few trees. ``augment`` given as a dict
        changes only those fields of the quick run's augmentation."""
        base = dict(epochs=2, patience=1, xgb_rounds=60, xgb_early_stopping=10, batch_size=64,
                    nonspeech_per_kind=6, nonspeech_music=())
        augment = {"copies": 1}
        if isinstance(overrides.get("augment"), dict):
            augment.update(overrides.pop("augment"))
        return cls(**{**base, "augment": augment, **overrides})

    @classmethod
    def parse_overrides(cls, items: list[str] | None) -> dict:
        """``['augment.p_channel=0.3', 'epochs=10']`` -> typed overrides ``{'augment': {'p_channel': 0.3},
        'epochs': 10}``; each value is parsed as JSON when it can be (numbers, lists, true/false), as a string
        otherwise. A key is a TrainConfig field, or ``augment.FIELD`` for a field of ``AugmentConfig``.
        Unknown keys are an error."""
        known = [f.name for f in dataclasses.fields(cls) if f.name != "augment"]
        nested = [f"augment.{f.name}" for f in dataclasses.fields(AugmentConfig)]
        out: dict = {}
        for item in items or []:
            key, sep, text = item.partition("=")
            key = key.strip()
            if not sep or key not in known + nested:
                raise ValueError(f"--set expects KEY=VALUE with KEY a TrainConfig field, got {item!r} "
                                 f"(fields: {', '.join(sorted(known + nested))})")
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = text
            value = tuple(value) if isinstance(value, list) else value
            if key.startswith("augment."):
                out.setdefault("augment", {})[key.removeprefix("augment.")] = value
            else:
                out[key] = value
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """A config from its ``to_dict`` (bundle.json's ``training.config``, a run's JSON), also from the flat
        layout of records written before the augmentation was nested (``aug_copies``, ``aug_p_channel``, ...)."""
        d = dict(d)
        augment = dict(d.pop("augment", None) or {})
        for old, new in _FLAT_AUGMENT_KEYS.items():
            if old in d:
                augment[new] = d.pop(old)
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"not TrainConfig fields: {', '.join(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}, augment=augment)

    def to_dict(self) -> dict:
        """Plain JSON (tuples as lists), the augmentation nested under ``augment``."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "augment"}
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
        return {**d, "augment": self.augment.to_dict()}


# records written before TrainConfig.augment existed: their flat key -> the AugmentConfig field
_FLAT_AUGMENT_KEYS = {"aug_copies": "copies", "aug_snr_range": "snr_range", "aug_p_noise": "p_noise",
                      "aug_p_pitch": "p_pitch", "aug_max_semitones": "max_semitones", "aug_gain_db": "gain_db_range",
                      "aug_p_channel": "p_channel", "aug_p_voice": "p_voice"}


# --- small helpers -----------------------------------------------------------------------------------

def reader_gender_map(ws: WindowSet) -> dict[str, str]:
    out: dict[str, str] = {}
    for r, y in zip(ws.reader, ws.y):
        g = "F" if y == 1 else "M"
        if out.setdefault(str(r), g) != g:
            raise ValueError(f"reader {r} has windows of both genders")
    return out


def data_summary(ws: WindowSet, utterances=None) -> dict:
    """Readers per gender, windows and hours of audio (from the utterances when given, else estimated)."""
    genders = reader_gender_map(ws)
    if utterances is not None:
        used = set(map(str, np.unique(ws.utt)))
        hours = sum(u.duration for u in utterances if u.utt_id in used) / 3600.0
    else:  # last window start + window length per utterance
        hours = 0.0
        for u in np.unique(ws.utt):
            hours += float(ws.start[ws.utt == u].max()) + DEFAULT.window_seconds
        hours /= 3600.0
    return {"readers": {"F": sum(g == "F" for g in genders.values()), "M": sum(g == "M" for g in genders.values())},
            "utterances": int(np.unique(ws.utt).size), "windows": len(ws),
            "windows_female": int((ws.y == 1).sum()), "windows_male": int((ws.y == 0).sum()),
            "hours": round(hours, 4)}


def corpus_summary(utterances) -> dict:
    """{corpus: {'speakers': {'F', 'M'}, 'utterances', 'hours'}} of the training utterances."""
    out: dict[str, dict] = {}
    for u in utterances:
        c = out.setdefault(u.corpus, {"speakers": {"F": set(), "M": set()}, "utterances": 0, "hours": 0.0})
        c["speakers"][u.gender].add(u.reader)
        c["utterances"] += 1
        c["hours"] += u.duration / 3600.0
    return {name: {"speakers": {g: len(r) for g, r in c["speakers"].items()}, "utterances": c["utterances"],
                   "hours": round(c["hours"], 3)} for name, c in sorted(out.items())}


def balanced_accuracy(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> float:
    y = np.asarray(y).astype(bool)
    pred = np.asarray(p) >= threshold
    return float(0.5 * ((pred[y]).mean() + (~pred[~y]).mean()))


def augmented_windows(utterances, augmenter: Augmenter, copies: int, *, seed: int = 0,
                      definition: FeatureDefinition = DEFAULT, cache_dir=Path(".cache/features"), jobs: int = 2,
                      progress: bool = True) -> WindowSet:
    """``copies`` augmented versions of every utterance's windows, cached per utterance.

    ``extract_corpus`` draws each utterance's augmentation from (augmenter seed, ``seed``, utt_id, copy)
    alone, so an utterance's augmented features do not depend on which other utterances are extracted
    with it; caching them one file per utterance lets every fold of a cross-validation reuse them.
    """
    utterances = list(utterances)
    if cache_dir is None:
        return extract_corpus(utterances, definition=definition, augment=augmenter, copies=copies, seed=seed,
                              cache_dir=None, jobs=jobs, progress=progress)
    per_utt = Path(cache_dir) / "per-utterance"
    paths = [cache_file([u], definition=definition, cache_dir=per_utt, window_s=definition.window_seconds,
                        hop_s=0.5, augment=augmenter, copies=copies, seed=seed) for u in utterances]
    missing = [(u, p) for u, p in zip(utterances, paths) if not p.is_file()]
    if missing:
        ws = extract_corpus([u for u, _ in missing], definition=definition, augment=augmenter, copies=copies,
                            seed=seed, cache_dir=None, jobs=jobs, progress=progress)
        rows: dict[str, list[int]] = {}
        for i, utt in enumerate(ws.utt):
            rows.setdefault(str(utt), []).append(i)
        for u, p in missing:  # an unusable utterance gets an empty file, so it is not retried
            ws.subset(np.asarray(rows.get(u.utt_id, []), dtype=np.int64)).save(p)
    parts = [WindowSet.load(p) for p in paths]
    parts = [p for p in parts if len(p)] or parts[:1]
    return WindowSet.concat(parts)


# --- on-the-fly MFCC augmentation for the CNNs -------------------------------------------------------

class MfccAugment:
    """On-the-fly augmentation of standardised MFCC batches for the CNNs (fresh draws every epoch).

    * channel: a linear channel (microphone, room, codec EQ) multiplies the power spectrum, i.e. adds a
      curve ``g`` (dB) to every log-mel frame, i.e. adds ``DCT(g)`` to every MFCC frame. ``g`` is a random
      smooth curve over the mel bands (low-order cosines) peaking at up to ``channel_db`` dB.
    * warp: vocal-tract-length-style frequency warping of the (cepstrally smoothed) log-mel spectrum by a
      factor in ``1 +- warp``; new "voices" without crossing the gender gap (formants differ by ~15-20 %
      between the groups, so the default 4 % stays well inside one group).
    * mix: with probability ``mix_p`` a window is blended (weight ``U(0.6, 1)`` on itself) with a window of
      the SAME class from another position of the batch: a virtual speaker with an unchanged label.
    * time masks: a few consecutive frames set to the coefficient mean (0 after standardisation).

    The 40 MFCCs are the first rows of an orthonormal DCT of the 64 log-mel bands, so
    ``mfcc -> dct.T @ mfcc -> (edit) -> dct @`` round-trips exactly for unedited windows.
    """

    def __init__(self, definition: FeatureDefinition, mean: np.ndarray, std: np.ndarray, *, channel_db: float = 6.0,
                 warp: float = 0.0, mix_p: float = 0.0, time_masks: int = 1, mask_frames: int = 10):
        self.dct = dct_matrix(definition)  # (n_mfcc, n_mels)
        n_mels = self.dct.shape[1]
        t = (np.arange(n_mels) + 0.5) / n_mels
        self.basis = np.stack([np.cos(np.pi * k * t) for k in range(1, 5)]).astype(np.float32)  # (4, n_mels)
        self.mean = mean.astype(np.float32)[:, None]
        self.std = std.astype(np.float32)[:, None]
        self.channel_db, self.warp, self.mix_p = channel_db, warp, mix_p
        self.time_masks, self.mask_frames = time_masks, mask_frames
        # warp matrices W_a (n_mels, n_mels) for a grid of factors: band b takes the value of frequency f_b / a
        self.alphas = np.linspace(1.0 - warp, 1.0 + warp, 17) if warp > 0 else np.ones(1)
        mel_pts = np.linspace(hz_to_mel(definition.fmin), hz_to_mel(definition.fmax), n_mels + 2)
        centers_hz = mel_to_hz(mel_pts[1:-1])
        centers_mel = mel_pts[1:-1]
        mats = []
        for a in self.alphas:
            src = np.clip(hz_to_mel(centers_hz / a), centers_mel[0], centers_mel[-1])
            pos = np.interp(src, centers_mel, np.arange(n_mels))
            lo = np.floor(pos).astype(int)
            hi = np.minimum(lo + 1, n_mels - 1)
            frac = pos - lo
            W = np.zeros((n_mels, n_mels))
            W[np.arange(n_mels), lo] += 1 - frac
            W[np.arange(n_mels), hi] += frac
            mats.append(self.dct @ W @ self.dct.T)  # (n_mfcc, n_mfcc): warp in the MFCC domain
        self.warp_mats = np.stack(mats).astype(np.float32)

    def __call__(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = x.shape[0]
        raw = x * self.std + self.mean  # (n, n_mfcc, T) raw MFCC
        if self.warp > 0:
            k = rng.integers(0, len(self.alphas), n)
            raw = np.einsum("nij,njt->nit", self.warp_mats[k], raw)
        if self.channel_db > 0:
            coef = rng.normal(0.0, 1.0, (n, self.basis.shape[0])).astype(np.float32)
            coef /= np.arange(1, self.basis.shape[0] + 1, dtype=np.float32)  # smoother: less high-order EQ
            curve = coef @ self.basis  # (n, n_mels)
            peak = np.abs(curve).max(axis=1, keepdims=True) + 1e-6
            curve *= rng.uniform(0.0, self.channel_db, (n, 1)).astype(np.float32) / peak
            raw += (curve @ self.dct.T)[:, :, None]
        out = ((raw - self.mean) / self.std).astype(np.float32)
        if self.mix_p > 0:
            src = out.copy()
            for cls in (0, 1):
                idx = np.flatnonzero(y == cls)
                if idx.size < 2:
                    continue
                partner = rng.permutation(idx)
                pick = rng.random(idx.size) < self.mix_p
                lam = rng.uniform(0.6, 1.0, idx.size).astype(np.float32)[:, None, None]
                sel, par, lam = idx[pick], partner[pick], lam[pick]
                out[sel] = lam * src[sel] + (1.0 - lam) * src[par]
        T = out.shape[2]
        for _ in range(self.time_masks):
            w = rng.integers(0, self.mask_frames + 1, n)
            s0 = rng.integers(0, T, n)
            for i in np.flatnonzero(w):
                out[i, :, s0[i]:s0[i] + w[i]] = 0.0
        return out


def _make_sequence(x: np.ndarray, y: np.ndarray, batch_size: int, augment: MfccAugment | None, seed: int,
                   weight: np.ndarray | None = None):
    import keras

    class _Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(y))

        def __len__(self):
            return int(np.ceil(len(y) / batch_size))

        def __getitem__(self, i):
            idx = np.sort(self.order[i * batch_size:(i + 1) * batch_size])
            xb, yb = x[idx], y[idx]
            if augment is not None:
                xb = augment(xb, yb, self.rng)
            return (xb, yb) if weight is None else (xb, yb, weight[idx])

        def on_epoch_end(self):
            self.order = self.rng.permutation(len(y))

    return _Batches()


# --- the trained ensemble ----------------------------------------------------------------------------

@dataclass
class TrainedModels:
    """The three fitted models with everything needed to predict exactly as the exported bundle does."""

    xgb: object                       # xgboost.Booster
    cnn1d: object                     # keras.Model, sigmoid output
    cnn2d: object
    mfcc_mean: np.ndarray             # (n_mfcc,) float32
    mfcc_std: np.ndarray              # (n_mfcc,) float32
    weights: np.ndarray               # (3,) ensemble weights on the logits, in MODEL_NAMES order
    bias: float
    thresholds: dict                  # {'female': t_f, 'male': t_m}
    definition: FeatureDefinition
    stat_names: list
    config: TrainConfig
    xgb_importance: dict = field(default_factory=dict)
    history: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    check_windows: WindowSet | None = None   # real calibration windows for export checks
    _logit_models: dict = field(default_factory=dict, repr=False)
    calibration_logits: dict | None = field(default=None, repr=False)
    calibration_y: np.ndarray | None = field(default=None, repr=False)
    speech_model: object | None = None       # xgboost.Booster: speech (1) vs non-speech (0) on the stats vector
    speech_threshold: float | None = None
    speech_info: dict = field(default_factory=dict)
    file_decision: dict = field(default_factory=dict)   # {'scale', 'female', 'male', ...} for whole files
    # the voice opinion: {'probe': (weights, bias), 'embeddings': {utt: (embedding, label, reader)}, 'info'}
    voice: dict | None = None

    def p_speech(self, stats: np.ndarray) -> np.ndarray:
        """p(speech) of each window's stats (ones without a speech model)."""
        if self.speech_model is None:
            return np.ones(len(stats))
        import xgboost as xgb

        return self.speech_model.predict(xgb.DMatrix(np.asarray(stats, dtype=np.float32)))

    def normalise_mfcc(self, mfcc: np.ndarray) -> np.ndarray:
        return ((np.asarray(mfcc, dtype=np.float32) - self.mfcc_mean[:, None]) / self.mfcc_std[:, None]).astype(np.float32)

    def logit_model(self, name: str):
        """The CNN ``name`` with its sigmoid removed (what the ONNX file holds)."""
        if name not in self._logit_models:
            from .models import logit_model

            self._logit_models[name] = logit_model(getattr(self, name))
        return self._logit_models[name]

    def component_logits(self, ws: WindowSet, *, batch_size: int = 512) -> dict[str, np.ndarray]:
        """{'xgb', 'cnn1d', 'cnn2d'}: the logit each model feeds the ensemble (N,) float64."""
        import xgboost as xgb

        p_xgb = self.xgb.predict(xgb.DMatrix(np.asarray(ws.stats, dtype=np.float32)))
        out = {"xgb": logit(p_xgb, P_CLIP)}
        x = self.normalise_mfcc(ws.mfcc)
        for name in ("cnn1d", "cnn2d"):
            out[name] = keras_forward(self.logit_model(name), x, batch_size).astype(np.float64).reshape(-1)
        return out

    def predict_components(self, ws: WindowSet) -> dict[str, np.ndarray]:
        """{'xgb', 'cnn1d', 'cnn2d'}: p_female (N,) of each model."""
        return {n: sigmoid(z) for n, z in self.component_logits(ws).items()}

    def combine(self, logits: dict[str, np.ndarray]) -> np.ndarray:
        """Calibrated ensemble p_female from the components' logits."""
        z = sum(w * logits[n] for w, n in zip(self.weights, MODEL_NAMES)) + self.bias
        return sigmoid(z)

    def predict(self, ws: WindowSet) -> np.ndarray:
        """Calibrated ensemble p_female (N,)."""
        return self.combine(self.component_logits(ws))

    def label(self, p: np.ndarray) -> np.ndarray:
        p = np.asarray(p)
        return np.where(p >= self.thresholds["female"], "female", np.where(p <= self.thresholds["male"], "male", "uncertain"))


# --- fitting -----------------------------------------------------------------------------------------

def _log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def split_calibration(ws: WindowSet, fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """(fit readers, calibration readers), balanced by gender within each corpus."""
    from .splits import holdout_readers

    return holdout_readers(reader_gender_map(ws), fraction, seed=seed, strata=ws.meta.get("reader_corpus"))


def without_readers(ws: WindowSet, readers) -> tuple[WindowSet, list[str]]:
    """``ws`` without the windows of ``readers``, and which of them it held."""
    present = sorted(set(map(str, readers)) & set(map(str, np.unique(ws.reader))))
    if not present:
        return ws, []
    kept = ws.subset(~np.isin(ws.reader, present))
    if len(kept) == 0:
        raise ValueError(f"no windows left once the excluded readers are left out: {', '.join(present)}")
    return kept, present


def speaker_weights(ws: WindowSet) -> np.ndarray:
    """(N,) float32 sample weights giving every speaker the same total weight (mean weight 1).

    LibriSpeech gives one ~12 s utterance per reader, speechocean762 ten ~4.5 s ones per speaker: without
    weights a speaker's influence would follow how much audio the corpus happened to keep of them.
    """
    if len(ws) == 0:
        return np.zeros(0, dtype=np.float32)
    w = per_speaker_weights(ws.reader)
    return (w * (len(ws) / w.sum())).astype(np.float32)


def _fit_xgb(fit: WindowSet, cal: WindowSet, config: TrainConfig, stat_names: list, progress: bool):
    import xgboost as xgb

    params = dict(config.xgb_params, seed=config.seed, nthread=config.threads)
    dfit = xgb.DMatrix(fit.stats, label=fit.y.astype(np.float32),
                       weight=speaker_weights(fit) if config.speaker_balance else None)
    dcal = xgb.DMatrix(cal.stats, label=cal.y.astype(np.float32))
    evals_result: dict = {}
    booster = xgb.train(params, dfit, num_boost_round=config.xgb_rounds, evals=[(dfit, "fit"), (dcal, "cal")],
                        early_stopping_rounds=config.xgb_early_stopping, evals_result=evals_result,
                        verbose_eval=100 if progress else False)
    best = booster.best_iteration
    booster = booster[: best + 1]  # keep only the trees up to the best round (the ONNX graph gets exactly these)
    gain = booster.get_score(importance_type="gain")
    total = sum(gain.values()) or 1.0
    importance = {stat_names[int(k[1:])]: round(v / total, 6) for k, v in gain.items()}
    importance = dict(sorted(importance.items(), key=lambda kv: -kv[1]))
    hist = {"best_iteration": int(best), "rounds": int(best + 1),
            "cal_logloss": float(evals_result["cal"]["logloss"][best])}
    return booster, importance, hist


def _refit_xgb(data: WindowSet, rounds: int, config: TrainConfig):
    import xgboost as xgb

    params = dict(config.xgb_params, seed=config.seed, nthread=config.threads)
    weight = speaker_weights(data) if config.speaker_balance else None
    return xgb.train(params, xgb.DMatrix(data.stats, label=data.y.astype(np.float32), weight=weight),
                     num_boost_round=rounds)


def _refit_cnn(name: str, x, y, lr_per_epoch: list, config: TrainConfig, augment: MfccAugment | None,
               progress: bool, weight: np.ndarray | None = None):
    """A fresh CNN trained on ``x`` for exactly ``len(lr_per_epoch)`` epochs, replaying that learning-rate path."""
    import keras

    from .models import BUILDERS

    model = BUILDERS[name](x.shape[1:], variant=getattr(config, f"{name}_variant"), seed=config.seed)
    model.compile(optimizer=keras.optimizers.Adam(lr_per_epoch[0]), loss="binary_crossentropy")
    sched = keras.callbacks.LearningRateScheduler(lambda epoch, lr: float(lr_per_epoch[min(epoch, len(lr_per_epoch) - 1)]))
    data = _make_sequence(x, y.astype(np.float32), config.batch_size, augment, config.seed + 1, weight)
    _log(progress, f"[train] {name}: refit on all {len(y)} training windows for {len(lr_per_epoch)} epoch(s)")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
        model.fit(data, epochs=len(lr_per_epoch), callbacks=[sched], verbose=2 if progress else 0)
    return model


def _fit_cnn(name: str, xfit, yfit, xcal, ycal, config: TrainConfig, augment: MfccAugment | None, progress: bool,
             workdir: Path, weight: np.ndarray | None = None):
    import keras

    from .models import BUILDERS

    model = BUILDERS[name](xfit.shape[1:], variant=getattr(config, f"{name}_variant"), seed=config.seed)
    steps = int(np.ceil(len(yfit) / config.batch_size))
    if config.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(config.lr, decay_steps=steps * config.epochs,
                                                    alpha=config.min_lr / config.lr)
    elif config.lr_schedule == "plateau":
        lr = config.lr
    else:
        raise ValueError(f"lr_schedule must be 'plateau' or 'cosine', got {config.lr_schedule!r}")
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="binary_crossentropy",
                  metrics=[keras.metrics.BinaryAccuracy(name="acc"), keras.metrics.AUC(name="auc")])
    mode = "min" if config.monitor.endswith("loss") else "max"
    ckpt = workdir / f"{name}.best.weights.h5"
    callbacks = [keras.callbacks.EarlyStopping(monitor=config.monitor, mode=mode, patience=config.patience,
                                               restore_best_weights=True),
                 keras.callbacks.ModelCheckpoint(str(ckpt), monitor=config.monitor, mode=mode, save_best_only=True,
                                                 save_weights_only=True)]
    if config.lr_schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor=config.monitor, mode=mode, factor=config.lr_factor,
                                                           patience=config.lr_patience, min_lr=config.min_lr))
    _log(progress, f"[train] {name}: {model.count_params():,} parameters, {len(yfit)} fit windows, "
                   f"{len(ycal)} calibration windows")
    data = _make_sequence(xfit, yfit.astype(np.float32), config.batch_size, augment, config.seed, weight)
    with warnings.catch_warnings():  # Keras 3.15 + NumPy 2 internals, harmless
        warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
        h = model.fit(data, validation_data=(xcal, ycal.astype(np.float32)), epochs=config.epochs,
                      callbacks=callbacks, verbose=2 if progress else 0)
    if ckpt.is_file():  # EarlyStopping restores only when it triggers; the checkpoint is the best epoch
        model.load_weights(str(ckpt))
    crit = np.asarray(h.history[config.monitor])
    best = int(np.argmin(crit) if mode == "min" else np.argmax(crit))
    lrs = [float(v) for v in h.history.get("learning_rate", [config.lr] * len(crit))][: best + 1]
    return model, {"epochs_run": len(crit), "best_epoch": best + 1, "monitor": config.monitor, "lr_per_epoch": lrs,
                   "val_loss": float(h.history["val_loss"][best]), "val_acc": float(h.history["val_acc"][best]),
                   "val_auc": float(h.history["val_auc"][best]), "params": int(model.count_params())}


def platt_scale(z: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """The scale ``a`` of ``p = sigmoid(a * z)`` (Platt scaling without intercept, weighted), as the file
    decision fits it."""
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(fit_intercept=False, C=100.0, max_iter=1000)
    return float(lr.fit(np.asarray(z, dtype=np.float64)[:, None], y, sample_weight=w).coef_[0][0])


def fit_file_decision(y: np.ndarray, p: np.ndarray, utt: np.ndarray, reader: np.ndarray, target: float,
                      max_undecided: float = 0.03, voice: dict | None = None,
                      weights: tuple[float, float] | None = None) -> dict:
    """The file-level verdict, fitted on held-out speakers' files (clean windows of the calibration readers).

    A file's evidence is the mean log-odds ``z`` of its windows. ``scale`` calibrates it (Platt scaling without
    intercept, every speaker weighted the same): ``p_file = sigmoid(scale * z)``; averaging windows makes the
    evidence stronger than one window's, which the per-window band ignored. With ``voice`` ({utt: the voice
    opinion's logit}), ``scale`` and ``voice_weight`` are fitted together on the files that have one:
    ``p_file = sigmoid(scale * z + voice_weight * voice logit)`` (a file without one: the window term). The uncertain band
    ``0.5 +- delta`` is the narrowest (delta in 0, 0.025, ..., 0.4) whose decided files are at least
    ``target`` right (balanced over the genders), but never so wide that more than ``max_undecided`` of the
    calibration files fall inside it: an undecided file is as useless to a user as a wrong one, and a band
    fitted wide on one corpus left half of another corpus's files undecided (leave-one-corpus-out).

    ``weights`` = (window weight, voice weight) measured across corpora (``TrainConfig.file_weights``): with a
    voice opinion, ``scale`` is the window weight and ``voice_weight`` the voice weight times the probe's own
    Platt scale on these files (its in-domain calibration); the weights fitted here on held-out speakers of the
    training corpora are kept as ``in_domain_scale`` / ``in_domain_voice_weight``. Fitted in-domain, the window
    models (which know these corpora) can outweigh the voice many times (the 2026-12-03 release's fit: ~15 to 1
    on real files), and the fits vary widely from one calibration sample to the next; on a corpus neither has
    heard, the voice is the steadier opinion (MODEL_CARD.md). A file without a voice opinion is judged by the
    windows at their own Platt scale (``scale_without_voice``).
    """
    from sklearn.linear_model import LogisticRegression

    from .metrics import EPS, utterance_scores

    u = utterance_scores(y, p, utt, reader)
    z = logit(u["p"], EPS)
    w = per_speaker_weights(u["reader"])
    if len(np.unique(u["y"])) < 2:
        return {}
    zv = np.array([voice.get(str(k), np.nan) if voice else np.nan for k in u["utt"]], dtype=np.float64)
    has_voice = np.isfinite(zv)
    extra = {}
    if has_voice.sum() >= 6 and len(np.unique(u["y"][has_voice])) == 2:
        X = np.stack([z, zv], axis=1)[has_voice]
        lr = LogisticRegression(fit_intercept=False, C=100.0, max_iter=1000).fit(X, u["y"][has_voice],
                                                                                 sample_weight=w[has_voice])
        scale, voice_weight = (float(max(c, 0.0)) for c in lr.coef_[0])
        scale = max(scale, 0.05)
        # each opinion's own Platt scale on the same files: its in-domain calibration, for cross-corpus analysis
        alone = [platt_scale(X[:, j], u["y"][has_voice], w[has_voice]) for j in (0, 1)]
        extra = {"voice_weight": round(voice_weight, 4), "calibration_files_with_voice": int(has_voice.sum()),
                 "scale_windows_alone": round(alone[0], 4), "scale_voice_alone": round(alone[1], 4)}
        if weights is not None and alone[1] > 0:
            extra.update(in_domain_scale=round(scale, 4), in_domain_voice_weight=extra["voice_weight"],
                         cross_corpus_weights=[float(weights[0]), float(weights[1])])
            scale, voice_weight = max(float(weights[0]), 0.05), float(weights[1]) * alone[1]
            extra["voice_weight"] = round(voice_weight, 4)
            extra["scale_without_voice"] = round(max(alone[0], 0.05), 4)  # a file with no voice opinion
    else:
        scale, voice_weight = max(platt_scale(z, u["y"], w), 0.05), 0.0
    scale_nv = extra.get("scale_without_voice", scale)
    pf = sigmoid(np.where(has_voice, scale * z + voice_weight * np.nan_to_num(zv), scale_nv * z))
    yb = u["y"].astype(bool)
    chosen = 0.0
    for delta in np.arange(0.0, 0.4001, 0.025):
        dec = np.abs(pf - 0.5) >= delta
        if not (dec & yb).any() or not (dec & ~yb).any() or np.average(~dec, weights=w) > max_undecided:
            break
        chosen = float(delta)
        right = (pf >= 0.5) == yb
        acc = 0.5 * (np.average(right[dec & yb], weights=w[dec & yb]) + np.average(right[dec & ~yb], weights=w[dec & ~yb]))
        if acc >= target:
            break
    undecided = float(np.average(np.abs(pf - 0.5) < chosen, weights=w))
    return {"scale": round(scale, 4), **extra, "female": round(0.5 + chosen, 3), "male": round(0.5 - chosen, 3),
            "target": target, "calibration_files": int(len(z)), "calibration_speakers": int(len(np.unique(u["reader"]))),
            "calibration_undecided": round(undecided, 4)}


def _voice_probe(embeddings: dict, readers: set) -> tuple[np.ndarray, float]:
    """The probe fitted on the embedded files of ``readers``."""
    from .voice_probe import fit_probe

    rows = [v for v in embeddings.values() if v[2] in readers]
    return fit_probe(np.stack([r[0] for r in rows]), np.array([r[1] for r in rows]), np.array([r[2] for r in rows]))


def _fit_voice(trained: "TrainedModels", train: WindowSet, fit_readers: set, cal_readers: set, utterances,
               config: "TrainConfig", progress: bool) -> dict | None:
    """The voice opinion's probe on the fit readers' files (``trained.voice``), and its logit for each calibration
    file ({utt: logit}) for the file decision to weigh."""
    from .voice_probe import embed_utterances, probe_logits

    used = set(map(str, np.unique(train.utt)))
    utts = [u for u in utterances if u.utt_id in used]
    emb = embed_utterances(utts, cache_dir=config.cache_dir, progress=progress)
    embeddings = {u.utt_id: (emb[u.utt_id], u.label, u.reader) for u in utts if u.utt_id in emb}
    if len({v[1] for v in embeddings.values() if v[2] in fit_readers}) < 2:
        return None
    probe = _voice_probe(embeddings, fit_readers)
    cal = {k: v for k, v in embeddings.items() if v[2] in cal_readers}
    logits = probe_logits(np.stack([v[0] for v in cal.values()]), probe) if cal else np.zeros(0)
    trained.voice = {"probe": probe, "embeddings": embeddings,
                     "info": {"files": len(embeddings), "fit_files": sum(v[2] in fit_readers for v in embeddings.values()),
                              "calibration_files": len(cal)}}
    _log(progress, f"[train] voice opinion: {len(embeddings)} of {len(utts)} files embedded, probe on the fit readers'")
    return dict(zip(cal, logits.tolist()))


def fit_speech_model(pos_fit: np.ndarray, pos_cal: np.ndarray, neg: np.ndarray, neg_group: np.ndarray,
                     config: "TrainConfig", progress: bool = False) -> tuple[object, float, dict]:
    """XGBoost speech (1) vs non-speech (0) on stats vectors; early-stopped on calibration speakers' windows and
    a held-out fifth of the negative clips. The threshold keeps ``config.speech_recall`` of the calibration
    speech windows (and is never above 0.5). Returns (booster, threshold, info)."""
    import xgboost as xgb

    rng = np.random.default_rng(config.seed)
    groups = np.unique(neg_group)
    held = set(rng.choice(groups, size=max(1, len(groups) // 5), replace=False).tolist())
    neg_cal_mask = np.isin(neg_group, sorted(held))
    neg_fit, neg_cal = neg[~neg_cal_mask], neg[neg_cal_mask]

    def dmatrix(pos, negs):
        x = np.concatenate([pos, negs]).astype(np.float32)
        y = np.concatenate([np.ones(len(pos)), np.zeros(len(negs))]).astype(np.float32)
        w = np.concatenate([np.full(len(pos), 0.5 / max(len(pos), 1)), np.full(len(negs), 0.5 / max(len(negs), 1))])
        return xgb.DMatrix(x, label=y, weight=w * len(y))

    params = dict(config.xgb_params, seed=config.seed, nthread=config.threads, max_depth=4)
    dfit, dcal = dmatrix(pos_fit, neg_fit), dmatrix(pos_cal, neg_cal)
    booster = xgb.train(params, dfit, num_boost_round=600, evals=[(dcal, "cal")], early_stopping_rounds=40,
                        verbose_eval=False)
    trees = int(booster.best_iteration + 1)
    booster = booster[:trees]
    p_pos = booster.predict(xgb.DMatrix(pos_cal.astype(np.float32)))
    p_neg = booster.predict(xgb.DMatrix(neg_cal.astype(np.float32)))
    threshold = float(min(0.5, np.quantile(p_pos, 1.0 - config.speech_recall)))
    threshold = max(threshold, 1e-3)
    info = {"trees": trees, "speech_windows_fit": int(len(pos_fit)),
            "nonspeech_windows_fit": int(len(neg_fit)), "threshold": round(threshold, 5),
            "calibration_speech_kept": float(np.mean(p_pos >= threshold)),
            "heldout_nonspeech_rejected": float(np.mean(p_neg < threshold)) if len(p_neg) else None}
    _log(progress, f"[train] speech check: {info['trees']} trees, threshold {threshold:.4f}: keeps "
                   f"{100 * info['calibration_speech_kept']:.2f}% of calibration speech windows, rejects "
                   f"{100 * (info['heldout_nonspeech_rejected'] or 0):.1f}% of held-out non-speech clips' windows")
    return booster, threshold, info


def choose_thresholds(y: np.ndarray, p: np.ndarray, target: float) -> dict:
    """Symmetric uncertain band 0.5 +- delta: the smallest delta whose confident windows reach ``target`` accuracy;
    0.4 (0.10 / 0.90), the widest, when none does (``band_accuracy`` says how close it came)."""
    y = np.asarray(y).astype(bool)
    p = np.asarray(p)
    chosen = 0.40
    for delta in np.arange(0.10, 0.401, 0.05):
        conf = np.abs(p - 0.5) >= delta
        if conf.sum() == 0:
            break
        acc = float(((p[conf] >= 0.5) == y[conf]).mean())
        if acc >= target:
            chosen = float(delta)
            break
    chosen = round(chosen, 2)
    return {"female": round(0.5 + chosen, 2), "male": round(0.5 - chosen, 2)}


def band_accuracy(y: np.ndarray, p: np.ndarray, thresholds: dict) -> dict:
    """How ``thresholds`` sort windows of known gender ``y`` scored ``p`` (``offline.metrics.binary_metrics``):
    the share left uncertain and the accuracy of the rest (None when every window is uncertain)."""
    if not len(p):
        return {"uncertain_fraction": 0.0, "confident_accuracy": None}
    m = binary_metrics(y, p, thresholds=thresholds)
    return {"uncertain_fraction": m["uncertain"],
            "confident_accuracy": None if np.isnan(m["decided_accuracy"]) else m["decided_accuracy"]}


def _band_text(validation: dict) -> str:
    acc = validation["confident_accuracy"]
    return (f"{100 * validation['uncertain_fraction']:.1f} % of calibration windows uncertain, "
            f"{'-' if acc is None else f'{100 * acc:.1f}'} % right outside, target {100 * validation['band_target']:g} %")


def fit_all(train: WindowSet, *, config: TrainConfig | None = None, progress: bool = True,
            train_utterances=None, augmented: WindowSet | None = None, nonspeech=None) -> TrainedModels:
    """Fit XGBoost, both CNNs and the calibrated ensemble on ``train`` (see the module docstring).

    ``train_utterances`` (the utterances ``train`` came from) enables audio-domain augmentation; without
    them only the on-the-fly MFCC augmentation is used. ``augmented``: already computed augmented windows
    (rows of readers outside ``train`` are ignored) instead of computing them from ``train_utterances``.
    ``nonspeech``: (stats, group, info) of the speech check's negatives (default: ``training_negatives()``).
    """
    import keras
    import tensorflow as tf
    from sklearn.linear_model import LogisticRegression

    config = config or TrainConfig()
    t_start = time.perf_counter()
    try:  # only possible before TensorFlow's runtime starts; later calls keep the first setting
        tf.config.threading.set_intra_op_parallelism_threads(config.threads)
        tf.config.threading.set_inter_op_parallelism_threads(config.threads)
    except RuntimeError:
        pass
    if len(train) == 0:
        raise ValueError("fit_all needs a non-empty WindowSet")
    definition = train.definition
    if definition.hash != DEFAULT.hash:
        raise ValueError(f"training windows were computed with feature definition {definition.hash}, "
                         f"this code computes {DEFAULT.hash}; re-extract the features")
    from realtime.features import FeatureExtractor

    train, excluded = without_readers(train, config.excluded_readers())
    if excluded:
        _log(progress, f"[train] left out (label audit): {', '.join(excluded)}")
    stat_names = list(train.meta.get("stat_names") or FeatureExtractor(definition).stat_names)
    fit_readers, cal_readers = split_calibration(train, config.calib_fraction, config.seed)
    _log(progress, f"[train] {len(fit_readers)} fit readers, {len(cal_readers)} calibration readers")

    fit = train.subset(np.isin(train.reader, sorted(fit_readers)))
    cal = train.subset(np.isin(train.reader, sorted(cal_readers)))
    fit_clean, n_cal_clean = fit, len(cal)
    if (augmented is not None or train_utterances is not None) and config.augment.copies > 0:
        t0 = time.perf_counter()
        if augmented is not None:
            aug = augmented
        else:
            used = set(map(str, np.unique(train.utt)))
            utts = [u for u in train_utterances if u.utt_id in used]
            aug = augmented_windows(utts, config.augment.augmenter(config.seed), config.augment.copies,
                                    seed=config.seed, definition=definition, cache_dir=config.cache_dir,
                                    jobs=config.jobs, progress=progress)
        aug_fit = aug.subset(np.isin(aug.reader, sorted(fit_readers)))
        aug_cal = aug.subset(np.isin(aug.reader, sorted(cal_readers)))
        fit = WindowSet.concat([fit, aug_fit])
        cal = WindowSet.concat([cal, aug_cal])
        _log(progress, f"[train] augmented windows: {len(aug_fit)} fit + {len(aug_cal)} calibration "
                       f"({time.perf_counter() - t0:.1f} s)")
    timings = {}

    # normalisation from the fit readers' clean windows
    mfcc_mean = fit_clean.mfcc.mean(axis=(0, 2)).astype(np.float32)
    mfcc_std = (fit_clean.mfcc.std(axis=(0, 2)) + 1e-6).astype(np.float32)

    t0 = time.perf_counter()
    _log(progress, "[train] XGBoost on stats")
    booster, importance, xgb_hist = _fit_xgb(fit, cal, config, stat_names, progress)
    timings["xgb_s"] = round(time.perf_counter() - t0, 1)
    _log(progress, f"[train] XGBoost: {xgb_hist['rounds']} trees, calibration log-loss {xgb_hist['cal_logloss']:.4f} "
                   f"({timings['xgb_s']} s)")

    keras.utils.set_random_seed(config.seed)
    norm = lambda m: ((m - mfcc_mean[:, None]) / mfcc_std[:, None]).astype(np.float32)  # noqa: E731
    xfit, xcal = norm(fit.mfcc), norm(cal.mfcc)
    augment = None
    if config.channel_db > 0 or config.time_masks > 0 or config.warp > 0 or config.mix_p > 0:
        augment = MfccAugment(definition, mfcc_mean, mfcc_std, channel_db=config.channel_db, warp=config.warp,
                              mix_p=config.mix_p, time_masks=config.time_masks, mask_frames=config.time_mask_frames)
    history = {"xgb": xgb_hist}
    models = {}
    with tempfile.TemporaryDirectory(prefix="voicegender-train-") as tmp:
        for name in ("cnn1d", "cnn2d"):
            t0 = time.perf_counter()
            models[name], history[name] = _fit_cnn(name, xfit, fit.y, xcal, cal.y, config, augment, progress, Path(tmp),
                                                   speaker_weights(fit) if config.speaker_balance else None)
            timings[f"{name}_s"] = round(time.perf_counter() - t0, 1)
            _log(progress, f"[train] {name}: best epoch {history[name]['best_epoch']}, calibration loss "
                           f"{history[name]['val_loss']:.4f}, accuracy {history[name]['val_acc']:.4f} ({timings[f'{name}_s']} s)")

    trained = TrainedModels(xgb=booster, cnn1d=models["cnn1d"], cnn2d=models["cnn2d"], mfcc_mean=mfcc_mean,
                            mfcc_std=mfcc_std, weights=np.ones(3) / 3, bias=0.0,
                            thresholds={"female": 0.6, "male": 0.4}, definition=definition, stat_names=stat_names,
                            config=config, xgb_importance=importance, history=history)
    # ensemble weights + Platt calibration on the calibration readers
    logits = trained.component_logits(cal)
    comps = {n: sigmoid(z) for n, z in logits.items()}
    Z = np.stack([logits[n] for n in MODEL_NAMES], axis=1)
    lr = LogisticRegression(C=config.ensemble_C, fit_intercept=config.ensemble_intercept, max_iter=1000)
    lr.fit(Z, cal.y, sample_weight=speaker_weights(cal) if config.speaker_balance else None)
    trained.weights = lr.coef_[0].astype(np.float64)
    trained.bias = float(lr.intercept_[0]) if config.ensemble_intercept else 0.0
    p_cal = trained.combine(logits)
    trained.calibration_logits, trained.calibration_y = logits, cal.y.copy()
    trained.thresholds = choose_thresholds(cal.y, p_cal, config.confident_accuracy)
    clean_cal = np.arange(len(cal)) < n_cal_clean
    voice_cal = None
    if config.voice_opinion and train_utterances is not None:
        t0 = time.perf_counter()
        voice_cal = _fit_voice(trained, train, fit_readers, cal_readers, train_utterances, config, progress)
        timings["voice_s"] = round(time.perf_counter() - t0, 1)
    file_args = (cal.y[clean_cal], p_cal[clean_cal], cal.utt[clean_cal], cal.reader[clean_cal],
                 config.file_confident_accuracy, config.file_max_undecided)
    trained.file_decision = fit_file_decision(*file_args, voice=voice_cal, weights=config.file_weights)
    if trained.voice and not trained.file_decision.get("voice_weight"):  # the calibration files gave it no weight
        trained.voice = None
        trained.file_decision = fit_file_decision(*file_args)
    _log(progress, f"[train] file verdict: {trained.file_decision}")
    if config.speech_check:
        from .nonspeech import training_negatives

        t0 = time.perf_counter()
        neg, neg_group, neg_info = nonspeech if nonspeech is not None else training_negatives(
            definition=definition, augmenter=config.augment.augmenter(config.seed), seed=config.seed,
            n_per_kind=config.nonspeech_per_kind, music=tuple(config.nonspeech_music), cache_dir=config.cache_dir,
            progress=progress)
        trained.speech_model, trained.speech_threshold, trained.speech_info = fit_speech_model(
            fit.stats, cal.stats, neg, neg_group, config, progress)
        trained.speech_info["negatives"] = neg_info
        timings["speech_s"] = round(time.perf_counter() - t0, 1)
    trained.validation = {
        "note": "scores of the models fitted without the calibration readers, before any refit",
        "calibration_readers": len(cal_readers),
        "calibration_windows": len(cal),
        "balanced_accuracy_clean": {n: balanced_accuracy(cal.y[clean_cal], comps[n][clean_cal]) for n in MODEL_NAMES}
        | {"ensemble": balanced_accuracy(cal.y[clean_cal], p_cal[clean_cal])},
        "balanced_accuracy_all": {n: balanced_accuracy(cal.y, comps[n]) for n in MODEL_NAMES}
        | {"ensemble": balanced_accuracy(cal.y, p_cal)},
        # the live band on all calibration windows (augmented copies too, which chose it) and on the clean ones:
        # its uncertain share and the accuracy outside it, against the target (``confident_accuracy``)
        **band_accuracy(cal.y, p_cal, trained.thresholds),
        "band_clean": band_accuracy(cal.y[clean_cal], p_cal[clean_cal], trained.thresholds),
        "band_target": config.confident_accuracy,
    }
    if config.refit:
        # the weights, thresholds and stopping points were chosen on held-out readers; now give the models
        # the calibration readers too (25 % more voices), same trees / epochs / learning-rate path
        t0 = time.perf_counter()
        if trained.voice:
            trained.voice["probe"] = _voice_probe(trained.voice["embeddings"], fit_readers | cal_readers)
        everything = WindowSet.concat([fit, cal])
        trained.xgb = _refit_xgb(everything, xgb_hist["rounds"], config)
        xall = np.concatenate([xfit, xcal])
        for name in ("cnn1d", "cnn2d"):
            setattr(trained, name, _refit_cnn(name, xall, everything.y, history[name]["lr_per_epoch"], config, augment,
                                              progress, speaker_weights(everything) if config.speaker_balance else None))
        trained._logit_models.clear()
        timings["refit_s"] = round(time.perf_counter() - t0, 1)
        _log(progress, f"[train] refit on fit + calibration readers ({timings['refit_s']} s)")
    rng = np.random.default_rng(config.seed)
    trained.check_windows = cal.subset(np.sort(rng.choice(len(cal), size=min(len(cal), 256), replace=False)))
    timings["total_s"] = round(time.perf_counter() - t_start, 1)
    trained.history["timings"] = timings
    trained.data = {"fit_readers": len(fit_readers), "calibration_readers": len(cal_readers),
                    "fit_windows": len(fit), "calibration_windows": len(cal),
                    "train_readers": sorted(fit_readers | cal_readers),
                    "calibration_reader_ids": sorted(cal_readers), "excluded_readers": excluded}
    _log(progress, f"[train] ensemble weights {np.round(trained.weights, 3).tolist()} bias {trained.bias:.3f}; "
                   f"thresholds {trained.thresholds} ({_band_text(trained.validation)}); calibration balanced accuracy (clean) "
                   f"{trained.validation['balanced_accuracy_clean']}; total {timings['total_s']} s")
    return trained


# --- command line ------------------------------------------------------------------------------------

def add_recipe_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the training recipe (offline.train.TrainConfig), repeatable, "
                        "e.g. --set augment.p_channel=0 --set epochs=10 (augment.FIELD: a field of "
                        "offline.augment.AugmentConfig)")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """``python -m offline train [--data DIR_OR_CSV] [--out DIR (default runs/<timestamp>)] [--quick] [--seed N] [--jobs N] [--json]``."""
    from .options import add_corpus_arguments

    p = subparsers.add_parser(
        "train", help="train the three models on all readers and export the ONNX bundle",
        description="Extract features (cached), fit XGBoost + 1D CNN + 2D CNN and the calibrated ensemble on "
                    "every reader of the corpus (20% of the readers are held out inside for early stopping, "
                    "ensemble weights, calibration and thresholds), export the ONNX bundle and print a summary.")
    add_corpus_arguments(p)
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="output folder of the bundle (default: a new runs/<UTC timestamp>/; never the shipped "
                        "models/ unless given explicitly)")
    p.add_argument("--quick", action="store_true", help="tiny configuration for smoke tests (2 epochs, few trees)")
    p.add_argument("--seed", type=int, default=0, help="seed of splits, augmentation and models (default: 0)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_recipe_argument(p)
    p.set_defaults(func=run_train)
    return p


def default_run_dir(root: Path = Path("runs")) -> Path:
    """A new folder for a trained bundle: runs/<UTC timestamp> (suffixed if taken), never the shipped models/."""
    from datetime import datetime, timezone

    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out, n = root / stamp, 1
    while out.exists():
        n += 1
        out = root / f"{stamp}-{n}"
    return out


def run_train(args: argparse.Namespace) -> int:
    from .librispeech import load_corpora

    if int(round(args.window * DEFAULT.sr)) != DEFAULT.window_samples or args.hop != 0.5:
        print(f"error: train uses {DEFAULT.window_seconds} s windows with a 0.5 s hop", file=sys.stderr)
        return 2
    progress = not (args.json or args.no_progress)
    cache_dir = None if args.no_cache else str(args.cache)
    make = TrainConfig.quick if args.quick else TrainConfig
    try:
        overrides = TrainConfig.parse_overrides(args.set)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    config = make(**{"seed": args.seed, "jobs": args.jobs, "cache_dir": cache_dir, **overrides})
    t0 = time.perf_counter()
    utterances = load_corpora(args.data, subsets=args.subsets, strict=args.strict)
    ws = extract_corpus(utterances, jobs=args.jobs, cache_dir=cache_dir, progress=progress, strict=args.strict)
    t_feat = time.perf_counter() - t0
    trained = fit_all(ws, config=config, progress=progress, train_utterances=utterances)
    excluded = trained.data["excluded_readers"]      # what fit_all left out (the label audit)
    if excluded:
        ws = ws.subset(~np.isin(ws.reader, excluded))
        utterances = [u for u in utterances if u.reader not in excluded]
    summary_data = data_summary(ws, utterances)
    summary_data["excluded_readers"] = excluded
    summary_data["source"] = " + ".join(sorted({u.corpus for u in utterances}))
    summary_data["corpora"] = corpus_summary(utterances)
    from .export import export_bundle

    out = export_bundle(trained, args.out if args.out is not None else default_run_dir(), data_summary=summary_data)
    summary = {"out": str(out), "data": summary_data, "features_s": round(t_feat, 1),
               "timings": trained.history["timings"], "total_s": round(time.perf_counter() - t0, 1),
               "weights": dict(zip(MODEL_NAMES, np.round(trained.weights, 4).tolist())),
               "bias": round(trained.bias, 4), "thresholds": trained.thresholds, "validation": trained.validation}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"bundle written to {out}")
        print(f"data: {summary_data['readers']['F']} F / {summary_data['readers']['M']} M readers, "
              f"{summary_data['windows']} windows, {summary_data['hours']:.2f} h")
        print(f"time: features {summary['features_s']} s, training {trained.history['timings']['total_s']} s, "
              f"total {summary['total_s']} s")
        print(f"ensemble weights {summary['weights']} bias {summary['bias']}, thresholds {trained.thresholds}")
        for k, v in trained.validation["balanced_accuracy_clean"].items():
            print(f"  calibration readers, clean windows: balanced accuracy {k:8s} {v:.4f}")
    return 0

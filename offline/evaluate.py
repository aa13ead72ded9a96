"""``python -m offline evaluate``: how well the classifier does on readers it has never heard.

Two modes:

* **cross-validation** (default, ``--cv K``): readers are dealt into K gender-stratified folds
  (``offline.splits.reader_folds``); for each fold the three models and the calibrated ensemble are trained
  (``offline.train.fit_all``) on the other folds' readers only and scored on the fold's readers. Figures are
  mean ± std over folds (sample std), per 2 s window and per utterance (utterance p = sigmoid of the mean
  window log-odds, see ``offline.metrics``). Out-of-fold predictions are also pooled for the confusion
  matrices, ROC curves and per-reader accuracy.
* **bundle** (``--models DIR``): score a trained bundle (``realtime.bundle.Bundle``) on any LibriSpeech-layout
  folder or CSV manifest, e.g. another corpus.

``--noise`` adds the same figures with white and pink noise at 20, 10 and 5 dB SNR mixed into the test
audio (SNR over the whole utterance, deterministic noise per utterance and condition); ``--channel`` with the
test audio passed through capture channels other than LibriSpeech's wide-band one: a source sampled at
8 kHz, a telephone line (300-3400 Hz, mu-law), MP3 at ~21 kbit/s, Opus at ~9 kbit/s and a recording 20 dB
quieter. Features are re-extracted from
the altered audio and cached like clean ones. Under CV each fold's models are trained once and score the
clean and every altered version of that fold's test readers.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import platform
import shlex
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from realtime.bundle import FILE_P_CLIP, MODEL_NAMES
from realtime.logodds import logit, sigmoid

from . import metrics as M

COMPONENTS = MODEL_NAMES
MODELS = ("ensemble", *COMPONENTS)
LEVELS = ("window", "utterance", "speaker")   # a file is an utterance; a speaker pools all their windows
PLOT_LEVELS = ("window", "utterance")
NOISE_COLORS = ("white", "pink")
NOISE_SNRS = (20.0, 10.0, 5.0)
JSON_NAME = "evaluation.json"
# Targets of the project (ensemble, reader-disjoint): see models/MODEL_CARD.md
TARGETS = {"window_balanced_accuracy": 0.97, "utterance_balanced_accuracy": 0.985, "recall": 0.97,
           "window_balanced_accuracy_10db": 0.93, "speech_kept": 0.98, "nonspeech_rejected": 0.95}


# --- fixed test-time noise ---------------------------------------------------------------------------

@dataclass(frozen=True)
class FixedNoise:
    """Noise of one colour at one SNR (over the whole clip), as an ``extract_corpus`` augmenter.

    Deterministic: the noise for an utterance depends only on (seed, colour, SNR, utterance id), never on
    processing order. ``to_dict`` goes into the feature cache key.
    """

    color: str
    snr_db: float
    seed: int = 0

    def __post_init__(self) -> None:
        from .augment import COLORS

        if self.color not in COLORS:
            raise ValueError(f"color must be one of {COLORS}, got {self.color!r}")
        object.__setattr__(self, "snr_db", float(self.snr_db))

    @property
    def name(self) -> str:
        return f"{self.color}_{self.snr_db:g}"

    def to_dict(self) -> dict:
        return {"kind": "fixed_noise", "version": 1, "color": self.color, "snr_db": self.snr_db, "seed": self.seed}

    def rng_for(self, key: str, copy: int = 0, extra_seed: int = 0) -> np.random.Generator:
        tag = zlib.crc32(f"{self.color}/{self.snr_db:g}".encode())
        return np.random.default_rng([self.seed, extra_seed, tag, zlib.crc32(key.encode("utf-8")), copy])

    def __call__(self, x: np.ndarray, rng: np.random.Generator | None = None, *, sr: int = 16000) -> np.ndarray:
        from .augment import add_noise

        return add_noise(x, self.snr_db, self.color, rng, sr=sr)


def noise_conditions(seed: int = 0, snrs=NOISE_SNRS) -> list[FixedNoise]:
    return [FixedNoise(c, s, seed) for c in NOISE_COLORS for s in snrs]


@dataclass(frozen=True)
class FixedChannel:
    """A deterministic capture channel as an ``extract_corpus`` augmenter: ``offline.augment.channel`` by
    name ('8k', 'telephone', 'mp3', 'opus', and the phone codecs 'aac', 'amr'), ``gain_-20`` (the recording 20 dB quieter), or ``room`` (one
    reverberant room for every file: ``offline.augment.reverb``, RT60 0.6 s, direct/reverberant 3 dB)."""

    kind: str

    LABELS = {"8k": "8 kHz source", "telephone": "telephone (300-3400 Hz, mu-law)", "mp3": "MP3, ~21 kbit/s",
              "opus": "Opus, ~9 kbit/s", "aac": "AAC in M4A (a voice memo), 24 kbit/s",
              "amr": "AMR-NB (a phone call), 12.2 kbit/s at 8 kHz", "gain_-20": "20 dB quieter",
              "room": "room reverb (RT60 0.6 s, DRR 3 dB)"}

    def __post_init__(self) -> None:
        if self.kind not in self.LABELS:
            raise ValueError(f"kind must be one of {sorted(self.LABELS)}, got {self.kind!r}")

    @property
    def name(self) -> str:
        return f"channel_{self.kind}"

    @property
    def label(self) -> str:
        return self.LABELS[self.kind]

    def to_dict(self) -> dict:
        return {"kind": "fixed_channel", "version": 1, "channel": self.kind}

    def rng_for(self, key: str, copy: int = 0, extra_seed: int = 0) -> np.random.Generator:
        return np.random.default_rng(0)  # nothing random

    def __call__(self, x: np.ndarray, rng: np.random.Generator | None = None, *, sr: int = 16000) -> np.ndarray:
        from .augment import channel, gain, reverb

        if self.kind == "gain_-20":
            return gain(x, -20.0)
        if self.kind == "room":
            return reverb(x, 0.6, 3.0, np.random.default_rng(0), sr)
        return channel(x, self.kind, sr)


CHANNEL_KINDS = ("8k", "telephone", "mp3", "opus", "aac", "amr", "gain_-20", "room")


def channel_conditions() -> list[FixedChannel]:
    return [FixedChannel(k) for k in CHANNEL_KINDS]


def altered_conditions(*, noise: bool, channel: bool, seed: int = 0, snrs=NOISE_SNRS
                       ) -> list[tuple[str, FixedNoise | FixedChannel]]:
    """(result section, condition) for every altered version of the test audio asked for."""
    return ([("noise", c) for c in noise_conditions(seed, snrs)] if noise else []) + \
        ([("channel", c) for c in channel_conditions()] if channel else [])


def _condition_entry(cond) -> dict:
    if isinstance(cond, FixedNoise):
        return {"color": cond.color, "snr_db": cond.snr_db, "label": f"{cond.color} {cond.snr_db:g} dB"}
    return {"channel": cond.kind, "label": cond.label}


# --- scoring helpers -----------------------------------------------------------------------------------

@dataclass
class Scored:
    """Predictions for one window set: labels/ids and p_female per model."""

    y: np.ndarray
    utt: np.ndarray
    reader: np.ndarray
    p: dict[str, np.ndarray]
    fold: np.ndarray | None = None
    corpus: np.ndarray | None = None

    @classmethod
    def of(cls, ws, p: dict[str, np.ndarray], fold: int | None = None) -> "Scored":
        return cls(y=ws.y.astype(np.int64), utt=ws.utt, reader=ws.reader, p=p, corpus=ws.corpus,
                   fold=None if fold is None else np.full(len(ws), fold))

    def subset(self, mask) -> "Scored":
        return Scored(y=self.y[mask], utt=self.utt[mask], reader=self.reader[mask],
                      p={m: v[mask] for m, v in self.p.items()},
                      fold=None if self.fold is None else self.fold[mask],
                      corpus=None if self.corpus is None else self.corpus[mask])

    @property
    def corpora(self) -> list[str]:
        return [] if self.corpus is None else sorted(set(self.corpus.tolist()) - {""})

    @classmethod
    def concat(cls, items: list["Scored"]) -> "Scored":
        cat = lambda name: None if getattr(items[0], name) is None else np.concatenate(  # noqa: E731
            [getattr(s, name) for s in items])
        return cls(y=np.concatenate([s.y for s in items]), utt=np.concatenate([s.utt for s in items]),
                   reader=np.concatenate([s.reader for s in items]),
                   p={m: np.concatenate([s.p[m] for s in items]) for m in items[0].p},
                   fold=cat("fold"), corpus=cat("corpus"))


def _metrics_per_model(s: Scored, thresholds=None) -> dict:
    """{model: {'window' | 'utterance' | 'speaker': binary_metrics}}; thresholds apply to the ensemble.
    An utterance's p is the sigmoid of its windows' mean log-odds; a speaker's pools all their windows."""
    out = {}
    for m in MODELS:
        if m not in s.p:
            continue
        th = thresholds if m == "ensemble" else None
        ev = M.evaluate(s.y, s.p[m], s.utt, thresholds=th)
        spk = M.utterance_scores(s.y, s.p[m], s.reader)
        out[m] = {"window": ev["window"], "utterance": ev["utterance"],
                  "speaker": M.binary_metrics(spk["y"], spk["p"], thresholds=th)}
    return out


def _metrics_by_corpus(s: Scored, thresholds=None) -> dict:
    """{corpus: _metrics_per_model of its rows}, for scored sets holding more than one corpus."""
    names = s.corpora
    if len(names) < 2:
        return {}
    return {c: _metrics_per_model(s.subset(s.corpus == c), thresholds) for c in names}


def _summaries(per_fold: list[dict]) -> dict:
    """List over folds of _metrics_per_model -> {model: {level: {metric: mean_std}}}."""
    return {m: {lv: M.summarize_folds([f[m][lv] for f in per_fold]) for lv in LEVELS}
            for m in MODELS if all(m in f for f in per_fold)}


def _one_run_summary(metrics_per_model: dict) -> dict:
    """Bundle mode: the same {metric: {'mean', 'std', 'folds'}} shape from one evaluation (std undefined)."""
    return _summaries([metrics_per_model])


def _as_float(p) -> np.ndarray:
    return np.clip(np.asarray(p, dtype=np.float64).ravel(), 0.0, 1.0)


# --- feature extraction --------------------------------------------------------------------------------

def _extract_all(utterances, *, conditions: list, extract_kwargs: dict) -> dict:
    """{'clean': WindowSet, 'white_20': WindowSet, ...} over all utterances (cached by extract_corpus)."""
    from .dataset import extract_corpus

    sets = {"clean": extract_corpus(utterances, **extract_kwargs)}
    for _, cond in conditions:
        sets[cond.name] = extract_corpus(utterances, augment=cond, copies=1, seed=0, **extract_kwargs)
    n_clean = len(sets["clean"])
    for name, ws in sets.items():
        if len(ws) != n_clean or not np.array_equal(ws.utt, sets["clean"].utt):
            raise RuntimeError(f"noisy set {name} does not line up with the clean windows "
                               f"({len(ws)} vs {n_clean} windows)")
    return sets


# --- cross-validation ----------------------------------------------------------------------------------

def _train_config(quick: bool, **overrides):
    """The release recipe (``TrainConfig()``) or ``TrainConfig.quick()``, with overrides (``--set``, cache, jobs)."""
    from .train import TrainConfig

    return TrainConfig.quick(**overrides) if quick else TrainConfig(**overrides)


def _thresholds_of(obj) -> dict | None:
    """Decision thresholds of a trained model or bundle if it has any (attribute or meta)."""
    for cand in (getattr(obj, "thresholds", None), (getattr(obj, "meta", None) or {}).get("thresholds")):
        if cand is None:
            continue
        try:
            t = M.parse_thresholds(cand)
        except (ValueError, TypeError):
            continue
        if t is not None:
            return {"male": t[0], "female": t[1]}
    return None


def _score_trained(models, ws) -> dict[str, np.ndarray]:
    """p_female of each component and of the ensemble. Runs the models once when ``TrainedModels`` exposes
    ``component_logits``/``combine`` (what ``predict_components`` and ``predict`` are made of)."""
    if hasattr(models, "component_logits") and hasattr(models, "combine"):
        z = models.component_logits(ws)
        p = {m: _as_float(sigmoid(z[m])) for m in COMPONENTS if m in z}
        p["ensemble"] = _as_float(models.combine(z))
        return p
    comps = models.predict_components(ws)
    p = {m: _as_float(comps[m]) for m in COMPONENTS if m in comps}
    p["ensemble"] = _as_float(models.predict(ws))
    return p


def run_cv(utterances, *, k: int = 5, seed: int = 0, quick: bool = False, noise: bool = False,
           channel: bool = False, recipe: dict | None = None, extract_kwargs: dict | None = None,
           progress: bool = True, log=print, folds=None, engine_path: bool = False, snrs=NOISE_SNRS,
           rows_out: list | None = None) -> tuple[dict, dict]:
    """Speaker-disjoint k-fold CV (or the given ``folds``, e.g. leave-one-corpus-out). Returns (result dict for
    JSON, {condition: Scored} out-of-fold predictions).

    With ``engine_path`` each fold's models are also exported to an ONNX bundle and every clean test file is
    streamed through ``realtime.engine.Engine`` and given its verdict exactly as ``realtime classify`` does.
    """
    from tqdm import tqdm

    from .splits import reader_folds
    from .train import fit_all

    extract_kwargs = dict(extract_kwargs or {})
    t0 = time.perf_counter()
    conditions = altered_conditions(noise=noise, channel=channel, seed=seed, snrs=snrs)
    sets = _extract_all(utterances, conditions=conditions, extract_kwargs=extract_kwargs)
    t_features = time.perf_counter() - t0
    clean = sets["clean"]
    folds = reader_folds(utterances, k=k, seed=seed) if folds is None else list(folds)
    k = len(folds)
    cache = extract_kwargs.get("cache_dir")
    config = _train_config(quick, **{"seed": seed, "jobs": int(extract_kwargs.get("jobs", 2)),
                                     "cache_dir": None if cache is None else str(cache), **(recipe or {})})

    per_fold: dict[str, list[dict]] = {name: [] for name in sets}
    per_fold_corpus: list[dict] = []
    speech_rows: list[dict] = []
    negatives = None
    if config.speech_check:
        from .nonspeech import heldout_negatives

        negatives = heldout_negatives(definition=clean.definition)
    scored: dict[str, list[Scored]] = {name: [] for name in sets}
    engine_rows: list[dict] = []
    fold_info = []
    fold_thresholds = []
    bar = tqdm(total=k, desc="CV folds", unit="fold", disable=not progress, dynamic_ncols=True)
    try:
        for i, (train_readers, test_readers) in enumerate(folds):
            if train_readers & test_readers:  # reader_folds guarantees this; keep the check next to the use
                raise RuntimeError(f"fold {i}: readers on both sides: {sorted(train_readers & test_readers)}")
            train_mask = np.isin(clean.reader, sorted(train_readers))
            test_mask = np.isin(clean.reader, sorted(test_readers))
            train_ws = clean.subset(train_mask)
            # the release recipe: clean windows + audio-domain augmented copies of the training utterances only
            train_utts = [u for u in utterances if u.reader in train_readers]
            t_fit = time.perf_counter()
            models = fit_all(train_ws, config=config, progress=progress, train_utterances=train_utts)
            t_fit = time.perf_counter() - t_fit
            thresholds = _thresholds_of(models)
            fold_thresholds.append(thresholds)
            t_score = time.perf_counter()
            for name, ws in sets.items():
                test = ws.subset(test_mask)
                sc = Scored.of(test, _score_trained(models, test), fold=i)
                scored[name].append(sc)
                per_fold[name].append(_metrics_per_model(sc, thresholds))
                if name == "clean":
                    per_fold_corpus.append(_metrics_by_corpus(sc, thresholds))
            if negatives is not None and getattr(models, "speech_model", None) is not None:
                speech_rows.append(_speech_check_fold(models, {n: ws.subset(test_mask) for n, ws in sets.items()},
                                                      negatives))
            if engine_path:
                test_utts = [u for u in utterances if u.reader in test_readers]
                engine_rows.append(_engine_fold(models, test_utts, fold=i, log=log))
                if rows_out is not None:  # every file's verdict and raw evidence, for engine_files.npz
                    rows_out.append(engine_rows[-1])
            t_score = time.perf_counter() - t_score
            fm = per_fold["clean"][-1]["ensemble"]
            fold_info.append({
                "fold": i, "train_readers": sorted(train_readers), "test_readers": sorted(test_readers),
                "train_windows": int(train_mask.sum()), "test_windows": int(test_mask.sum()),
                "fit_seconds": round(t_fit, 1), "score_seconds": round(t_score, 1), "thresholds": thresholds,
                "ensemble_window_balanced_accuracy": fm["window"]["balanced_accuracy"],
                "ensemble_utterance_balanced_accuracy": fm["utterance"]["balanced_accuracy"],
            })
            log(f"fold {i + 1}/{k}: fit {t_fit:.0f} s, ensemble balanced accuracy "
                f"{100 * fm['window']['balanced_accuracy']:.1f}% per window, "
                f"{100 * fm['utterance']['balanced_accuracy']:.1f}% per file, "
                f"{100 * fm['speaker']['balanced_accuracy']:.1f}% per speaker")
            bar.update()
    finally:
        bar.close()

    pooled = {name: Scored.concat(items) for name, items in scored.items()}
    # Each fold has its own thresholds: the 'uncertain' shares are per fold (in "models"); pooled figures
    # (confusion matrices, ROC) use 0.5 only.
    thresholds = None
    if fold_thresholds and all(fold_thresholds):
        thresholds = {side: float(np.mean([t[side] for t in fold_thresholds])) for side in ("male", "female")}
        thresholds["per_fold"] = fold_thresholds
    corpora = sorted(per_fold_corpus[0]) if per_fold_corpus and per_fold_corpus[0] else []
    result = {
        "mode": "cv",
        "folds": k,
        "seed": seed,
        "config": "quick" if quick else "full",
        "train_config": config.to_dict(),
        "thresholds": thresholds,
        "models": _summaries(per_fold["clean"]),
        "corpora": {c: _summaries([f[c] for f in per_fold_corpus if c in f]) for c in corpora},
        "pooled": _metrics_per_model(pooled["clean"]),
        "per_reader": M.per_reader_accuracy(pooled["clean"].y, pooled["clean"].p["ensemble"],
                                            pooled["clean"].reader, pooled["clean"].utt),
        "noise": {},
        "channel": {},
        "fold_readers": fold_info,
        "feature_seconds": round(t_features, 1),
    }
    if engine_rows:
        result["engine_files"] = _engine_summary(engine_rows)
    if speech_rows:
        result["speech_check"] = {section: {k: M.mean_std([r[section][k] for r in speech_rows])
                                            for k in speech_rows[0][section]}
                                  for section in ("speech_kept", "nonspeech_rejected")}
    for section, cond in conditions:
        result[section][cond.name] = {**_condition_entry(cond), "models": _summaries(per_fold[cond.name]),
                                      "pooled": _metrics_per_model(pooled[cond.name])}
    return result, pooled


def _speech_check_fold(models, test_sets: dict, negatives: dict) -> dict:
    """Share of the fold's test speech windows the speech check keeps (each condition; per corpus on clean
    audio) and share of each held-out non-speech kind's windows it rejects."""
    t = models.speech_threshold
    kept = {}
    for name, ws in test_sets.items():
        ok = models.p_speech(ws.stats) >= t
        kept[name] = float(ok.mean()) if len(ok) else math.nan
        if name == "clean":
            corpus = ws.corpus
            for c in sorted(set(corpus.tolist()) - {""}):
                kept[f"clean, {c}"] = float(ok[corpus == c].mean())
    rejected = {kind: float((models.p_speech(st) < t).mean()) for kind, st in negatives.items() if len(st)}
    rejected["all synthetic"] = float(np.mean([v for k, v in rejected.items() if not k.startswith("music")]))
    return {"speech_kept": kept, "nonspeech_rejected": rejected}


def loco_folds(utterances) -> list[tuple[str, tuple[set[str], set[str]]]]:
    """Leave-one-corpus-out: for each corpus, (name 'A -> B', (readers of the other corpora, its readers))."""
    from .librispeech import DatasetError
    from .splits import Fold

    by_corpus: dict[str, set[str]] = {}
    for u in utterances:
        by_corpus.setdefault(u.corpus, set()).add(u.reader)
    if len(by_corpus) < 2:
        raise DatasetError(f"leave-one-corpus-out needs at least two corpora, got {sorted(by_corpus)}")
    out = []
    for name in sorted(by_corpus):
        others = set().union(*(r for c, r in by_corpus.items() if c != name))
        train_names = "+".join(sorted(c for c in by_corpus if c != name))
        out.append((f"{train_names} -> {name}", Fold(others, by_corpus[name])))
    return out


def run_loco(utterances, *, log=print, **kwargs) -> tuple[dict, dict]:
    """One training per held-out corpus (see ``loco_folds``). Returns ({direction: result of run_cv on that one
    fold, without its bulky per-reader rows}, {direction: its scored predictions})."""
    out, scored = {}, {}
    for name, fold in loco_folds(utterances):
        log(f"leave-one-corpus-out: {name}")
        before = len(kwargs.get("rows_out") or [])
        result, scored[name] = run_cv(utterances, folds=[fold], log=log, **kwargs)
        for r in (kwargs.get("rows_out") or [])[before:]:
            r["direction"] = name
        result.pop("fold_readers", None)
        out[name] = result
    return out, scored


# --- the engine path: files streamed through realtime.engine, as `realtime classify` answers -----------

def _engine_fold(models, utterances, *, fold: int, log=print) -> dict:
    """Export ``models`` to a temporary bundle and give every utterance the live engine's file verdict."""
    import tempfile

    from realtime.bundle import Bundle

    from .export import export_bundle

    with tempfile.TemporaryDirectory(prefix="voicegender-fold-") as tmp:
        export_bundle(models, tmp)
        bundle = Bundle.load(tmp)
    return _engine_verdicts(bundle, utterances, fold=fold)


def _engine_verdicts(bundle, utterances, *, fold: int = 0) -> dict:
    """Every utterance streamed through the live engine on ``bundle``: its file verdict as ``classify`` gives it,
    the windows' verdict alone and the voice opinion alone (with one), every live hop's label, and each file's
    live label (``metrics.live_label_score``: ``live_share``, ``live_last``; with a voice opinion also streamed
    again with the live voice opinion, as the console runs: ``live_voice_share``, ``live_voice_last``)."""
    from realtime.audio import load_audio
    from realtime.engine import Engine, EngineConfig, file_decision, summarise

    rows = {"y": [], "p": [], "label": [], "utt": [], "reader": [], "corpus": [], "fold": [],
            "z_windows": [], "z_voice": [], "hop_y": [], "hop_label": [], "hop_corpus": [],
            "file_decision": dict(bundle.meta.get("file_decision") or {})}
    variants = {"windows": ([], []), "voice": ([], [])}  # the verdict from the windows alone, the voice alone
    engine = Engine(bundle)
    live_engine = Engine(bundle, EngineConfig(live_voice=True)) if bundle.has_voice_opinion else None
    for u in utterances:
        x = load_audio(u.path)
        events = list(engine.run(x))  # run() starts each file from a clean state
        v = summarise(events, engine)
        streamed = [("live", events)] + ([("live_voice", list(live_engine.run(x)))] if live_engine else [])
        for key, evs in streamed:
            score = M.live_label_score(evs, u.gender == "F")
            rows.setdefault(f"{key}_share", []).append(math.nan if score is None else score[0])
            rows.setdefault(f"{key}_last", []).append(math.nan if score is None else float(score[1]))
        live = [e.label for e in events if e.p_female is not None and e.label in ("female", "male", "uncertain")]
        rows["hop_y"] += [1 if u.gender == "F" else 0] * len(live)
        rows["hop_label"] += live
        rows["hop_corpus"] += [u.corpus] * len(live)
        rows["y"].append(1 if u.gender == "F" else 0)
        rows["p"].append(math.nan if v["p_female"] is None else v["p_female"])
        rows["label"].append(v["label"])
        window_ps = [e.window_p_female for e in events if e.window_p_female is not None]
        label_w, p_w = file_decision(window_ps, bundle)
        # the raw evidence, unweighted: mean window log-odds and the voice probe's logit (nan where none)
        rows["z_windows"].append(float(np.mean(logit(np.asarray(window_ps), FILE_P_CLIP))) if window_ps else math.nan)
        pv = v.get("voice_p_female")
        rows["z_voice"].append(math.nan if pv is None else float(logit(np.asarray(pv), FILE_P_CLIP)))
        variants["windows"][0].append(label_w)
        variants["windows"][1].append(math.nan if p_w is None else p_w)
        variants["voice"][0].append(label_w if pv is None else "female" if pv >= 0.5 else "male")
        variants["voice"][1].append(p_w if pv is None else pv)
        rows["utt"].append(u.utt_id)
        rows["reader"].append(u.reader)
        rows["corpus"].append(u.corpus)
        rows["fold"].append(fold)
    if bundle.has_voice_opinion:
        for name, (labels, ps) in variants.items():
            rows[f"label_{name}"], rows[f"p_{name}"] = labels, ps
    return rows


def _file_verdict_metrics(y, label, p) -> dict:
    """Per-file figures of the engine's verdicts: balanced accuracy with 'uncertain' / 'no speech' counted
    wrong, each class's recall, the undecided share and the balanced accuracy among decided files."""
    y, label, p = np.asarray(y), np.asarray(label), np.asarray(p, dtype=np.float64)
    right = np.where(y == 1, label == "female", label == "male")
    decided = np.isin(label, ("female", "male"))
    rec = {c: float(right[y == v].mean()) if np.any(y == v) else math.nan for c, v in (("female", 1), ("male", 0))}
    dec_rec = [float(right[decided & (y == v)].mean()) for v in (0, 1) if np.any(decided & (y == v))]
    return {"balanced_accuracy": float(np.nanmean(list(rec.values()))), "recall_female": rec["female"],
            "recall_male": rec["male"], "undecided": float(1.0 - decided.mean()) if y.size else math.nan,
            "no_speech": float(np.mean(label == "no speech")) if y.size else math.nan,
            "decided_balanced_accuracy": float(np.mean(dec_rec)) if dec_rec else math.nan,
            "balanced_accuracy_at_0_5": float(np.nanmean([np.mean((p[y == v] >= 0.5) == bool(v)) for v in (0, 1)
                                                          if np.any(y == v)])),
            "n": int(y.size)}


def _live_hop_metrics(y, label) -> dict:
    """The live label of every hop with an estimate (what the console shows): the share decided (female or
    male), and the balanced accuracy of the decided hops."""
    y, label = np.asarray(y), np.asarray(label)
    decided = label != "uncertain"
    right = np.where(y == 1, label == "female", label == "male")
    rec = [float(right[decided & (y == v)].mean()) for v in (0, 1) if np.any(decided & (y == v))]
    return {"live_hops_decided": float(decided.mean()) if y.size else math.nan,
            "live_decided_balanced_accuracy": float(np.mean(rec)) if len(rec) == 2 else math.nan}


def _live_file_metrics(r: dict, m) -> dict:
    """The live label balanced over files (``_engine_verdicts``' ``live_*`` rows, files of mask ``m``): each
    file's share of speech hops labelled right and its last estimate, without and with the live voice opinion."""
    out = {}
    for key, name in (("live", "live_label"), ("live_voice", "live_voice_label")):
        if f"{key}_share" not in r:
            continue
        y = np.asarray(r["y"])[m]
        for col, metric in (("share", f"{name}_balanced_accuracy"), ("last", f"{name}_last_balanced_accuracy")):
            v = np.asarray(r[f"{key}_{col}"], dtype=np.float64)[m]
            out[metric] = M.balanced_over_files(y[~np.isnan(v)], v[~np.isnan(v)])
    return out


LIVE_FILE_COLUMNS = ("live_share", "live_last", "live_voice_share", "live_voice_last")  # per file, _engine_verdicts
LIVE_FILE_KEYS = ("live_label_balanced_accuracy", "live_label_last_balanced_accuracy",
                  "live_voice_label_balanced_accuracy", "live_voice_label_last_balanced_accuracy")


def _engine_summary(rows: list[dict]) -> dict:
    """Per-fold engine-path file figures (all files and per corpus) -> mean ± std, plus the pooled counts."""
    per_fold, per_corpus = [], {}
    for r in rows:
        hop_y, hop_label = np.asarray(r.get("hop_y", [])), np.asarray(r.get("hop_label", []))
        every = np.ones(len(r["y"]), bool)
        per_fold.append({**_file_verdict_metrics(r["y"], r["label"], r["p"]), **_live_hop_metrics(hop_y, hop_label),
                         **_live_file_metrics(r, every)})
        corpus, hop_corpus = np.asarray(r["corpus"]), np.asarray(r.get("hop_corpus", []))
        names = sorted(set(corpus.tolist()))
        if len(names) > 1:
            for c in names:
                m, h = corpus == c, hop_corpus == c
                per_corpus.setdefault(c, []).append({
                    **_file_verdict_metrics(np.asarray(r["y"])[m], np.asarray(r["label"])[m], np.asarray(r["p"])[m]),
                    **_live_hop_metrics(hop_y[h], hop_label[h]), **_live_file_metrics(r, m)})
    keys = ("balanced_accuracy", "recall_female", "recall_male", "undecided", "no_speech",
            "decided_balanced_accuracy", "balanced_accuracy_at_0_5", "live_hops_decided",
            "live_decided_balanced_accuracy")
    keys += tuple(k for k in LIVE_FILE_KEYS if per_fold and all(k in f for f in per_fold))
    summ = lambda items: {k: M.mean_std([f[k] for f in items]) for k in keys}  # noqa: E731
    out = {"all": summ(per_fold), "corpora": {c: summ(v) for c, v in per_corpus.items()},
           "files": int(sum(len(r["y"]) for r in rows))}
    # with a voice opinion: the same files judged by the windows alone and by the voice alone (where it had
    # speech enough; else the windows' verdict), to show what each brings
    for name in ("windows", "voice"):
        if rows and all(f"label_{name}" in r for r in rows):
            out[f"{name}_only"] = _variant_summary(rows, f"label_{name}", f"p_{name}", keys[:7])
    return out


def _variant_summary(rows: list[dict], label_key: str, p_key: str, keys) -> dict:
    """Per-fold file figures of another verdict of the same files (all, and per corpus) -> mean ± std."""
    def summ(masks):
        per = [_file_verdict_metrics(np.asarray(r["y"])[m], np.asarray(r[label_key])[m], np.asarray(r[p_key])[m])
               for r, m in masks if m.any()]
        return {k: M.mean_std([f[k] for f in per]) for k in keys}
    corpora = sorted(set().union(*(set(r["corpus"]) for r in rows)))
    corpora = corpora if len(corpora) > 1 else []  # as _engine_summary: per-corpus rows only for several
    return {"all": summ([(r, np.ones(len(r["y"]), bool)) for r in rows]),
            "corpora": {c: summ([(r, np.asarray(r["corpus"]) == c) for r in rows]) for c in corpora}}


# --- bundle mode ---------------------------------------------------------------------------------------

def _bundle_predict(bundle, ws, batch: int = 1024) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(ws), batch):
        out = bundle.predict(ws.stats[start:start + batch], ws.mfcc[start:start + batch])
        for key, value in out.items():
            name = "ensemble" if key == "p_female" else key
            if name in MODELS:
                parts.setdefault(name, []).append(np.atleast_1d(np.asarray(value, dtype=np.float64)).ravel())
    return {m: _as_float(np.concatenate(v)) for m, v in parts.items()}


def _bundle_training_readers(meta: dict) -> set[str]:
    """Readers the bundle was trained on, as ``offline.export`` records them (``training.split.train_readers``);
    none for a bundle that does not record its training split."""
    split = (meta.get("training") or {}).get("split") or {}
    return set(map(str, split.get("train_readers") or []))


def run_bundle(utterances, models_dir: Path, *, noise: bool = False, channel: bool = False, seed: int = 0,
               extract_kwargs: dict | None = None, log=print, engine_path: bool = False) -> tuple[dict, dict]:
    """Score the bundle in ``models_dir`` on every utterance (``engine_path``: also give every clean file the live
    engine's verdict, as ``realtime classify`` does). Returns (result dict, {condition: Scored})."""
    from realtime.bundle import Bundle

    bundle = Bundle.load(models_dir)
    meta = dict(getattr(bundle, "meta", {}) or {})
    thresholds = _thresholds_of(bundle)
    conditions = altered_conditions(noise=noise, channel=channel, seed=seed)
    sets = _extract_all(utterances, conditions=conditions, extract_kwargs=dict(extract_kwargs or {}))
    scored = {}
    for name, ws in sets.items():
        scored[name] = Scored.of(ws, _bundle_predict(bundle, ws))
    seen = _bundle_training_readers(meta) & set(sets["clean"].reader.tolist())
    training = (meta.get("training") or {}).get("data")
    if seen:
        log(f"warning: {len(seen)} of the evaluated readers were in the bundle's training data; "
            f"these figures are not held-out")
    clean = scored["clean"]
    result = {
        "mode": "bundle",
        "models_dir": str(models_dir),
        "folds": None,
        "seed": seed,
        "thresholds": thresholds,
        "bundle": {"format_version": meta.get("format_version"), "created": meta.get("created"),
                   "feature_hash": (meta.get("feature") or {}).get("hash"), "training_data": training},
        "readers_seen_in_training": sorted(seen),
        "models": _one_run_summary(_metrics_per_model(clean, thresholds)),
        "corpora": {c: _one_run_summary(m) for c, m in _metrics_by_corpus(clean, thresholds).items()},
        "pooled": _metrics_per_model(clean, thresholds),
        "per_reader": M.per_reader_accuracy(clean.y, clean.p["ensemble"], clean.reader, clean.utt),
        "noise": {},
        "channel": {},
    }
    for section, cond in conditions:
        s = scored[cond.name]
        per_model = _metrics_per_model(s, thresholds)
        result[section][cond.name] = {**_condition_entry(cond), "models": _one_run_summary(per_model),
                                      "pooled": per_model}
    if engine_path:
        result["engine_files"] = _engine_summary([_engine_verdicts(bundle, utterances)])
    return result, scored


# --- reporting -----------------------------------------------------------------------------------------

def _fmt(stat: dict, pct: bool = True) -> str:
    mean, std = stat.get("mean"), stat.get("std")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if pct:
        text = f"{100 * mean:5.1f}"
        if std is not None and not (isinstance(std, float) and math.isnan(std)):
            text += f" ± {100 * std:3.1f}"
        return text
    text = f"{mean:.3f}"
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        text += f" ± {std:.3f}"
    return text


TABLE_METRICS = (("balanced_accuracy", "bal.acc %", True), ("recall_female", "recall F %", True),
                 ("recall_male", "recall M %", True), ("auc", "AUC", False))  # (key, column, as percent)


def format_table(result: dict) -> str:
    """The figures as a plain-text table (mean ± std over folds in CV mode)."""
    lines = []
    d = result.get("data_summary", {})
    if result["mode"] == "cv":
        head = (f"Speaker-disjoint {result['folds']}-fold cross-validation ({result['config']} training config), "
                f"mean ± std over folds")
    elif result["mode"] == "loco":
        head = (f"Leave-one-corpus-out (no K-fold run); the condition rows are the first direction, "
                f"trained {next(iter(result.get('loco') or {'?': 0}))}")
    else:
        head = f"Bundle {result['models_dir']} scored on every utterance"
    lines.append(head)
    if d:
        lines.append(f"data: {d.get('data')}: {d.get('readers')} readers ({d.get('readers_female')} F / "
                     f"{d.get('readers_male')} M), {d.get('utterances')} utterances, {d.get('windows')} windows")
    rows = []

    def add(cond: str, models: dict):
        for m in MODELS:
            if m not in models:
                continue
            cells = [_fmt(models[m][lv][key], pct) for lv in LEVELS for key, _, pct in TABLE_METRICS]
            rows.append([cond, m] + cells)

    add("clean", result["models"])
    for corpus, models in (result.get("corpora") or {}).items():
        add(f"clean, {corpus} only", models)
    for section in ("noise", "channel"):
        for entry in result.get(section, {}).values():
            add(_label(entry), entry["models"])
    for direction, r in (result.get("loco") or {}).items():
        add(f"trained {direction}", {"ensemble": r["models"]["ensemble"]})
    header = ["condition", "model"] + [label for _ in LEVELS for _, label, _ in TABLE_METRICS]
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    sep = "  "
    n_m = len(TABLE_METRICS)
    group_w = [sum(widths[2 + g * n_m: 2 + (g + 1) * n_m]) + len(sep) * (n_m - 1) for g in range(len(LEVELS))]
    lead = sum(widths[:2]) + len(sep) * 2
    lines.append(" " * lead + sep.join(f"per {lv}".center(w, "-") for lv, w in zip(LEVELS, group_w)))
    lines.append(sep.join(h.ljust(w) for h, w in zip(header, widths)))
    last = None
    for r in rows:
        if last is not None and r[0] != last:
            lines.append("")
        last = r[0]
        lines.append(sep.join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    if result.get("thresholds") and "uncertain" in result["models"].get("ensemble", {}).get("window", {}):
        u = result["models"]["ensemble"]
        t = result["thresholds"]
        per = " (mean of the folds' thresholds)" if "per_fold" in t else ""
        lines.append(f"ensemble 'uncertain' share (p between {t['male']:.3g} and {t['female']:.3g}{per}): "
                     f"{_fmt(u['window']['uncertain'])} % of windows, {_fmt(u['utterance']['uncertain'])} % of "
                     f"utterances")
    lines.extend(engine_lines(result))
    lines.extend(speech_check_lines(result))
    seen = result.get("readers_seen_in_training") or []
    if seen:
        lines.append(f"warning: {len(seen)} of the {d.get('readers', '?')} readers were in the bundle's training data: "
                     f"these figures are not held-out")
    lines.append("")
    lines.extend(target_lines(result))
    return "\n".join(lines)


def speech_check_lines(result: dict) -> list[str]:
    """The speech / non-speech check: speech windows kept, held-out non-speech windows rejected."""
    sc = result.get("speech_check")
    if not sc:
        return []
    kept = "  ".join(f"{k} {_fmt(v)}" for k, v in sc["speech_kept"].items())
    rej = "  ".join(f"{k} {_fmt(v)}" for k, v in sc["nonspeech_rejected"].items())
    return ["", "speech check (bundle's speech / non-speech model), % of test speech windows kept:", f"  {kept}",
            "% of held-out non-speech windows given no gender:", f"  {rej}"]


def engine_lines(result: dict) -> list[str]:
    """The engine-path file verdicts (K-fold and leave-one-corpus-out), one line per group."""
    rows = []
    if result.get("engine_files") and result.get("mode") != "loco":
        rows.append(("K-fold CV" if result.get("mode") == "cv" else "bundle", result["engine_files"]))
    for direction, r in (result.get("loco") or {}).items():
        if r.get("engine_files"):
            rows.append((f"trained {direction}", r["engine_files"]))
    if not rows:
        return []
    out = ["", "file verdicts through the live engine (VAD, smoothing, summarise; 'uncertain' and 'no speech' "
               "count wrong):"]
    for name, e in rows:
        for group, m in [("all", e["all"])] + list(e.get("corpora", {}).items()):
            out.append(f"  {name:<36} {group:<16} bal.acc {_fmt(m['balanced_accuracy'])} %  recall F "
                       f"{_fmt(m['recall_female'])} / M {_fmt(m['recall_male'])} %  undecided "
                       f"{_fmt(m['undecided'])} %  decided bal.acc {_fmt(m['decided_balanced_accuracy'])} %  "
                       f"live hops decided {_fmt(m.get('live_hops_decided', {}))} % "
                       f"(bal.acc {_fmt(m.get('live_decided_balanced_accuracy', {}))} %)")
            if "live_label_balanced_accuracy" in m:
                out.append(f"    {'live label (speech hops right / last)':<34} {group:<16} windows alone "
                           f"{_fmt(m['live_label_balanced_accuracy'])} / {_fmt(m['live_label_last_balanced_accuracy'])} %"
                           + (f"  with the live voice opinion {_fmt(m['live_voice_label_balanced_accuracy'])} / "
                              f"{_fmt(m['live_voice_label_last_balanced_accuracy'])} %"
                              if "live_voice_label_balanced_accuracy" in m else ""))
        for variant, what in (("windows_only", "windows alone"), ("voice_only", "voice opinion alone")):
            for group, m in [("all", e[variant]["all"])] + list(e[variant]["corpora"].items()) if variant in e else []:
                out.append(f"    {what:<34} {group:<16} bal.acc {_fmt(m['balanced_accuracy'])} %  recall F "
                           f"{_fmt(m['recall_female'])} / M {_fmt(m['recall_male'])} %  undecided "
                           f"{_fmt(m['undecided'])} %")
    return out


def _label(entry: dict) -> str:
    """A condition's row label (results written before labels were stored have colour and SNR only)."""
    return entry.get("label") or f"{entry['color']} {entry['snr_db']:g} dB"


def _md(stat: dict, pct: bool = True) -> str:
    return _fmt(stat, pct).strip()


def format_markdown(result: dict) -> str:
    """Markdown tables (model card): every model on clean audio; ensemble (+ each model's window balanced
    accuracy) under each noise condition. Percentages; mean ± std over folds in CV mode."""
    out = []
    head = "| model | " + " | ".join(f"{lv} {label}" for lv in LEVELS for _, label, _ in TABLE_METRICS) + " |"
    out += ["**Clean audio**", "", head, "|" + "---|" * (1 + len(LEVELS) * len(TABLE_METRICS))]
    for m in MODELS:
        if m in result["models"]:
            cells = [_md(result["models"][m][lv][key], pct) for lv in LEVELS for key, _, pct in TABLE_METRICS]
            name = f"**{m}**" if m == "ensemble" else m
            out.append(f"| {name} | " + " | ".join(cells) + " |")
    comps = [m for m in COMPONENTS if m in result["models"]]
    for section, title in (("noise", "Noise added to the test audio"),
                           ("channel", "Test audio through other capture channels")):
        if not result.get(section):
            continue
        out += ["", f"**{title}** (ensemble; last columns: each model's window balanced accuracy)", "",
                f"| {section} | window bal.acc % | window recall F % | window recall M % | utterance bal.acc % | "
                "utterance recall F % | utterance recall M % | " + " | ".join(f"{m} window bal.acc %" for m in comps)
                + " |",
                "|" + "---|" * (7 + len(comps))]
        rows = [("clean", result["models"])] + [(_label(e), e["models"]) for e in result[section].values()]
        for label, models in rows:
            e = models["ensemble"]
            cells = [_md(e[lv][k]) for lv in LEVELS for k in ("balanced_accuracy", "recall_female", "recall_male")]
            cells += [_md(models[m]["window"]["balanced_accuracy"]) for m in comps]
            out.append(f"| {label} | " + " | ".join(cells) + " |")
    groups = [] if result.get("mode") == "loco" else (
        [("all corpora", result["models"])] + [(c, m) for c, m in (result.get("corpora") or {}).items()])
    groups += [(f"trained {d}", r["models"]) for d, r in (result.get("loco") or {}).items()]
    if groups:
        out += ["", "**Ensemble by corpus and protocol** (balanced accuracy %, recall F / M %)", "",
                "| rows | per window | per file | per speaker | window recall F / M | file recall F / M |",
                "|---|---|---|---|---|---|"]
        for label, models in groups:
            e = models["ensemble"]
            rec = lambda lv: f"{_md(e[lv]['recall_female'])} / {_md(e[lv]['recall_male'])}"  # noqa: E731
            out.append(f"| {label} | {_md(e['window']['balanced_accuracy'])} | "
                       f"{_md(e['utterance']['balanced_accuracy'])} | {_md(e['speaker']['balanced_accuracy'])} | "
                       f"{rec('window')} | {rec('utterance')} |")
    rows = [] if result.get("mode") == "loco" else [("K-fold CV", result.get("engine_files"))]
    rows += [(f"trained {d}", r.get("engine_files")) for d, r in (result.get("loco") or {}).items()]
    rows = [(n, e) for n, e in rows if e]
    if rows:
        out += ["", "**File verdicts through the live engine** (`realtime classify`'s answer; 'uncertain' and "
                    "'no speech' count wrong)", "",
                "| protocol | files | balanced accuracy % | recall F / M % | undecided % | decided balanced accuracy % "
                "| live hops decided % | decided live hops balanced accuracy % | live label: speech hops right / "
                "last estimate, balanced over files % | the same with the live voice opinion % |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        pair = lambda m, k: (f"{_md(m[f'{k}_balanced_accuracy'])} / {_md(m[f'{k}_last_balanced_accuracy'])}"  # noqa: E731
                             if f"{k}_balanced_accuracy" in m else "")
        for name, e in rows:
            for group, m in [("all", e["all"])] + list(e.get("corpora", {}).items()):
                out.append(f"| {name} | {group} | {_md(m['balanced_accuracy'])} | {_md(m['recall_female'])} / "
                           f"{_md(m['recall_male'])} | {_md(m['undecided'])} | {_md(m['decided_balanced_accuracy'])} "
                           f"| {_md(m.get('live_hops_decided', {}))} | {_md(m.get('live_decided_balanced_accuracy', {}))} "
                           f"| {pair(m, 'live_label')} | {pair(m, 'live_voice_label')} |")
    sc = result.get("speech_check")
    if sc:
        out += ["", "**Speech check**: % of test speech windows kept / % of held-out non-speech windows given no "
                    "gender", "", "| speech windows kept | % | | non-speech rejected | % |", "|---|---|---|---|---|"]
        kept, rej = list(sc["speech_kept"].items()), list(sc["nonspeech_rejected"].items())
        for i in range(max(len(kept), len(rej))):
            a = kept[i] if i < len(kept) else ("", None)
            b = rej[i] if i < len(rej) else ("", None)
            out.append(f"| {a[0]} | {_md(a[1]) if a[1] else ''} | | {b[0]} | {_md(b[1]) if b[1] else ''} |")
    return "\n".join(out)


def target_check(result: dict) -> dict:
    """Which of the project's targets the ensemble meets (mean over folds)."""
    ens = result["models"].get("ensemble")
    if not ens:
        return {}

    def mean(x):
        v = x.get("mean")
        return math.nan if v is None else v

    out = {
        "window_balanced_accuracy": {"target": TARGETS["window_balanced_accuracy"],
                                     "value": mean(ens["window"]["balanced_accuracy"])},
        "utterance_balanced_accuracy": {"target": TARGETS["utterance_balanced_accuracy"],
                                        "value": mean(ens["utterance"]["balanced_accuracy"])},
    }
    for lv in LEVELS:
        for cls in ("female", "male"):
            out[f"{lv}_recall_{cls}"] = {"target": TARGETS["recall"], "value": mean(ens[lv][f"recall_{cls}"])}
    for name, entry in result.get("noise", {}).items():
        if entry["snr_db"] == 10.0 and "ensemble" in entry["models"]:
            out[f"window_balanced_accuracy_{name}"] = {
                "target": TARGETS["window_balanced_accuracy_10db"],
                "value": mean(entry["models"]["ensemble"]["window"]["balanced_accuracy"])}
    for name, entry in result.get("channel", {}).items():
        if name not in ("channel_gain_-20", "channel_room") and "ensemble" in entry["models"]:  # the channels
            out[f"window_balanced_accuracy_{name}"] = {
                "target": TARGETS["window_balanced_accuracy_10db"],
                "value": mean(entry["models"]["ensemble"]["window"]["balanced_accuracy"])}
    ef = (result.get("engine_files") or {}).get("all")
    if ef:
        out["engine_file_balanced_accuracy"] = {"target": TARGETS["utterance_balanced_accuracy"],
                                                "value": mean(ef["balanced_accuracy"])}
        out["engine_files_decided"] = {"target": 0.97, "value": 1.0 - mean(ef["undecided"])}
        out["engine_decided_file_balanced_accuracy"] = {"target": TARGETS["utterance_balanced_accuracy"],
                                                        "value": mean(ef["decided_balanced_accuracy"])}
    sc = result.get("speech_check")
    if sc:
        out["speech_windows_kept"] = {"target": TARGETS["speech_kept"], "value": mean(sc["speech_kept"]["clean"])}
        out["nonspeech_windows_rejected"] = {
            "target": TARGETS["nonspeech_rejected"],
            "value": min(mean(v) for v in sc["nonspeech_rejected"].values())}
    for v in out.values():
        v["met"] = bool(v["value"] >= v["target"]) if not math.isnan(v["value"]) else False
    return out


def target_lines(result: dict) -> list[str]:
    checks = result.get("targets") or target_check(result)
    if not checks:
        return []
    lines = ["targets (ensemble, mean over folds):" if result.get("mode") == "cv" else "targets (ensemble):"]
    for name, v in checks.items():
        value = "-" if v["value"] is None or math.isnan(v["value"]) else f"{100 * v['value']:.1f}%"
        lines.append(f"  {'met    ' if v['met'] else 'NOT met'}  {name:<40} {value:>7}  (target >= {100 * v['target']:.0f}%)")
    return lines


def make_plots(result: dict, scored: dict, out_dir: Path) -> list[Path]:
    """PNG figures into ``out_dir``; returns their paths."""
    from . import plots

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clean = scored["clean"]
    tag = f"{result['folds']}-fold CV, out-of-fold" if result["mode"] == "cv" else "bundle"
    paths = []
    ens = result["pooled"]["ensemble"]
    paths.append(plots.confusion_matrix(ens["window"]["confusion"], out_dir / "confusion_window.png",
                                        title=f"Ensemble per 2 s window ({tag})"))
    paths.append(plots.confusion_matrix(ens["utterance"]["confusion"], out_dir / "confusion_utterance.png",
                                        title=f"Ensemble per utterance ({tag})"))
    curves = {}
    for lv in PLOT_LEVELS:
        curves[lv] = {}
        for m in MODELS:
            if m not in clean.p:
                continue
            if lv == "window":
                y, p = clean.y, clean.p[m]
            else:
                u = M.utterance_scores(clean.y, clean.p[m], clean.utt)
                y, p = u["y"], u["p"]
            fpr, tpr = M.roc_curve(y, p)
            curves[lv][m] = (fpr, tpr, result["pooled"][m][lv]["auc"])
    paths.append(plots.roc_curves(curves, out_dir / "roc.png", title=f"ROC, clean audio ({tag})"))
    paths.append(plots.reader_accuracy(result["per_reader"], out_dir / "reader_accuracy.png",
                                       title=f"Ensemble window accuracy per reader ({tag})"))
    if result.get("noise"):
        for lv in PLOT_LEVELS:
            series: dict[str, dict[str, dict[float, tuple]]] = {}
            for entry in result["noise"].values():
                for m in MODELS:
                    if m in entry["models"]:
                        st = entry["models"][m][lv]["balanced_accuracy"]
                        series.setdefault(entry["color"], {}).setdefault(m, {})[entry["snr_db"]] = (st["mean"], st["std"])
            clean_pts = {m: (result["models"][m][lv]["balanced_accuracy"]["mean"],
                             result["models"][m][lv]["balanced_accuracy"]["std"]) for m in result["models"]}
            target = TARGETS["window_balanced_accuracy_10db"] if lv == "window" else None
            paths.append(plots.accuracy_vs_snr(series, out_dir / f"accuracy_vs_snr_{lv}.png", clean=clean_pts,
                                               title=f"Balanced accuracy per {lv} vs noise ({tag})",
                                               ylabel=f"balanced accuracy per {lv}", target=target))
    return paths


def _save_engine_files(rows: list[dict], path: Path) -> Path:
    """Every engine-path file of every fold or direction, one row each: its label, verdict and p, the raw
    evidence (``z_windows``: mean window log-odds; ``z_voice``: the voice probe's logit), the file's live label
    (``live_*``, see ``_engine_verdicts``) and the fold's fitted file decision (``decision_*``), so another way
    of weighing the two can be scored without retraining."""
    cols: dict[str, list] = {}
    per_file = ("y", "p", "label", "utt", "reader", "corpus", "fold", "z_windows", "z_voice")
    for r in rows:
        n = len(r["y"])
        for key in per_file:
            cols.setdefault(key, []).extend(r[key])
        for key in LIVE_FILE_COLUMNS:  # the live voice's only where the fold's bundle had a voice opinion
            cols.setdefault(key, []).extend(r.get(key, [math.nan] * n))
        cols.setdefault("direction", []).extend([r.get("direction", "")] * n)
        fd = r.get("file_decision") or {}
        for key in ("scale", "voice_weight", "scale_windows_alone", "scale_voice_alone", "in_domain_scale",
                    "in_domain_voice_weight"):
            cols.setdefault(f"decision_{key}", []).extend([float(fd.get(key, math.nan))] * n)
    arrays = {k: np.asarray(v, dtype=str if k in ("label", "utt", "reader", "corpus", "direction") else None)
              for k, v in cols.items()}
    np.savez_compressed(path, **arrays)
    return path


def _save_predictions(scored: dict, path: Path) -> Path:
    arrays = {}
    for name, s in scored.items():
        arrays[f"{name}/y"] = s.y
        arrays[f"{name}/utt"] = s.utt
        arrays[f"{name}/reader"] = s.reader
        if s.fold is not None:
            arrays[f"{name}/fold"] = s.fold
        for m, p in s.p.items():
            arrays[f"{name}/p_{m}"] = p.astype(np.float32)
    np.savez_compressed(path, **arrays)
    return path


# --- command line --------------------------------------------------------------------------------------

def _command_line() -> str:
    argv = list(sys.argv)
    if argv and Path(argv[0]).parts[-2:] == ("offline", "__main__.py"):
        return "python -m offline " + shlex.join(argv[1:])
    return shlex.join(argv)


def _data_summary(utterances, ws, data) -> dict:
    from collections import Counter

    readers = {u.reader: u.gender for u in utterances}
    g = Counter(readers.values())
    return {"data": str(data), "readers": len(readers), "readers_female": g.get("F", 0),
            "readers_male": g.get("M", 0), "utterances": len(utterances),
            "utterances_used": int(len(set(ws.utt.tolist()))),
            "audio_hours": round(sum(u.duration for u in utterances) / 3600.0, 3), "windows": len(ws),
            "windows_female": int((ws.y == 1).sum()), "windows_male": int((ws.y == 0).sum())}


def evaluate_command(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from realtime.features import DEFAULT

    from .librispeech import load_corpora

    t0 = time.perf_counter()
    started = _dt.datetime.now().astimezone()
    progress = not args.no_progress
    extract_kwargs = dict(definition=DEFAULT, window_s=args.window, hop_s=args.hop, jobs=args.jobs,
                          cache_dir=None if args.no_cache else args.cache, progress=progress, strict=args.strict)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    from .train import TrainConfig

    try:
        recipe = TrainConfig.parse_overrides(args.set)
    except ValueError as e:
        log(f"error: {e}")
        return 2
    if recipe and args.models is not None:
        log("error: --set changes the training recipe of cross-validation; it has no effect with --models")
        return 2
    utterances = load_corpora(args.data, subsets=args.subsets, strict=args.strict)
    # stdout carries only the results (table or JSON): whatever training prints meanwhile goes to stderr.
    engine_rows: list[dict] = []
    with contextlib.redirect_stdout(sys.stderr):
        if args.models is not None:
            result, scored = run_bundle(utterances, args.models, noise=args.noise, channel=args.channel,
                                        seed=args.seed, extract_kwargs=extract_kwargs, log=log,
                                        engine_path=not args.no_engine)
        else:
            cv_args = dict(seed=args.seed, quick=args.quick, noise=args.noise, channel=args.channel, recipe=recipe,
                           extract_kwargs=extract_kwargs, progress=progress, log=log,
                           engine_path=not args.no_engine, snrs=tuple(args.snr), rows_out=engine_rows)
            if args.cv_folds:
                result, scored = run_cv(utterances, k=args.cv, **cv_args)
            else:
                result, scored = None, None
            if args.loco:
                loco, loco_scored = run_loco(utterances, **cv_args)
                if result is None:  # only leave-one-corpus-out: its first direction stands as the main result
                    first = next(iter(loco))
                    result, scored = {**loco[first], "mode": "loco"}, loco_scored[first]
                result["loco"] = {name: {k: v for k, v in r.items() if k != "per_reader"} for name, r in loco.items()}
    from .dataset import extract_corpus  # cached: only for the summary

    clean_ws = extract_corpus(utterances, **{**extract_kwargs, "progress": False})
    result["data_summary"] = _data_summary(utterances, clean_ws, " ".join(map(str, args.data)))
    result["targets"] = target_check(result)
    result["command"] = _command_line()
    result["date"] = started.isoformat(timespec="seconds")
    result["machine"] = {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                         "platform": platform.platform(), "python": platform.python_version()}
    result["feature_hash"] = DEFAULT.hash
    result["seconds"] = round(time.perf_counter() - t0, 1)
    # Stable key order: summary first, bulky per-fold reader lists and per-reader rows last.
    order = ["mode", "command", "date", "seconds", "machine", "data_summary", "folds", "config", "seed",
             "thresholds", "targets", "models", "corpora", "engine_files", "loco", "noise", "channel", "pooled",
             "per_reader", "fold_readers"]
    result = {**{k: result[k] for k in order if k in result}, **{k: v for k, v in result.items() if k not in order}}
    safe = M.json_safe(result)
    text = json.dumps(safe, indent=2)

    table = format_table(safe)
    if args.plots is not None:
        paths = make_plots(safe, scored, args.plots)
        (Path(args.plots) / JSON_NAME).write_text(text + "\n", encoding="utf-8")
        _save_predictions(scored, Path(args.plots) / "predictions.npz")
        if engine_rows:
            _save_engine_files(engine_rows, Path(args.plots) / "engine_files.npz")
        (Path(args.plots) / "table.txt").write_text(table + "\n", encoding="utf-8")
        (Path(args.plots) / "table.md").write_text(format_markdown(safe) + "\n", encoding="utf-8")
        log(f"wrote {len(paths)} figure(s), {JSON_NAME}, table.txt, table.md, predictions.npz"
            f"{' and engine_files.npz' if engine_rows else ''} to {args.plots}")
    if args.json:
        print(table, file=sys.stderr)
        print(text)
    else:
        print(table)
        print(f"\n{result['seconds']:.0f} s; command: {result['command']}")
    return 0


def _at_least_two(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"cross-validation needs at least 2 folds, got {value}")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    from .options import add_corpus_arguments

    p = subparsers.add_parser(
        "evaluate", help="reader-disjoint cross-validation, or score a trained bundle on a corpus",
        description="Without --models: reader-disjoint K-fold cross-validation (train the three models and the "
                    "ensemble on K-1 folds of readers, score on the held-out readers; mean ± std over folds, "
                    "per window and per utterance). With --models DIR: score that bundle on the corpus. "
                    "--noise adds white/pink noise at 20, 10, 5 dB SNR to the test audio; --channel passes it "
                    "through an 8 kHz source, a telephone line, MP3, Opus and a 20 dB quieter recording.")
    add_corpus_arguments(p)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--models", type=Path, metavar="DIR", help="score the trained bundle in DIR (e.g. models/)")
    mode.add_argument("--cv", type=_at_least_two, default=5, metavar="K",
                      help="folds of reader-disjoint cross-validation (default: %(default)s)")
    p.add_argument("--noise", action="store_true",
                   help="also score with white and pink noise at 20, 10 and 5 dB SNR added to the test audio")
    p.add_argument("--snr", type=float, nargs="+", default=list(NOISE_SNRS), metavar="DB",
                   help="SNRs of the --noise conditions (default: %(default)s)")
    p.add_argument("--channel", action="store_true",
                   help="also score the test audio through other capture channels: sampled at 8 kHz, a telephone "
                        "line (300-3400 Hz, mu-law), MP3 ~21 kbit/s, Opus ~9 kbit/s, 20 dB quieter")
    p.add_argument("--loco", action="store_true",
                   help="also leave-one-corpus-out (needs two or more --data corpora): train on all speakers of the "
                        "other corpora, score every speaker of the held-out one, for each corpus in turn")
    p.add_argument("--no-cv", dest="cv_folds", action="store_false",
                   help="with --loco: skip the K-fold cross-validation and run only leave-one-corpus-out")
    p.add_argument("--no-engine", action="store_true",
                   help="skip the engine-path file verdicts (each fold's models, or the --models bundle, exported "
                        "to ONNX and every test file streamed through realtime.engine, as `realtime classify` answers)")
    p.add_argument("--quick", action="store_true", help="CV: train with TrainConfig.quick() (smoke tests)")
    p.add_argument("--seed", type=int, default=0, help="fold assignment and noise seed (default: %(default)s)")
    p.add_argument("--json", action="store_true",
                   help="print the results as JSON on stdout (the table then goes to stderr)")
    p.add_argument("--plots", type=Path, metavar="DIR",
                   help="write PNG figures, evaluation.json, table.txt, table.md and predictions.npz to DIR")
    from .train import add_recipe_argument

    add_recipe_argument(p)
    p.set_defaults(func=evaluate_command)
    return p

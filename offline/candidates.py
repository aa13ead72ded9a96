"""``python -m offline candidates``: is a candidate feature or augmentation worth a place in the release?

A cheap, speaker-disjoint screen before a full ``offline evaluate`` run: XGBoost alone (the release's tree
parameters, every speaker weighted the same) on the statistics vector, K folds stratified by corpus and
gender, scored per window, per file and per speaker, for every corpus separately. Arms:

* ``base``: the release statistics vector on clean windows.
* ``+ssc``: plus spectral subband centroids (``python_speech_features.ssc``, 26 mel bands: the centroid
  frequency inside each band follows formants and voice quality rather than pitch) summarised per window
  by mean and std of each band.
* ``aug:KEY=VALUE,...``: the base vector trained on clean + augmented windows of a ``TrainConfig`` with
  those overrides (e.g. ``aug:augment.p_voice=0`` against ``aug:augment.p_voice=0.5``), features cached per
  utterance as training caches them.

Only training windows change between arms; every arm is scored on the same clean test windows.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from . import metrics as M

SSC_BANDS = 26


def ssc_summary(window: np.ndarray, sr: int = 16000) -> np.ndarray:
    """Mean and std over 25 ms frames of each of the 26 spectral subband centroids (Hz / 1000), (52,)."""
    import python_speech_features as psf

    c = psf.ssc(window.astype(np.float64), samplerate=sr, winlen=0.025, winstep=0.01, nfilt=SSC_BANDS, nfft=512)
    c = c / 1000.0
    return np.concatenate([c.mean(axis=0), c.std(axis=0)]).astype(np.float32)


def ssc_features(utterances, ws, *, window_s: float = 2.0, hop_s: float = 0.5) -> np.ndarray:
    """(N, 52) subband-centroid summaries aligned with the rows of the clean WindowSet ``ws``."""
    from realtime.audio import load_audio

    from .windows import iter_windows

    by_utt = {u.utt_id: u for u in utterances}
    out = np.zeros((len(ws), 2 * SSC_BANDS), dtype=np.float32)
    rows: dict[str, list[int]] = {}
    for i, utt in enumerate(ws.utt):
        rows.setdefault(str(utt), []).append(i)
    for utt, idx in rows.items():
        x = load_audio(by_utt[utt].path)
        feats = {round(float(start), 3): ssc_summary(w) for start, w in iter_windows(x, window_s, hop_s, 16000)}
        for i in idx:
            out[i] = feats[round(float(ws.start[i]), 3)]
    return out


def _fit_predict(x_fit, y_fit, w_fit, x_test, seed: int, rounds: int = 400) -> np.ndarray:
    import xgboost as xgb

    from .train import TrainConfig

    params = dict(TrainConfig().xgb_params, seed=seed, nthread=2)
    booster = xgb.train(params, xgb.DMatrix(x_fit, label=y_fit, weight=w_fit), num_boost_round=rounds)
    return booster.predict(xgb.DMatrix(x_test))


def _scores(ws, p) -> dict:
    corpus = ws.corpus
    out = {}
    for name in ["all"] + sorted(set(corpus.tolist()) - {""}):
        m = np.ones(len(ws), bool) if name == "all" else corpus == name
        y, pp, utt, rd = ws.y[m].astype(int), p[m], ws.utt[m], ws.reader[m]
        u = M.utterance_scores(y, pp, utt)
        s = M.utterance_scores(y, pp, rd)
        out[name] = {"window": M.binary_metrics(y, pp)["balanced_accuracy"],
                     "file": M.binary_metrics(u["y"], u["p"])["balanced_accuracy"],
                     "speaker": M.binary_metrics(s["y"], s["p"])["balanced_accuracy"]}
    return out


def run(args) -> int:
    from .dataset import extract_corpus
    from .librispeech import load_corpora
    from .splits import reader_folds
    from .train import TrainConfig, augmented_windows, speaker_weights

    t0 = time.perf_counter()
    utts = load_corpora(args.data)
    cache = None if args.no_cache else args.cache
    clean = extract_corpus(utts, jobs=args.jobs, cache_dir=cache, progress=not args.no_progress)
    extra = {}
    if "+ssc" in args.arms:
        extra["+ssc"] = ssc_features(utts, clean)
    augs = {}
    for arm in args.arms:
        if arm.startswith("aug:"):
            overrides = TrainConfig.parse_overrides([kv for kv in arm[4:].split(",") if kv])
            cfg = TrainConfig(**overrides)
            augs[arm] = augmented_windows(utts, cfg.augment.augmenter(cfg.seed), cfg.augment.copies, seed=0,
                                          cache_dir=cache, jobs=args.jobs, progress=not args.no_progress)
    folds = reader_folds(utts, k=args.cv, seed=args.seed)
    per_arm: dict[str, list[dict]] = {arm: [] for arm in args.arms}
    for i, (train_r, test_r) in enumerate(folds):
        tr, te = np.isin(clean.reader, sorted(train_r)), np.isin(clean.reader, sorted(test_r))
        test = clean.subset(te)
        for arm in args.arms:
            if arm.startswith("aug:"):
                from .dataset import WindowSet

                a = augs[arm]
                fit = WindowSet.concat([clean.subset(tr), a.subset(np.isin(a.reader, sorted(train_r)))])
                x_fit, x_test = fit.stats, test.stats
            else:
                fit = clean.subset(tr)
                x_fit, x_test = fit.stats, test.stats
                if arm in extra:
                    x_fit = np.hstack([x_fit, extra[arm][tr]])
                    x_test = np.hstack([x_test, extra[arm][te]])
            p = _fit_predict(x_fit, fit.y.astype(np.float32), speaker_weights(fit), x_test, args.seed)
            per_arm[arm].append(_scores(test, p))
        print(f"fold {i + 1}/{len(folds)} done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    summary = {arm: {group: {lv: M.mean_std([f[group][lv] for f in rows]) for lv in ("window", "file", "speaker")}
                     for group in rows[0]} for arm, rows in per_arm.items()}
    result = {"command": "python -m offline candidates " + " ".join(sys.argv[2:]), "folds": args.cv,
              "seconds": round(time.perf_counter() - t0, 1), "arms": summary}
    if args.json:
        print(json.dumps(M.json_safe(result), indent=2))
        return 0
    print(f"XGBoost alone, speaker-disjoint {args.cv}-fold CV, balanced accuracy % (mean ± std over folds)")
    print(f"{'arm':<28} {'group':<16} {'window':>14} {'file':>14} {'speaker':>14}")
    for arm, groups in summary.items():
        for group, lv in groups.items():
            cells = [f"{100 * lv[k]['mean']:5.1f} ± {100 * lv[k]['std']:3.1f}" for k in ("window", "file", "speaker")]
            print(f"{arm:<28} {group:<16} {cells[0]:>14} {cells[1]:>14} {cells[2]:>14}")
    print(f"{result['seconds']:.0f} s")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    from .options import add_corpus_arguments

    p = subparsers.add_parser("candidates", help="screen candidate features and augmentations with XGBoost alone",
                              description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_corpus_arguments(p)
    p.add_argument("--arms", nargs="+", default=["base", "+ssc"], metavar="ARM",
                   help="what to compare: base, +ssc, aug:KEY=VALUE[,KEY=VALUE] (default: base +ssc)")
    p.add_argument("--cv", type=int, default=5, metavar="K", help="folds (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)
    return p

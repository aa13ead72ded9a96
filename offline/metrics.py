"""Evaluation metrics for the female/male decision, per window and per utterance.

Conventions (the same as ``WindowSet``): label 1 = female, 0 = male; ``p`` is p_female.
A window or utterance is called female when ``p >= 0.5``.

* Per utterance, the windows of one utterance are pooled by their mean log-odds:
  ``p_utt = sigmoid(mean(logit(p_window)))`` (``realtime.logodds``; probabilities clipped to
  [EPS, 1 - EPS] = [1e-6, 1 - 1e-6] first so one saturated window cannot dominate with an infinite log-odds).
* ``balanced_accuracy`` is the mean of the two recalls (female recall = share of female items called
  female, male recall = share of male items called male); a class absent from the labels is left out of
  the mean, and its recall is NaN.
* ``confusion`` is ``[[female->female, female->male], [male->female, male->male]]``: rows are the true
  class, columns the decision, female first.
* With ``thresholds`` ``(t_male, t_female)``, an item with ``t_male < p < t_female`` is 'uncertain'
  (the live engine's third label); ``uncertain`` is that share and ``decided_balanced_accuracy`` the
  balanced accuracy over the remaining items.

Pure numpy + ``sklearn.metrics`` (ROC only). NaN stands for "undefined" (e.g. AUC with one class).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import PurePath

import numpy as np

from realtime.logodds import logit, sigmoid

EPS = 1e-6  # window probabilities are clipped to [EPS, 1 - EPS] before their log-odds are pooled
SCALAR_METRICS = ("balanced_accuracy", "recall_female", "recall_male", "accuracy", "auc")


# --- elementary helpers --------------------------------------------------------------------------------

def _check(y, p) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(np.int64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and probabilities differ in length: {y.shape[0]} vs {p.shape[0]}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (male) or 1 (female)")
    if p.size and (not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0):
        raise ValueError("probabilities must be finite and in [0, 1]")
    return y, p


def parse_thresholds(thresholds) -> tuple[float, float] | None:
    """``(t_male, t_female)`` from None, a pair, or a mapping such as ``{'male': 0.4, 'female': 0.6}`` /
    ``{'threshold_male': .., 'threshold_female': ..}`` (bundle meta)."""
    if thresholds is None:
        return None
    if isinstance(thresholds, Mapping):
        found = {}
        for side in ("male", "female"):
            for key in (side, f"threshold_{side}", f"{side}_threshold", f"t_{side}"):
                if key in thresholds:
                    found[side] = float(thresholds[key])
                    break
        if len(found) != 2:
            raise ValueError(f"thresholds need a 'male' and a 'female' entry, got {dict(thresholds)}")
        t_male, t_female = found["male"], found["female"]
    else:
        t_male, t_female = map(float, thresholds)
    if not 0.0 <= t_male <= 0.5 <= t_female <= 1.0:
        raise ValueError(f"thresholds must satisfy 0 <= t_male <= 0.5 <= t_female <= 1, got {(t_male, t_female)}")
    return t_male, t_female


# --- metrics -------------------------------------------------------------------------------------------

def confusion(y, p, threshold: float = 0.5) -> np.ndarray:
    """2x2 counts, rows = true (female, male), columns = decided (female, male)."""
    y, p = _check(y, p)
    pred_f = p >= threshold
    return np.array([[int(np.sum((y == 1) & pred_f)), int(np.sum((y == 1) & ~pred_f))],
                     [int(np.sum((y == 0) & pred_f)), int(np.sum((y == 0) & ~pred_f))]], dtype=np.int64)


def roc_auc(y, p) -> float:
    """Area under the ROC curve for 'female'; NaN when only one class is present."""
    y, p = _check(y, p)
    if len(np.unique(y)) < 2:
        return math.nan
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p))


def roc_curve(y, p) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) for 'female'; empty arrays with one class."""
    y, p = _check(y, p)
    if len(np.unique(y)) < 2:
        return np.zeros(0), np.zeros(0)
    from sklearn.metrics import roc_curve as _roc

    fpr, tpr, _ = _roc(y, p)
    return fpr, tpr


def binary_metrics(y, p, *, thresholds=None) -> dict:
    """balanced_accuracy, recall_female, recall_male, accuracy, auc, confusion, n, n_female, n_male
    (+ uncertain, decided_balanced_accuracy, decided_accuracy with ``thresholds``). Floats are plain Python floats."""
    y, p = _check(y, p)
    cm = confusion(y, p)
    n_f, n_m = int(cm[0].sum()), int(cm[1].sum())
    recall_f = cm[0, 0] / n_f if n_f else math.nan
    recall_m = cm[1, 1] / n_m if n_m else math.nan
    present = [r for r in (recall_f, recall_m) if not math.isnan(r)]
    out = {
        "balanced_accuracy": float(np.mean(present)) if present else math.nan,
        "recall_female": float(recall_f),
        "recall_male": float(recall_m),
        "accuracy": float((cm[0, 0] + cm[1, 1]) / y.size) if y.size else math.nan,
        "auc": roc_auc(y, p),
        "confusion": cm.tolist(),
        "n": int(y.size),
        "n_female": n_f,
        "n_male": n_m,
    }
    t = parse_thresholds(thresholds)
    if t is not None:
        t_male, t_female = t
        decided = (p <= t_male) | (p >= t_female)
        out["uncertain"] = float(1.0 - decided.mean()) if y.size else math.nan
        sub = binary_metrics(y[decided], p[decided]) if decided.any() else {}
        out["decided_balanced_accuracy"] = sub.get("balanced_accuracy", math.nan)
        out["decided_accuracy"] = sub.get("accuracy", math.nan)
        out["thresholds"] = {"male": t_male, "female": t_female}
    return out


def utterance_scores(y, p, utt, reader=None) -> dict:
    """Pool windows into utterances by mean log-odds.

    Returns ``{'utt': ids (sorted), 'y': labels, 'p': sigmoid(mean logit p), 'n_windows': counts,
    'reader': reader per utterance (if given)}``. An utterance whose windows disagree on the label or reader
    is an error.
    """
    y, p = _check(y, p)
    utt = np.asarray(utt).astype(str).ravel()
    if utt.shape != y.shape:
        raise ValueError("utterance ids and labels differ in length")
    ids, inverse, counts = np.unique(utt, return_inverse=True, return_counts=True)
    mean_logit = np.bincount(inverse, weights=logit(p, EPS), minlength=ids.size) / np.maximum(counts, 1)
    first = np.zeros(ids.size, dtype=np.int64)
    first[inverse[::-1]] = np.arange(y.size)[::-1]  # index of each utterance's first window
    y_utt = y[first]
    if np.any(y != y_utt[inverse]):
        raise ValueError("windows of one utterance carry different labels")
    out = {"utt": ids, "y": y_utt, "p": sigmoid(mean_logit), "n_windows": counts}
    if reader is not None:
        reader = np.asarray(reader).astype(str).ravel()
        r_utt = reader[first]
        if np.any(reader != r_utt[inverse]):
            raise ValueError("windows of one utterance carry different readers")
        out["reader"] = r_utt
    return out


def per_reader_accuracy(y, p, reader, utt=None) -> dict[str, dict]:
    """{reader: {'gender': 'F'|'M', 'accuracy': window accuracy, 'n_windows', 'p_mean': mean window p,
    and with ``utt``: 'utterance_accuracy', 'n_utterances'}}, readers sorted by id."""
    y, p = _check(y, p)
    reader = np.asarray(reader).astype(str).ravel()
    correct = (p >= 0.5) == (y == 1)
    utt_correct: dict[str, list[bool]] = {}
    if utt is not None:
        u = utterance_scores(y, p, utt, reader)
        for r, yy, pp in zip(u["reader"], u["y"], u["p"]):
            utt_correct.setdefault(str(r), []).append(bool((pp >= 0.5) == (yy == 1)))
    out: dict[str, dict] = {}
    for r in sorted(set(reader.tolist())):
        m = reader == r
        labels = set(y[m].tolist())
        if len(labels) > 1:
            raise ValueError(f"reader {r} has windows of both genders")
        row = {"gender": "F" if labels.pop() == 1 else "M", "accuracy": float(correct[m].mean()),
               "n_windows": int(m.sum()), "p_mean": float(p[m].mean())}
        if utt is not None:
            row["utterance_accuracy"] = float(np.mean(utt_correct[r]))
            row["n_utterances"] = len(utt_correct[r])
        out[r] = row
    return out


def evaluate(y, p, utt, reader=None, *, thresholds=None) -> dict:
    """``{'window': binary_metrics(windows), 'utterance': binary_metrics(utterances)}`` (+ ``'per_reader'``
    when ``reader`` is given)."""
    y, p = _check(y, p)
    u = utterance_scores(y, p, utt, reader)
    out = {"window": binary_metrics(y, p, thresholds=thresholds),
           "utterance": binary_metrics(u["y"], u["p"], thresholds=thresholds)}
    if reader is not None:
        out["per_reader"] = per_reader_accuracy(y, p, reader, utt)
    return out


# --- the live label of whole files ----------------------------------------------------------------------

def live_label_score(events, female: bool) -> tuple[float, bool] | None:
    """One streamed file's live label (what the console shows while it plays): the share of its speech hops
    with an estimate whose label is right ('uncertain' wrong), and whether its last estimate's label is right;
    None when no hop had an estimate."""
    want = "female" if female else "male"
    live = [e["label"] == want for e in events if e["speech"] and e["p_female"] is not None]
    if not live:
        return None
    last = next(e for e in reversed(events) if e["p_female"] is not None)
    return float(np.mean(live)), last["label"] == want


def balanced_over_files(y, values) -> float:
    """The mean of per-file ``values`` (a share, or 1/0 for right/wrong) within each class, averaged over the
    classes present: a balanced accuracy whose unit is the file."""
    y, values = np.asarray(y), np.asarray(values, dtype=np.float64)
    per_class = [values[y == c].mean() for c in (0, 1) if np.any(y == c)]
    return float(np.mean(per_class)) if per_class else math.nan


# --- summaries over folds ------------------------------------------------------------------------------

def mean_std(values: Sequence[float]) -> dict:
    """{'mean', 'std', 'folds'}: NaN values are ignored in mean/std; std is the sample std (ddof=1), NaN
    for a single value."""
    vals = np.asarray([math.nan if v is None else v for v in values], dtype=np.float64)
    ok = vals[~np.isnan(vals)]
    mean = float(ok.mean()) if ok.size else math.nan
    std = float(ok.std(ddof=1)) if ok.size > 1 else math.nan
    return {"mean": mean, "std": std, "folds": [float(v) for v in vals]}


def summarize_folds(per_fold: Sequence[Mapping], keys: Sequence[str] = SCALAR_METRICS) -> dict:
    """Per-fold ``binary_metrics`` dicts -> {metric: mean_std(...)} for ``keys`` (and for 'uncertain' /
    'decided_balanced_accuracy' when every fold has them)."""
    keys = list(keys)
    for extra in ("uncertain", "decided_balanced_accuracy"):
        if per_fold and all(extra in f for f in per_fold) and extra not in keys:
            keys.append(extra)
    return {k: mean_std([f[k] for f in per_fold]) for k in keys}


def json_safe(obj, *, nan_to_none: bool = True):
    """Numpy scalars/arrays to Python types and paths to strings, recursively, for strict JSON; NaN/inf become
    None, or stay (so that ``json.dumps(..., allow_nan=False)`` refuses them) with ``nan_to_none=False``."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v, nan_to_none=nan_to_none) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v, nan_to_none=nan_to_none) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist(), nan_to_none=nan_to_none)
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, PurePath):
        return str(obj)
    if nan_to_none and isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj

"""Figures of an evaluation (matplotlib, Agg backend: no display needed).

Every function takes plain data (lists, dicts, numpy arrays), writes one PNG and returns its path.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

FEMALE_COLOR = "#c2410c"
MALE_COLOR = "#1d4ed8"
MODEL_COLORS = {"ensemble": "#111827", "xgb": "#16a34a", "cnn1d": "#9333ea", "cnn2d": "#0891b2"}
DPI = 120


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    _plt().close(fig)
    return path


def confusion_matrix(cm: Sequence[Sequence[int]], path: str | Path, *, title: str = "") -> Path:
    """2x2 counts (rows true female/male, columns decided female/male) with counts and row percentages."""
    plt = _plt()
    cm = np.asarray(cm, dtype=np.int64)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    labels = ["female", "male"]
    ax.set_xticks([0, 1], labels)
    ax.set_yticks([0, 1], labels)
    ax.set_xlabel("decided")
    ax.set_ylabel("true")
    for i in range(2):
        for j in range(2):
            ax.text(j, i, f"{cm[i, j]}\n{100 * share[i, j]:.1f}%", ha="center", va="center",
                    color="white" if share[i, j] > 0.6 else "black", fontsize=11)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


def roc_curves(curves: Mapping[str, Mapping[str, tuple]], path: str | Path, *, title: str = "") -> Path:
    """One panel per level: ``curves = {level: {model: (fpr, tpr, auc)}}`` (e.g. level 'window', 'utterance')."""
    plt = _plt()
    levels = list(curves)
    fig, axes = plt.subplots(1, len(levels), figsize=(4.6 * len(levels), 4.4), squeeze=False)
    for ax, level in zip(axes[0], levels):
        for model, (fpr, tpr, auc) in curves[level].items():
            if len(fpr) == 0:
                continue
            label = f"{model} (AUC {auc:.3f})" if auc is not None and not math.isnan(auc) else model
            ax.plot(fpr, tpr, label=label, color=MODEL_COLORS.get(model),
                    linewidth=2.2 if model == "ensemble" else 1.3)
        ax.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("male called female (false positive rate)")
        ax.set_ylabel("female called female (true positive rate)")
        ax.set_title(f"ROC per {level}", fontsize=10)
        ax.legend(loc="lower right", fontsize=8)
        ax.set_aspect("equal")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def reader_accuracy(per_reader: Mapping[str, Mapping], path: str | Path, *, title: str = "",
                    key: str = "accuracy") -> Path:
    """Bar per reader, sorted by accuracy (``per_reader[r][key]``), coloured by gender."""
    plt = _plt()
    from matplotlib.patches import Patch

    items = sorted(per_reader.items(), key=lambda kv: (kv[1][key], kv[0]))
    n = len(items)
    acc = np.array([row[key] for _, row in items], dtype=np.float64)
    colors = [FEMALE_COLOR if row["gender"] == "F" else MALE_COLOR for _, row in items]
    fig, ax = plt.subplots(figsize=(min(max(6.0, 0.06 * n + 3.0), 12.0), 3.8))
    ax.bar(np.arange(n), acc, width=1.0 if n > 60 else 0.8, color=colors, linewidth=0)
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(0, 1.02)
    ax.axhline(0.5, color="0.5", linestyle=":", linewidth=1)
    ax.set_ylabel("window accuracy" if key == "accuracy" else key.replace("_", " "))
    ax.set_xlabel(f"readers, sorted by accuracy (n = {n})")
    if n <= 40:
        ax.set_xticks(np.arange(n), [r for r, _ in items], rotation=90, fontsize=7)
    else:
        ax.set_xticks([])
    below = int(np.sum(acc < 0.5))
    ax.legend(handles=[Patch(color=FEMALE_COLOR, label="female reader"), Patch(color=MALE_COLOR, label="male reader")],
              loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title=f"{below} reader(s) below 50%",
              title_fontsize=8)
    ax.set_title(title or "Accuracy per reader", fontsize=10)
    return _save(fig, path)


def accuracy_vs_snr(series: Mapping[str, Mapping[str, Mapping[float, tuple[float, float]]]], path: str | Path, *,
                    clean: Mapping[str, tuple[float, float]] | None = None, title: str = "",
                    ylabel: str = "balanced accuracy", target: float | None = None) -> Path:
    """One panel per noise colour: ``series = {colour: {model: {snr_db: (mean, std)}}}``, error bars = std.
    ``clean = {model: (mean, std)}`` is drawn at the right end of every panel (labelled 'clean')."""
    plt = _plt()
    colours = list(series)
    fig, axes = plt.subplots(1, max(1, len(colours)), figsize=(4.6 * max(1, len(colours)), 4.0), squeeze=False,
                             sharey=True)
    lows = []
    for ax, colour in zip(axes[0], colours):
        snrs = sorted({s for pts in series[colour].values() for s in pts})
        x_clean = (max(snrs) + 10.0) if snrs else 0.0
        for model, pts in series[colour].items():
            xs = sorted(pts)
            ys = [pts[s][0] for s in xs]
            es = [0.0 if pts[s][1] is None or math.isnan(pts[s][1]) else pts[s][1] for s in xs]
            if clean and model in clean:
                xs, ys = xs + [x_clean], ys + [clean[model][0]]
                es = es + [0.0 if clean[model][1] is None or math.isnan(clean[model][1]) else clean[model][1]]
            lows.append(min(y - e for y, e in zip(ys, es)))
            ax.errorbar(xs, ys, yerr=es, label=model, color=MODEL_COLORS.get(model), marker="o", markersize=3.5,
                        capsize=2.5, linewidth=2.4 if model == "ensemble" else 1.2,
                        zorder=3 if model == "ensemble" else 2)
        ticks = snrs + ([x_clean] if clean else [])
        ax.set_xticks(ticks, [f"{s:g} dB" for s in snrs] + (["clean"] if clean else []))
        if target is not None:
            ax.axhline(target, color="0.35", linestyle=":", linewidth=1)
            ax.annotate(f" target {100 * target:g}%", (0.0, target), xycoords=("axes fraction", "data"),
                        ha="left", va="top", fontsize=7, color="0.3")
        ax.set_xlabel(f"SNR of the test audio, {colour} noise")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    low = min(lows + ([target] if target is not None else [])) if lows else 0.5
    axes[0][0].set_ylim(max(0.0, min(0.9, low - 0.03)), 1.005)
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.suptitle(title or "Accuracy vs noise", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)

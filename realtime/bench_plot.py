"""The benchmark's figures: the per-hop latency histogram (ours beside the comparison pipeline's per-window
cost, wall and CPU time) and the per-stage bars. Needs matplotlib (``voicegender[plot]``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def plot(res: dict, target: Path) -> list[Path]:
    """Write the latency histogram and the per-stage bars; ``target`` is a folder or a .png path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target = Path(target)
    if target.suffix.lower() == ".png":
        hist_path, stage_path = target, target.with_name(target.stem + "_stages.png")
    else:
        hist_path, stage_path = target / "latency_hist.png", target / "stages.png"
    hist_path.parent.mkdir(parents=True, exist_ok=True)
    raw = res.get("_raw") or res["raw"]  # a result in memory, or one saved with --save-raw
    cls = np.asarray(raw["classified"], dtype=bool)
    panels = [("wall time", np.asarray(raw["push_ms"]), np.asarray(raw["baseline_ms"]),
               res["per_hop_ms"]["p99"], res["baseline_per_window_ms"].get("p50"), res.get("speedup")),
              ("process CPU time (no preemption by other jobs)", np.asarray(raw["cpu_ms"]),
               np.asarray(raw.get("baseline_cpu_ms", [])), res["cpu_ms"]["per_hop"]["p99"],
               (res["baseline_per_window_ms"].get("cpu") or {}).get("p50"), res.get("speedup_cpu"))]
    allv = np.concatenate([np.concatenate([p[1], p[2]]) for p in panels])
    allv = allv[allv > 0]
    bins = np.logspace(np.log10(allv.min()) - 0.05, np.log10(allv.max()) + 0.05, 80)

    fig, axes = plt.subplots(2, 1, figsize=(8, 6.4), sharex=True)
    for ax, (what, ours, base, p99, base50, speedup) in zip(axes, panels):
        ax.hist(ours[cls], bins=bins, alpha=0.8, color="C0", label=f"ours, hops that classify a window (n={cls.sum()})")
        if (~cls).any():
            ax.hist(ours[~cls], bins=bins, alpha=0.6, color="C1", label=f"ours, hops without a window (n={(~cls).sum()})")
        if base.size:
            ax.hist(base, bins=bins, alpha=0.8, color="C2",
                    label=f"naive librosa + Keras + XGBoost, per window (n={base.size})")
        ax.set_xscale("log")
        top = ax.get_ylim()[1]
        for v, name, c in ((p99, "ours p99", "C0"), (base50, "naive p50", "C2")):
            if v:
                ax.axvline(v, color=c, ls="--", lw=1)
                ax.text(v * 1.05, top * 0.6, f"{name}\n{v:.3g} ms", color=c, va="top", fontsize=8)
        ax.set_ylabel("count")
        ax.set_title(f"{what}" + (f": naive / ours per window (p50) = {speedup:.0f}x" if speedup else ""), fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    axes[-1].set_xlabel("compute per hop (ours) / per window (naive), ms, one core, log scale")
    load = res["machine"].get("loadavg_start")
    fig.suptitle(f"Per-hop compute, {res['data']['utterances']} LibriSpeech utterances"
                 + (f" (machine load avg {load[0]:g} on {res['machine']['cores']} cores)" if load else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(hist_path, dpi=120)
    plt.close(fig)

    floor = 1e-3  # the engine reports stages to the microsecond
    rows = [(f"ours: {'total' if n == 'total' else n}", v["p50"], v["p99"], "C0") for n, v in res["stages_ms"].items()]
    rows += [(f"naive: {n}", v["p50"], v["p95"], "C2") for n, v in res["baseline_per_window_ms"].get("parts", {}).items()]
    rows = rows[::-1]
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(8, 0.42 * len(rows) + 1.4))
    p50 = [max(r[1] or 0, floor) for r in rows]
    ax.barh(y, p50, color=[r[3] for r in rows], alpha=0.85)
    ax.scatter([max(r[2] or 0, floor) for r in rows], y, marker="|", s=200, color="k", zorder=3,
               label="p99 (naive: p95)")
    for yi, r, v in zip(y, rows, p50):
        ax.text(max(v, r[2] or 0) * 1.2, yi, f"{r[1]:.3g}" if (r[1] or 0) >= floor else "<0.001", va="center", fontsize=7)
    ax.set_yticks(y, [r[0] for r in rows], fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(floor / 2, max(max(p50), max(r[2] or 0 for r in rows)) * 3)
    ax.set_xlabel("ms per hop (ours, bar = p50) / per window (naive), one core, log scale")
    ax.set_title("Where the time goes: live engine stages vs the naive pipeline", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(stage_path, dpi=120)
    plt.close(fig)
    return [hist_path, stage_path]

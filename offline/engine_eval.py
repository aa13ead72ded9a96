"""``python -m offline engine-eval``: score the live engine itself, under several settings, on held-out readers.

`offline evaluate` scores fixed 2 s windows; this streams whole utterances through
realtime.engine.Engine, as a live user would, and reports for each engine setting:

* per-window balanced accuracy of ``window_p_female`` (every classified hop),
* per-utterance balanced accuracy of the file verdict (mean log-odds of its windows),
* the first estimate's accuracy and its latency after speech onset,
* the share of utterances whose live label is right at the end,
* the live label itself, balanced over files: each file's share of speech hops whose label is right
  ('uncertain' wrong), and its last estimate's label (``live_voice``'s settings weigh in the voice opinion).

Use a bundle trained without the scored readers (e.g. `offline train --data train.csv` on one fold),
or the figures prove nothing. This is how the engine's defaults (``realtime.engine.EngineConfig``:
speech-only buffer, ``first_window_s``) were chosen; a run's figures: docs/engine_eval_fold0.json.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .augment import ALL_CHANNELS, channel

SETTINGS = {
    "speech-only, first 0.5 s": dict(speech_only=True, first_window_s=0.5),
    "speech-only, first 0.75 s": dict(speech_only=True, first_window_s=0.75),
    "speech-only, first 1.0 s": dict(speech_only=True, first_window_s=1.0),
    "speech-only, first 1.5 s": dict(speech_only=True, first_window_s=1.5),
    "speech-only, first 2.0 s": dict(speech_only=True, first_window_s=2.0),
    "all audio, first 1.0 s": dict(speech_only=False, first_window_s=1.0),
    "all audio, first 2.0 s": dict(speech_only=False, first_window_s=2.0),
    "speech-only, first 0.75 s, live voice": dict(speech_only=True, first_window_s=0.75, live_voice=True),
}


def _bacc(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean([np.mean(pred[y == c] == c) for c in (0, 1) if np.any(y == c)]))


def score_setting(bundle, utterances, audio, **cfg) -> dict:
    from realtime.engine import Engine, EngineConfig, summarise

    from .metrics import balanced_over_files, live_label_score

    win_y, win_p, utt_y, utt_p, first_ok, first_lat, final_ok = [], [], [], [], [], [], []
    live_y, live_share, last_ok = [], [], []
    for u, x in zip(utterances, audio):
        engine = Engine(bundle, EngineConfig(**cfg))
        events = list(engine.run([x[i:i + 1600] for i in range(0, len(x), 1600)]))
        y = 1 if u.gender == "F" else 0
        ps = [e["window_p_female"] for e in events if e["window_p_female"] is not None]
        win_y += [y] * len(ps)
        win_p += ps
        verdict = summarise(events, engine)
        if verdict["p_female"] is not None:
            utt_y.append(y)
            utt_p.append(verdict["p_female"])
        onset = next((e["t"] - 0.5 for e in events if e["speech"]), None)
        first = next((e for e in events if e["window_p_female"] is not None), None)
        if first is not None and onset is not None:
            first_ok.append((first["window_p_female"] >= 0.5) == bool(y))
            first_lat.append(first["t"] - onset)
        final_ok.append(events[-1]["label"] == ("female" if y else "male"))
        live = live_label_score(events, bool(y))
        if live is not None:
            live_y.append(y)
            live_share.append(live[0])
            last_ok.append(live[1])
    win_y, win_p, utt_y, utt_p = map(np.asarray, (win_y, win_p, utt_y, utt_p))
    return {
        "windows": int(win_y.size),
        "window_balanced_accuracy": _bacc(win_y, (win_p >= 0.5).astype(int)),
        "utterance_balanced_accuracy": _bacc(utt_y, (utt_p >= 0.5).astype(int)),
        "first_estimate_accuracy": float(np.mean(first_ok)),
        "first_estimate_after_onset_s": {"p50": float(np.median(first_lat)), "p90": float(np.percentile(first_lat, 90))},
        "final_label_correct": float(np.mean(final_ok)),
        "live_label_balanced_accuracy": balanced_over_files(live_y, live_share),
        "last_estimate_balanced_accuracy": balanced_over_files(live_y, last_ok),
    }


def run(args) -> int:
    from realtime.audio import load_audio
    from realtime.bundle import Bundle

    from .librispeech import load_corpora

    bundle = Bundle.load(args.models)
    utterances = load_corpora(args.data)
    audio = [load_audio(u.path) for u in utterances]
    if args.channel:  # every file heard through a capture channel first (offline.augment.channel)
        audio = [channel(x, args.channel) for x in audio]
    names = args.settings or list(SETTINGS)
    results = {name: score_setting(bundle, utterances, audio, **SETTINGS[name]) for name in names}
    if args.json:
        print(json.dumps({"data": " ".join(map(str, args.data)), "models": str(args.models), "utterances": len(utterances),
                          "channel": args.channel, "settings": results}, indent=2))
        return 0
    print(f"{len(utterances)} utterances from {args.data}, bundle {args.models}"
          + (f", through the {args.channel} channel" if args.channel else ""))
    print(f"{'setting':38s} {'win bacc':>9s} {'utt bacc':>9s} {'1st acc':>8s} {'1st p50 s':>10s} {'1st p90 s':>10s} "
          f"{'final ok':>9s} {'live bacc':>10s} {'last bacc':>10s}")
    for name, r in results.items():
        lat = r["first_estimate_after_onset_s"]
        print(f"{name:38s} {r['window_balanced_accuracy']:9.4f} {r['utterance_balanced_accuracy']:9.4f} "
              f"{r['first_estimate_accuracy']:8.4f} {lat['p50']:10.2f} {lat['p90']:10.2f} {r['final_label_correct']:9.4f} "
              f"{r['live_label_balanced_accuracy']:10.4f} {r['last_estimate_balanced_accuracy']:10.4f}")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "engine-eval", help="score the live engine (speech-only vs all-audio windows, first-window length, live voice opinion) on held-out readers",
        description=__doc__.split("\n\n")[1], formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path, nargs="+", metavar="DIR_OR_CSV",
                   help="held-out utterances: LibriSpeech-layout folders and/or CSV manifests (path,speaker,gender)")
    p.add_argument("--models", required=True, type=Path, metavar="DIR",
                   help="a bundle trained WITHOUT these readers")
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), metavar="NAME",
                   help=f"settings to score (default: all): {'; '.join(SETTINGS)}")
    p.add_argument("--channel", default=None, choices=ALL_CHANNELS, metavar="NAME",
                   help=f"hear every file through a capture channel first: {', '.join(ALL_CHANNELS)} "
                        "(offline.augment.channel; default: as recorded)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)

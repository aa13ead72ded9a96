"""``python -m offline reweigh --models DIR``: give a trained bundle's file decision other weights for its two
opinions (the window models' mean log-odds and the voice opinion) without retraining a model.

Training fits ``scale`` and ``voice_weight`` of the file decision (``offline.train.fit_file_decision``); with
``TrainConfig.file_weights`` (measured leave-one-corpus-out, MODEL_CARD.md) it sets ``scale`` to the window
weight and ``voice_weight`` to the voice weight times the voice probe's own Platt scale on the calibration
speakers' files. This command does that second computation for a bundle trained before: from the split the
bundle records (``training.split``: calibration readers, readers left out), it embeds the training files,
fits the probe on the fit readers exactly as training did (checked: the probe refitted on all training readers
must reproduce the bundle's own), scores the calibration readers' files and takes the probe's Platt scale
there. The file band and every model stay as they are; the bundle is resealed and records what was done
(``file_decision.reweighed``).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path

import numpy as np

__all__ = ["reweigh_bundle", "add_parser"]


def _probe_check(probe: tuple[np.ndarray, float], meta_probe: dict, atol: float = 1e-4) -> None:
    w, b = probe
    shipped_w = np.asarray(meta_probe["weights"], dtype=np.float64)
    if shipped_w.shape != w.shape or not np.allclose(w, shipped_w, atol=atol) or abs(b - meta_probe["bias"]) > atol:
        raise ValueError("the voice probe refitted on the bundle's training readers differs from the bundle's own "
                         f"(max weight difference {np.max(np.abs(w - shipped_w)):.2g}): not the data or recipe "
                         "it was trained on")


def reweigh_bundle(models_dir: str | Path, utterances, weights: tuple[float, float], *,
                   cache_dir: str | Path | None = ".cache/features", progress: bool = False) -> dict:
    """Set the file decision of the bundle in ``models_dir`` to ``weights`` (window, voice) and reseal it.
    Returns the new ``file_decision``."""
    from realtime.bundle import BUNDLE_FILE, FILE_RULE, Bundle, write_meta

    from .splits import per_speaker_weights
    from .train import platt_scale
    from .voice_probe import embed_utterances, fit_probe, probe_logits

    models_dir = Path(models_dir)
    try:
        meta = json.loads((models_dir / BUNDLE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{models_dir / BUNDLE_FILE}: cannot read the bundle ({exc})") from exc
    if "voice" not in meta:
        raise ValueError(f"{models_dir}: the bundle has no voice opinion to weigh")
    split = (meta.get("training") or {}).get("split") or {}
    cal = set(map(str, split.get("calibration_reader_ids") or []))
    excluded = set(map(str, split.get("excluded_readers") or []))
    if not cal:
        raise ValueError(f"{models_dir}: the bundle does not record its calibration readers")
    utts = [u for u in utterances if u.reader not in excluded]
    emb = embed_utterances(utts, cache_dir=cache_dir, progress=progress)
    rows = [(emb[u.utt_id], u.label, u.reader) for u in utts if u.utt_id in emb]
    if not rows:
        raise ValueError("no training file could be embedded")
    E = np.stack([r[0] for r in rows])
    y = np.array([r[1] for r in rows])
    reader = np.array([r[2] for r in rows])
    _probe_check(fit_probe(E, y, reader), meta["voice"]["probe"])
    is_cal = np.isin(reader, sorted(cal))
    probe = fit_probe(E[~is_cal], y[~is_cal], reader[~is_cal])
    zv = probe_logits(E[is_cal], probe)
    a_v = platt_scale(zv, y[is_cal], per_speaker_weights(reader[is_cal]))
    fd = dict(meta.get("file_decision") or {})
    old = {"scale": fd.get("scale"), "voice_weight": fd.get("voice_weight")}
    # the windows alone keep a window scale fitted in-domain: their own Platt scale where training recorded
    # it, else the in-domain joint fit's (which, giving the voice little weight, is close to it)
    alone = fd.get("scale_windows_alone", fd.get("in_domain_scale", old["scale"]))
    fd.update(scale=round(max(float(weights[0]), 0.05), 4), voice_weight=round(float(weights[1]) * a_v, 4),
              scale_without_voice=round(max(float(alone), 0.05), 4),
              scale_voice_alone=round(a_v, 4), cross_corpus_weights=[float(weights[0]), float(weights[1])],
              # a bundle trained (or reweighed) with cross-corpus weights already records the in-domain fit
              in_domain_scale=fd.get("in_domain_scale", old["scale"]),
              in_domain_voice_weight=fd.get("in_domain_voice_weight", old["voice_weight"]),
              reweighed={"date": _dt.date.today().isoformat(), "calibration_files": int(is_cal.sum()),
                         "by": "python -m offline reweigh", "before": old})
    meta["file_decision"] = {**fd, "rule": FILE_RULE}
    config = (meta.get("training") or {}).get("config")
    if isinstance(config, dict):
        config["file_weights"] = [float(weights[0]), float(weights[1])]
    write_meta(models_dir, meta)
    Bundle.load(models_dir)  # the resealed bundle loads and passes its checks
    return meta["file_decision"]


def _run(args: argparse.Namespace) -> int:
    from .librispeech import load_corpora
    from .train import TrainConfig

    weights = args.weights or TrainConfig().file_weights
    if weights is None:
        print("error: no --weights given and TrainConfig has no file_weights", file=sys.stderr)
        return 2
    utterances = load_corpora(args.data, subsets=args.subsets, strict=args.strict)
    try:
        fd = reweigh_bundle(args.models, utterances, tuple(weights), cache_dir=None if args.no_cache else args.cache,
                            progress=not args.no_progress)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(fd, indent=1))
    return 0


def add_parser(subparsers) -> None:
    from .options import add_corpus_arguments

    p = subparsers.add_parser(
        "reweigh", help="give a bundle's file decision the cross-corpus weights of its two opinions",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=Path("models"), help="the bundle to reweigh (default: models)")
    p.add_argument("--weights", type=float, nargs=2, metavar=("WINDOW", "VOICE"),
                   help="(window weight, voice weight); default: TrainConfig.file_weights")
    add_corpus_arguments(p)
    p.set_defaults(func=_run)

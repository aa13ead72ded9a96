"""End to end on real audio: features -> fit_all (quick) -> ONNX export -> realtime.bundle.Bundle.

A dozen shared LibriSpeech readers, TrainConfig.quick() (one augmented copy, two epochs, few trees): this
checks the plumbing and the exported models' parity with the trained ones, not accuracy (see
``python -m offline evaluate`` for that). About a minute on a 2-core CPU.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os

import numpy as np
import pytest

from tests.data import LIBRISPEECH, gender_of, readers_by_gender, speechocean_speakers

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
pytestmark = pytest.mark.slow


def _utterances(n_per_gender: int, so_per_gender: int = 0, tmp=None):
    """``n_per_gender`` LibriSpeech readers and ``so_per_gender`` speechocean762 speakers (two files each)."""
    from offline.librispeech import load_corpus, load_manifest

    wanted = {p.stem for paths in readers_by_gender(n_per_gender).values() for p in paths}
    utts = [u for u in load_corpus(LIBRISPEECH) if u.utt_id in wanted]
    assert len(utts) == 2 * n_per_gender
    if so_per_gender:
        from tests.data import SPEECHOCEAN, speechocean_sample

        manifest = tmp / "speechocean762" / "manifest.csv"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        with manifest.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "speaker", "gender"])
            for g, rows in speechocean_sample(so_per_gender, 2).items():
                w.writerows([(str(f), spk, g) for spk, f in rows])
        so = load_manifest(manifest)
        assert len(so) == 4 * so_per_gender and SPEECHOCEAN.is_dir()
        utts += so
    return utts


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from offline.dataset import extract_corpus
    from offline.export import export_bundle
    from offline.train import TrainConfig, data_summary, fit_all

    tmp = tmp_path_factory.mktemp("train")
    utts = _utterances(6, 3, tmp)
    cache = tmp / "cache"
    ws = extract_corpus(utts, cache_dir=cache, jobs=2, progress=False)
    config = TrainConfig.quick(cache_dir=str(cache), jobs=2)
    models = fit_all(ws, config=config, progress=False, train_utterances=utts)
    out = export_bundle(models, tmp / "bundle", data_summary=data_summary(ws, utts), metrics={"note": "test"})
    return models, ws, out


def test_fit_all_components_and_ensemble(trained):
    models, ws, _ = trained
    comps = models.predict_components(ws)
    assert set(comps) == {"xgb", "cnn1d", "cnn2d"}
    for p in comps.values():
        assert p.shape == (len(ws),) and np.all((p >= 0) & (p <= 1))
    p = models.predict(ws)
    assert p.shape == (len(ws),) and np.all((p >= 0) & (p <= 1))
    assert models.weights.shape == (3,) and np.all(np.isfinite(models.weights))
    assert 0 < models.thresholds["male"] <= 0.5 <= models.thresholds["female"] < 1
    # the band is scored on the calibration windows that chose it: it reaches the target, or it is the widest
    v = models.validation
    assert 0.0 <= v["uncertain_fraction"] <= 1.0 and v["band_target"] == models.config.confident_accuracy
    assert v["confident_accuracy"] is None or 0.0 <= v["confident_accuracy"] <= 1.0
    if v["confident_accuracy"] is None or v["confident_accuracy"] < v["band_target"]:
        assert models.thresholds == {"female": 0.9, "male": 0.1}
    assert set(v["band_clean"]) == {"uncertain_fraction", "confident_accuracy"}
    assert models.mfcc_mean.shape == (40,) and np.all(models.mfcc_std > 0)
    # calibration readers are held out of fitting, gender-balanced
    assert models.data["calibration_readers"] >= 2 and models.data["fit_readers"] >= 2
    assert set(models.xgb_importance) <= set(models.stat_names)


def test_band_is_the_narrowest_that_reaches_the_target():
    from offline.train import band_accuracy, choose_thresholds

    # 10 windows: confident and right far from 0.5, two wrong ones at 0.30 (female) and 0.72 (male)
    y = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    p = np.array([0.95, 0.92, 0.88, 0.61, 0.30, 0.05, 0.08, 0.12, 0.45, 0.72])
    band = choose_thresholds(y, p, 0.98)
    assert band == {"female": 0.75, "male": 0.25}  # 0.5 +- 0.25 leaves both mistakes inside
    scored = band_accuracy(y, p, band)
    assert scored == {"uncertain_fraction": 0.4, "confident_accuracy": 1.0}
    # a target no band reaches: the widest band, and its accuracy says it fell short
    y_bad = 1 - y
    band = choose_thresholds(y_bad, p, 0.98)
    assert band == {"female": 0.9, "male": 0.1}
    assert band_accuracy(y_bad, p, band)["confident_accuracy"] == 0.0
    assert band_accuracy(y, np.full(10, 0.5), band) == {"uncertain_fraction": 1.0, "confident_accuracy": None}


def test_bundle_files_and_json(trained):
    from realtime.features import DEFAULT

    _, ws, out = trained
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["format_version"] == 1
    assert meta["feature"]["hash"] == DEFAULT.hash and meta["feature"]["definition"] == DEFAULT.to_dict()
    assert len(meta["feature"]["stat_names"]) == ws.n_stats
    for name in ("xgb", "cnn1d", "cnn2d"):
        m = meta["models"][name]
        data = (out / m["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == m["sha256"]
        assert m["export_check"]["max_abs_diff_p"] <= 1e-4
    assert len(meta["normalisation"]["mfcc_mean"]) == 40
    assert len(meta["ensemble"]["weights"]) == 3
    assert meta["training"]["data"]["readers"] == {"F": 9, "M": 9}  # two corpora: 6 + 3 of each
    # the speech check and the file decision travel in the bundle, checked like the gender models
    sp = meta["speech"]
    assert hashlib.sha256((out / sp["file"]).read_bytes()).hexdigest() == sp["sha256"]
    assert 0 < sp["threshold"] < 1 and sp["export_check"]["max_abs_diff_p"] <= 1e-4
    assert sp["training"]["calibration_speech_kept"] >= 0.95
    fd = meta["file_decision"]
    assert fd["scale"] > 0 and 0 < fd["male"] <= 0.5 <= fd["female"] < 1
    assert meta["training"]["data"]["windows"] == len(ws)
    assert meta["metrics"] == {"note": "test"}
    # the training recipe is recorded, its augmentation nested, and reads back as the config trained with
    from offline.train import TrainConfig

    models = trained[0]
    assert meta["training"]["config"]["augment"]["copies"] == 1
    assert TrainConfig.from_dict(meta["training"]["config"]) == models.config
    assert "onnxruntime" in meta["versions"] and meta["created"]
    total = sum(p.stat().st_size for p in out.iterdir())
    assert total < 10_000_000


def test_onnx_bundle_matches_trained_models(trained):
    from realtime.bundle import Bundle

    models, ws, out = trained
    bundle = Bundle.load(out)
    got = bundle.predict(ws.stats, ws.mfcc)
    ref = models.predict(ws)
    ref_comps = models.predict_components(ws)
    assert np.all((got["p_female"] >= 0) & (got["p_female"] <= 1))
    assert np.max(np.abs(got["p_female"] - ref)) <= 1e-4
    for name in ("xgb", "cnn1d", "cnn2d"):
        assert np.max(np.abs(got[name] - ref_comps[name])) <= 1e-4, name
    for i in range(0, len(ws), max(1, len(ws) // 5)):
        p, comps, ms = bundle.predict_one(ws.stats[i], ws.mfcc[i])
        assert abs(p - got["p_female"][i]) <= 1e-6
        assert set(comps) == set(ms) == {"xgb", "cnn1d", "cnn2d"}
        assert bundle.label(p) in ("female", "male", "uncertain")
    # the exported speech check equals the trained one, and keeps the training speech
    assert bundle.has_speech_model
    assert np.max(np.abs(bundle.p_speech(ws.stats) - models.p_speech(ws.stats))) <= 1e-4
    assert np.mean(bundle.p_speech(ws.stats) >= bundle.speech_threshold) >= 0.95


def test_export_check_raises_on_mismatch(trained, tmp_path):
    from offline.export import ExportError, export_xgb

    models, ws, _ = trained
    with pytest.raises(ExportError, match="differs"):
        export_xgb(models.xgb, tmp_path / "x.onnx", ws.stats[:8], tolerance=-1.0)


def test_cli_train_quick(tmp_path, capsys):
    from offline.cli import main

    manifest = tmp_path / "train.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "speaker", "gender"])
        for paths in readers_by_gender(3).values():
            for p in paths:
                w.writerow([str(p), p.name.split("-")[0], gender_of(p)])
        # a speaker of the label audit (offline/label_audit.py) is read, and left out of training (--set)
        gender, files = speechocean_speakers()["so762-2380"]
        w.writerows([(str(f), "so762-2380", gender) for f in files[:2]])
    out = tmp_path / "models"
    rc = main(["train", "--data", str(manifest), "--out", str(out), "--quick", "--json", "--jobs", "2",
               "--cache", str(tmp_path / "cache"), "--set", "label_audit=true"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["data"]["readers"] == {"F": 3, "M": 3}
    assert summary["data"]["excluded_readers"] == ["so762-2380"]
    split = json.loads((out / "bundle.json").read_text())["training"]["split"]
    assert split["excluded_readers"] == ["so762-2380"] and "so762-2380" not in split["train_readers"]
    assert {p.name for p in out.iterdir()} >= {"xgb.onnx", "cnn1d.onnx", "cnn2d.onnx", "bundle.json"}


def test_file_decision_band_is_calibrated_and_capped():
    """The file verdict: Platt-scaled mean window log-odds, the narrowest band with >= 98.5 % right decided
    files, never leaving more than 3 % of the calibration files undecided."""
    from offline.train import fit_file_decision

    rng = np.random.default_rng(0)
    y = np.repeat(rng.integers(0, 2, 400), 5)
    utt = np.repeat([f"u{i}" for i in range(400)], 5)
    reader = np.repeat([f"r{i // 2}" for i in range(400)], 5)
    # windows that lean the right way at ~0.7: averaged over a file the evidence is strong
    p = np.clip(np.where(y == 1, 0.7, 0.3) + rng.normal(0, 0.2, len(y)), 0.01, 0.99)
    fd = fit_file_decision(y, p, utt, reader, 0.985)
    assert fd["scale"] > 1.5  # five windows at 0.7 are surer than one
    assert 0.0 < fd["male"] <= 0.5 <= fd["female"] < 1.0 and fd["calibration_undecided"] <= 0.03
    # hopeless evidence (windows at random): the band may not swallow the files
    p_bad = rng.uniform(0.3, 0.7, len(y))
    fd_bad = fit_file_decision(y, p_bad, utt, reader, 0.985)
    assert fd_bad["calibration_undecided"] <= 0.03


def test_reweigh_recomputes_the_voice_scale_and_sets_the_weights(trained, tmp_path):
    """`offline reweigh` recomputes, from the split a bundle records, the voice probe's Platt scale on the
    calibration files exactly as training fitted it, gives the file decision the weights asked for, reseals
    the bundle, and refuses data other than the bundle was trained on."""
    import shutil

    from offline.reweigh import reweigh_bundle
    from realtime.bundle import Bundle
    from realtime.logodds import logit, sigmoid

    _, _, out = trained
    trained_fd = json.loads((out / "bundle.json").read_text())["file_decision"]
    assert trained_fd["voice_weight"] > 0 and trained_fd["scale_voice_alone"] > 0
    copy = tmp_path / "bundle"
    shutil.copytree(out, copy)
    utts = _utterances(6, 3, tmp_path)
    fd = reweigh_bundle(copy, utts, (0.5, 2.0), cache_dir=tmp_path / "cache")
    assert fd["scale_voice_alone"] == pytest.approx(trained_fd["scale_voice_alone"], rel=1e-3)
    assert fd["scale"] == 0.5 and fd["voice_weight"] == pytest.approx(2.0 * trained_fd["scale_voice_alone"], rel=1e-3)
    assert fd["reweighed"]["before"] == {"scale": trained_fd["scale"], "voice_weight": trained_fd["voice_weight"]}
    assert (fd["female"], fd["male"]) == (trained_fd["female"], trained_fd["male"])  # the band is kept
    # the windows alone keep their own in-domain scale, as training records it
    assert fd["scale_without_voice"] == trained_fd["scale_without_voice"] == trained_fd["scale_windows_alone"]
    bundle = Bundle.load(copy)
    assert bundle.meta["training"]["config"]["file_weights"] == [0.5, 2.0]
    _, p = bundle.file_verdict([0.6, 0.6, 0.6], 1.0)
    assert p == pytest.approx(sigmoid(0.5 * logit(0.6, 1e-4) + fd["voice_weight"] * 1.0), abs=1e-9)
    # one speaker's files fewer: the probe refitted is not the bundle's, and nothing is written
    before = (copy / "bundle.json").read_bytes()
    fewer = [u for u in utts if u.reader != utts[-1].reader]
    with pytest.raises(ValueError, match="differs from the bundle's own"):
        reweigh_bundle(copy, fewer, (0.5, 2.0), cache_dir=tmp_path / "cache")
    assert (copy / "bundle.json").read_bytes() == before

"""Evaluation: metrics against hand-computed values, a real mini cross-validation through the command line,
and a trained bundle scored on a CSV manifest of shared files."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from offline import metrics as M
from offline.evaluate import FixedChannel, FixedNoise, channel_conditions, format_table, noise_conditions
from offline.train import TrainConfig

from .data import LIBRISPEECH, readers_by_gender, speechocean_sample

ROOT = Path(__file__).resolve().parents[1]
BUNDLE_DIR = ROOT / "models"


# --- metrics, by hand ------------------------------------------------------------------------------------

def test_live_label_of_files_by_hand():
    from realtime.events import Event

    ev = lambda label, p, speech=True: Event(t=0.0, label=label, p_female=p, speech=speech)  # noqa: E731
    # 4 speech hops with an estimate (2 female, 1 uncertain, 1 male), one waiting, one estimate in a pause
    events = [ev("waiting", None), ev("female", 0.9), ev("uncertain", 0.6), ev("female", 0.8), ev("male", 0.2),
              ev("female", 0.7, speech=False)]
    assert M.live_label_score(events, female=True) == (0.5, True)  # 2 of 4 speech hops; the last estimate is right
    assert M.live_label_score(events, female=False) == (0.25, False)
    assert M.live_label_score([ev("waiting", None), ev("no speech", None)], female=True) is None
    # files, not hops: two female files (shares 1 and 0.5) and one male file (0.25) -> (0.75 + 0.25) / 2
    assert M.balanced_over_files([1, 1, 0], [1.0, 0.5, 0.25]) == pytest.approx(0.5)
    assert M.balanced_over_files([1, 1], [1.0, 0.0]) == pytest.approx(0.5)  # one class present: its mean
    assert math.isnan(M.balanced_over_files([], []))


def test_binary_metrics_by_hand():
    # 3 female windows (2 called female), 2 male windows (1 called male)
    y = [1, 1, 1, 0, 0]
    p = [0.9, 0.6, 0.4, 0.3, 0.7]
    m = M.binary_metrics(y, p)
    assert m["recall_female"] == pytest.approx(2 / 3)
    assert m["recall_male"] == pytest.approx(1 / 2)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)  # 7/12, not the plain accuracy 3/5
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["confusion"] == [[2, 1], [1, 1]]  # rows true F/M, columns decided F/M
    # AUC: of the 3 x 2 (female, male) pairs, 4 rank the female higher
    # (0.9>0.3, 0.9>0.7, 0.6>0.3, 0.4>0.3; 0.6<0.7, 0.4<0.7)
    assert m["auc"] == pytest.approx(4 / 6)
    assert (m["n"], m["n_female"], m["n_male"]) == (5, 3, 2)


def test_threshold_is_inclusive_and_balanced_accuracy_ignores_class_sizes():
    # p == 0.5 is called female
    assert M.confusion([1, 0], [0.5, 0.5]).tolist() == [[1, 0], [1, 0]]
    # 99 male windows all right, 1 female window wrong: accuracy 99 %, balanced accuracy 50 %
    y = [0] * 99 + [1]
    p = [0.1] * 99 + [0.2]
    m = M.binary_metrics(y, p)
    assert m["accuracy"] == pytest.approx(0.99)
    assert m["balanced_accuracy"] == pytest.approx(0.5)


def test_single_class_leaves_other_recall_and_auc_undefined():
    m = M.binary_metrics([1, 1, 1, 1], [0.9, 0.8, 0.3, 0.7])
    assert m["recall_female"] == pytest.approx(0.75)
    assert math.isnan(m["recall_male"]) and math.isnan(m["auc"])
    assert m["balanced_accuracy"] == pytest.approx(0.75)
    assert M.json_safe(m)["auc"] is None


def test_utterance_probability_is_mean_log_odds():
    # utterance a: p 0.9 and 0.2 = odds 9 and 1/4 -> mean log-odds log(1.5) -> p = 0.6 (mean probability: 0.55)
    # utterance b: one confident window (odds 999) and three at 0.3 (odds 3/7): mean p = 0.47475 (male),
    #   but the geometric mean of the odds is (999 * (3/7)**3) ** (1/4) ~ 2.98 -> female
    # utterance c (male): 0.2 and 0.2 -> 0.2
    p = [0.9, 0.2, 0.999, 0.3, 0.3, 0.3, 0.2, 0.2]
    y = [1, 1, 1, 1, 1, 1, 0, 0]
    utt = ["a", "a", "b", "b", "b", "b", "c", "c"]
    u = M.utterance_scores(y, p, utt)
    assert list(u["utt"]) == ["a", "b", "c"]
    assert u["p"][0] == pytest.approx(0.6)
    odds_b = (999 * (3 / 7) ** 3) ** 0.25
    assert u["p"][1] == pytest.approx(odds_b / (1 + odds_b))
    assert np.mean(p[2:6]) < 0.5 < u["p"][1]
    assert u["p"][2] == pytest.approx(0.2)
    assert list(u["y"]) == [1, 1, 0] and list(u["n_windows"]) == [2, 4, 2]
    ev = M.evaluate(y, p, utt)
    assert ev["utterance"]["balanced_accuracy"] == pytest.approx(1.0)
    # per window: female windows right 2 of 6 (0.9, 0.999), male 2 of 2
    assert ev["window"]["recall_female"] == pytest.approx(2 / 6)
    assert ev["window"]["balanced_accuracy"] == pytest.approx((2 / 6 + 1) / 2)


def test_saturated_windows_are_clipped_not_infinite():
    u = M.utterance_scores([1, 1], [1.0, 0.0], ["x", "x"])
    assert u["p"][0] == pytest.approx(0.5)


def test_utterance_with_two_labels_is_an_error():
    with pytest.raises(ValueError, match="different labels"):
        M.utterance_scores([1, 0], [0.7, 0.2], ["x", "x"])


def test_uncertain_share_and_decided_accuracy():
    y = [1, 1, 0, 0, 0]
    p = [0.9, 0.55, 0.45, 0.1, 0.65]
    m = M.binary_metrics(y, p, thresholds={"male": 0.4, "female": 0.6})
    assert m["uncertain"] == pytest.approx(2 / 5)  # 0.55 and 0.45
    # decided: female 0.9 (right), male 0.1 (right), male 0.65 (wrong) -> recalls 1 and 1/2
    assert m["decided_balanced_accuracy"] == pytest.approx(0.75)
    assert M.parse_thresholds({"threshold_female": 0.7, "threshold_male": 0.3}) == (0.3, 0.7)
    assert M.parse_thresholds((0.4, 0.6)) == (0.4, 0.6)
    with pytest.raises(ValueError):
        M.parse_thresholds((0.6, 0.4))


def test_per_reader_accuracy():
    y = [1, 1, 1, 1, 0, 0, 0]
    p = [0.9, 0.8, 0.3, 0.8, 0.2, 0.6, 0.4]
    reader = ["r1", "r1", "r1", "r1", "r2", "r2", "r2"]
    utt = ["u1", "u1", "u2", "u2", "u3", "u3", "u3"]
    pr = M.per_reader_accuracy(y, p, reader, utt)
    assert pr["r1"]["gender"] == "F" and pr["r1"]["accuracy"] == pytest.approx(3 / 4)
    assert pr["r2"]["gender"] == "M" and pr["r2"]["accuracy"] == pytest.approx(2 / 3)
    assert pr["r1"]["n_windows"] == 4 and pr["r1"]["n_utterances"] == 2
    # u2: odds 3/7 and 4 -> female (right); u1 right; u3: odds 1/4, 3/2, 2/3 -> male (right)
    assert pr["r1"]["utterance_accuracy"] == 1.0 and pr["r2"]["utterance_accuracy"] == 1.0


def test_mean_std_over_folds():
    s = M.mean_std([0.9, 1.0])
    assert s["mean"] == pytest.approx(0.95)
    assert s["std"] == pytest.approx(math.sqrt(0.005))  # sample std (ddof=1)
    assert math.isnan(M.mean_std([0.9])["std"])
    assert M.mean_std([0.8, float("nan"), 1.0])["mean"] == pytest.approx(0.9)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        M.binary_metrics([1, 0], [0.5])
    with pytest.raises(ValueError):
        M.binary_metrics([1, 2], [0.5, 0.5])
    with pytest.raises(ValueError):
        M.binary_metrics([1, 0], [0.5, 1.5])


# --- test-time noise ---------------------------------------------------------------------------------------

def test_fixed_noise_is_deterministic_and_exact():
    x = np.sin(np.linspace(0, 400 * np.pi, 16000)).astype(np.float32) * 0.3
    white10 = FixedNoise("white", 10)
    a = white10(x, white10.rng_for("utt-1"))
    b = white10(x, white10.rng_for("utt-1"))
    c = white10(x, white10.rng_for("utt-2"))
    pink10 = FixedNoise("pink", 10)
    d = pink10(x, pink10.rng_for("utt-1"))
    assert np.array_equal(a, b) and not np.allclose(a, c) and not np.allclose(a, d)
    snr = 10 * np.log10(np.sum(x.astype(np.float64) ** 2) / np.sum((a.astype(np.float64) - x) ** 2))
    assert snr == pytest.approx(10.0, abs=0.05)
    names = [n.name for n in noise_conditions()]
    assert names == ["white_20", "white_10", "white_5", "pink_20", "pink_10", "pink_5"]
    assert white10.to_dict() != FixedNoise("white", 10, seed=1).to_dict()


def test_fixed_channels_and_their_labels():
    x = (np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32)
    names = [c.name for c in channel_conditions()]
    assert names == ["channel_8k", "channel_telephone", "channel_mp3", "channel_opus", "channel_aac", "channel_amr",
                     "channel_gain_-20", "channel_room"]
    room = FixedChannel("room")
    assert np.array_equal(room(x, room.rng_for("a")), room(x, room.rng_for("b")))  # one room for every file
    quiet = FixedChannel("gain_-20")
    assert np.allclose(quiet(x), x * 0.1, atol=1e-6)
    narrow = FixedChannel("8k")
    assert np.array_equal(narrow(x, narrow.rng_for("a")), narrow(x, narrow.rng_for("b")))  # nothing random
    with pytest.raises(ValueError, match="kind must be one of"):
        FixedChannel("fax")


def test_recipe_overrides_are_typed_and_checked():
    o = TrainConfig.parse_overrides(["augment.p_channel=0.3", "epochs=7", "lr_schedule=cosine",
                                     "augment.gain_db_range=[-3, 3]"])
    assert o == {"augment": {"p_channel": 0.3, "gain_db_range": (-3, 3)}, "epochs": 7, "lr_schedule": "cosine"}
    config = TrainConfig(**o)
    augmenter = config.augment.augmenter(config.seed)
    assert augmenter.p_channel == 0.3 and augmenter.gain_db_range == (-3.0, 3.0)
    assert augmenter.p_noise == TrainConfig().augment.p_noise  # the fields not set keep the recipe's defaults
    # the quick run keeps its one augmented copy under an augment override
    assert TrainConfig.quick(**o).augment.copies == 1 and TrainConfig.quick(**o).augment.p_channel == 0.3
    with pytest.raises(ValueError, match="TrainConfig field"):
        TrainConfig.parse_overrides(["no_such_knob=1"])
    with pytest.raises(ValueError, match="augment.p_voice"):  # the message lists the nested fields too
        TrainConfig.parse_overrides(["aug_p_voice=0.5"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        TrainConfig.parse_overrides(["epochs"])
    with pytest.raises(ValueError, match="p_channel must be in"):
        TrainConfig.quick(**TrainConfig.parse_overrides(["augment.p_channel=2"]))


# the augmentation fields of a record written before they were nested (the version-1 release's bundle.json)
_FLAT_AUGMENT = {"aug_copies": 2, "aug_snr_range": [5.0, 30.0], "aug_p_noise": 0.8, "aug_p_pitch": 0.5,
                 "aug_max_semitones": 1.0, "aug_gain_db": [-6.0, 6.0], "aug_p_channel": 0.4, "aug_p_voice": 0.0}


def test_recorded_training_config_reads_back():
    """bundle.json records the recipe (training.config): the shipped bundle's reads back as today's defaults, so
    does the same record in the older flat form (aug_copies, aug_p_channel, ...), and a new record round-trips."""
    shipped = json.loads((BUNDLE_DIR / "bundle.json").read_text())["training"]["config"]
    assert shipped["augment"]["p_channel"] == 0.4 and not any(k.startswith("aug_") for k in shipped)
    assert TrainConfig.from_dict(shipped) == TrainConfig()
    flat = {**{k: v for k, v in shipped.items() if k != "augment"}, **_FLAT_AUGMENT}
    assert TrainConfig.from_dict(flat) == TrainConfig(augment={"p_voice": 0.0})  # that release had no WORLD copies
    assert TrainConfig.from_dict({**flat, "aug_p_voice": 0.5}) == TrainConfig()
    config = TrainConfig.quick(seed=3, **TrainConfig.parse_overrides(["augment.p_voice=0.5"]))
    record = json.loads(json.dumps(config.to_dict()))
    assert record["augment"]["copies"] == 1 and record["augment"]["p_voice"] == 0.5
    assert TrainConfig.from_dict(record) == config
    with pytest.raises(ValueError, match="not TrainConfig fields: bogus"):
        TrainConfig.from_dict({**record, "bogus": 1})


# --- end to end ----------------------------------------------------------------------------------------

def _manifest(path: Path, n_per_gender: int) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "speaker", "gender"])
        for gender, files in readers_by_gender(n_per_gender).items():
            for f in files:
                w.writerow([str(f), f.name.split("-")[0], gender])
    return path


def _speechocean_manifest(path: Path, n_per_gender: int, files_per_speaker: int = 2) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "speaker", "gender"])
        for gender, rows in speechocean_sample(n_per_gender, files_per_speaker).items():
            for spk, f in rows:
                w.writerow([str(f), spk, gender])
    return path


def _run_cli(args: list[str], timeout: float) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-m", "offline", "evaluate", *args, "--json", "--no-progress"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstderr:\n{proc.stderr[-4000:]}"
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"stdout is not pure JSON ({exc}):\n{proc.stdout[:2000]}") from None


def _check_model_block(block: dict, *, with_std: bool) -> None:
    for level in ("window", "utterance"):
        for key in ("balanced_accuracy", "recall_female", "recall_male", "auc"):
            stat = block[level][key]
            assert set(stat) >= {"mean", "std", "folds"}
            assert 0.0 <= stat["mean"] <= 1.0
            if with_std:
                assert stat["std"] is not None and stat["std"] >= 0.0


@pytest.mark.slow
def test_mini_cross_validation_through_the_command_line(tmp_path):
    """k=2 on two corpora (12 F / 12 M LibriSpeech readers, 6 F / 6 M speechocean762 speakers with two files
    each) with the quick training config, plus leave-one-corpus-out and the engine-path file verdicts."""
    pytest.importorskip("offline.train", reason="offline.train is not there yet")
    (tmp_path / "mini").mkdir()
    data = _manifest(tmp_path / "mini" / "manifest.csv", 12)  # a manifest's corpus is its folder's name
    so = _speechocean_manifest(tmp_path / "so762" / "manifest.csv", 6)
    plots = tmp_path / "plots"
    out = _run_cli(["--data", str(data), str(so), "--cv", "2", "--quick", "--loco", "--cache",
                    str(tmp_path / "cache"), "--plots", str(plots)], timeout=900)

    assert out["mode"] == "cv" and out["folds"] == 2 and out["config"] == "quick"
    assert {"command", "seconds", "date", "models", "noise", "pooled", "per_reader", "fold_readers",
            "data_summary", "targets"} <= set(out)
    assert "evaluate" in out["command"] and out["seconds"] > 0
    assert set(out["models"]) == {"ensemble", "xgb", "cnn1d", "cnn2d"}
    for block in out["models"].values():
        _check_model_block(block, with_std=True)
        assert len(block["window"]["balanced_accuracy"]["folds"]) == 2
    assert out["noise"] == {}

    # reader-disjoint folds that together cover every reader exactly once
    folds = out["fold_readers"]
    assert len(folds) == 2
    everyone = set()
    for f in folds:
        train, test = set(f["train_readers"]), set(f["test_readers"])
        assert train and test and not train & test
        assert not everyone & test
        everyone |= test
    assert everyone == set(out["per_reader"]) and len(everyone) == 36
    assert all(set(f["train_readers"]) | set(f["test_readers"]) == everyone for f in folds)
    # folds are stratified by corpus and gender: 6 + 3 of each gender per fold
    for f in folds:
        test = set(f["test_readers"])
        assert sum(r.startswith("so762") for r in test) == 6 and len(test) == 18

    # each corpus's rows separately, per window, file and speaker
    assert set(out["corpora"]) == {"mini", "so762"}
    for rows in out["corpora"].values():
        for block in rows.values():
            _check_model_block(block, with_std=True)
    assert out["models"]["ensemble"]["speaker"]["balanced_accuracy"]["mean"] > 0.5
    # leave-one-corpus-out: both directions, each trained on one corpus and scored on the other
    assert set(out["loco"]) == {"mini -> so762", "so762 -> mini"}
    for direction, r in out["loco"].items():
        assert r["folds"] == 1 and "fold_readers" not in r  # one training per direction
        assert r["corpora"] == {}  # its test side is one corpus
        assert 0.0 <= r["models"]["ensemble"]["speaker"]["balanced_accuracy"]["mean"] <= 1.0
        assert r["engine_files"]["files"] == 24, direction  # 24 LibriSpeech files, or 12 speakers x 2 files
    # the engine path gave every test file a verdict exactly as `realtime classify` does
    ef = out["engine_files"]
    assert ef["files"] == 24 + 24
    assert 0.5 < ef["all"]["balanced_accuracy"]["mean"] <= 1.0
    assert set(ef["corpora"]) == {"mini", "so762"}
    # the speech check: test speech kept, held-out synthetic non-speech rejected
    sc = out["speech_check"]
    assert sc["speech_kept"]["clean"]["mean"] >= 0.9
    assert sc["nonspeech_rejected"]["all synthetic"]["mean"] >= 0.8

    ens = out["models"]["ensemble"]
    # two epochs on 12 readers learn the ranking (AUC ~0.9) but not yet a calibrated threshold at 0.5
    for level in ("window", "utterance"):
        assert ens[level]["auc"]["mean"] >= 0.8, ens[level]
        assert ens[level]["balanced_accuracy"]["mean"] > 0.5, ens[level]
    cm = out["pooled"]["ensemble"]["window"]["confusion"]
    assert sum(map(sum, cm)) == out["data_summary"]["windows"]

    for name in ("confusion_window.png", "confusion_utterance.png", "roc.png", "reader_accuracy.png"):
        assert (plots / name).stat().st_size > 1000, name
    assert json.loads((plots / "evaluation.json").read_text()) == out
    # every engine-path file of the CV folds and both directions, with its raw evidence and its fold's decision:
    # the fold's rule applied to that evidence gives back the verdict's p
    with np.load(plots / "engine_files.npz") as z:
        ef_rows = {k: z[k] for k in z.files}
    assert len(ef_rows["y"]) == 48 + 24 + 24
    assert sorted(set(ef_rows["direction"])) == ["", "mini -> so762", "so762 -> mini"]
    has = np.isfinite(ef_rows["z_windows"]) & np.isfinite(ef_rows["p"])
    assert has.mean() > 0.9
    vw = np.nan_to_num(ef_rows["decision_voice_weight"])
    zv = np.where(np.isfinite(ef_rows["z_voice"]), ef_rows["z_voice"], 0.0)
    again = 1.0 / (1.0 + np.exp(-(ef_rows["decision_scale"] * ef_rows["z_windows"] + vw * zv)))
    np.testing.assert_allclose(again[has], ef_rows["p"][has], atol=2e-3)
    # each file's live label (share of its speech hops labelled right, its last estimate), without and with the
    # live voice opinion, balanced over the files of each fold: the summary is those rows' figure
    cv = ef_rows["direction"] == ""
    for key, col in (("live_label", "live_share"), ("live_label_last", "live_last"),
                     ("live_voice_label", "live_voice_share"), ("live_voice_label_last", "live_voice_last")):
        folds = ef["all"][f"{key}_balanced_accuracy"]["folds"]
        assert len(folds) == 2 and all(0.5 < f <= 1.0 for f in folds), (key, folds)
        for i, fold in enumerate(sorted(set(ef_rows["fold"][cv].tolist()))):
            m = cv & (ef_rows["fold"] == fold)
            v = ef_rows[col][m]
            assert np.isfinite(v).mean() > 0.9 and np.all((v[np.isfinite(v)] >= 0) & (v[np.isfinite(v)] <= 1))
            assert folds[i] == pytest.approx(M.balanced_over_files(ef_rows["y"][m][np.isfinite(v)], v[np.isfinite(v)]))


@pytest.mark.slow
def test_bundle_on_a_csv_manifest_with_noise(tmp_path):
    """The trained release bundle scored on 2 F + 2 M shared files, clean and noisy."""
    if not (BUNDLE_DIR / "bundle.json").is_file():
        pytest.fail(f"no trained bundle: {BUNDLE_DIR / 'bundle.json'} is missing "
                    f"(train it with `python -m offline train ...` first)")
    data = _manifest(tmp_path / "few.csv", 2)
    out = _run_cli(["--data", str(data), "--models", str(BUNDLE_DIR), "--noise", "--channel",
                    "--cache", str(tmp_path / "cache")], timeout=600)
    assert out["mode"] == "bundle" and out["folds"] is None
    assert out["data_summary"]["readers"] == 4 and out["data_summary"]["readers_female"] == 2
    assert set(out["models"]) == {"ensemble", "xgb", "cnn1d", "cnn2d"}
    for block in out["models"].values():
        _check_model_block(block, with_std=False)
    assert set(out["noise"]) == {"white_20", "white_10", "white_5", "pink_20", "pink_10", "pink_5"}
    for entry in out["noise"].values():
        assert set(entry["models"]) == set(out["models"])
        _check_model_block(entry["models"]["ensemble"], with_std=False)
    assert set(out["channel"]) == {"channel_8k", "channel_telephone", "channel_mp3", "channel_opus", "channel_aac",
                                   "channel_amr", "channel_gain_-20", "channel_room"}
    assert out["channel"]["channel_8k"]["label"] == "8 kHz source"
    table = format_table(out)
    assert "8 kHz source" in table and "white 10 dB" in table
    # 4 clean utterances of readers from the shared corpus: the bundle should get them right
    assert out["models"]["ensemble"]["utterance"]["balanced_accuracy"]["mean"] >= 0.75
    # ... and they are readers it was trained on (training.split.train_readers): the figures say so
    shipped = json.loads((BUNDLE_DIR / "bundle.json").read_text())["training"]["split"]["train_readers"]
    readers = {f.name.split("-")[0] for files in readers_by_gender(2).values() for f in files}
    assert readers <= set(shipped) and set(out["readers_seen_in_training"]) == readers
    assert "were in the bundle's training data" in table
    # the live engine's verdicts of the same files, with the voice opinion and without it
    eng = out["engine_files"]
    assert eng["files"] == 4 and eng["all"]["balanced_accuracy"]["mean"] >= 0.75
    assert {"windows_only", "voice_only"} <= set(eng) and "voice opinion alone" in table
    assert LIBRISPEECH.is_dir()


def test_live_hop_figures_count_what_the_console_shows():
    """The engine-path summary's live-hop figures, on the shipped bundle's events for real speech: the share of
    estimate hops with a decided label and their balanced accuracy, recounted here from the labels."""
    from offline.evaluate import _engine_summary, _live_hop_metrics
    from realtime.engine import Engine

    engine = Engine()
    hop_y, hop_label = [], []
    for gender, files in readers_by_gender(2).items():
        for f in files:
            live = [e.label for e in engine.run(f) if e.p_female is not None]
            assert live and set(live) <= {"female", "male", "uncertain"}
            hop_y += [int(gender == "F")] * len(live)
            hop_label += live
    y, lab = np.asarray(hop_y), np.asarray(hop_label)
    m = _live_hop_metrics(y, lab)
    decided = lab != "uncertain"
    assert m["live_hops_decided"] == pytest.approx(decided.mean())
    rec_f = np.mean(lab[decided & (y == 1)] == "female")
    rec_m = np.mean(lab[decided & (y == 0)] == "male")
    assert m["live_decided_balanced_accuracy"] == pytest.approx((rec_f + rec_m) / 2)
    assert m["live_hops_decided"] > 0.8 and m["live_decided_balanced_accuracy"] > 0.9  # LibriSpeech speech, in training
    rows = [{"y": [1, 0], "label": ["female", "male"], "p": [0.9, 0.1], "corpus": ["LibriSpeech"] * 2,
             "hop_y": hop_y, "hop_label": hop_label, "hop_corpus": ["LibriSpeech"] * len(hop_y)}]
    summary = _engine_summary(rows)["all"]
    assert summary["live_hops_decided"]["mean"] == pytest.approx(m["live_hops_decided"])


def test_engine_eval_hears_the_files_through_a_phone_codec(tmp_path):
    """`offline engine-eval --channel amr`: every file goes through AMR-NB before the engine, the result says
    so, and the figures are those of the altered audio (fewer or other windows than as recorded)."""
    data = _manifest(tmp_path / "few.csv", 1)
    runs = {}
    for channel in (None, "amr"):
        cmd = [sys.executable, "-m", "offline", "engine-eval", "--models", str(BUNDLE_DIR), "--data", str(data),
               "--settings", "speech-only, first 0.75 s", "--json"] + (["--channel", channel] if channel else [])
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[channel] = json.loads(proc.stdout)
    assert runs[None]["channel"] is None and runs["amr"]["channel"] == "amr" and runs["amr"]["utterances"] == 2
    clean, amr = (runs[c]["settings"]["speech-only, first 0.75 s"] for c in (None, "amr"))
    assert amr["windows"] > 0 and 0.5 <= amr["utterance_balanced_accuracy"] <= 1.0
    assert (amr["windows"], amr["window_balanced_accuracy"]) != (clean["windows"], clean["window_balanced_accuracy"]) \
        or amr["first_estimate_after_onset_s"] != clean["first_estimate_after_onset_s"]
    bad = subprocess.run([sys.executable, "-m", "offline", "engine-eval", "--models", str(BUNDLE_DIR), "--data",
                          str(data), "--channel", "cb-radio"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr

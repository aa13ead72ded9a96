"""Bundle.load validates every number and name of bundle.json (one BundleError naming the field) and
verifies the digest over bundle.json itself (issue 14, item 6). Each case edits a copy of the shipped
bundle; edits are re-sealed (``realtime.bundle.seal``) so that the value check, not the digest, is what
refuses them, and an unsealed edit is refused by the digest."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from realtime.bundle import DEFAULT_MODELS_DIR, Bundle, BundleError, bundle_digest, seal

REPO = Path(__file__).resolve().parents[1]


def _edit(folder: Path, edit, *, reseal: bool = True) -> None:
    path = folder / "bundle.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(seal(meta) if reseal else meta, indent=1))


def _set(dotted: str, value):
    def edit(meta):
        *head, last = dotted.split(".")
        cur = meta
        for k in head:
            cur = cur[k]
        cur[last] = value
    return edit


def test_shipped_bundle_is_sealed_and_verifies():
    b = Bundle.load()
    assert b.sealed
    meta = json.loads((DEFAULT_MODELS_DIR / "bundle.json").read_text())
    assert meta["digest"]["sha256"] == bundle_digest(meta)


NAN = float("nan")


@pytest.mark.parametrize("dotted, value, words", [
    ("ensemble.p_clip", 0, "ensemble.p_clip must be > 0"),
    ("ensemble.p_clip", 0.7, "ensemble.p_clip must be < 0.5"),
    ("ensemble.order", ["xgb", "cnn1d", "resnet"], "ensemble.order must name each of xgb, cnn1d, cnn2d once"),
    ("ensemble.order", ["xgb", "xgb", "cnn2d"], "ensemble.order must name each"),
    ("ensemble.weights", [0.4, NAN, 0.3], "ensemble.weights[1] must be finite"),
    ("ensemble.weights", [0.4, 0.3], "ensemble.weights must be a list of 3 numbers, got 2 values"),
    ("ensemble.weights", [0.4, "0.3", 0.3], "ensemble.weights[1] must be a number"),
    ("ensemble.bias", NAN, "ensemble.bias must be finite"),
    ("ensemble.bias", True, "ensemble.bias must be a number"),
    ("models", {}, "models must be an object naming the model files"),
    ("models", [], "models must be an object naming the model files"),
    ("thresholds.female", NAN, "thresholds.female must be finite"),
    ("thresholds.female", 1.0, "thresholds.female must be < 1"),
    ("thresholds.male", 0.0, "thresholds.male must be > 0"),
    ("thresholds.male", 0.7, "0 < male <= 0.5 <= female < 1"),
    ("thresholds.male", "0.2", "thresholds.male must be a number"),
])
def test_impossible_numbers_and_names_are_refused_naming_the_field(copy, dotted, value, words):
    _edit(copy, _set(dotted, value))
    with pytest.raises(BundleError) as info:
        Bundle.load(copy)
    assert words in str(info.value)


def test_nan_in_normalisation_and_zero_std_are_refused(copy):
    def nan_mean(meta):
        meta["normalisation"]["mfcc_mean"][7] = NAN
    _edit(copy, nan_mean)
    with pytest.raises(BundleError, match=r"normalisation\.mfcc_mean\[7\] must be finite"):
        Bundle.load(copy)

    def zero_std(meta):
        meta["normalisation"]["mfcc_mean"][7] = 0.0
        meta["normalisation"]["mfcc_std"][3] = 0.0
    _edit(copy, zero_std)
    with pytest.raises(BundleError, match=r"normalisation\.mfcc_std\[3\] must be > 0"):
        Bundle.load(copy)


def test_missing_model_entry_and_bad_sha256_are_refused(copy):
    _edit(copy, lambda meta: meta["models"].pop("cnn1d"))
    with pytest.raises(BundleError, match="models lacks cnn1d"):
        Bundle.load(copy)


def test_stat_names_must_match_the_feature_definition(copy):
    _edit(copy, lambda meta: meta["feature"]["stat_names"].pop())
    with pytest.raises(BundleError, match="feature.stat_names has 122 names, the feature definition gives 123"):
        Bundle.load(copy)
    _edit(copy, _set("feature.stat_names", ["x"] + json.loads((DEFAULT_MODELS_DIR / "bundle.json").read_text())
                     ["feature"]["stat_names"][1:]))
    with pytest.raises(BundleError, match=r"feature.stat_names\[0\] is 'x', the feature definition names it 'zcr_mean'"):
        Bundle.load(copy)


def test_edit_without_resealing_is_refused_by_the_digest(copy):
    value = 0.85 if Bundle.load(copy).thresholds["female"] != 0.85 else 0.8  # plausible, and a real change
    _edit(copy, _set("thresholds.female", value), reseal=False)  # only the digest catches it
    with pytest.raises(BundleError, match="does not match its digest.*modified or corrupted.*realtime.bundle seal"):
        Bundle.load(copy)
    _edit(copy, _set("thresholds.female", value))  # re-sealed: a deliberate edit loads
    assert Bundle.load(copy).thresholds["female"] == value


def test_bundle_without_digest_still_loads_unsealed_and_seal_command_adds_it(copy):
    _edit(copy, lambda meta: meta.pop("digest"), reseal=False)
    assert Bundle.load(copy).sealed is False
    r = subprocess.run([sys.executable, "-m", "realtime.bundle", "seal", str(copy)], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "digest sha256" in r.stdout
    assert Bundle.load(copy).sealed is True


def test_feature_mismatch_names_each_hash_once(copy):
    def edit(meta):
        meta["feature"]["definition"]["n_mels"] = 128  # the recorded hash left as it was (stale)
    _edit(copy, edit)
    with pytest.raises(BundleError) as info:
        Bundle.load(copy)
    msg = str(info.value)
    from realtime.features import DEFAULT

    assert msg.count(DEFAULT.hash) == 1, msg
    assert "n_mels: bundle 128 vs engine 64" in msg and "stale" in msg


def _shipped_values() -> dict:
    """The keyword arguments of ``bundle_meta`` that rebuild the shipped bundle.json from its own values."""
    from realtime.bundle import model_entry
    from realtime.features import DEFAULT

    meta = json.loads((DEFAULT_MODELS_DIR / "bundle.json").read_text())

    def entry(name: str, m: dict) -> dict:  # the file's own sha256 and size are measured again
        records = {k: v for k, v in m.items() if k not in ("file", "input", "output", "sha256", "bytes", "rule")}
        return model_entry(DEFAULT_MODELS_DIR, name, input=m["input"], output=m["output"], **records)

    return dict(definition=DEFAULT, stat_names=meta["feature"]["stat_names"],
                mfcc_mean=meta["normalisation"]["mfcc_mean"], mfcc_std=meta["normalisation"]["mfcc_std"],
                models={name: entry(name, m) for name, m in meta["models"].items()},
                weights=meta["ensemble"]["weights"], bias=meta["ensemble"]["bias"], p_clip=meta["ensemble"]["p_clip"],
                thresholds=meta["thresholds"], speech=entry("speech", meta["speech"]),
                file_decision={k: v for k, v in meta["file_decision"].items() if k != "rule"},
                voice=entry("voice", meta["voice"]),
                training=meta["training"], metrics=meta["metrics"], versions=meta["versions"], created=meta["created"])


def test_bundle_meta_writes_what_load_reads():
    """``bundle_meta`` (what offline.export fills in) rebuilds the shipped bundle.json, every section and rule, to
    the same digest; and it refuses, naming the field, what Bundle.load refuses."""
    from realtime.bundle import bundle_meta

    shipped = json.loads((DEFAULT_MODELS_DIR / "bundle.json").read_text())
    assert seal(bundle_meta(**_shipped_values())) == shipped
    with pytest.raises(BundleError, match=r"ensemble.weights\[1\] must be finite"):
        bundle_meta(**{**_shipped_values(), "weights": [0.4, NAN, 0.3]})
    with pytest.raises(BundleError, match="speech.threshold must be < 1"):
        values = _shipped_values()
        bundle_meta(**{**values, "speech": {**values["speech"], "threshold": 1.5}})
    with pytest.raises(BundleError, match="voice_weight needs the voice section"):
        bundle_meta(**{**_shipped_values(), "voice": None})
    with pytest.raises(BundleError, match=r"voice.probe.weights must be a list of 256 numbers"):
        values = _shipped_values()
        bundle_meta(**{**values, "voice": {**values["voice"], "probe": {"weights": [0.1] * 3, "bias": 0.0}}})
    with pytest.raises(BundleError, match="models lacks cnn2d"):
        values = _shipped_values()
        bundle_meta(**{**values, "models": {k: v for k, v in values["models"].items() if k != "cnn2d"}})

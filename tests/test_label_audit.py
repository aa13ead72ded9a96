"""The label audit (offline/label_audit.py): its speakers are in speechocean762 with the labels and ages it
records, their voices measure where it says (median F0 on the other sex's side), and training with
``label_audit`` leaves them out (``without_readers``; end to end in tests/test_train_export.py::test_cli_train_quick)."""
from __future__ import annotations

import numpy as np
import pytest

from offline.label_audit import LABEL_SUSPECTS, suspect_readers
from tests.data import SPEECHOCEAN, speechocean_speakers


def test_suspects_are_speechocean_speakers_with_the_recorded_labels():
    import csv

    ages = {}
    with (SPEECHOCEAN / "manifest.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            ages[row["speaker"]] = int(row["age"])
    speakers = speechocean_speakers()
    for reader, (label, _f0, _ge2e, _xgb, age) in LABEL_SUSPECTS.items():
        assert speakers[reader][0] == label, reader
        assert ages[reader] == age >= 18, reader


@pytest.mark.parametrize("reader", sorted(LABEL_SUSPECTS))
def test_suspect_voice_measures_on_the_other_side(reader):
    """The median F0 over the speaker's first files, by this project's features, matches the audit's figure
    (within 12 %) and lies outside the labelled sex's usual range (women over 150 Hz, men under 170 Hz)."""
    import soundfile as sf

    from offline.windows import iter_windows
    from realtime.features import FeatureExtractor

    fx = FeatureExtractor()
    i = fx.stat_names.index("f0_median")
    label, f0, *_ = LABEL_SUSPECTS[reader]
    values = []
    for path in speechocean_speakers()[reader][1][:4]:
        audio, sr = sf.read(path, dtype="float32")
        assert sr == fx.definition.sr
        values += [fx.stats(w)[i] for _, w in iter_windows(audio, hop_s=1.0)]
    hz = 2.0 ** float(np.median(values))
    assert abs(hz - f0) <= 0.12 * f0, (reader, hz, f0)
    assert hz > 170 if label == "M" else hz < 150, (reader, label, hz)


def test_without_readers_drops_only_present_readers(tmp_path):
    from offline.dataset import extract_corpus
    from offline.librispeech import load_manifest
    from offline.train import TrainConfig, without_readers

    assert TrainConfig().excluded_readers() == suspect_readers() and TrainConfig(label_audit=False).excluded_readers() == ()
    assert TrainConfig.quick(**TrainConfig.parse_overrides(["label_audit=true"])).excluded_readers() == suspect_readers()
    manifest = tmp_path / "m.csv"
    rows = [("so762-2380", f) for f in speechocean_speakers()["so762-2380"][1][:1]]
    keep = sorted(set(speechocean_speakers()) - set(LABEL_SUSPECTS))[0]
    rows += [(keep, f) for f in speechocean_speakers()[keep][1][:1]]
    manifest.write_text("path,speaker,gender\n" + "".join(
        f"{f},{spk},{speechocean_speakers()[spk][0]}\n" for spk, f in rows))
    ws = extract_corpus(load_manifest(manifest), jobs=1, cache_dir=None, progress=False)
    kept, excluded = without_readers(ws, suspect_readers() + ("nobody",))
    assert excluded == ["so762-2380"]
    assert set(np.unique(kept.reader)) == {keep} and 0 < len(kept) < len(ws)
    assert without_readers(ws, ()) == (ws, [])
    with pytest.raises(ValueError, match="no windows left"):
        without_readers(ws, [keep, "so762-2380"])

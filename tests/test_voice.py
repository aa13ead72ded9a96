"""The file verdict's voice opinion (realtime/voice.py, offline/voice_probe.py): the speaker encoder's frontend
against librosa, the converted encoder on real voices, the speech it is given, the bundle's checks, and
what it does to the verdicts of real recordings."""
from __future__ import annotations

import json

import numpy as np
import pytest

from realtime.audio import load_audio
from realtime.bundle import Bundle, BundleError
from realtime.engine import Engine, EngineConfig, file_decision, summarise
from realtime.voice import FRONTEND, VoiceSample, mel_power, partial_slices, vad_speech
from tests.data import librispeech_files, readers_by_gender, speechocean_speakers


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return Bundle.load()


def test_mel_frontend_equals_librosa():
    librosa = pytest.importorskip("librosa")
    x = load_audio(librispeech_files()[0])[:48000]
    ref = librosa.feature.melspectrogram(y=x, sr=16000, n_fft=400, hop_length=160, n_mels=40).T
    got = mel_power(x)
    assert got.shape == ref.shape == (301, 40)
    assert np.max(np.abs(got - ref)) <= 1e-5 * ref.max()


def test_partials_cover_the_speech_as_resemblyzer_cuts_them():
    # 77-frame steps (1.3 a second), 160 frames each; a last partial less than 75 % covered is dropped
    assert partial_slices(16000) == [slice(0, 160)]  # 1 s: one partial, zero-padded
    three = partial_slices(3 * 16000)
    assert [s.start for s in three] == [0, 77, 154] and all(s.stop - s.start == 160 for s in three)
    assert [s.start for s in partial_slices(2 * 16000 + 2000)] == [0, 77]  # 2.1 s: a third would be 17 % covered
    assert partial_slices(12 * 16000)[-1].stop * 160 >= 11 * 16000


def test_encoder_tells_speakers_apart(bundle):
    """The converted GE2E encoder does what it was trained for: two files of one speaker lie closer together
    than files of different speakers (speechocean762: ten files per speaker)."""
    enc = bundle.voice_encoder
    spk = sorted(speechocean_speakers())[:4]
    emb = {s: [enc.embed(vad_speech(load_audio(f))) for f in speechocean_speakers()[s][1][:2]] for s in spk}
    for s in spk:
        for e in emb[s]:
            assert e is not None and abs(float(np.linalg.norm(e)) - 1.0) < 1e-5
    same = [float(emb[s][0] @ emb[s][1]) for s in spk]
    other = [float(emb[a][0] @ emb[b][1]) for a in spk for b in spk if a != b]
    assert min(same) > np.median(other) and np.mean(same) > np.mean(other) + 0.05


def test_voice_sample_keeps_only_speech_the_speech_check_accepted():
    vs = VoiceSample(capacity=1000)
    vs.add(np.ones(300, np.float32))
    vs.judged(False)  # music: dropped
    vs.add(np.full(400, 2.0, np.float32))
    vs.add(np.full(400, 3.0, np.float32))
    vs.judged(True)
    vs.add(np.full(500, 4.0, np.float32))
    vs.judged(True)  # up to the capacity, then no more
    vs.add(np.full(50, 5.0, np.float32))
    vs.judged(True)
    got = vs.speech()
    assert got.size == 1000 and set(np.unique(got)) == {2.0, 3.0, 4.0}
    assert np.all(got[:400] == 2.0) and np.all(got[800:] == 4.0)
    vs.clear()
    assert vs.speech().size == 0


def test_release_bundle_carries_a_voice_opinion(bundle):
    assert bundle.has_voice_opinion and bundle.voice_weight > 0
    assert bundle.meta["voice"]["frontend"] == FRONTEND.to_dict()
    assert "Apache License" in (bundle.path / "LICENSE-resemblyzer.txt").read_text()  # the weights' licence with them


def test_release_weighs_the_voice_as_measured_across_corpora(bundle):
    """The release's file decision carries the recipe's cross-corpus weights (TrainConfig.file_weights): the
    window weight as scale, the voice weight times the probe's own Platt scale on the calibration files; the
    in-domain fit, which gave the voice ~1/15 of the say, is kept beside them."""
    from offline.train import TrainConfig

    fd = bundle.meta["file_decision"]
    c_w, c_v = TrainConfig().file_weights
    assert fd["cross_corpus_weights"] == [c_w, c_v] and bundle.file_scale == c_w
    assert bundle.voice_weight == pytest.approx(c_v * fd["scale_voice_alone"], abs=1e-3)
    assert fd["in_domain_voice_weight"] / fd["in_domain_scale"] < bundle.voice_weight / bundle.file_scale
    # a file with no voice opinion (too little speech, --no-voice-opinion) is judged by the windows at their own
    # in-domain scale, not at the small window weight that sits beside the voice
    assert bundle.file_scale_without_voice > 5 * bundle.file_scale
    ps = [0.7, 0.65, 0.8]
    mean = float(np.mean(np.log(np.asarray(ps) / (1 - np.asarray(ps)))))
    assert bundle.file_verdict(ps)[1] == pytest.approx(1 / (1 + np.exp(-bundle.file_scale_without_voice * mean)))
    assert bundle.file_verdict(ps, 0.0)[1] == pytest.approx(1 / (1 + np.exp(-bundle.file_scale * mean)))


def test_voice_opinion_joins_the_file_verdict_of_real_recordings(bundle):
    """classify's answer: the voice opinion is reported and weighed in; with it off the verdict is the windows'
    alone, as before. On real recordings of both genders, the voice alone is right."""
    on, off = Engine(bundle), Engine(bundle, EngineConfig(voice_opinion=False))
    for gender, paths in readers_by_gender(3).items():
        for path in paths:
            x = load_audio(path)
            events = list(off.run(x))
            a, b = summarise(list(on.run(x)), on), summarise(events, off)
            assert b["voice_p_female"] is None and a["voice_p_female"] is not None
            assert (a["voice_p_female"] >= 0.5) == (gender == "F"), (path, a)
            assert a["label"] == ("female" if gender == "F" else "male"), (path, a)
            windows_only = file_decision([e.window_p_female for e in events], bundle)[1]
            assert b["p_female"] == pytest.approx(windows_only, abs=1e-4)


def test_a_confident_voice_outweighs_weak_windows(bundle):
    weak_female = [0.55] * 6
    assert bundle.file_verdict(weak_female)[0] == "female"
    assert bundle.file_verdict(weak_female, voice_logit=-4.0)[0] == "male"
    assert bundle.file_verdict(weak_female, voice_logit=4.0)[1] > bundle.file_verdict(weak_female)[1]
    assert bundle.file_verdict([], voice_logit=4.0) == ("no speech", None)


def test_no_voice_opinion_without_speech(bundle):
    engine = Engine(bundle)
    t = np.arange(5 * 16000) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    v = summarise(list(engine.run(tone)), engine)
    assert v["label"] == "no speech" and v["voice_p_female"] is None


def test_a_bundle_loaded_without_the_voice_verifies_it_but_gives_none(copy):
    """Bundle.load(voice=False) (what `serve` does without --voice-opinion): no encoder session, no voice
    opinion, the same windows' verdict; a tampered voice.onnx is refused all the same."""
    lean = Bundle.load(copy, voice=False)
    assert lean.voice_encoder is None and not lean.has_voice_opinion
    assert lean.voice_logit(np.zeros(3 * 16000, np.float32)) is None
    x = load_audio(str(readers_by_gender(1)["F"][0]))
    engine = Engine(lean)
    v = summarise(list(engine.run(x)), engine)
    assert v["voice_p_female"] is None and v["label"] == "female"
    path = copy / "voice.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"voice.onnx.*sha256.*modified or corrupted"):
        Bundle.load(copy, voice=False)


def test_other_voice_frontend_is_refused(copy):
    meta = json.loads((copy / "bundle.json").read_text())
    meta["voice"]["frontend"]["n_mels"] = 80
    (copy / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="voice opinion was trained on another encoder frontend.*n_mels"):
        Bundle.load(copy)


def test_tampered_encoder_is_refused(copy):
    path = copy / "voice.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"voice.onnx.*sha256.*modified or corrupted"):
        Bundle.load(copy)


def test_file_decision_weighs_an_informative_voice_opinion():
    from offline.train import fit_file_decision

    rng = np.random.default_rng(0)
    n = 300
    y_file = rng.integers(0, 2, n)
    y = np.repeat(y_file, 4)
    utt = np.repeat([f"u{i}" for i in range(n)], 4)
    reader = np.repeat([f"r{i // 2}" for i in range(n)], 4)
    p = np.clip(np.where(y == 1, 0.6, 0.4) + rng.normal(0, 0.25, y.size), 0.01, 0.99)  # weak windows
    voice = {f"u{i}": float((2 * y_file[i] - 1) * 3 + rng.normal(0, 1)) for i in range(n)}  # strong voice
    fd = fit_file_decision(y, p, utt, reader, 0.985, voice=voice)
    assert fd["voice_weight"] > 0.5 and fd["calibration_files_with_voice"] == n
    no_voice = fit_file_decision(y, p, utt, reader, 0.985)
    assert "voice_weight" not in no_voice
    # each opinion's own Platt scale on the same files: the voice alone near its true log-odds slope (2 x 3 / 1)
    assert 4.0 < fd["scale_voice_alone"] < 8.0 and fd["scale_windows_alone"] > 0
    # cross-corpus weights: the window weight as given, the voice weight times the voice's own scale; the
    # in-domain fit is kept beside them
    crossed = fit_file_decision(y, p, utt, reader, 0.985, voice=voice, weights=(0.4, 1.5))
    assert crossed["scale"] == 0.4 and crossed["cross_corpus_weights"] == [0.4, 1.5]
    assert crossed["voice_weight"] == pytest.approx(1.5 * fd["scale_voice_alone"], abs=1e-3)
    assert (crossed["in_domain_scale"], crossed["in_domain_voice_weight"]) == (fd["scale"], fd["voice_weight"])
    # without a voice opinion the weights have nothing to weigh: the in-domain window scale
    assert fit_file_decision(y, p, utt, reader, 0.985, weights=(0.4, 1.5))["scale"] == no_voice["scale"]


def test_serve_leaves_the_voice_opinion_out_unless_asked():
    from realtime.cli import build_parser
    from realtime.options import engine_config

    p = build_parser()
    assert engine_config(p.parse_args(["serve"])).voice_opinion is False
    assert engine_config(p.parse_args(["serve", "--voice-opinion"])).voice_opinion is True
    assert engine_config(p.parse_args(["classify", "x.flac"])).voice_opinion is True


def test_reweigh_refuses_what_it_cannot_weigh(tmp_path, capsys):
    """`offline reweigh` on no bundle, or on a bundle without a voice opinion: a clear error, exit 2, nothing
    written (the weighing itself is tested end to end in tests/test_train_export.py)."""
    from offline.cli import main

    assert main(["reweigh", "--models", str(tmp_path / "nowhere")]) == 2
    assert "cannot read the bundle" in capsys.readouterr().err
    (tmp_path / "bundle.json").write_text(json.dumps({"format": "voicegender-bundle"}))
    assert main(["reweigh", "--models", str(tmp_path)]) == 2
    assert "has no voice opinion" in capsys.readouterr().err
    assert json.loads((tmp_path / "bundle.json").read_text()) == {"format": "voicegender-bundle"}

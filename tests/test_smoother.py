import math

import numpy as np
import pytest

from realtime.smoother import Estimate, Smoother

HOP = 0.5
FLIP_BOUND_S = 3.0  # documented in realtime/smoother.py for a new voice with windows >= 0.8 sure


def _run(sm, ps, speech=True, dt=HOP):
    return [sm.update(p, speech, dt) for p in ps]


def test_no_speech_means_no_speech():
    sm = Smoother()
    for _ in range(10):
        e = sm.update(None, False, HOP)
    assert e == Estimate(label="no speech", p_female=None, confidence=0.0, speech=False)


def test_speech_without_a_window_is_waiting_not_uncertain():
    """Before the first window the answer is 'waiting': 'uncertain' is kept for windows that cannot decide."""
    e = Smoother().update(None, True, HOP)
    assert e.label == "waiting" and e.p_female is None and e.speech


def test_single_window_gives_its_own_probability():
    e = Smoother().update(0.8, True, HOP)
    assert e.label == "female" and math.isclose(e.p_female, 0.8) and math.isclose(e.confidence, 0.6)
    e = Smoother().update(0.1, True, HOP)
    assert e.label == "male" and math.isclose(e.p_female, 0.1)


def test_consistent_windows_grow_confidence_but_stay_bounded():
    est = _run(Smoother(), [0.8] * 40)
    ps = [e.p_female for e in est]
    assert all(b >= a - 1e-12 for a, b in zip(ps, ps[1:]))
    assert 0.9 < ps[-1] < 0.99
    # an extreme window is clipped: it cannot outweigh several moderate ones
    est = _run(Smoother(), [0.2] * 4 + [1.0])
    assert est[-1].label == "male"


@pytest.mark.parametrize("p_old, p_new", [(0.95, 0.2), (0.05, 0.8), (0.8, 0.2), (0.95, 0.05)])
def test_documented_flip_bound(p_old, p_new):
    sm = Smoother(hop_seconds=HOP)
    bound = sm.flip_time_bound(p_old, p_new)
    assert bound <= FLIP_BOUND_S
    _run(sm, [p_old] * 60)  # 30 s of the old voice: saturated
    target = "female" if p_new > 0.5 else "male"
    for k in range(1, 100):
        if sm.update(p_new, True, HOP).label == target:
            break
    assert k * HOP == bound
    assert k * HOP <= FLIP_BOUND_S


def test_flip_on_noisy_synthetic_voices():
    rng = np.random.default_rng(0)
    # 20 s of a female voice (windows mostly ~0.85, some wrong), then a male voice (~0.2)
    female = np.clip(rng.normal(0.85, 0.12, 40), 0, 1)
    male = np.clip(rng.normal(0.2, 0.12, 40), 0, 1)
    sm = Smoother()
    est = _run(sm, female)
    assert sum(e.label == "female" for e in est[4:]) == len(est) - 4  # steady, no flicker
    est = _run(sm, male)
    first_male = next(i for i, e in enumerate(est) if e.label == "male")
    assert (first_male + 1) * HOP <= FLIP_BOUND_S
    assert all(e.label == "male" for e in est[first_male:])


def test_hysteresis_prevents_flicker_near_threshold():
    sm = Smoother()
    _run(sm, [0.9] * 10)
    labels = [e.label for e in _run(sm, [0.52, 0.58] * 10)]
    # p drifts towards ~0.55-0.6 but stays above 0.6 - 0.1: keeps 'female'
    assert set(labels) == {"female"}
    sm = Smoother()
    labels = [e.label for e in _run(sm, [0.45, 0.55] * 10)]
    assert set(labels) == {"uncertain"}  # balanced evidence is never a confident answer


def test_short_pause_keeps_label_long_pause_resets():
    sm = Smoother(reset_after_silence_s=1.5)
    _run(sm, [0.9] * 6)
    e = sm.update(None, False, 1.0)
    assert e.label == "female" and not e.speech and e.p_female is not None
    e = sm.update(0.9, True, HOP)  # speech resumes: silence counter restarts
    assert e.label == "female" and e.speech
    for _ in range(2):
        e = sm.update(None, False, 0.5)
    assert e.label == "female"
    e = sm.update(None, False, 0.5)  # 1.5 s of silence in all
    assert e.label == "no speech" and e.p_female is None and e.confidence == 0.0
    # a new (male) voice after the reset is recognised from its first window
    e = sm.update(0.2, True, HOP)
    assert e.label == "male" and math.isclose(e.p_female, 0.2)


def test_windows_during_non_speech_are_ignored():
    sm = Smoother()
    _run(sm, [0.9] * 4)
    p = sm.p_female
    e = sm.update(0.0, False, 0.1)
    assert e.p_female == p and e.label == "female"


def test_invalid_inputs():
    sm = Smoother()
    with pytest.raises(ValueError):
        sm.update(1.5, True, HOP)
    with pytest.raises(ValueError):
        sm.update(float("nan"), True, HOP)
    with pytest.raises(ValueError):
        sm.update(0.5, True, -1)
    with pytest.raises(ValueError):
        Smoother(threshold_female=0.4)
    with pytest.raises(ValueError):
        Smoother(forget_seconds=0)


def test_a_second_opinion_joins_the_evidence_until_reset():
    """set_opinion: p = sigmoid(k * S / sqrt(W) + o), read against the band given; reset forgets it."""
    import math

    sm = Smoother(2.0, 0.5, threshold_female=0.8, threshold_male=0.2, hysteresis=0.1)
    est = sm.update(0.7, True, 0.5)
    assert est.label == "uncertain" and est.p_female == pytest.approx(0.7)
    sm.set_opinion(-1.0, 0.5, (0.5, 0.5))
    est = sm.update(0.7, True, 0.5)
    a = math.exp(-0.5 / 2.0)
    s, w = a * math.log(0.7 / 0.3) + math.log(0.7 / 0.3), a + 1.0
    p = 1.0 / (1.0 + math.exp(-(0.5 * s / math.sqrt(w) - 1.0)))
    assert est.p_female == pytest.approx(p) and p < 0.5 and est.label == "male"  # the opinion outweighs the windows
    with pytest.raises(ValueError):
        sm.set_opinion(float("nan"), 0.5)
    with pytest.raises(ValueError):
        sm.set_opinion(0.0, 0.5, (1.0, 0.5))  # a female threshold no p reaches
    for _ in range(4):
        sm.update(None, False, 0.5)  # a pause resets
    est = sm.update(0.7, True, 0.5)
    assert est.p_female == pytest.approx(0.7) and est.label == "uncertain"

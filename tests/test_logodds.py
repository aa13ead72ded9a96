"""realtime.logodds: the one sigmoid and the one clipped logit that the bundle and all offline code use."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from realtime.logodds import logit, sigmoid


def test_logit_inverts_sigmoid_and_the_float_path_agrees_with_the_array_path():
    p = np.array([1e-5, 0.01, 0.25, 0.5, 0.75, 0.99, 1 - 1e-5])
    z = logit(p, 1e-6)
    np.testing.assert_allclose(sigmoid(z), p, rtol=1e-9, atol=1e-15)  # tanh: absolute precision near 0
    for pi, zi in zip(p.tolist(), z.tolist()):
        one = logit(pi, 1e-6)
        assert type(one) is float and one == pytest.approx(zi, rel=1e-12, abs=1e-15)
        back = sigmoid(one)
        assert type(back) is float and back == pytest.approx(pi, rel=1e-9, abs=1e-15)
    assert sigmoid(0.0) == 0.5 and logit(0.5, 1e-6) == 0.0


def test_logit_clips_saturated_probabilities_to_finite_log_odds():
    eps = 1e-4
    z = logit(np.array([0.0, 1e-9, 1.0]), eps)
    bound = math.log((1 - eps) / eps)
    assert z[0] == z[1] == pytest.approx(-bound, rel=1e-12) and z[2] == pytest.approx(bound, rel=1e-12)
    assert logit(1.0, eps) == pytest.approx(z[2]) and logit(0.0, eps) == pytest.approx(z[0])


def test_sigmoid_saturates_without_overflow():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # np.exp(800) would overflow; tanh does not
        out = sigmoid(np.array([-800.0, -40.0, 40.0, 800.0]))
    assert out[0] == 0.0 and out[-1] == 1.0 and 0.0 <= out[1] < 1e-17 and out[2] == 1.0
    assert sigmoid(-800.0) == 0.0 and sigmoid(800.0) == 1.0

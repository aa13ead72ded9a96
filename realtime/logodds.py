"""Probability <-> log-odds: the one ``sigmoid`` and the one clipped ``logit`` of the project.

The ensemble adds its models' log-odds, a file verdict averages its windows' log-odds, evaluation pools an
utterance's windows the same way; all of them (``realtime.bundle`` and every ``offline`` module) use these two.
A Python ``float`` takes the ``math`` path (one window on the live path, no numpy overhead) and returns a
float; anything else is computed as a float64 numpy array.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["logit", "sigmoid"]


def sigmoid(z):
    """``1 / (1 + exp(-z))``, computed as ``0.5 * (1 + tanh(z / 2))`` (no overflow for any finite ``z``)."""
    if isinstance(z, float):
        return 0.5 * (1.0 + math.tanh(0.5 * z))
    z = np.asarray(z, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def logit(p, eps: float):
    """``log(p / (1 - p))`` with ``p`` clipped to ``[eps, 1 - eps]`` first, so a saturated probability gives a
    finite log-odds of at most ``logit(1 - eps)``."""
    if isinstance(p, float):
        p = min(max(p, eps), 1.0 - eps)
        return math.log(p / (1.0 - p))
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps)
    return np.log(p) - np.log1p(-p)

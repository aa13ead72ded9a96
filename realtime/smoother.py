"""Turn per-window p_female into a steady live estimate.

Each classified window contributes its log-odds ``l = logit(p)``, clipped to
``±logit(max_window_p)`` so one over-confident window cannot dominate. Evidence is accumulated
with exponential forgetting over *speech time*::

    a = exp(-dt / forget_seconds)          # per update, dt = seconds since the previous update
    S = a * S + l                          # decayed sum of log-odds       (only for speech windows)
    W = a * W + 1                          # decayed number of windows
    p_female = sigmoid(S / sqrt(W))

``S / W`` would be the weighted mean log-odds (as confident as one typical window);
``S`` alone would be naive Bayes over windows that overlap and are far from independent (wildly
over-confident). ``S / sqrt(W)`` sits between: a single window gives back its own p, and ``n``
consistent windows raise the log-odds by up to ``sqrt(n)``, capped by forgetting at
``sqrt(1 / (1 - exp(-hop / forget)))`` (about 2.1x with the defaults: sustained windows at 0.8 read
as 0.95, at 0.65 as 0.79). The sign, and so the
majority decision, is the same as for the mean.

The label has hysteresis: it becomes 'female' when p >= threshold_female and stays until
p < threshold_female - hysteresis; likewise 'male' at p <= threshold_male until
p > threshold_male + hysteresis; otherwise 'uncertain'.

Pauses: updates with ``speech=False`` add no evidence and do not decay it, so a short pause keeps
the current label (with ``speech=False`` in the estimate). After ``reset_after_silence_s`` of
continuous non-speech the state is cleared and the label is 'no speech' until new speech comes.

A second opinion (``set_opinion``): the engine's live voice opinion (``EngineConfig.live_voice``) adds its
log-odds ``o`` and scales the windows' evidence by ``k`` (the bundle's file-decision weights), so that
``p_female = sigmoid(k * S / sqrt(W) + o)`` until the next reset, read against the band fitted for that
combination (the file decision's), with the same hysteresis.

Flip bound (``flip_time_bound``): if the previous voice had saturated the state with windows at
``p_old`` and a new voice then produces windows at ``p_new`` every ``hop_seconds``, the label
reaches the new side's threshold after at most ``flip_time_bound(p_old, p_new)`` seconds of its
speech. With the defaults (forget_seconds=2.0, hop 0.5 s, thresholds 0.6/0.4, hysteresis 0.1,
windows clipped at 0.95):

    old voice windows   new voice windows   flip after
    0.95 (saturated)    0.2 / 0.8            3.0 s      <- the documented bound for a clear new voice
    0.8                 0.2                  2.0 s
    0.95                0.05                 2.0 s
    0.7                 0.3                  2.0 s
    0.95                0.3 (weak)           4.0 s

i.e. a sustained new voice whose windows are at least 80 % sure flips the label within 3 s
(tests/test_smoother.py checks this on a synthetic sequence).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .events import LABELS
from .logodds import logit, sigmoid

__all__ = ["Estimate", "Smoother", "LABELS"]


@dataclass(frozen=True)
class Estimate:
    """The live answer after one update."""

    label: str  # 'waiting' (speech, no window yet) | 'female' | 'male' | 'uncertain' | 'no speech'
    p_female: float | None  # smoothed probability; None when there is no evidence
    confidence: float  # |2 p - 1| in [0, 1]; 0 without evidence
    speech: bool  # whether this update was speech

    def as_dict(self) -> dict:
        return asdict(self)


class Smoother:
    """Log-odds accumulator with exponential forgetting, hysteresis and reset after a pause."""

    def __init__(self, forget_seconds: float = 2.0, hop_seconds: float = 0.5, *,
                 threshold_female: float = 0.6, threshold_male: float = 0.4, hysteresis: float = 0.1,
                 reset_after_silence_s: float = 1.5, max_window_p: float = 0.95):
        if forget_seconds <= 0 or hop_seconds <= 0:
            raise ValueError("forget_seconds and hop_seconds must be positive")
        if not 0.5 <= threshold_female < 1.0:
            raise ValueError(f"threshold_female must be in [0.5, 1), got {threshold_female}")
        if not 0.0 < threshold_male <= 0.5:
            raise ValueError(f"threshold_male must be in (0, 0.5], got {threshold_male}")
        if not 0.0 <= hysteresis < min(threshold_female, 1.0 - threshold_male):
            raise ValueError(f"hysteresis must be >= 0 and smaller than the thresholds, got {hysteresis}")
        if not 0.5 < max_window_p < 1.0:
            raise ValueError(f"max_window_p must be in (0.5, 1), got {max_window_p}")
        if reset_after_silence_s <= 0:
            raise ValueError("reset_after_silence_s must be positive")
        self.forget_seconds = float(forget_seconds)
        self.hop_seconds = float(hop_seconds)
        self.threshold_female = float(threshold_female)
        self.threshold_male = float(threshold_male)
        self.hysteresis = float(hysteresis)
        self.reset_after_silence_s = float(reset_after_silence_s)
        self.max_window_p = float(max_window_p)
        self.reset()

    def reset(self) -> None:
        self._sum = 0.0
        self._weight = 0.0
        self._label = "no speech"
        self._silence = 0.0
        self._p: float | None = None
        self._opinion = 0.0  # log-odds of a second opinion (set_opinion), 0: none
        self._window_scale = 1.0
        self._band = (self.threshold_female, self.threshold_male)  # the label's thresholds now

    def set_opinion(self, logodds: float, window_scale: float, band: tuple[float, float] | None = None) -> None:
        """Weigh in a second opinion of the current voice (log-odds ``logodds``) beside the windows' evidence,
        scaled by ``window_scale``, from the next update on, and read the label against ``band`` (female, male
        thresholds: those fitted for the combined p; None: the windows' own); ``reset`` forgets it all."""
        if not (math.isfinite(logodds) and math.isfinite(window_scale) and window_scale >= 0):
            raise ValueError(f"opinion log-odds and window scale must be finite (scale >= 0), got {logodds}, {window_scale}")
        female, male = band if band is not None else (self.threshold_female, self.threshold_male)
        if not (0.5 <= female < 1.0 and 0.0 < male <= 0.5 and self.hysteresis < min(female, 1.0 - male)):
            raise ValueError(f"opinion band must be 0.5 <= female < 1, 0 < male <= 0.5, with room for the hysteresis, got {band}")
        self._opinion, self._window_scale, self._band = float(logodds), float(window_scale), (float(female), float(male))

    # ------------------------------------------------------------------ main entry
    def update(self, window_p: float | None, speech: bool, dt: float) -> Estimate:
        """Feed one step: the latest window's p_female (None if no window was classified in this
        step), whether this step was speech, and ``dt`` seconds since the previous update.

        A ``window_p`` given with ``speech=False`` is ignored (the VAD gate decides what counts).
        """
        dt = float(dt)
        if dt < 0 or math.isnan(dt):
            raise ValueError(f"dt must be >= 0, got {dt}")
        if not speech:
            self._silence += dt
            if self._silence >= self.reset_after_silence_s and self._label != "no speech":
                self.reset()
                self._silence = self.reset_after_silence_s
            return self._estimate(False)
        self._silence = 0.0
        decay = math.exp(-dt / self.forget_seconds)
        self._sum *= decay
        self._weight *= decay
        if window_p is not None:
            p = float(window_p)
            if not 0.0 <= p <= 1.0:  # NaN fails too
                raise ValueError(f"window_p must be a probability in [0, 1] or None, got {window_p!r}")
            eps = 1.0 - self.max_window_p
            lo = logit(p, eps)
            self._sum += lo
            self._weight += 1.0
        if self._weight > 1e-9:
            self._p = sigmoid(self._window_scale * self._sum / math.sqrt(self._weight) + self._opinion)
            self._label = self._next_label(self._p)
        else:
            self._p = None
            self._label = "waiting"  # speech, but no window yet: not the model's "cannot decide"
        return self._estimate(True)

    __call__ = update

    def _next_label(self, p: float) -> str:
        cur, (female, male) = self._label, self._band
        if cur == "female" and p >= female - self.hysteresis:
            return "female"
        if cur == "male" and p <= male + self.hysteresis:
            return "male"
        if p >= female:
            return "female"
        if p <= male:
            return "male"
        return "uncertain"

    def _estimate(self, speech: bool) -> Estimate:
        p = self._p
        conf = 0.0 if p is None else abs(2.0 * p - 1.0)
        return Estimate(label=self._label, p_female=p, confidence=conf, speech=bool(speech))

    # ------------------------------------------------------------------ introspection
    @property
    def label(self) -> str:
        return self._label

    @property
    def p_female(self) -> float | None:
        return self._p

    def flip_time_bound(self, p_old: float = 0.95, p_new: float = 0.2) -> float:
        """Worst-case seconds of new-voice speech until the label flips to the new voice's side.

        Assumes the state was saturated by the old voice (windows at ``p_old`` every
        ``hop_seconds`` for a long time) and the new voice gives windows at ``p_new`` every
        ``hop_seconds``, on the opposite side of 0.5. Computed by running a copy of the update
        rule, so it includes the hop quantisation. Returns ``inf`` if it never flips.
        """
        if (p_old - 0.5) * (p_new - 0.5) >= 0:
            raise ValueError("p_old and p_new must be on opposite sides of 0.5")
        sim = Smoother(self.forget_seconds, self.hop_seconds, threshold_female=self.threshold_female,
                       threshold_male=self.threshold_male, hysteresis=self.hysteresis,
                       reset_after_silence_s=self.reset_after_silence_s, max_window_p=self.max_window_p)
        n_sat = int(20 * self.forget_seconds / self.hop_seconds) + 10
        for _ in range(n_sat):
            sim.update(p_old, True, self.hop_seconds)
        target = "female" if p_new > 0.5 else "male"
        for k in range(1, 10_000):
            if sim.update(p_new, True, self.hop_seconds).label == target:
                return k * self.hop_seconds
        return math.inf

    def __repr__(self) -> str:
        return (f"Smoother(forget_seconds={self.forget_seconds}, hop_seconds={self.hop_seconds}, "
                f"threshold_female={self.threshold_female}, threshold_male={self.threshold_male}, "
                f"hysteresis={self.hysteresis}, reset_after_silence_s={self.reset_after_silence_s})")

"""The one event schema: what the engine emits once per hop, and what every sink, the server and the client carry.

An :class:`Event` is a dataclass that also reads like a mapping (``ev["label"]``, ``ev.get("p_female")``,
``dict(ev)``), so code written for plain dicts keeps working. ``to_dict()`` gives the JSON form (every
field, always present; ``null`` where the table below says so); ``Event.from_dict`` reads it back.

=================  ========  ========================================================================
field              type      meaning (null when)
=================  ========  ========================================================================
t                  s         audio consumed since the stream started (or was reset), at this hop's end
label              str       ``waiting`` (speech, but not yet a window's worth) | ``female`` | ``male`` |
                             ``uncertain`` (the smoothed p lies between the thresholds) | ``no speech``
p_female           0..1      smoothed probability of a female voice (null: waiting or no speech)
window_p_female    0..1      this hop's window alone (null: no window was classified in this hop)
p_speech           0..1      the bundle's speech check on this hop's window (null: no window, or a bundle
                             without the check); below the bundle's threshold the window gets no gender
level_dbfs         dBFS      RMS level of the classified window's speech (null: no window this hop)
input_dbfs         dBFS      RMS level of all audio in this hop, speech or not (-120 = digital silence)
speech             bool      whether the hop counted as speech (VAD)
confidence         0..1      ``|2 p_female - 1|`` (0 without evidence)
compute_ms         ms        processing time of this hop, all stages
stages_ms          {str: ms} per stage, in ``STAGES`` order; model stages only in hops that classified a window
overruns           int       audio the microphone ring dropped so far (null: the source does not count)
=================  ========  ========================================================================
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Iterator

__all__ = ["Event", "EVENT_FIELDS", "LABELS", "STAGES"]

#: every label an event or a verdict can carry
LABELS = ("waiting", "female", "male", "uncertain", "no speech")
#: the stages an event times, in order (the model stages are the bundle's three models)
STAGES = ("vad", "features", "speech_check", "xgb", "cnn1d", "cnn2d", "smoother")


@dataclass
class Event(Mapping):
    """One estimate per hop (see the module docstring for units and when a field is null)."""

    t: float
    label: str
    p_female: float | None = None
    window_p_female: float | None = None
    p_speech: float | None = None
    level_dbfs: float | None = None
    input_dbfs: float | None = None
    speech: bool = False
    confidence: float = 0.0
    compute_ms: float = 0.0
    stages_ms: dict[str, float] = field(default_factory=dict)
    overruns: int | None = None

    # -- mapping view (so ev["label"], ev.get(...), dict(ev) work as for the plain dicts of old) --------
    def __getitem__(self, key: str) -> Any:
        if key in _NAMES:
            return getattr(self, key)
        raise KeyError(key)

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in _NAMES:
            raise KeyError(f"{key!r} is not an event field; fields: {', '.join(EVENT_FIELDS)}")
        setattr(self, key, value)

    def __iter__(self) -> Iterator[str]:
        return iter(EVENT_FIELDS)

    def __len__(self) -> int:
        return len(EVENT_FIELDS)

    def to_dict(self) -> dict:
        """Every field as plain JSON-ready Python (stages_ms a fresh dict)."""
        d = {name: getattr(self, name) for name in EVENT_FIELDS}
        d["stages_ms"] = dict(self.stages_ms)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "Event":
        """An event from its ``to_dict()`` / JSON form; unknown keys are ignored, missing ones take defaults."""
        return cls(**{k: d[k] for k in EVENT_FIELDS if k in d})


EVENT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Event))
_NAMES = frozenset(EVENT_FIELDS)

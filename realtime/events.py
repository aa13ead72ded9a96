"""The one event schema: what the engine emits once per hop, and what every sink, the server and the client carry.

An :class:`Event` is a dataclass that also reads like a mapping (``ev["label"]``, ``ev.get("p_female")``,
``dict(ev)``), so code written for plain dicts keeps working. ``to_dict()`` gives every field, always
present (``null`` where the table below says so); ``to_json()`` is the JSON form every sink, the server and
the client carry (:func:`to_json`: NaN-free, floats rounded as :func:`json_safe` says);
``Event.from_dict`` reads either back.

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
stages_ms          {str: ms} per stage, in ``STAGES`` order; model stages only in hops that classified a window,
                             ``voice`` only in hops that read the live voice opinion
overruns           int       audio the microphone ring dropped so far (null: the source does not count)
=================  ========  ========================================================================
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Iterator

__all__ = ["Event", "EVENT_FIELDS", "LABELS", "STAGES", "json_safe", "to_json"]

#: every label an event or a verdict can carry
LABELS = ("waiting", "female", "male", "uncertain", "no speech")
#: the stages an event times, in order (the model stages are the bundle's three models)
STAGES = ("vad", "features", "speech_check", "xgb", "cnn1d", "cnn2d", "voice", "smoother")


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

    def to_json(self) -> str:
        """The event's JSON form: one compact line (see :func:`to_json`)."""
        return to_json(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "Event":
        """An event from its ``to_dict()`` / JSON form; unknown keys are ignored, missing ones take defaults."""
        return cls(**{k: d[k] for k in EVENT_FIELDS if k in d})


EVENT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Event))
_NAMES = frozenset(EVENT_FIELDS)


def _round_for(key: str | None, v: float) -> float:
    # probabilities to 4 decimals; times in s to the ms; milliseconds to the microsecond
    if key is not None and (key == "t" or key.endswith("_s")):
        return round(v, 3)
    if key is not None and (key.endswith("ms") or key in ("stages_ms",)):
        return round(v, 3)
    return round(v, 4)


def json_safe(value: Any, key: str | None = None) -> Any:
    """A JSON-safe copy of an event (or any message holding numbers): NaN/inf -> None, numpy scalars ->
    Python, floats rounded by field: ``t`` and ``*_s`` to the ms, ``*ms`` (and ``stages_ms``) to the
    microsecond, the rest (probabilities, dBFS) to 4 decimals."""
    if hasattr(value, "to_dict") and not isinstance(value, dict):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): json_safe(v, str(k) if key != "stages_ms" else "stages_ms") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, key) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if hasattr(value, "item") and callable(value.item):  # numpy scalar / 0-d array
        try:
            value = value.item()
        except (ValueError, TypeError):
            return str(value)
        return json_safe(value, key)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return _round_for(key, value)
    return str(value)


def to_json(message: Any) -> str:
    """An event (or a server control message) as one line of compact JSON, as ``stream --format jsonl``
    prints and the server sends: :func:`json_safe`, then ``json.dumps`` without NaN or spaces."""
    return json.dumps(json_safe(message), allow_nan=False, separators=(",", ":"))

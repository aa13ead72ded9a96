"""The streaming protocol of ``python -m realtime serve``, free of any socket code.

One stream per connection, over WebSocket or raw TCP::

    client -> server   config     one JSON object: {"rate": 16000, "encoding": "s16le", "channels": 1,
                                  "token": "..."}  (every key optional; these are the defaults, no token)
                                  WebSocket: the first message (text or binary);
                                  TCP: the first line, terminated by "\\n"
    client -> server   audio      raw interleaved PCM at the declared rate / encoding / channels.
                                  WebSocket: binary messages of any length; TCP: the bytes after the
                                  config line. A sample frame split across messages is held until it
                                  is complete, so message boundaries never have to align with samples.
    client -> server   end        WebSocket: a text message {"event": "end"} (or close);
                                  TCP: half-close the socket (shutdown(SHUT_WR)).
                                  Optional {"event": "reset"} (WebSocket text) forgets the speaker.
    server -> client   JSON, one object per message (WebSocket) or per line (TCP):
                       {"event": "ready", ...}            once, after a valid config
                       {"t": ..., "label": ..., ...}      one per hop: exactly the objects of
                                                          ``python -m realtime stream --format jsonl``
                       {"event": "end", ...summary}       after the client ended the stream
                       {"event": "error", "error": "..."} then the server closes the connection

Control objects carry an ``event`` key; per-hop estimates never do.

This module parses and validates config messages (:func:`parse_config`), gives a stream's decoder
(:meth:`StreamConfig.decoder`: :class:`realtime.audio.PcmDecoder`, audio bytes to 16 kHz mono float32),
and builds the server's messages (:func:`ready_message`, :func:`end_message`, :func:`error_message`,
:func:`encode`).
"""
from __future__ import annotations

import hmac
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .audio import MAX_CHANNELS, MAX_PCM_RATE, MIN_PCM_RATE, PCM_ENCODINGS, SAMPLE_RATE, PcmDecoder
from .errors import VoiceGenderError
from .events import to_json

__all__ = [
    "ProtocolError", "StreamConfig", "parse_config", "check_token", "ENCODINGS",
    "MIN_RATE", "MAX_RATE", "MAX_CHANNELS", "MAX_CONFIG_BYTES", "encode", "ready_message",
    "end_message", "error_message", "parse_control",
]

ENCODINGS = PCM_ENCODINGS  # encoding -> (numpy dtype, full scale): realtime.audio's table
MIN_RATE, MAX_RATE = MIN_PCM_RATE, MAX_PCM_RATE
MAX_CONFIG_BYTES = 4096
CONFIG_KEYS = ("rate", "encoding", "channels", "token")


class ProtocolError(VoiceGenderError, ValueError):
    """Something a client sent that the server refuses; ``str()`` is the message sent back to it."""


@dataclass(frozen=True)
class StreamConfig:
    rate: int = SAMPLE_RATE
    encoding: str = "s16le"
    channels: int = 1
    token: str | None = None

    @property
    def sample_bytes(self) -> int:
        return np.dtype(ENCODINGS[self.encoding][0]).itemsize

    @property
    def frame_bytes(self) -> int:
        """Bytes of one sample frame (one sample of every channel)."""
        return self.sample_bytes * self.channels

    @property
    def bytes_per_second(self) -> int:
        return self.frame_bytes * self.rate

    def public(self) -> dict:
        """The config without the token (for the ready message and logs)."""
        return {"rate": self.rate, "encoding": self.encoding, "channels": self.channels}

    def decoder(self) -> PcmDecoder:
        """This stream's audio bytes -> 16 kHz mono float32; audio it cannot use is a ProtocolError."""
        return PcmDecoder(self.encoding, self.rate, self.channels, name="", error=ProtocolError)


def _int_field(obj: dict, key: str, default: int, lo: int, hi: int) -> int:
    if key not in obj:
        return default
    v = obj[key]
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ProtocolError(f"config: {key!r} must be an integer, got {_short(v)}")
    if not lo <= v <= hi:
        raise ProtocolError(f"config: {key!r} must be between {lo} and {hi}, got {_short(v)}")
    return v


def _short(v: Any, n: int = 40) -> str:
    """A value for an error message or log line, at most ``n`` characters (a 3,000-digit number is cut)."""
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10 ** (n - 4):
        digits = len(str(abs(v))) if abs(v) < 10 ** 4000 else None  # str() of a huge int is slow / limited
        return f"{'-' if v < 0 else ''}{str(abs(v))[:12]}... ({digits or 'over 4000'} digits)"
    s = json.dumps(v) if isinstance(v, (str, int, float, bool, type(None))) else type(v).__name__
    return s if len(s) <= n else s[: n - 3] + "..."


def parse_config(raw: bytes | str, *, max_bytes: int = MAX_CONFIG_BYTES) -> StreamConfig:
    """Parse and validate the first message of a stream. Raises :class:`ProtocolError` with a message
    that says what is wrong and what is expected."""
    expected = ('expected a JSON object such as {"rate": 16000, "encoding": "s16le", "channels": 1} '
                'as the first message')
    if isinstance(raw, (bytes, bytearray, memoryview)):
        raw = bytes(raw)
        if len(raw) > max_bytes:
            raise ProtocolError(f"config message of {len(raw)} bytes is more than the limit of {max_bytes} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"config is not UTF-8 text (did you send audio before the config?); {expected}") from None
    elif isinstance(raw, str):
        text = raw
        n = len(text.encode("utf-8", "surrogatepass"))
        if n > max_bytes:
            raise ProtocolError(f"config message of {n} bytes is more than the limit of {max_bytes} bytes")
    else:
        raise ProtocolError(f"config must be text; {expected}")
    text = text.strip()
    if not text:
        raise ProtocolError(f"empty config; {expected}")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        raise ProtocolError(f"config is not valid JSON ({msg}); {expected}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"config must be a JSON object, got {type(obj).__name__}; {expected}")
    unknown = sorted(str(k) for k in obj if k not in CONFIG_KEYS)
    if unknown:
        raise ProtocolError(f"config: unknown key(s) {', '.join(_short(k) for k in unknown[:5])}; "
                            f"allowed: {', '.join(CONFIG_KEYS)}")
    rate = _int_field(obj, "rate", SAMPLE_RATE, MIN_RATE, MAX_RATE)
    channels = _int_field(obj, "channels", 1, 1, MAX_CHANNELS)
    encoding = obj.get("encoding", "s16le")
    if not isinstance(encoding, str) or encoding.lower() not in ENCODINGS:
        raise ProtocolError(f"config: 'encoding' must be one of {', '.join(ENCODINGS)}, got {_short(encoding)}")
    token = obj.get("token")
    if token is not None and not isinstance(token, str):
        raise ProtocolError(f"config: 'token' must be a string, got {type(token).__name__}")
    return StreamConfig(rate=rate, encoding=encoding.lower(), channels=channels, token=token)


def check_token(config: StreamConfig, expected: str | None) -> None:
    """Raise ProtocolError unless the config carries ``expected`` (no check when it is None).
    The comparison takes the same time wherever the strings differ."""
    if expected is None:
        return
    if config.token is None:
        raise ProtocolError('this server needs a token: add "token": "..." to the config message')
    if not hmac.compare_digest(config.token.encode("utf-8", "surrogatepass"), expected.encode("utf-8")):
        raise ProtocolError("wrong token")


def parse_control(text: str) -> str:
    """A text message after the config (WebSocket): returns 'end' or 'reset'."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        obj = None
    if isinstance(obj, dict) and obj.get("event") in ("end", "reset") and len(obj) == 1:
        return obj["event"]
    raise ProtocolError('after the config, text messages must be {"event": "end"} or {"event": "reset"}; '
                        'send audio as binary messages')


def encode(obj) -> str:
    """One server message (an event or a control message) as compact JSON: :func:`realtime.events.to_json`."""
    return to_json(obj)


def ready_message(config: StreamConfig, *, hop_s: float, limits: dict) -> dict:
    return {"event": "ready", **config.public(), "sample_rate": SAMPLE_RATE, "hop_s": hop_s, "limits": limits}


def end_message(summary: dict, *, events: int, audio_seconds: float, dropped_bytes: int) -> dict:
    return {"event": "end", **summary, "events": events, "audio_seconds": round(audio_seconds, 3),
            "dropped_bytes": dropped_bytes}


def error_message(message: str) -> dict:
    return {"event": "error", "error": str(message)}

"""Command-line options of the live engine, generated from ``EngineConfig``.

Every field of :class:`realtime.engine.EngineConfig` is one option; its default is read from the
dataclass (never repeated here), so a new engine knob appears in every engine-running command
(``live``, ``stream``, ``classify``, ``segments``, ``serve``, ``bench``) at once. Only the option
name and its help text live here. :func:`engine_argv` renders a config back as those options, for the
child processes a command starts (the benchmark's cold start, peak RSS and load test).
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from .engine_config import EngineConfig

# field -> (option, metavar, help); each help gets "(default: ...)" from EngineConfig
OPTIONS: dict[str, tuple[str, str | tuple[str, str] | None, str]] = {
    "hop_s": ("--hop", "SECONDS", "time between estimates, a multiple of 0.02 s"),
    "vad_aggressiveness": ("--vad", "0-3", "webrtcvad aggressiveness: 3 rejects the most non-speech"),
    "first_window_s": ("--first-window", "SECONDS",
                       "speech needed before the first estimate; shorter windows are wrap-padded to 2 s"),
    "min_new_speech_s": ("--min-new-speech", "SECONDS",
                         "a window is classified only in a hop that brought at least this much new speech"),
    "speech_fraction": ("--speech-fraction", "SHARE",
                        "share of a hop's 20 ms frames that must be speech for the hop to count as speech"),
    "reset_after_silence_s": ("--reset-after", "SECONDS",
                              "silence after which the estimate resets, since the next voice may be someone else"),
    "forget_s": ("--forget", "SECONDS", "time constant of the smoothed estimate: older windows weigh less"),
    "hysteresis": ("--hysteresis", "P",
                   "how far p_female must move back past a threshold before the label changes again"),
    "speech_only": ("--speech-only", None, "windows hold only the speech frames (--no-speech-only: all audio, pauses too)"),
    "level_range_dbfs": ("--level-range", ("LOW", "HIGH"),
                         "speech levels the models know, in dBFS; outside, results carry a level warning"),
    "voice_opinion": ("--voice-opinion", None,
                      "the file verdict (classify, the end of a stream) weighs in the bundle's speaker-encoder opinion "
                      "of the first 12 s of speech, up to ~0.1 s of CPU once per recording (--no-voice-opinion: the windows "
                      "alone)"),
    "live_voice": ("--live-voice", None,
                   "the live estimate weighs in the speaker-encoder opinion of the latest 2 s of speech, read after the "
                   "first 1 s of a voice and every 2 s after (~15-25 ms of CPU each time, in that hop): steadier "
                   "across microphones and accents than the windows alone (on by default in live and stream; off in "
                   "serve, segments, bench and the Python API's EngineConfig)"),
}


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """Options every engine-running command shares: ``--models`` and one per ``EngineConfig`` field."""
    g = p.add_argument_group("engine")
    g.add_argument("--models", type=Path, default=None, metavar="DIR",
                   help="model bundle folder (default: the bundle shipped in models/)")
    defaults = EngineConfig()
    for f in dataclasses.fields(EngineConfig):
        option, metavar, text = OPTIONS[f.name]
        text += " (default: %(default)s)"
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            g.add_argument(option, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=text)
        elif isinstance(default, tuple):
            g.add_argument(option, dest=f.name, type=type(default[0]), nargs=len(default), default=default,
                           metavar=metavar, help=text)
        else:
            kw = {"choices": range(4)} if f.name == "vad_aggressiveness" else {}
            g.add_argument(option, dest=f.name, type=type(default), default=default, metavar=metavar, help=text, **kw)


def engine_argv(config: EngineConfig, models: Path | None = None) -> list[str]:
    """``config`` (and ``models``) as the command-line words :func:`add_engine_arguments` reads back into the
    same config: the options of :data:`OPTIONS` for the fields that differ from ``EngineConfig()``'s."""
    out = ["--models", str(models)] if models is not None else []
    defaults = EngineConfig()
    for f in dataclasses.fields(EngineConfig):
        value = getattr(config, f.name)
        if value == getattr(defaults, f.name):
            continue
        option = OPTIONS[f.name][0]
        if isinstance(value, bool):
            out.append(option if value else "--no-" + option[2:])
        elif isinstance(value, tuple):
            out += [option, *map(str, value)]
        else:
            out += [option, str(value)]
    return out


def engine_config(args: argparse.Namespace) -> EngineConfig:
    """The ``EngineConfig`` the parsed options describe (fields not on ``args`` keep their defaults)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(EngineConfig) if hasattr(args, f.name)}
    if "level_range_dbfs" in given:
        given["level_range_dbfs"] = tuple(given["level_range_dbfs"])
    return EngineConfig(**given)


def make_engine(args: argparse.Namespace, bundle=None):
    """An engine for the parsed options: ``bundle`` if given, else the one ``--models`` names (or the shipped one)."""
    from .bundle import Bundle
    from .engine import Engine

    if bundle is None:
        bundle = Bundle.load(args.models) if getattr(args, "models", None) else Bundle.load()
    return Engine(bundle, engine_config(args))

"""Command line of the live engine: ``python -m realtime <command>`` (or ``voicegender``).

Commands: ``live`` (the microphone console), ``stream`` (one event per hop as console/JSON lines/CSV),
``classify`` (one verdict per file), and the commands that plug in by module (``bench``, ``serve``,
``client``): each module in ``COMMAND_MODULES`` that exists exposes ``add_parser(subparsers)``.
Nothing here imports TensorFlow, librosa or numba.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from pathlib import Path

from .audio import AudioError

COMMAND_MODULES = ("realtime.bench", "realtime.server")


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """Options every engine-running command shares."""
    g = p.add_argument_group("engine")
    g.add_argument("--models", type=Path, default=None, metavar="DIR",
                   help="model bundle folder (default: the bundle shipped in models/)")
    g.add_argument("--hop", type=float, default=0.5, metavar="SECONDS",
                   help="time between estimates, a multiple of 0.02 s (default: %(default)s)")
    g.add_argument("--vad", type=int, default=2, choices=(0, 1, 2, 3), metavar="0-3",
                   help="webrtcvad aggressiveness: 3 rejects the most non-speech (default: %(default)s)")
    g.add_argument("--first-window", type=float, default=0.75, metavar="SECONDS",
                   help="speech needed before the first estimate; shorter windows are wrap-padded to 2 s "
                        "(default: %(default)s)")
    g.add_argument("--reset-after", type=float, default=1.5, metavar="SECONDS",
                   help="silence after which the estimate resets, since the next voice may be someone else "
                        "(default: %(default)s)")


def make_engine(args: argparse.Namespace, bundle=None):
    from .bundle import Bundle
    from .engine import Engine, EngineConfig

    if bundle is None:
        bundle = Bundle.load(args.models) if args.models else Bundle.load()
    cfg = EngineConfig(hop_s=args.hop, vad_aggressiveness=args.vad, first_window_s=args.first_window,
                       reset_after_silence_s=args.reset_after)
    return Engine(bundle, cfg)


def _add_source_arguments(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument("--source", default=None, required=required, metavar="SPEC",
                   help="file:PATH (or a bare path), mic, mic:DEVICE (index or part of its name), or stdin "
                        "(raw PCM; see --rate/--format-in)" + ("" if required else " (default: the microphone)"))
    p.add_argument("--rate", type=int, default=16000, metavar="HZ",
                   help="sample rate of stdin PCM; it is resampled to 16 kHz (default: %(default)s)")
    p.add_argument("--channels", type=int, default=1, metavar="N", help="channels of stdin PCM (default: %(default)s)")
    p.add_argument("--format-in", choices=("s16le", "f32le"), default="s16le",
                   help="sample encoding of stdin PCM (default: %(default)s)")
    p.add_argument("--realtime", action="store_true",
                   help="pace a file source at real time, as a live stream would arrive (default: as fast as compute allows)")


def _open_source(args):
    from .sources import parse_source

    return parse_source(args.source, rate=args.rate, channels=args.channels, fmt=args.format_in,
                        realtime=getattr(args, "realtime", False))


def _run_stream(args, sink_format: str) -> int:
    from .sinks import TracePlotSink, make_sink

    engine = make_engine(args)
    sinks = [make_sink(sink_format, sys.stdout)]
    if getattr(args, "plot", None):
        sinks.append(TracePlotSink(args.plot, title=str(args.source)))
    try:
        with _open_source(args) as source:
            for event in engine.run(source):
                for s in sinks:
                    s.write(event)
    except KeyboardInterrupt:
        pass
    finally:
        for s in sinks:
            s.close()
    return 0


def _live(args) -> int:
    if args.list_devices:
        from .sources import list_devices

        devices = list_devices()
        for d in devices:
            print(f"{d['index']:3d}  {d['name']}  ({d['max_input_channels']} ch, {d['default_samplerate']:.0f} Hz)")
        if not devices:
            print("no input devices found", file=sys.stderr)
        return 0
    if args.source is None:
        args.source = "mic" if args.device is None else f"mic:{args.device}"
    try:
        return _run_stream(args, "console")
    except AudioError as exc:
        if args.source.startswith("mic"):
            raise AudioError(f"{exc}. Without a microphone, try: python -m realtime live --source file:PATH --realtime") from exc
        raise


def _stream(args) -> int:
    return _run_stream(args, args.format)


def _classify(args) -> int:
    from .engine import summarise
    from .sources import FileSource

    engine = make_engine(args)
    failures = 0
    for path in args.paths:
        engine.reset()
        try:
            with FileSource(path) as src:
                events = list(engine.run(src))
            result = {"file": str(path), **summarise(events, engine)}
        except AudioError as exc:
            result = {"file": str(path), "label": "unknown", "error": str(exc)}
            failures += 1
        if args.json:
            print(json.dumps(result), flush=True)
        elif "error" in result:
            print(f"{path}: error: {result['error']}", file=sys.stderr)
        else:
            p = "-" if result["p_female"] is None else f"{result['p_female']:.3f}"
            print(f"{path}\t{result['label']}\tp_female={p}\tspeech={result['speech_seconds']:.1f}s\twindows={result['windows']}")
            if result.get("warning"):
                print(f"{path}: warning: {result['warning']}", file=sys.stderr)
    return 1 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m realtime",
        description="Real-time speaker-gender classification (female / male, with calibrated confidence) "
                    "from a microphone, files, stdin or sockets, with the ONNX model bundle in models/.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("live", help="live console on the microphone (the main job)",
                       description="Show a live gauge of p_female, the label, a speech indicator and per-stage "
                                   "latency for the microphone (or any --source). Ctrl-C stops.")
    p.add_argument("--device", default=None, metavar="D", help="input device index or part of its name (see --list-devices)")
    p.add_argument("--list-devices", action="store_true", help="list input devices and exit")
    p.add_argument("--plot", type=Path, default=None, metavar="PNG", help="also write a PNG trace of p_female at the end")
    _add_source_arguments(p, required=False)
    add_engine_arguments(p)
    p.set_defaults(func=_live)

    p = sub.add_parser("stream", help="one event per hop from a file, the microphone or stdin",
                       description="Stream audio through the engine and write one event per hop: t (stream seconds), "
                                   "label, p_female (smoothed), window_p_female (this hop's window, null if none), "
                                   "speech, confidence, compute_ms, stages_ms.")
    _add_source_arguments(p, required=True)
    p.add_argument("--format", choices=("console", "jsonl", "csv"), default="jsonl",
                   help="console (live display), jsonl (one JSON object per line) or csv (default: %(default)s)")
    p.add_argument("--plot", type=Path, default=None, metavar="PNG", help="also write a PNG trace of p_female over time")
    add_engine_arguments(p)
    p.set_defaults(func=_stream)

    p = sub.add_parser("classify", help="one verdict per audio file (models loaded once)",
                       description="Classify whole files: label (female | male | unknown), p_female (mean log-odds "
                                   "of the speech windows), speech_seconds, windows. Exit status 1 if any file failed.")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="audio files (any rate and channel count)")
    p.add_argument("--json", action="store_true", help="one JSON object per file")
    add_engine_arguments(p)
    p.set_defaults(func=_classify)

    for name in COMMAND_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (AudioError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

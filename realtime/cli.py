"""Command line of the live engine: ``python -m realtime <command>`` (or ``voicegender``).

Commands: ``live`` (the microphone console), ``stream`` (one event per hop as console/JSON lines/CSV),
``classify`` (one verdict per file), ``segments`` (one row per speaker turn), and the commands whose modules
expose ``add_parser(subparsers)``: ``bench``, ``serve``, ``client``, ``loadtest``, ``soak``. Engine options
come from ``realtime.options`` (one per ``EngineConfig`` field).
Nothing here imports TensorFlow, librosa or numba.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__, bench, client, loadtest, server, soak
from .audio import SAMPLE_RATE, AudioError
from .errors import VoiceGenderError
from .options import add_engine_arguments, make_engine

def _add_source_arguments(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument("path", nargs="?", default=None, metavar="PATH",
                   help="audio file to stream (the same as --source file:PATH)")
    p.add_argument("--source", default=None, metavar="SPEC",
                   help="file:PATH (or a bare path), mic, mic:DEVICE (index or part of its name), or stdin "
                        "(raw PCM; see --rate/--format-in)" + ("" if required else " (default: the microphone)"))
    p.add_argument("--rate", type=int, default=16000, metavar="HZ",
                   help="sample rate of stdin PCM; it is resampled to 16 kHz (default: %(default)s)")
    p.add_argument("--channels", type=int, default=1, metavar="N", help="channels of stdin PCM (default: %(default)s)")
    p.add_argument("--format-in", choices=("s16le", "f32le"), default="s16le",
                   help="sample encoding of stdin PCM (default: %(default)s)")
    p.add_argument("--realtime", action="store_true",
                   help="pace a file source at real time, as a live stream would arrive (default: as fast as compute allows)")


def _add_file_arguments(p: argparse.ArgumentParser) -> None:
    """PATH... (files or folders), --no-progress and the engine options: what the per-file commands share."""
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                   help="audio files (any rate and channel count; wav, flac, mp3, m4a, webm, ...), folders (searched "
                        "recursively for audio files), or - for one whole file piped on stdin")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_engine_arguments(p)


def _resolve_source(args, *, required: bool) -> None:
    """The positional PATH and --source are one choice: exactly one of them (or neither, for live: the mic)."""
    if args.path is not None and args.source is not None:
        raise ValueError("give either a PATH or --source, not both")
    if args.path is not None:
        args.source = f"file:{args.path}"
    elif args.source is None and required:
        raise ValueError("nothing to stream: give a PATH, or --source (file:PATH, mic, mic:DEVICE, stdin)")


def _open_source(args):
    from .sources import parse_source

    return parse_source(args.source, rate=args.rate, channels=args.channels, fmt=args.format_in,
                        realtime=getattr(args, "realtime", False))


def _run_stream(args, sink_format: str) -> int:
    from .engine import summarise
    from .sinks import TracePlotSink, make_sink

    plot = TracePlotSink(args.plot, title=str(args.source)) if getattr(args, "plot", None) else None  # checks matplotlib now
    engine = make_engine(args)
    sinks = [make_sink(sink_format, sys.stdout, config=engine.config)] + ([plot] if plot else [])
    events = []
    try:
        with _open_source(args) as source:
            for event in engine.run(source):
                events.append({"window_p_female": event.window_p_female, "level_dbfs": event.level_dbfs,
                               "input_dbfs": event.input_dbfs, "speech": event.speech})
                for s in sinks:
                    s.write(event)
    except KeyboardInterrupt:
        pass
    finally:
        for s in sinks:
            s.close()
    warning = summarise(events, engine, voice=False)["warning"]
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
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
    _resolve_source(args, required=False)
    if args.source is None:
        args.source = "mic" if args.device is None else f"mic:{args.device}"
    try:
        return _run_stream(args, "console")
    except AudioError as exc:
        if args.source.startswith("mic"):
            raise AudioError(f"{exc}. Without a microphone, try: python -m realtime live PATH --realtime") from exc
        raise


def _stream(args) -> int:
    _resolve_source(args, required=True)
    return _run_stream(args, args.format)


def audio_extensions() -> frozenset[str]:
    """File name endings taken for audio when a folder is given: what libsndfile reads, plus mp3/opus, plus
    what FFmpeg reads (``realtime.decode.FFMPEG_EXTENSIONS``: m4a, webm, mp4, ...)."""
    import soundfile as sf

    from .decode import FFMPEG_EXTENSIONS

    exts = {f".{k.lower()}" for k in sf.available_formats()} | FFMPEG_EXTENSIONS
    return frozenset(exts | {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff"} - {".raw"})


def expand_paths(paths: list[Path]) -> list[Path]:
    """Files as given; folders replaced by the audio files under them (recursively, sorted). A folder without
    any stays itself, so that opening it says precisely what it is."""
    exts, out = audio_extensions(), []
    for p in paths:
        found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in exts) if p.is_dir() else []
        out += found or [p]
    return out


def _progress(n: int, enabled: bool):
    """A rich progress bar for many files, on the terminal: on stderr when stdout is piped or redirected (the
    results stay clean on stdout), drawn below the results when both are the terminal. A no-op for one file,
    --no-progress, or no terminal at all."""
    import contextlib

    out_tty, err_tty = sys.stdout.isatty(), sys.stderr.isatty()
    if not enabled or n < 2 or not (out_tty or err_tty):
        return contextlib.nullcontext(lambda: None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(file=sys.stdout) if out_tty else Console(stderr=True)

    @contextlib.contextmanager
    def bar():
        with Progress(TextColumn("classifying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console, transient=True, redirect_stdout=out_tty, redirect_stderr=False) as progress:
            task = progress.add_task("files", total=n)
            yield lambda: progress.advance(task)
    return bar()


def _each_file(args, work):
    """Run ``work(engine, audio, rate)`` on every file of args.paths (folders expanded; ``-``: stdin) with one engine; yields
    (path, result or None, error or None)."""
    paths = expand_paths(args.paths)
    if all(p.is_dir() for p in paths):  # nothing but folders without audio: nothing to do at all
        raise AudioError(f"no audio files in {', '.join(map(str, args.paths))}")
    engine = make_engine(args)
    with _progress(len(paths), not args.no_progress) as advance:
        for path in paths:
            try:
                yield path, work(engine, *_file_audio(path)), None
            except AudioError as exc:
                yield path, None, str(exc)
            advance()


def _file_audio(path: Path) -> tuple:
    """(what ``Engine.run`` takes, its rate) for a PATH argument: the path itself, or for ``-`` the whole file
    piped on stdin, decoded (any container, as ``realtime.decode`` reads it)."""
    if str(path) != "-":
        return path, SAMPLE_RATE
    import io

    from .decode import read

    return read(io.BytesIO(sys.stdin.buffer.read()), name="stdin")


def _classify(args) -> int:
    from .engine import summarise

    failures = 0
    def work(engine, src, rate):
        return summarise(list(engine.run(src, sample_rate=rate)), engine)

    for path, result, error in _each_file(args, work):
        if error is not None:
            failures += 1
            result = {"file": str(path), "label": None, "error": error}
        else:
            result = {"file": str(path), **result}
        if args.json:
            print(json.dumps(result), flush=True)
        elif error is not None:
            print(f"{path}: error: {error}", file=sys.stderr)
        else:
            p = "-" if result["p_female"] is None else f"{result['p_female']:.3f}"
            voice = "" if result["voice_p_female"] is None else f"\tvoice={result['voice_p_female']:.3f}"
            print(f"{path}\t{result['label']}\tp_female={p}\tspeech={result['speech_seconds']:.1f}s"
                  f"\twindows={result['windows']}{voice}", flush=True)
            if result.get("warning"):
                print(f"{path}: warning: {result['warning']}", file=sys.stderr)
    return 1 if failures else 0


SEGMENT_FIELDS = ("file", "start", "end", "label", "p_female", "voice_p_female")


def _segments(args) -> int:
    import csv

    from .api import engine_turns

    def work(engine, src, rate):
        return engine_turns(engine, src, rate, min_pause_s=args.min_pause)

    writer = None
    if args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(SEGMENT_FIELDS), lineterminator="\n")
        writer.writeheader()
    failures = 0
    for path, rows, error in _each_file(args, work):
        if error is not None:
            failures += 1
            print(f"{path}: error: {error}", file=sys.stderr)
            continue
        for row in rows:
            row = {"file": str(path), **row}
            if args.format == "json":
                print(json.dumps(row))
            elif args.format == "csv":
                writer.writerow({k: "" if v is None else v for k, v in row.items()})
            else:
                p = "-" if row["p_female"] is None else f"{row['p_female']:.3f}"
                v = "" if row["voice_p_female"] is None else f"\tvoice={row['voice_p_female']:.3f}"
                print(f"{path}\t{row['start']:8.2f}\t{row['end']:8.2f}\t{row['label']:<9}\tp_female={p}{v}")
        sys.stdout.flush()
    return 1 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m realtime",
        description="Real-time speaker-gender classification (female / male, with calibrated confidence) "
                    "from a microphone, files, stdin or sockets, with the ONNX model bundle in models/.")
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version and which feature code runs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("live", help="live console on the microphone (the main job)",
                       description="Show a live gauge of p_female, the label, a speech indicator, this hop's input "
                                   "level and per-stage latency for the microphone (or a PATH / any --source). "
                                   "Ctrl-C stops.")
    p.add_argument("--device", default=None, metavar="D", help="input device index or part of its name (see --list-devices)")
    p.add_argument("--list-devices", action="store_true", help="list input devices and exit")
    p.add_argument("--plot", type=Path, default=None, metavar="PNG", help="also write a PNG trace of p_female at the end")
    _add_source_arguments(p, required=False)
    add_engine_arguments(p)
    # the console shows one voice at a time: the live voice opinion (~12 ms of CPU per second of audio) is worth it
    p.set_defaults(func=_live, live_voice=True)

    p = sub.add_parser("stream", help="one event per hop from a file, the microphone or stdin",
                       description="Stream audio through the engine and write one event per hop: t (stream seconds), "
                                   "label (waiting | female | male | uncertain | no speech), p_female (smoothed), "
                                   "window_p_female (this hop's window, null if none), level_dbfs, input_dbfs, speech, "
                                   "confidence, compute_ms, stages_ms, overruns (the README's event schema). "
                                   "A warning on stderr says when no estimate came, or the speech was too quiet.")
    _add_source_arguments(p, required=True)
    p.add_argument("--format", choices=("console", "jsonl", "csv"), default="jsonl",
                   help="console (live display), jsonl (one JSON object per line) or csv (default: %(default)s)")
    p.add_argument("--plot", type=Path, default=None, metavar="PNG", help="also write a PNG trace of p_female over time")
    add_engine_arguments(p)
    # one stream per process, as the console: the live voice opinion's ~12 ms of CPU per second of audio is worth it
    p.set_defaults(func=_stream, live_voice=True)

    p = sub.add_parser("classify", help="one verdict per audio file (models loaded once)",
                       description="Classify whole files: label (female | male | uncertain | no speech), p_female "
                                   "(mean log-odds of the speech windows), speech_seconds, windows, level_dbfs, "
                                   "warning. Exit status 1 if any file failed.")
    _add_file_arguments(p)
    p.add_argument("--json", action="store_true", help="one JSON object per file")
    p.set_defaults(func=_classify)

    p = sub.add_parser("segments", help="speaker turns per file: start, end, label, p_female",
                       description="Split each file's speech into turns, at pauses and where the voice changes "
                                   "confidently, and write one row per turn: file, start and end (seconds), label "
                                   "(female | male | uncertain), p_female. Exit status 1 if any file failed.")
    _add_file_arguments(p)
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", dest="format", action="store_const", const="json", help="one JSON object per turn")
    fmt.add_argument("--csv", dest="format", action="store_const", const="csv", help="CSV with a header row")
    p.set_defaults(format="text")
    p.add_argument("--min-pause", type=float, default=1.0, metavar="SECONDS",
                   help="pauses at least this long end a turn (default: %(default)s)")
    p.set_defaults(func=_segments)

    for module in (bench, server, client, loadtest, soak):
        module.add_parser(sub)
    return parser


def _quiet_broken_pipe() -> int:
    """The reader went away (``| head``): stop quietly with success, as Unix tools do."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's last flush does not complain
    except (OSError, ValueError):
        pass
    return 0


class _Version(argparse.Action):
    """``--version``, computed when asked (it imports the features to see whether the compiled kernel is built)."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"voicegender {__version__} (features: {_feature_code()})")
        parser.exit()


def _feature_code() -> str:
    import os

    from .features import KERNEL_AVAILABLE, KERNEL_ENV

    if KERNEL_AVAILABLE:
        return "compiled kernel"
    return f"numpy, {KERNEL_ENV}=0" if os.environ.get(KERNEL_ENV, "").strip() == "0" else "numpy, kernel not built"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (VoiceGenderError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

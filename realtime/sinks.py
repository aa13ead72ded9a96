"""Where live estimates go: JSON lines, CSV, a console display, or a PNG trace.

An event is a :class:`realtime.events.Event` (or its dict, as the client receives it): the fields, their
units and their JSON form are in :mod:`realtime.events` (``clean_event`` here is its ``json_safe``).
Every sink has ``write(event)`` and ``close()`` and is a context manager. The console's hints (too quiet,
how much speech a first estimate needs) follow the running engine's config when it is given.
"""
from __future__ import annotations

import csv
import math
import sys
from typing import IO, TYPE_CHECKING, Callable, Mapping

from .events import EVENT_FIELDS, STAGES, Event, to_json
from .events import json_safe as clean_event

if TYPE_CHECKING:
    from .engine import EngineConfig

__all__ = [
    "EVENT_KEYS", "Sink", "JsonlSink", "CsvSink", "ConsoleSink", "TracePlotSink", "make_sink",
    "SINK_FORMATS", "clean_event",
]

EVENT_KEYS = tuple(k for k in EVENT_FIELDS if k != "stages_ms")  # the scalar fields, in schema order
#: the CSV columns, always all of them: the scalar fields, then one ms_<stage> per stage
CSV_FIELDS = EVENT_KEYS + tuple(f"ms_{s}" for s in STAGES)
LABEL_STYLES = {"female": "bold magenta", "male": "bold cyan", "uncertain": "bold yellow", "no speech": "dim",
                "waiting": "italic"}


class Sink:
    """Base class: ``write(event)``, ``close()``, context manager."""

    def write(self, event: Event | Mapping) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _TextStreamSink(Sink):
    """A sink writing text to a stream (default: stdout), flushed at close."""

    def __init__(self, stream: IO[str] | None = None):
        self.stream = stream if stream is not None else sys.stdout

    def close(self) -> None:
        try:
            self.stream.flush()
        except (ValueError, OSError):
            pass


class JsonlSink(_TextStreamSink):
    """One JSON object per line (NaN-free; floats rounded), flushed per event."""

    def write(self, event: Event | Mapping) -> None:
        self.stream.write(to_json(event) + "\n")
        self.stream.flush()


class CsvSink(_TextStreamSink):
    """CSV with a fixed header (:data:`CSV_FIELDS`), written with the first event: every scalar field of the
    event schema, then one ``ms_<stage>`` column per stage of :data:`realtime.events.STAGES`, whether or not
    the first event ran that stage. None/NaN (and a stage a hop did not run) are empty cells, booleans 1/0.
    """

    def __init__(self, stream: IO[str] | None = None):
        super().__init__(stream)
        self._writer: csv.DictWriter | None = None

    def write(self, event: Event | Mapping) -> None:
        ev = clean_event(event)
        if self._writer is None:
            self._writer = csv.DictWriter(self.stream, fieldnames=list(CSV_FIELDS), extrasaction="ignore",
                                          lineterminator="\n")
            self._writer.writeheader()
        row = {k: ev.get(k) for k in EVENT_KEYS}
        stages = ev.get("stages_ms") or {}
        for s in STAGES:
            row[f"ms_{s}"] = stages.get(s)
        row = {k: ("" if v is None else int(v) if isinstance(v, bool) else v) for k, v in row.items()}
        self._writer.writerow(row)
        self.stream.flush()


def gauge_text(p: float | None, width: int = 31) -> str:
    """Plain-text gauge 'male [-----|----] female' with a marker at p (None: no marker)."""
    width = max(5, int(width))
    cells = ["─"] * width
    if p is not None and math.isfinite(p):
        i = min(width - 1, max(0, int(round(p * (width - 1)))))
        cells[i] = "●"
    cells[width // 2] = "┼" if cells[width // 2] == "─" else cells[width // 2]
    return "male ◀" + "".join(cells) + "▶ female"


def _typed(event: Event | Mapping) -> Event:
    """The event's JSON-safe values (NaN -> None, rounded) as an Event."""
    return Event.from_dict(clean_event(event))


def input_hint(level_dbfs: float, speech: bool, label: str, config: "EngineConfig | None" = None) -> str | None:
    """What the console says beside this hop's input level: too quiet or too loud for the models, or why a
    voice gets no estimate yet. ``config``: the running engine's (default: the engine defaults)."""
    from .engine import EngineConfig, level_warning

    config = config if config is not None else EngineConfig()
    if speech:
        hint = level_warning(level_dbfs, config.level_range_dbfs)
        if hint:
            return hint
        if label == "waiting":
            return f"listening: an estimate needs {config.first_window_s:g} s of speech"
        return None
    lo = config.level_range_dbfs[0]
    if level_dbfs > lo:
        return None
    if level_dbfs <= -90:
        return "digital silence: is the input muted?"
    return None


def _fmt_p(p) -> str:
    return "  -  " if p is None or (isinstance(p, float) and not math.isfinite(p)) else f"{p:.3f}"


class ConsoleSink(Sink):
    """Human display. On a terminal: a rich ``Live`` panel with a male<->female gauge of p_female,
    the label in colour, a speech indicator, per-stage latency and the overrun count.

    Not a terminal (piped / redirected / CI): no cursor tricks and no colour; one plain line per
    event, or only when the label changes if ``changes_only=True``. ``config``: the running engine's
    :class:`~realtime.engine.EngineConfig`, for the level and first-estimate hints (default: the defaults).
    """

    def __init__(self, stream: IO[str] | None = None, *, console=None, changes_only: bool = False,
                 refresh_per_second: float = 10.0, config: "EngineConfig | None" = None):
        from rich.console import Console

        self.console = console if console is not None else Console(file=stream or sys.stdout, highlight=False)
        self.changes_only = changes_only
        self.config = config
        self._live = None
        self._last_label: str | None = None
        self._n = 0
        self._overruns = 0
        if self.console.is_terminal:
            from rich.live import Live

            self._live = Live(self._render(None), console=self.console, refresh_per_second=refresh_per_second,
                              transient=False)
            self._live.start()

    @property
    def is_live(self) -> bool:
        return self._live is not None

    def _render(self, ev: Event | None):
        from rich.table import Table
        from rich.text import Text

        table = Table.grid(padding=(0, 2))
        table.add_column(justify="right", style="bold")
        table.add_column()
        if ev is None:
            table.add_row("status", Text("waiting for audio…", style="dim"))
            return table
        label = ev.label or "no speech"
        p = ev.p_female
        style = LABEL_STYLES.get(label, "")
        gauge = Text(gauge_text(p, 41))
        if p is not None:
            start = 6  # after "male ◀"
            idx = start + min(40, max(0, int(round(p * 40))))
            gauge.stylize(style or "bold", idx, idx + 1)
        table.add_row("voice", Text(label.upper(), style=style))
        table.add_row("p_female", Text(f"{_fmt_p(p)}   window {_fmt_p(ev.window_p_female)}"))
        table.add_row("", gauge)
        table.add_row("speech", Text("● speaking" if ev.speech else "○ silent", style="green" if ev.speech else "dim"))
        if ev.input_dbfs is not None:  # this hop's input, so silence reads as silence
            hint = input_hint(ev.input_dbfs, bool(ev.speech), label, self.config)
            table.add_row("level", Text(f"{ev.input_dbfs:.0f} dBFS" + (f"   {hint}" if hint else ""),
                                        style="yellow" if hint else ""))
        lat = "  ".join(f"{k} {v:.2f}" for k, v in (ev.stages_ms or {}).items() if isinstance(v, (int, float)))
        cm = ev.compute_ms
        total = f"total {cm:.1f} ms" if isinstance(cm, (int, float)) else ""
        table.add_row("latency", Text(f"{total}   {lat}".strip()))
        t = ev.t
        table.add_row("t / overruns", Text(f"{t:.1f} s   overruns {self._overruns}" if isinstance(t, (int, float))
                                           else f"overruns {self._overruns}",
                                           style="red" if self._overruns else ""))
        return table

    def _line(self, ev: Event) -> str:
        t, cm = ev.t, ev.compute_ms
        parts = [f"t={t:7.2f}s" if isinstance(t, (int, float)) else "t=?",
                 f"{(ev.label or 'no speech'):<9}",
                 f"p_female={_fmt_p(ev.p_female)}",
                 f"window={_fmt_p(ev.window_p_female)}",
                 "speech" if ev.speech else "silent",
                 f"level={ev.input_dbfs:.0f}dBFS" if isinstance(ev.input_dbfs, (int, float)) else "",
                 f"{cm:.1f}ms" if isinstance(cm, (int, float)) else ""]
        if self._overruns:
            parts.append(f"overruns={self._overruns}")
        return " ".join(p for p in parts if p)

    def write(self, event: Event | Mapping) -> None:
        ev = _typed(event)
        self._n += 1
        if isinstance(ev.overruns, int):
            self._overruns = ev.overruns
        if self._live is not None:
            self._live.update(self._render(ev))
        elif not self.changes_only or ev.label != self._last_label:
            self.console.print(self._line(ev), markup=False, highlight=False, soft_wrap=True)
        self._last_label = ev.label

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


PLOT_HINT = ("the PNG trace needs matplotlib, which is not a core dependency: "
             "pip install 'voicegender[plot]' (or pip install matplotlib)")


def check_plotting() -> None:
    """Raise ImportError with :data:`PLOT_HINT` now, before streaming, when matplotlib is missing."""
    import importlib.util

    try:
        found = importlib.util.find_spec("matplotlib") is not None
    except ValueError:  # sys.modules["matplotlib"] is None: blocked
        found = False
    if not found or sys.modules.get("matplotlib", 0) is None:
        raise ImportError(PLOT_HINT)


class TracePlotSink(Sink):
    """Collects events; at ``close()`` writes a PNG of p_female and window_p_female over time with
    speech shaded. matplotlib is imported only then (it is the ``plot`` extra, not core); with ``check=True``
    (default) the constructor already refuses when it is missing, so a stream does not run for nothing."""

    def __init__(self, png_path, *, title: str | None = None, check: bool = True):
        from pathlib import Path

        if check:
            check_plotting()
        self.png_path = Path(png_path)
        self.title = title
        self.events: list[Event] = []
        self._closed = False

    def write(self, event: Event | Mapping) -> None:
        self.events.append(_typed(event))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError as exc:
            raise ImportError(PLOT_HINT) from exc
        ev = self.events
        t = [e.t if e.t is not None else i for i, e in enumerate(ev)]
        nan = float("nan")
        p = [nan if e.p_female is None else e.p_female for e in ev]
        wp = [nan if e.window_p_female is None else e.window_p_female for e in ev]
        fig = Figure(figsize=(10, 3.2), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        # speech shading: one span per run of speech events
        start = None
        for i, e in enumerate(ev):
            if e.speech and start is None:
                start = t[i - 1] if i > 0 else t[i]
            if not e.speech and start is not None:
                ax.axvspan(start, t[i - 1] if i > 0 else t[i], color="0.88", lw=0)
                start = None
        if start is not None and ev:
            ax.axvspan(start, t[-1], color="0.88", lw=0, label="speech")
        ax.plot(t, wp, ".", color="tab:orange", ms=4, label="window p_female")
        ax.plot(t, p, "-", color="tab:purple", lw=1.8, label="smoothed p_female")
        ax.axhline(0.5, color="0.5", lw=0.8, ls="--")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("p_female")
        ax.set_title(self.title or f"{len(ev)} events")
        ax.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        self.png_path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(self.png_path)


#: format -> factory(stream, engine config or None)
SINK_FORMATS: dict[str, Callable[[IO[str] | None, "EngineConfig | None"], Sink]] = {
    "console": lambda stream, config: ConsoleSink(stream, config=config),
    "jsonl": lambda stream, config: JsonlSink(stream),
    "csv": lambda stream, config: CsvSink(stream),
}


def make_sink(fmt: str, stream: IO[str] | None = None, *, config: "EngineConfig | None" = None) -> Sink:
    """'console' | 'jsonl' | 'csv' -> a sink writing to ``stream`` (default stdout). ``config``: the running
    engine's config (the console's hints follow it)."""
    try:
        factory = SINK_FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(SINK_FORMATS)}") from None
    return factory(stream, config)

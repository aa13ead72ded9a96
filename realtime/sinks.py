"""Where live estimates go: JSON lines, CSV, a console display, or a PNG trace.

An event is a :class:`realtime.events.Event` (or its dict, as the client receives it): the fields and
their units are in :mod:`realtime.events`. Every sink has ``write(event)`` and ``close()`` and is a
context manager.
"""
from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Mapping
from typing import IO, Any, Callable

from .events import EVENT_FIELDS, STAGES

__all__ = [
    "EVENT_KEYS", "Sink", "JsonlSink", "CsvSink", "ConsoleSink", "TracePlotSink", "make_sink",
    "SINK_FORMATS", "clean_event",
]

EVENT_KEYS = tuple(k for k in EVENT_FIELDS if k != "stages_ms")  # the scalar fields, in schema order
#: the CSV columns, always all of them: the scalar fields, then one ms_<stage> per stage
CSV_FIELDS = EVENT_KEYS + tuple(f"ms_{s}" for s in STAGES)
LABEL_STYLES = {"female": "bold magenta", "male": "bold cyan", "uncertain": "bold yellow", "no speech": "dim",
                "waiting": "italic"}


def _round_for(key: str | None, v: float) -> float:
    # probabilities to 4 decimals; times in s to the ms; milliseconds to the microsecond
    if key is not None and (key == "t" or key.endswith("_s")):
        return round(v, 3)
    if key is not None and (key.endswith("ms") or key in ("stages_ms",)):
        return round(v, 3)
    return round(v, 4)


def clean_event(value: Any, key: str | None = None) -> Any:
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python, floats rounded sensibly."""
    if hasattr(value, "to_dict") and not isinstance(value, dict):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): clean_event(v, str(k) if key != "stages_ms" else "stages_ms") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_event(v, key) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if hasattr(value, "item") and callable(value.item):  # numpy scalar / 0-d array
        try:
            value = value.item()
        except (ValueError, TypeError):
            return str(value)
        return clean_event(value, key)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return _round_for(key, value)
    return str(value)


class Sink:
    """Base class: ``write(event)``, ``close()``, context manager."""

    def write(self, event: dict) -> None:  # pragma: no cover - interface
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

    def write(self, event: dict) -> None:
        self.stream.write(json.dumps(clean_event(event), allow_nan=False, separators=(",", ":")) + "\n")
        self.stream.flush()


class CsvSink(_TextStreamSink):
    """CSV with a fixed header (:data:`CSV_FIELDS`), written with the first event: every scalar field of the
    event schema, then one ``ms_<stage>`` column per stage of :data:`realtime.events.STAGES`, whether or not
    the first event ran that stage. None/NaN (and a stage a hop did not run) are empty cells, booleans 1/0.
    """

    def __init__(self, stream: IO[str] | None = None):
        super().__init__(stream)
        self._writer: csv.DictWriter | None = None

    def write(self, event) -> None:
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


def input_hint(level_dbfs: float, speech: bool, label: str) -> str | None:
    """What the console says beside this hop's input level: too quiet or too loud for the models, or why a
    voice gets no estimate yet."""
    from .engine import EngineConfig, level_warning

    if speech:
        hint = level_warning(level_dbfs, EngineConfig.level_range_dbfs)
        if hint:
            return hint
        if label == "waiting":
            return f"listening: an estimate needs {EngineConfig.first_window_s:g} s of speech"
        return None
    lo = EngineConfig.level_range_dbfs[0]
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
    event, or only when the label changes if ``changes_only=True``.
    """

    def __init__(self, stream: IO[str] | None = None, *, console=None, changes_only: bool = False,
                 refresh_per_second: float = 10.0):
        from rich.console import Console

        self.console = console if console is not None else Console(file=stream or sys.stdout, highlight=False)
        self.changes_only = changes_only
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

    def _render(self, ev: dict | None):
        from rich.table import Table
        from rich.text import Text

        table = Table.grid(padding=(0, 2))
        table.add_column(justify="right", style="bold")
        table.add_column()
        if ev is None:
            table.add_row("status", Text("waiting for audio…", style="dim"))
            return table
        label = ev.get("label") or "no speech"
        p = ev.get("p_female")
        speech = ev.get("speech")
        style = LABEL_STYLES.get(label, "")
        gauge = Text(gauge_text(p, 41))
        if p is not None:
            start = 6  # after "male ◀"
            idx = start + min(40, max(0, int(round(p * 40))))
            gauge.stylize(style or "bold", idx, idx + 1)
        table.add_row("voice", Text(label.upper(), style=style))
        table.add_row("p_female", Text(f"{_fmt_p(p)}   window {_fmt_p(ev.get('window_p_female'))}"))
        table.add_row("", gauge)
        table.add_row("speech", Text("● speaking" if speech else "○ silent", style="green" if speech else "dim"))
        level = ev.get("input_dbfs")
        if level is not None:  # this hop's input, so silence reads as silence
            hint = input_hint(level, bool(speech), label)
            table.add_row("level", Text(f"{level:.0f} dBFS" + (f"   {hint}" if hint else ""),
                                        style="yellow" if hint else ""))
        stages = ev.get("stages_ms") or {}
        lat = "  ".join(f"{k} {v:.2f}" for k, v in stages.items() if isinstance(v, (int, float)))
        cm = ev.get("compute_ms")
        total = f"total {cm:.1f} ms" if isinstance(cm, (int, float)) else ""
        table.add_row("latency", Text(f"{total}   {lat}".strip()))
        t = ev.get("t")
        table.add_row("t / overruns", Text(f"{t:.1f} s   overruns {self._overruns}" if isinstance(t, (int, float))
                                           else f"overruns {self._overruns}",
                                           style="red" if self._overruns else ""))
        return table

    def _line(self, ev: dict) -> str:
        t = ev.get("t")
        cm = ev.get("compute_ms")
        parts = [f"t={t:7.2f}s" if isinstance(t, (int, float)) else "t=?",
                 f"{(ev.get('label') or 'no speech'):<9}",
                 f"p_female={_fmt_p(ev.get('p_female'))}",
                 f"window={_fmt_p(ev.get('window_p_female'))}",
                 "speech" if ev.get("speech") else "silent",
                 f"level={ev['input_dbfs']:.0f}dBFS" if isinstance(ev.get("input_dbfs"), (int, float)) else "",
                 f"{cm:.1f}ms" if isinstance(cm, (int, float)) else ""]
        if self._overruns:
            parts.append(f"overruns={self._overruns}")
        return " ".join(p for p in parts if p)

    def write(self, event: dict) -> None:
        ev = clean_event(event)
        self._n += 1
        if isinstance(ev.get("overruns"), int):
            self._overruns = ev["overruns"]
        if self._live is not None:
            self._live.update(self._render(ev))
        else:
            label = ev.get("label")
            if not self.changes_only or label != self._last_label:
                self.console.print(self._line(ev), markup=False, highlight=False, soft_wrap=True)
        self._last_label = ev.get("label")

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
        self.events: list[dict] = []
        self._closed = False

    def write(self, event: dict) -> None:
        self.events.append(clean_event(event))

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
        t = [e.get("t") if e.get("t") is not None else i for i, e in enumerate(ev)]
        nan = float("nan")
        p = [nan if e.get("p_female") is None else e["p_female"] for e in ev]
        wp = [nan if e.get("window_p_female") is None else e["window_p_female"] for e in ev]
        fig = Figure(figsize=(10, 3.2), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        # speech shading: one span per run of speech events
        start = None
        for i, e in enumerate(ev):
            if e.get("speech") and start is None:
                start = t[i - 1] if i > 0 else t[i]
            if not e.get("speech") and start is not None:
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


SINK_FORMATS: dict[str, Callable[[IO[str] | None], Sink]] = {
    "console": lambda stream: ConsoleSink(stream),
    "jsonl": lambda stream: JsonlSink(stream),
    "csv": lambda stream: CsvSink(stream),
}


def make_sink(fmt: str, stream: IO[str] | None = None) -> Sink:
    """'console' | 'jsonl' | 'csv' -> a sink writing to ``stream`` (default stdout)."""
    try:
        factory = SINK_FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(SINK_FORMATS)}") from None
    return factory(stream)

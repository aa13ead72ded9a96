import csv
import io
import json
import sys

import numpy as np
import pytest

from realtime.events import EVENT_FIELDS, LABELS, Event
from realtime.sinks import (CSV_FIELDS, EVENT_KEYS, ConsoleSink, CsvSink, JsonlSink, TracePlotSink, clean_event,
                            gauge_text, make_sink)


def _events(n=30):
    out = []
    for i in range(n):
        speech = 5 <= i < 25
        out.append({
            "t": 0.5 * (i + 1) + 1e-9,
            "label": ("female" if i < 15 else "male") if speech else "no speech",
            "p_female": (0.9 - 0.03 * i) if speech else None,
            "window_p_female": np.float32(0.9 - 0.03 * i) if speech else float("nan"),
            "p_speech": 0.99 if speech else None,
            "level_dbfs": (-25.0 - 1.0 * i) if speech else None,
            "input_dbfs": (-25.0 - 1.0 * i) if speech else -70.0,
            "speech": speech,
            "confidence": 0.5,
            "compute_ms": 1.23456789,
            "stages_ms": {"vad": 0.0123456, "features": 1.1, "xgb": np.float64(0.12345678)},
            "overruns": i // 10,
        })
    return out


def test_clean_event_is_json_safe_and_rounded():
    ev = clean_event(_events()[0] | {"p_female": 0.123456789, "window_p_female": np.float32(np.inf)})
    assert ev["p_female"] == 0.1235 and ev["window_p_female"] is None
    assert ev["t"] == 0.5 and ev["compute_ms"] == 1.235
    assert ev["stages_ms"]["xgb"] == 0.123 and isinstance(ev["stages_ms"]["xgb"], float)
    json.dumps(ev, allow_nan=False)


def test_jsonl_sink_schema():
    buf = io.StringIO()
    with JsonlSink(buf) as sink:
        for ev in _events():
            sink.write(ev)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 30
    for line in lines:
        assert "NaN" not in line and "Infinity" not in line
        obj = json.loads(line)
        assert set(EVENT_KEYS) <= set(obj)
        assert obj["label"] in LABELS
        assert isinstance(obj["speech"], bool)
        assert obj["p_female"] is None or 0 <= obj["p_female"] <= 1
    assert json.loads(lines[0])["window_p_female"] is None


def test_csv_sink_header_once_and_parses():
    buf = io.StringIO()
    sink = CsvSink(buf)
    for ev in _events():
        sink.write(ev)
    sink.close()
    text = buf.getvalue()
    assert text.count("t,label,p_female") == 1
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 30
    assert list(rows[0])[: len(EVENT_KEYS)] == list(EVENT_KEYS)
    assert list(rows[0]) == list(CSV_FIELDS)
    assert rows[0]["p_female"] == "" and rows[0]["speech"] == "0"
    assert rows[10]["speech"] == "1" and float(rows[10]["p_female"]) == pytest.approx(0.6)
    assert rows[-1]["overruns"] == "2"


def test_csv_header_holds_every_field_and_stage_from_a_real_stream():
    """Defect: the header came from the first event, which has no model stages (no window yet), so
    ms_features/ms_xgb/ms_cnn1d/ms_cnn2d were missing for the whole file and confidence was never written."""
    from realtime.engine import Engine

    from .data import readers_by_gender

    buf = io.StringIO()
    events = list(Engine().run(readers_by_gender(1)["F"][0]))
    assert "xgb" not in events[0].stages_ms  # the first hop classifies nothing
    with CsvSink(buf) as sink:
        for ev in events:
            sink.write(ev)
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    header = list(rows[0])
    assert header == list(CSV_FIELDS)
    for col in ("confidence", "input_dbfs", "level_dbfs", "overruns", "ms_vad", "ms_features", "ms_xgb", "ms_cnn1d",
                "ms_cnn2d", "ms_smoother"):
        assert col in header, col
    classified = [r for r in rows if r["window_p_female"]]
    assert len(classified) > 10 and all(float(r["ms_features"]) > 0 and float(r["ms_cnn2d"]) > 0 for r in classified)
    assert all(0 <= float(r["confidence"]) <= 1 for r in rows)


def test_event_is_typed_and_reads_like_a_dict():
    ev = Event(t=0.5, label="waiting", input_dbfs=-30.0, speech=True, stages_ms={"vad": 0.1})
    assert ev["label"] == ev.label == "waiting" and ev.get("p_female") is None and "t" in ev
    d = ev.to_dict()
    assert tuple(d) == EVENT_FIELDS and json.loads(json.dumps(d)) == d
    assert Event.from_dict(d) == ev
    with pytest.raises(KeyError):
        ev["nope"] = 1


def test_one_json_form_for_sinks_and_the_server():
    """The JSON line of an event is defined once (Event.to_json): the jsonl sink writes it, the server sends it,
    and it reads back to the same event."""
    from realtime.protocol import encode

    ev = Event(t=1.2345678, label="female", p_female=0.912345678, window_p_female=float("nan"), speech=True,
               compute_ms=2.3456789, stages_ms={"vad": np.float64(0.1234567)})
    line = ev.to_json()
    buf = io.StringIO()
    JsonlSink(buf).write(ev)
    assert buf.getvalue() == line + "\n" and encode(ev) == line
    back = Event.from_dict(json.loads(line))
    assert back.t == 1.235 and back.p_female == 0.9123 and back.window_p_female is None
    assert back.compute_ms == 2.346 and back.stages_ms == {"vad": 0.123} and back.to_json() == line


def test_console_sink_plain_when_not_a_tty():
    from rich.console import Console

    buf = io.StringIO()
    sink = ConsoleSink(console=Console(file=buf, force_terminal=False, width=120))
    assert not sink.is_live
    for ev in _events():
        sink.write(ev)
    sink.close()
    out = buf.getvalue()
    assert "\x1b[" not in out  # no escape codes in a pipe
    lines = out.splitlines()
    assert len(lines) == 30
    assert "female" in lines[6] and "speech" in lines[6] and "p_female=" in lines[6] and "dBFS" in lines[6]
    assert "overruns=2" in lines[-1]
    # changes_only: one line per label change
    buf = io.StringIO()
    sink = ConsoleSink(console=Console(file=buf, force_terminal=False), changes_only=True)
    for ev in _events():
        sink.write(ev)
    assert len(buf.getvalue().splitlines()) == 4  # no speech, female, male, no speech


def test_console_sink_live_on_a_terminal():
    from rich.console import Console

    buf = io.StringIO()
    sink = ConsoleSink(console=Console(file=buf, force_terminal=True, width=100, color_system="truecolor"))
    assert sink.is_live
    for ev in _events():
        sink.write(ev)
    sink.close()
    out = buf.getvalue()
    # the final frame (Live redraws in place) shows the last event
    assert "NO SPEECH" in out and "overruns 2" in out and "features" in out and "◀" in out
    # defect: the level was the last classified window's (-49 dBFS) during silence; now it is this hop's input
    assert "-70 dBFS" in out.rsplit("voice", 1)[-1] and "-49 dBFS" not in out.rsplit("voice", 1)[-1]


def test_console_level_is_the_hops_input_and_quiet_speech_says_why():
    from rich.console import Console

    def last_frame(events):
        buf = io.StringIO()
        sink = ConsoleSink(console=Console(file=buf, force_terminal=True, width=140, color_system=None))
        for ev in events:
            sink.write(ev)
        sink.close()
        return buf.getvalue().rsplit("voice  ", 1)[-1]

    loud = dict(_events()[10])
    silence = dict(_events()[29], input_dbfs=-80.0)
    out = last_frame([loud, silence])
    assert "-80 dBFS" in out and "SPEECH" in out and "gain" not in out
    quiet = dict(_events()[10], label="waiting", level_dbfs=None, window_p_female=None, input_dbfs=-64.0)
    out = last_frame([quiet])
    assert "-64 dBFS" in out and "raise the input gain" in out
    out = last_frame([dict(quiet, input_dbfs=-30.0)])
    assert "an estimate needs 0.75 s of speech" in out


def test_console_hints_follow_the_running_engines_config():
    """The console reads the engine it displays (make_sink(..., config=engine.config)), not the defaults."""
    from rich.console import Console

    from realtime.engine import EngineConfig

    config = EngineConfig(first_window_s=1.25, level_range_dbfs=(-30.0, -10.0))
    sink = make_sink("console", config=config)
    sink.close()
    assert sink.config is config

    def last_frame(event):
        buf = io.StringIO()
        sink = ConsoleSink(console=Console(file=buf, force_terminal=True, width=140, color_system=None), config=config)
        sink.write(event)
        sink.close()
        return buf.getvalue().rsplit("voice  ", 1)[-1]

    assert "an estimate needs 1.25 s of speech" in last_frame(dict(_events()[10], label="waiting", input_dbfs=-25.0))
    out = last_frame(dict(_events()[10], input_dbfs=-36.0))  # inside the default range, below this engine's
    assert "-36 dBFS" in out and "quieter than the training audio (-30..-10 dBFS)" in out


def test_gauge_marks_position():
    assert gauge_text(0.0, 11).startswith("male ◀●")
    assert gauge_text(1.0, 11).endswith("●▶ female")
    assert "●" not in gauge_text(None, 11)


def test_trace_plot_sink_writes_png(tmp_path):
    png = tmp_path / "sub" / "trace.png"
    with TracePlotSink(png, title="test") as sink:
        for ev in _events():
            sink.write(ev)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_trace_plot_sink_without_matplotlib_says_what_to_install(tmp_path, monkeypatch):
    for mod in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib...` fail
    # refused when made, before any audio is streamed, with a hint that installs only the plot extra
    with pytest.raises(ImportError, match=r"voicegender\[plot\]"):
        TracePlotSink(tmp_path / "x.png")
    sink = TracePlotSink(tmp_path / "x.png", check=False)
    sink.write(_events()[0])
    with pytest.raises(ImportError, match=r"voicegender\[plot\]"):
        sink.close()


def test_make_sink():
    buf = io.StringIO()
    assert isinstance(make_sink("jsonl", buf), JsonlSink)
    assert isinstance(make_sink("csv", buf), CsvSink)
    assert isinstance(make_sink("console", buf), ConsoleSink)
    with pytest.raises(ValueError, match="console, jsonl, csv"):
        make_sink("xml", buf)

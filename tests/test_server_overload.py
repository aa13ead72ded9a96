"""Shedding overload (issue 13, item 3): while the server has no room (its event loop or worker pool using more
CPU than ``--max-busy``, or its work running later than ``--max-lag`` while it uses much CPU itself), new
streams are refused with ``"code": "busy"`` and ``retry_after_s``, /healthz says ``accepting: false`` with
HTTP 503, the streams already open get every estimate and their end message, and once the load is gone new
streams are accepted again; lateness the process's own CPU does not cause (a loop blocked without using CPU,
as when other processes take the machine's cores) refuses nothing.

The overload is real and deterministic: the server's own event loop runs CPU-bound callbacks (as an expensive
inline step would), or its worker pool's one thread runs CPU-bound jobs, so the load monitor measures real CPU
use and real lateness; the model is the shipped one."""
from __future__ import annotations

import json
import socket
import threading
import time

import numpy as np
import pytest

from realtime.audio import float_to_pcm16, load_audio, pcm16_to_float
from realtime.server import ServerConfig
from realtime.server.load import (FREE_STREAMS, GROWTH, MIN_CPU, MIN_STREAMS, PROBE_S, RESUME_FRACTION,
                                  SLOW_FRACTION, STREAM_SUSTAIN_S, SUSTAIN_S, TRUST, LoadMonitor)

from .data import readers_by_gender
from .test_server import check_stream, error_of, pieces, session, tcp_session, ws_session
from .test_server_hardening import http, wait_for

GENDER = {"F": "female", "M": "male"}


@pytest.fixture(scope="module")
def pcm():
    voices = readers_by_gender(1)
    return {g: float_to_pcm16(load_audio(voices[g][0]))[: 16000 * 2 * 8] for g in "FM"}  # 8 s each


def healthz(srv) -> tuple[int, dict]:
    raw = http(srv.server.ws_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    head, body = raw.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(body)


def busy_of(msgs: list[dict]) -> dict:
    error_of(msgs)
    err = msgs[-1]
    assert err["code"] == "busy" and err["error"].startswith("server busy"), err
    assert isinstance(err["retry_after_s"], (int, float)) and 0 < err["retry_after_s"] <= 10, err
    return err


def solo_ts(factory, audio: bytes) -> list[tuple]:
    """(t, label) of every estimate of this audio through a fresh Engine alone."""
    engine = factory()
    return [(round(e.t, 3), e.label) for e in engine.run(np.array_split(pcm16_to_float(audio), 20))]


def spin(seconds: float) -> None:
    """Use ``seconds`` of this thread's CPU time (work, not a wait: it takes longer on a busy machine)."""
    t_end = time.thread_time() + seconds
    while time.thread_time() < t_end:
        pass


class Starve:
    """Keep the server overloaded from another thread until stopped: ``"loop"`` makes its event loop compute
    for ``block_s`` (0.3 s of CPU time), free it for 0.05 s, again; ``"pool"`` keeps its (one) worker thread
    computing in ``block_s`` jobs; ``"sleep"`` blocks its event loop as ``"loop"`` does but in ``time.sleep``:
    late, using no CPU (as when other processes take the cores). One block at a time: on a machine busy with
    other work they take longer, they do not pile up."""

    def __init__(self, srv, where: str, block_s: float = 0.3):
        self.srv, self.where, self.block_s = srv, where, block_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            if self.where in ("loop", "sleep"):
                done = threading.Event()
                block = spin if self.where == "loop" else time.sleep
                self.srv.loop.call_soon_threadsafe(lambda: (block(self.block_s), done.set()))
                done.wait(10)
                time.sleep(0.05)
            else:
                self.srv.server.executor.submit(spin, self.block_s).result()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)


@pytest.mark.parametrize("where, limit", [("loop", "lag"), ("pool", "busy"), ("loop", "busy"), ("pool", "lag")])
def test_overload_refuses_new_streams_busy_keeps_open_ones_and_recovers(make_server, factory, pcm, where, limit):
    """``limit``: which of --max-lag (0.1 s) and --max-busy (0.15: on a machine busy with other work the
    overloaded thread gets only its share of a core, 0.3 at a load of 5 on 2 cores) is on."""
    srv = make_server(workers=1, **({"max_lag": 0.1, "max_busy": 0} if limit == "lag" else {"max_lag": 0, "max_busy": 0.15}))
    status, h = healthz(srv)
    assert status == 200 and h["accepting"] is True and h["load"] < 1 and "lag_ms" in h, h
    # MIN_STREAMS streams open before the overload (fewer are never shed for), paced at real time: they must
    # get everything
    out: dict = {}
    opened = (("F", "tcp"), ("M", "ws"), ("F", "ws"))[:MIN_STREAMS]
    senders = [threading.Thread(target=lambda g=g, tr=tr: out.__setitem__((g, tr), session(
        srv, tr, {}, pieces(pcm[g], 3200), delay=0.1))) for g, tr in opened]
    for t in senders:
        t.start()
    assert wait_for(lambda: srv.server.health()["streams"] == len(opened), 30)
    with Starve(srv, where):
        assert wait_for(lambda: healthz(srv)[0] == 503, 20), srv.server.health()
        status, h = healthz(srv)
        assert h["accepting"] is False and h["load"] >= 1 and h["status"] == "busy", h
        t0 = time.monotonic()
        for err in (busy_of(tcp_session(srv.server.tcp_port, {}, [pcm["F"][:3200]])),
                    busy_of(ws_session(srv.ws_url, {}, [pcm["F"][:3200]]))):
            assert f"--max-{limit}" in err["error"], err
        assert time.monotonic() - t0 < 10  # refused at once, not after a wait
    assert srv.server.health()["overloaded"] >= 2
    for t in senders:
        t.join(120)
    for g, tr in opened:  # the open streams: every estimate, the end message, the right label
        _, events, end = check_stream(out[g, tr])
        assert [(e["t"], e["label"]) for e in events] == solo_ts(factory, pcm[g])
        assert end["label"] == GENDER[g]
    # the load is gone: accepting again, and a new stream is served
    assert wait_for(lambda: healthz(srv)[0] == 200, 30), srv.server.health()
    _, _, end = check_stream(session(srv, "tcp", {}, pieces(pcm["M"], 3200)))
    assert end["label"] == "male"
    assert srv.server.health()["internal_errors"] == 0


def test_lateness_without_own_cpu_refuses_nothing(make_server, pcm):
    """The event loop blocked in sleeps (0.3 s of every 0.35 s: as late as the overload above, but using no
    CPU) with both limits on and MIN_STREAMS streams open: the lag shows in /healthz, nothing is refused."""
    srv = make_server(workers=1, max_lag=0.1, max_busy=0.15)
    out: list = []
    senders = [threading.Thread(target=lambda g=g: out.append(session(srv, "tcp", {}, pieces(pcm[g], 3200),
                                                                          delay=0.1))) for g in "FMF"[:MIN_STREAMS]]
    for t in senders:
        t.start()
    assert wait_for(lambda: srv.server.health()["streams"] == MIN_STREAMS, 30)
    with Starve(srv, "sleep"):
        time.sleep(SUSTAIN_S + 2.0)
        status, h = healthz(srv)
        p = h["processes_load"][0]
        assert status == 200 and h["accepting"] is True and h["lag_ms"] > 100 and h["cpu"] < MIN_CPU, h
        assert p["loop_cpu"] < 0.15 and h["load"] < 1, h
        _, _, end = check_stream(tcp_session(srv.server.tcp_port, {}, pieces(pcm["M"][:32000], 3200)))
    for t in senders:
        t.join(120)
    for msgs in out:
        check_stream(msgs)
    assert srv.server.health()["overloaded"] == 0


def test_no_free_slot_is_busy_with_a_retry_hint_too(make_server, pcm):
    srv = make_server(max_connections=1, handshake_timeout=1.0)
    with socket.create_connection(("127.0.0.1", srv.server.tcp_port), timeout=30) as s:
        s.sendall(b"{}\n")
        assert json.loads(s.makefile("rb").readline())["event"] == "ready"
        err = busy_of(ws_session(srv.ws_url, {}, []))
        assert "--max-connections" in err["error"]
        status, h = healthz(srv)
        assert status == 503 and h["accepting"] is False and h["load"] >= 1, h
    assert wait_for(lambda: healthz(srv)[0] == 200, 30)


def test_limits_at_zero_turn_shedding_off_and_bad_values_are_refused(make_server, pcm):
    srv = make_server(workers=1, max_lag=0, max_busy=0)
    with Starve(srv, "loop"):
        time.sleep(1.5)
        _, h = healthz(srv)
        p = h["processes_load"][0]
        assert h["accepting"] is True and h["lag_ms"] > 50 and p["loop_cpu"] > 0.15 and h["cpu"] > 0.15, h
        check_stream(tcp_session(srv.server.tcp_port, {}, pieces(pcm["F"][:32000], 3200)))
    for field, bad in (("max_lag", -1), ("max_lag", float("inf")), ("max_lag", float("nan")), ("max_busy", 1.5),
                       ("max_busy", -0.1)):
        with pytest.raises(ValueError, match=field):
            ServerConfig(**{field: bad})


def test_admission_refuses_only_on_measured_overload():
    """A burst at startup is taken (up to FREE_STREAMS without a look-ahead), then slow start; the learned CPU
    per stream looks ahead; a measured CPU fraction, or lag while the process uses MIN_CPU cores, refuses only
    once sustained for SUSTAIN_S, and only with MIN_STREAMS streams open; each refusal names its rule with
    its figures."""
    n = [0]
    m = LoadMonitor(None, max_lag=0.25, max_busy=0.6, streams=lambda: n[0])
    admitted = []
    for _ in range(FREE_STREAMS):  # a burst from nothing (nothing measured yet) is taken...
        assert m.refusal() is None
        admitted.append(m.admitted())
        n[0] += 1
    assert m.room()  # ...and beyond FREE_STREAMS while the CPU it measures is under SLOW_FRACTION of the limit
    m.lag_s, m.cpu = 0.3, MIN_CPU - 0.01  # (and it is not late of its own making)
    assert m.room()
    m.cpu = MIN_CPU  # late past --max-lag while using its own CPU: it waits for the averages
    why = m.refusal()
    assert why.startswith(f"slow start: {FREE_STREAMS} of its {FREE_STREAMS} streams"), why
    assert why.endswith("and it is 0% busy and 300 ms late already"), why
    m.lag_s, m.cpu, m.pool_cpu = 0.0, 0.0, SLOW_FRACTION * 0.6  # or once it is SLOW_FRACTION of the limit busy
    why = m.refusal()
    assert why.endswith(f"and it is {SLOW_FRACTION * 0.6:.0%} busy and 0 ms late already"), why
    m.pool_cpu = 0.0
    for t in admitted[:4]:  # streams that end at once leave pending with them (a storm is no burst)
        m.ended(t)
    n[0] -= 4
    assert m.pending == pytest.approx(FREE_STREAMS - 4, abs=0.01) and m.room()
    m.pending, n[0], m.pool_cpu, m.loop_cpu = 1.0, 40, 0.2, 0.1  # a steady period: 40 streams, 0.5 % each
    m._learn(60.0)
    assert m.pool_cost == pytest.approx(0.005) and m.loop_cost == pytest.approx(0.0025)
    assert m.predicted_busy() == pytest.approx(0.205) and m.room()
    m.pending, n[0] = 19.0, 59  # a burst up to TRUST x the 40 measured: the learned cost says yes
    assert TRUST * 40 >= 60 and m.room()
    n[0] = 61  # beyond it, at most GROWTH x the streams pending
    assert m.pending < GROWTH * 61 and m.room()
    m.pending = GROWTH * 61
    assert m.room()  # (while under SLOW_FRACTION of the limit)
    m.pool_cpu = SLOW_FRACTION * 0.6
    assert m.refusal().startswith("slow start: 30 of its 61 streams"), m.refusal()
    m.pending, n[0] = 0.0, 119  # streams the averages do not show yet: the learned cost does
    assert m.predicted_busy() == pytest.approx(0.60) and m.room()
    n[0] = 120
    assert m.refusal() == ("one more stream would make it 60% busy (121 streams at the 0.50% CPU each it "
                           "measured), over --max-busy 0.6")
    n[0] = 10  # fewer streams: what is measured refuses only once it lasted SUSTAIN_S (not a burst's spike)
    m.loop_cpu = m.pool_cpu = 0.7
    _ticks(m, SUSTAIN_S - 0.1)
    assert m.room()
    _ticks(m, 0.2)
    why = m.refusal()
    assert why.startswith("its event loop has used over --max-busy 0.6 of its CPU time for 2.") and "(now 70%)" in why, why
    m.loop_cpu = m.pool_cpu = 0.1
    _ticks(m, PROBE_S)
    assert m.room()
    m.lag_s, m.cpu = 0.3, MIN_CPU - 0.01  # late, but not of its own making: never refused for it
    _ticks(m, 3 * SUSTAIN_S)
    assert m.room() and m.load < 1
    m.cpu = MIN_CPU  # late while using MIN_CPU cores itself: refused once it lasted SUSTAIN_S
    _ticks(m, SUSTAIN_S - 0.1)
    assert m.room()
    _ticks(m, 0.2)
    assert m.refusal().startswith(f"its work runs 300 ms late while it uses {MIN_CPU:.2f} cores itself (its "
                                  f"streams' 0 ms; over --max-lag 0.25 s with at least {MIN_CPU:g} cores for 2 s"), m.refusal()
    m.lag_s = 0.2  # then until it is back under RESUME_FRACTION of the limit...
    _ticks(m, PROBE_S)
    assert not m.room()
    n[0] = MIN_STREAMS - 1  # (with fewer than MIN_STREAMS streams, nothing to shed)
    assert m.room()
    n[0] = MIN_STREAMS
    assert not m.room()
    m.lag_s = RESUME_FRACTION * 0.25 - 0.01
    _ticks(m, PROBE_S)
    assert m.room()
    m.lag_s = 0.3  # ...or until its own CPU is under RESUME_FRACTION of MIN_CPU (its streams ended)
    _ticks(m, SUSTAIN_S + 0.1)
    assert not m.room()
    m.cpu = RESUME_FRACTION * MIN_CPU - 0.01
    _ticks(m, PROBE_S)
    assert m.room()
    # the streams' own lag (audio waiting unread) refuses sooner: after STREAM_SUSTAIN_S, not SUSTAIN_S
    m.lag_s, m.cpu, m.stream_lag_s = 0.0, MIN_CPU, 0.3
    _ticks(m, STREAM_SUSTAIN_S - 0.1)
    assert m.room()
    _ticks(m, 0.2)
    assert "its streams' 300 ms" in m.refusal(), m.refusal()
    m.stream_lag_s = 0.0
    _ticks(m, PROBE_S)
    assert m.room()


def _ticks(m: LoadMonitor, seconds: float) -> None:
    """``seconds`` of probes at the monitor's averages now."""
    for _ in range(round(seconds / PROBE_S)):
        m._judge(PROBE_S)


def test_read_clock_measures_audio_sent_and_not_yet_read():
    """ReadClock, on explicit times: a client at real time read as it sends is never late; a stall of the
    reader shows as the audio that piled up meanwhile; a caught-up read (one that waits) resets it; a client
    sending faster than real time or pausing is never late."""
    from realtime.server.load import STREAM_LAG_QUANTILE, WAITED_S, ReadClock

    c = ReadClock()
    assert c.lag(5.0) == 0.0  # no audio yet
    t = 10.0
    for i in range(1, 11):  # 0.1 s messages, each read as it arrives (the read waited for it)
        c.reading(t)
        t += 0.1
        c.read(t, 0.1 * i)
        assert c.lag(t + 0.0001) == pytest.approx(0.0, abs=1e-3)
    c.reading(t)
    assert c.lag(t + 0.5) == 0.0  # waiting for the client: caught up, however long
    c.read(t + 0.5, 1.1)  # a pause of the client (its audio clock moved less than ours): caught up again
    t += 0.5
    # the server stalls 1.5 s (its worker busy): the client's audio waits in the socket
    assert c.lag(t + 1.5) == pytest.approx(1.5)
    t += 1.5
    for i in range(1, 16):  # then it reads the backlog at once: each read returns without waiting
        c.reading(t)
        c.read(t + WAITED_S / 10, 1.1 + 0.1 * i)
        t += WAITED_S / 10
    assert c.lag(t) == pytest.approx(0.0, abs=0.01)  # the 1.5 s read back: not late any more
    fast = ReadClock()  # a file sent at 10x real time, every read finding data waiting
    for i in range(20):
        fast.reading(1.0 + 0.01 * i)
        fast.read(1.0 + 0.01 * i + WAITED_S / 10, 0.1 * (i + 1))
    assert fast.lag(1.3) == 0.0
    # the monitor takes the STREAM_LAG_QUANTILE of its sessions' lags
    sessions = [type("S", (), {"clock": ReadClock()})() for _ in range(10)]
    for k, s in enumerate(sessions):
        s.clock.reading(0.0)
        s.clock.read(0.0, 0.0)
        s.clock.offset = -k * 0.1  # stream k is k x 0.1 s behind
    m = LoadMonitor(None, max_lag=0.25, max_busy=0, sessions=lambda: sessions)
    import time as _time

    lags = sorted(s.clock.lag(_time.monotonic()) for s in sessions)
    assert m._stream_lag() == pytest.approx(lags[int(STREAM_LAG_QUANTILE * len(lags))], abs=0.01)


def test_stream_lag_shows_audio_waiting_in_the_sockets(make_server, pcm):
    """Streams paced at real time while the one worker is kept busy: their audio waits unread in the
    sockets, /healthz shows it as ``stream_lag_ms`` (and in ``lag_ms``), and it falls back once the worker is
    free."""
    srv = make_server(workers=1, max_lag=0, max_busy=0)
    out: list = []
    senders = [threading.Thread(target=lambda g=g: out.append(session(srv, "tcp", {}, pieces(pcm[g], 3200),
                                                                          delay=0.1))) for g in "FM"]
    for t in senders:
        t.start()
    assert wait_for(lambda: srv.server.health()["streams"] == 2, 30)
    time.sleep(1.5)
    before = healthz(srv)[1]["processes_load"][0]["stream_lag_ms"]
    assert before < 250, before
    # 0.8 s jobs: a stream's push waits behind one, its audio meanwhile unread (with 0.3 s jobs a stream's push
    # of a hop, a few ms since the compiled feature kernel, slips in between them and the lag stays ~0.3 s)
    with Starve(srv, "pool", block_s=0.8):
        assert wait_for(lambda: healthz(srv)[1]["processes_load"][0]["stream_lag_ms"] > 500, 10), srv.server.health()
        assert wait_for(lambda: healthz(srv)[1]["lag_ms"] > 400, 10), srv.server.health()  # (averaged over ~1 s)
    for t in senders:
        t.join(120)
    for msgs in out:
        check_stream(msgs)

"""A finished stream frees its Engine at once (issue 13, item 5): with the garbage collector off, every
Engine the server made is gone right after its stream's end (or error) message and close, whatever way the
stream ended (an engine failure included), with and without batching across streams (``--batch-ms``), and
no object of the server is left in a reference cycle. Without this, each finished
stream's Engine waited in cycles (deadline callbacks closing over the session, stored exceptions holding
their traceback's frames) for a full collection: RSS grew by hundreds of MB over waves of streams."""
from __future__ import annotations

import gc
import json
import socket
import struct
import time
import weakref

import pytest

from realtime.audio import SAMPLE_RATE, float_to_pcm16, load_audio
from realtime.engine import Engine
from realtime.server import ServerConfig, ServerThread

from .data import readers_by_gender
from .test_server import check_stream, error_of, pieces, tcp_session, ws_session

IDLE_S = 1.5
TOKEN = "memory-test"


@pytest.fixture(scope="module")
def audio() -> bytes:
    """4 s of a real voice, s16le 16 kHz."""
    return float_to_pcm16(load_audio(readers_by_gender(1)["F"][0]))[: 16000 * 2 * 4]


class FailingEngine(Engine):
    """The shipped engine with a bug: a push that brought an event then raises (an internal error)."""

    def push_steps(self, chunk, sample_rate=SAMPLE_RATE):
        events = yield from super().push_steps(chunk, sample_rate)
        if events:
            raise RuntimeError("engine bug (test)")
        return events


@pytest.fixture(params=[0.0, 5.0], ids=["unbatched", "batch-ms-5"])
def tracked(factory, request):
    """A server whose engine factory (the shipped bundle's) also keeps a weak reference to every Engine
    (and makes a FailingEngine while ``failing[0]`` is set); without and with batching across streams."""
    engines: list[weakref.ref] = []
    failing = [False]

    def make():
        engine = factory()
        if failing[0]:
            engine = FailingEngine(engine.bundle, engine.config)
        engines.append(weakref.ref(engine))
        return engine

    with ServerThread(make, ServerConfig(port=0, workers=2, idle_timeout=IDLE_S, token=TOKEN,
                                         batch_ms=request.param)) as srv:
        yield srv, engines, failing


def _reset_mid_audio(srv: ServerThread, audio: bytes) -> list[dict]:
    """Raw TCP: config, ready, 4 s of audio, then a reset (RST, no FIN) while it is being classified."""
    s = socket.create_connection(("127.0.0.1", srv.server.tcp_port), timeout=30)
    s.sendall(json.dumps({"token": TOKEN}).encode() + b"\n")
    ready = json.loads(s.makefile("rb").readline())
    s.sendall(audio)
    time.sleep(0.2)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    return [ready]


def _ws_reset_mid_audio(srv: ServerThread, audio: bytes) -> list[dict]:
    from websockets.sync.client import connect

    with connect(srv.ws_url, compression=None, open_timeout=30) as ws:
        ws.send(json.dumps({"token": TOKEN}))
        ready = json.loads(ws.recv(timeout=30))
        for c in pieces(audio, 3200):
            ws.send(c)
        time.sleep(0.2)
        ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ws.socket.close()  # no close frame
    return [ready]


def _endings(srv: ServerThread, audio: bytes, failing: list):
    """(name, run(), makes an engine, check(messages)) for every way a stream ends."""
    tok = {"token": TOKEN}
    port = srv.server.tcp_port
    long = audio * 5  # 20 s sent at once: the reset comes while the server is still classifying it

    def with_failing_engine():
        failing[0] = True
        try:
            return ws_session(srv.ws_url, tok, pieces(audio, 3200))
        finally:
            failing[0] = False

    def ended(msgs):
        assert check_stream(msgs)[2]["label"] == "female"

    def refused(words):
        def check(msgs):
            assert words in error_of(msgs), msgs
        return check

    def ready_first(msgs):
        assert msgs[0]["event"] == "ready", msgs

    return [
        ("normal end, TCP", lambda: tcp_session(port, tok, pieces(audio, 3200)), True, ended),
        ("normal end, WebSocket", lambda: ws_session(srv.ws_url, tok, pieces(audio, 3200)), True, ended),
        ("reset mid-audio, TCP", lambda: _reset_mid_audio(srv, long), True, ready_first),
        ("reset mid-audio, WebSocket", lambda: _ws_reset_mid_audio(srv, long), True, ready_first),
        ("engine failure", with_failing_engine, True, refused("internal server error (RuntimeError)")),
        ("protocol error", lambda: ws_session(srv.ws_url, tok, [audio[:6400], '{"event": "bogus"}']), True,
         refused("text messages must be")),
        ("idle timeout", lambda: tcp_session(port, tok, [audio[:32000]], end=False), True,
         refused(f"idle for {IDLE_S:g} s")),
        ("refused token, TCP", lambda: tcp_session(port, {"token": "wrong"}, []), False, refused("wrong token")),
        ("refused token, WebSocket", lambda: ws_session(srv.ws_url, {"token": "wrong"}, []), False,
         refused("wrong token")),
    ]


def _server_garbage() -> list[str]:
    """Types of the server's own objects (realtime.*, websockets' server protocol) among what the collector
    finds unreachable now (only in reference cycles)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found = sorted({f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage
                        if type(o).__module__.startswith("realtime") or type(o).__name__ == "ServerProtocol"})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    return found


def test_every_engine_is_freed_when_its_stream_ends_without_a_garbage_collection(tracked, audio):
    srv, engines, failing = tracked
    _, warm, _, check = _endings(srv, audio, failing)[0]
    check(warm())  # warm: the pool's threads, the first inference
    gc.collect()
    gc.disable()
    try:
        for name, run, makes_engine, check in _endings(srv, audio, failing):
            n0 = len(engines)
            check(run())
            assert len(engines) == n0 + makes_engine, name
            deadline = time.monotonic() + 10  # the end message can arrive before the server's coroutine returns
            while any(r() is not None for r in engines) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert all(r() is None for r in engines), f"{name}: its Engine is still alive without a gc run"
        assert _server_garbage() == []
    finally:
        gc.enable()
    h = srv.server.health()
    assert h["internal_errors"] == 1 and h["streams"] == 0, h

"""Property-based fuzzing of the streaming server (hypothesis): whatever a client sends as its config
and its frames, over either transport, the server answers with a clear error or a valid stream, never
fails internally, and keeps serving: a normal client works after the fuzz run.
"""
from __future__ import annotations

import json
import math
import socket
import struct
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from realtime.audio import float_to_pcm16, load_audio
from realtime.protocol import ProtocolError, parse_config
from realtime.events import EVENT_FIELDS
from realtime.server import ServerConfig, ServerThread, engine_factory

from .data import readers_by_gender
from .test_server import read_until_closed

EVENT_KEYS = set(EVENT_FIELDS)  # the one event schema (realtime.events)
FUZZ = settings(max_examples=60, deadline=None, database=None,  # large frames on purpose: data_too_large
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def server():
    cfg = ServerConfig(port=0, workers=2, idle_timeout=5.0, max_message_bytes=16384, max_config_bytes=1024)
    with ServerThread(engine_factory(), cfg) as srv:
        yield srv


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 40, 2 ** 40),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                                st.dictionaries(st.text(max_size=8), kids, max_size=4)),
                           max_leaves=10)
good_configs = st.fixed_dictionaries({}, optional={
    "rate": st.sampled_from([8000, 11025, 16000, 22050, 44100, 48000, 96000]),
    "encoding": st.sampled_from(["s16le", "f32le", "S16LE"]),
    "channels": st.integers(1, 4)})
near_configs = st.dictionaries(st.sampled_from(["rate", "encoding", "channels", "token", "format", ""]),
                               json_values, max_size=5)


def _dumps(obj) -> bytes:
    return json.dumps(obj, allow_nan=True).encode()


configs = st.one_of(
    good_configs.map(_dumps),
    near_configs.map(_dumps),
    json_values.map(_dumps),
    st.binary(max_size=1500),
    st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
)
frames = st.lists(st.one_of(st.binary(max_size=3000),
                            st.builds(lambda n, a: (a * np.sin(np.arange(n) / 7.0)).astype("<f4").tobytes(),
                                      st.integers(0, 4000), st.floats(-2, 2)),
                            st.just(struct.pack("<f", math.nan)),
                            st.binary(min_size=16385, max_size=17000)),  # over --max-message-bytes
                  max_size=6)


def _check(msgs: list[dict], config: bytes, *, ws: bool) -> None:
    try:
        parse_config(config.rstrip(b"\n") if not ws else config, max_bytes=1024)
        valid = True
    except ProtocolError:
        valid = False
    for m in msgs:
        assert isinstance(m, dict)
    if not msgs:
        # only when a TCP client closed before finishing its config line: nobody to answer
        assert not ws and b"\n" not in config, config
        return
    if not valid:
        assert len(msgs) == 1 and msgs[0]["event"] == "error" and msgs[0]["error"], msgs
        return
    assert msgs[0]["event"] == "ready", msgs
    last = msgs[-1]
    assert last.get("event") in ("end", "error"), last
    if last["event"] == "error":
        assert isinstance(last["error"], str) and last["error"]
    for e in msgs[1:-1]:
        assert set(e) == EVENT_KEYS, e


@FUZZ
@given(config=configs, chunks=frames)
def test_fuzz_tcp(server, config, chunks):
    line = config.replace(b"\n", b" ") + b"\n" if b"\n" not in config[:-1] else config
    with socket.create_connection(("127.0.0.1", server.server.tcp_port), timeout=20) as s:
        try:
            s.sendall(line)
            for c in chunks:
                s.sendall(c)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        data = read_until_closed(s)
    msgs = [json.loads(x) for x in data.decode().splitlines() if x.strip()]
    _check(msgs, line.split(b"\n", 1)[0], ws=False)
    assert server.is_alive
    assert server.server.stats["internal_errors"] == 0


@FUZZ
@given(config=configs, as_text=st.booleans(), chunks=frames,
       controls=st.lists(st.sampled_from(['{"event": "reset"}', '{"event": "pause"}', "", "{}"]), max_size=1))
def test_fuzz_websocket(server, config, as_text, chunks, controls):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    msg = config
    if as_text:
        try:
            msg = config.decode("utf-8")
        except UnicodeDecodeError:
            pass
    out = []
    with connect(server.ws_url, compression=None, max_size=None, close_timeout=5) as ws:
        try:
            ws.send(msg)
            for c in chunks:
                ws.send(c)
            for c in controls:
                ws.send(c)
            ws.send('{"event": "end"}')
        except ConnectionClosed:
            pass
        while True:
            try:
                out.append(json.loads(ws.recv(timeout=20)))
            except (ConnectionClosed, TimeoutError):
                break
    _check(out, config, ws=True)
    assert server.is_alive
    assert server.server.stats["internal_errors"] == 0


def test_after_the_fuzz_a_normal_client_still_works(server):
    """Runs after the fuzz tests in this module (pytest keeps file order)."""
    from realtime.client import StreamClient

    path = readers_by_gender(1)["M"][0]
    pcm = float_to_pcm16(load_audio(path))
    for url in (server.ws_url, server.tcp_url):
        with StreamClient(url) as c:
            assert c.connect()["event"] == "ready"
            for i in range(0, len(pcm), 3200):
                c.send_audio(pcm[i:i + 3200])
            c.end()
            msgs = list(c.messages())
        assert msgs[-1]["event"] == "end" and msgs[-1]["label"] == "male", msgs[-1]
    assert server.server.stats["internal_errors"] == 0
    deadline = time.monotonic() + 5  # the last handler may still be closing its socket
    while server.server.active and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.server.active == 0  # no connection leaked by the fuzz run

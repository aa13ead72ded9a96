"""Streaming server: many concurrent audio streams over WebSocket and raw TCP, one Engine each.

    python -m realtime serve [--host 127.0.0.1] [--port 8765] [--tcp-port PORT] [--token T] ...
    python -m realtime client talk.flac --url ws://127.0.0.1:8765/      (or tcp://127.0.0.1:8766, or mic)

One asyncio event loop serves two ports:

* ``--port`` (default 8765): WebSocket (``websockets.asyncio.server``); plain HTTP GET on the same
  port serves the browser page (``/``, ``/worklet.js``) and ``/healthz`` (JSON counters).
* ``--tcp-port`` (default ``--port`` + 1): raw TCP (``asyncio.start_server``): the JSON config line,
  then raw PCM bytes; half-close to end the stream.

The wire protocol (config, audio, ready / estimate / end / error messages) is in
:mod:`realtime.protocol`.

Design:

* The Bundle (thread-safe ONNX sessions) is loaded once and shared; every connection gets its own
  :class:`~realtime.engine.Engine` and its own streaming resampler (``soxr.ResampleStream``).
* Inference runs in one bounded ``ThreadPoolExecutor(--workers)``; each connection has at most one
  job in flight, and a job covers at most ``BATCH_SECONDS`` of audio, so the pool's FIFO queue
  serves streams round-robin and a flood from one client cannot starve the others. Cheap work
  (decoding, resampling, VAD of a message that completes no hop) runs inline on the event loop.
* Backpressure: a connection's coroutine does not read its socket while it processes a message or
  sends its events, so a connection holds at most one message plus the transport's small buffers and
  a fast sender is slowed by TCP flow control instead of being buffered without bound. A client that
  stops reading its events is dropped after ``--idle-timeout``.
* Limits, each refused with ``{"event": "error", "error": "..."}``, a log line, and a close:
  connections (``--max-connections``), message size (``--max-message-bytes``; on TCP it is the
  config line that is limited), time without data (``--idle-timeout``, also for the config),
  stream length (``--max-stream-seconds``), the optional shared token (``--token``, compared in
  constant time). Anything a client sends is handled per connection: the server never dies from it.
* One process holds one core and a bit (the GIL); ``--processes N`` forks N server processes that
  accept on the same two listening sockets (Linux/macOS).
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .protocol import (MAX_CONFIG_BYTES, PcmDecoder, ProtocolError, StreamConfig, check_token, encode,
                       end_message, error_message, parse_config, parse_control, ready_message)

__all__ = ["ServerConfig", "StreamServer", "ServerThread", "engine_factory", "limit_blas_threads", "add_parser",
           "WEB_DIR"]

log = logging.getLogger("realtime.server")

WEB_DIR = Path(__file__).resolve().parent / "web"
BATCH_SECONDS = 0.5  # most audio (at 16 kHz) one executor job handles for one connection
_STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
           "/index.html": ("index.html", "text/html; charset=utf-8"),
           "/worklet.js": ("worklet.js", "text/javascript; charset=utf-8")}


@dataclass
class ServerConfig:
    """Every limit of the server, with the defaults of ``python -m realtime serve``."""

    host: str = "127.0.0.1"
    port: int = 8765  # WebSocket + HTTP page; 0 picks a free port
    tcp_port: int | None = None  # raw TCP; None: port + 1 (or a free port when port is 0); -1: no TCP
    token: str | None = None
    max_connections: int = 256
    max_message_bytes: int = 65536  # one WebSocket message (2 s of 16 kHz s16le mono)
    max_config_bytes: int = MAX_CONFIG_BYTES
    idle_timeout: float = 30.0  # seconds without a byte from the client (or without it reading events)
    handshake_timeout: float = 5.0  # from accept to a complete, authenticated config (trickling does not extend it)
    max_pending: int = 256  # connections not yet authenticated (whole server); see _Admission
    max_pending_per_address: int = 64  # of those, from one client address
    max_stream_seconds: float = 4 * 3600.0  # of audio, at the declared rate
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    single_thread_blas: bool = True  # see limit_blas_threads: parallelism comes from the streams

    def __post_init__(self):
        if not (isinstance(self.port, int) and 0 <= self.port <= 65535):
            raise ValueError(f"port must be 0-65535 (0: any free port), got {_short_value(self.port)}")
        if self.tcp_port is not None and not (isinstance(self.tcp_port, int) and -1 <= self.tcp_port <= 65535):
            raise ValueError(f"tcp_port must be 0-65535 (0: any free port, -1: no TCP), got {_short_value(self.tcp_port)}")
        for name in ("max_connections", "max_message_bytes", "max_config_bytes", "workers", "max_pending",
                     "max_pending_per_address"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("idle_timeout", "max_stream_seconds", "handshake_timeout"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive finite number of seconds, got {v}")

    def limits(self) -> dict:
        """What a client is told in the ready message."""
        return {"max_message_bytes": self.max_message_bytes, "idle_timeout_s": self.idle_timeout,
                "max_stream_seconds": self.max_stream_seconds}


def _short_value(v, n: int = 40) -> str:
    """A value for an error message or log line, cut to ``n`` characters (a 3,000-digit number too)."""
    from .protocol import _short

    return _short(v, n)


class _ClientGone(Exception):
    """The peer closed or reset the connection: nothing more to send."""


class _Refusal(Exception):
    """Refuse the connection with this message (a ProtocolError or a server-side limit)."""


class _Quiet(_Refusal):
    """A refusal that storms repeat (wrong tokens, handshake timeouts): logged in aggregate by ``kind``."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


# ------------------------------------------------------------------------------------ native threads
def limit_blas_threads(n: int = 1) -> bool:
    """Make OpenBLAS (used by numpy/scipy in the feature extractor) single-threaded, process-wide.

    The server gets its parallelism from running many streams at once; a BLAS call that fans one small
    matrix product out over every core only adds contention. ``import realtime`` already defaults
    OPENBLAS_NUM_THREADS to 1, but that is too late when numpy was imported first (an application
    embedding the server), hence this runtime call. Measured on the 2-core machine while other jobs
    loaded it: 7.6 ms CPU per hop with OpenBLAS's default threads, 2.0 ms with one (on the idle
    machine the two are equal). Uses threadpoolctl when installed, else calls OpenBLAS's own setter in
    every loaded OpenBLAS library. Returns True if a limit was applied.
    """
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n, user_api="blas")
        return True
    except ImportError:
        pass
    import ctypes

    done = False
    try:
        libs = {line.split()[-1] for line in open("/proc/self/maps") if "openblas" in line.lower()}
    except OSError:
        return False
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in ("openblas_set_num_threads", "scipy_openblas_set_num_threads", "openblas_set_num_threads64_",
                     "scipy_openblas_set_num_threads64_"):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn(int(n))
                done = True
                break
    return done


# ------------------------------------------------------------------------------------ engines
def engine_factory(load_bundle: Callable[[], Any] | None = None, engine_config=None):
    """``engine_factory()`` for a StreamServer: one Bundle loaded now, shared by every Engine it makes
    (its onnxruntime sessions are thread-safe and ``predict_one`` keeps its buffers per thread)."""
    from .bundle import Bundle
    from .engine import Engine

    bundle = (load_bundle or Bundle.load)()
    return lambda: Engine(bundle, engine_config)


# ------------------------------------------------------------------------------------ transports
class _TcpConn:
    kind = "tcp"

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cfg: ServerConfig):
        self.reader, self.writer, self.cfg = reader, writer, cfg
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)
        self._leftover = b""

    async def read_config(self) -> bytes:
        buf = bytearray()
        limit = self.cfg.max_config_bytes
        while True:
            i = buf.find(b"\n")
            if i >= 0:
                self._leftover = bytes(buf[i + 1:])
                return bytes(buf[:i])
            if len(buf) > limit:
                raise ProtocolError(f"config line longer than {limit} bytes without a newline; the first line must be "
                                    'the JSON config, e.g. {"rate": 16000, "encoding": "s16le", "channels": 1}, then "\\n"')
            chunk = await self._read(limit + 1 - len(buf))
            if not chunk:
                raise _ClientGone("closed before sending a config line")
            buf += chunk

    async def _read(self, n: int) -> bytes:
        try:
            return await self.reader.read(n)
        except (ConnectionError, OSError) as exc:
            raise _ClientGone(str(exc)) from exc

    async def recv(self) -> bytes | str | None:
        if self._leftover:
            data, self._leftover = self._leftover, b""
            return data
        data = await self._read(self.cfg.max_message_bytes)
        return data or None

    async def send(self, text: str) -> None:
        try:
            self.writer.write(text.encode("utf-8") + b"\n")
            await self.writer.drain()
        except (ConnectionError, OSError, RuntimeError) as exc:
            raise _ClientGone(str(exc)) from exc

    def check_size(self, data: bytes) -> None:
        pass  # a TCP stream has no messages; reads are at most max_message_bytes

    async def close(self) -> None:
        """Lingering close: send FIN, then discard what the client still sends (up to 2 s / 1 MiB) before
        closing. Closing a socket with unread input makes the kernel send RST, which can destroy our
        last message (an error line) in the client's receive buffer before it reads it."""
        async def discard() -> None:
            left = 1 << 20
            while left > 0:
                data = await self.reader.read(65536)
                if not data:
                    break
                left -= len(data)

        try:
            with contextlib.suppress(Exception):
                if self.writer.can_write_eof():
                    self.writer.write_eof()
                await asyncio.wait_for(discard(), 2.0)
        finally:
            with contextlib.suppress(Exception):
                self.writer.close()  # the transport flushes and closes on its own

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.transport.abort()


try:
    from websockets.exceptions import ConnectionClosed as _ConnectionClosed
except ImportError:  # pragma: no cover - websockets is a core dependency
    _ConnectionClosed = ConnectionError


def _ws_connection_class():
    """websockets' ServerConnection, with two answers its protocol does not give by itself:

    * a frame over ``max_size`` is refused by the library from its header with close code 1009; a JSON
      ``{"event": "error"}`` text frame now goes out just before that close frame, as for every other
      refusal;
    * an HTTP request that cannot be parsed (e.g. a POST with a body) gets ``405`` / ``400`` instead of a
      silent close.
    """
    from websockets.asyncio.server import ServerConnection
    from websockets.exceptions import InvalidMessage
    from websockets.protocol import OPEN

    class _Connection(ServerConnection):
        def __init__(self, protocol, *args, **kwargs):
            fail, send_eof = protocol.fail, protocol.send_eof

            def fail_with_error(code, reason=""):
                if code == 1009 and protocol.state is OPEN:
                    with contextlib.suppress(Exception):
                        protocol.send_text(encode(error_message(
                            f"message too big ({reason}); the limit is set by --max-message-bytes; send audio in "
                            "smaller messages")).encode("utf-8"))
                fail(code, reason)

            def eof_with_response():
                exc = getattr(protocol, "handshake_exc", None)
                if (isinstance(exc, InvalidMessage) and exc.__cause__ is not None and not isinstance(exc.__cause__, EOFError)
                        and protocol.state is not OPEN and not protocol.eof_sent):
                    cause = str(exc.__cause__ or "")
                    status, text = ((405, "method not allowed: only GET and HEAD, without a body\n")
                                    if "request body" in cause else (400, "bad request: not a valid HTTP request\n"))
                    with contextlib.suppress(Exception):
                        protocol.writes.append(StreamServer._response(None, status, text.encode(),
                                                                      "text/plain; charset=utf-8").serialize())
                send_eof()

            protocol.fail = fail_with_error
            protocol.send_eof = eof_with_response
            super().__init__(protocol, *args, **kwargs)

    return _Connection


class _WsConn:
    kind = "ws"

    def __init__(self, ws, cfg: ServerConfig):
        self.ws, self.cfg = ws, cfg
        peer = ws.remote_address
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)

    async def read_config(self) -> bytes | str:
        return await self.recv()

    async def recv(self) -> bytes | str:
        """The next message. A WebSocket stream ends with {"event": "end"}; a close before that means
        the client is gone (nobody would read the summary)."""
        try:
            return await self.ws.recv()
        except _ConnectionClosed as exc:
            if exc.sent is not None and exc.sent.code == 1009:  # the library refused an oversize frame
                raise ProtocolError(f"message too big: {exc.sent.reason}") from None
            raise _ClientGone(str(exc)) from exc

    def check_size(self, data: bytes) -> None:
        if len(data) > self.cfg.max_message_bytes:
            raise ProtocolError(f"message of {len(data)} bytes exceeds the limit of {self.cfg.max_message_bytes} "
                                "bytes (--max-message-bytes); send audio in smaller messages")

    async def send(self, text: str) -> None:
        try:
            await self.ws.send(text)
        except _ConnectionClosed as exc:
            raise _ClientGone(str(exc)) from exc

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()  # bounded by close_timeout

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.transport.abort()


# ------------------------------------------------------------------------------------ one stream
_RESET = object()  # a {"event": "reset"} between audio items
_FLUSH = object()  # end of stream: Engine.flush()


class _Watch:
    """A deadline on one connection, cheap to re-arm per message (no task or timer per call): one timer
    handle is kept and re-scheduled lazily; ``on_expire()`` runs once when the deadline passes."""

    __slots__ = ("loop", "seconds", "on_expire", "deadline", "_handle")

    def __init__(self, loop: asyncio.AbstractEventLoop, seconds: float, on_expire: Callable[[], None]):
        self.loop, self.seconds, self.on_expire = loop, seconds, on_expire
        self.deadline: float | None = None
        self._handle: asyncio.TimerHandle | None = None

    def arm(self) -> None:
        self.deadline = self.loop.time() + self.seconds
        if self._handle is None:
            self._handle = self.loop.call_at(self.deadline, self._check)

    def disarm(self) -> None:
        self.deadline = None

    def cancel(self) -> None:
        self.deadline = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        self._handle = None
        if self.deadline is None:
            return
        if self.loop.time() < self.deadline:
            self._handle = self.loop.call_at(self.deadline, self._check)
            return
        self.deadline = None
        self.on_expire()


class _Stream:
    """One connection's stream, run by one coroutine: read a message, decode it, feed the engine, send
    the events, read the next.

    * Backpressure: while a message is being processed or its events sent, the socket is not read, so
      what a connection can hold is one message plus the transport's small buffers (websockets'
      ``max_queue`` frames; asyncio's 64 KiB stream buffer, then the kernel's) and a fast sender is
      slowed by TCP flow control. Under load TCP reads coalesce into larger batches by themselves.
    * Work placement: decoding, resampling and pushes that cannot end a hop (VAD only, ~0.1 ms) run
      inline on the event loop; a push that may end a hop (features + models) runs in the shared
      executor, at most one job per connection, so the pool's FIFO queue serves streams round-robin.
      Measured: handing every 100 ms message to a thread cost more CPU than the VAD it ran.
    * Deadlines (``--idle-timeout``) for the next message and for each send are re-armed per message
      on one timer handle per connection (no task or timer per call).
    """

    def __init__(self, server: "StreamServer", conn, config: StreamConfig, engine):
        self.server, self.conn, self.config, self.engine = server, conn, config, engine
        self.decoder = PcmDecoder(config)
        self.audio_bytes = 0
        self.limit_error: ProtocolError | None = None
        self.expired: Exception | None = None
        self.window_ps: list[dict] = []
        self.n_events = 0
        self.batch_bytes = max(config.frame_bytes, int(BATCH_SECONDS * config.bytes_per_second))
        hop_s = getattr(getattr(engine, "config", None), "hop_s", None)
        self.hop_samples = int(round(hop_s * 16000)) if hop_s else None  # None: every push goes to a thread
        self._forget()
        self.task: asyncio.Task | None = None
        loop = asyncio.get_running_loop()
        idle = server.config.idle_timeout
        self.idle_watch = _Watch(loop, idle, lambda: self._expire(_Refusal(
            f"idle for {idle:g} s waiting for audio (--idle-timeout); closing")))
        self.send_watch = _Watch(loop, idle, lambda: self._expire(_ClientGone(
            f"not reading its events for {idle:g} s")))

    def _expire(self, exc: Exception) -> None:
        self.expired = exc
        if self.task is not None:
            self.task.cancel()

    async def run(self) -> None:
        """Until the client ends the stream; raises ProtocolError / _Refusal / _ClientGone otherwise."""
        self.task = asyncio.current_task()
        try:
            await self._loop()
        except asyncio.CancelledError:
            if self.expired is None:
                raise  # the server is shutting down
        finally:
            self.idle_watch.cancel()
            self.send_watch.cancel()
        if self.expired is not None:
            raise self.expired
        if self.limit_error is not None:
            raise self.limit_error

    async def _loop(self) -> None:
        cfg = self.server.config
        max_bytes = int(cfg.max_stream_seconds * self.config.bytes_per_second)
        while True:
            self.idle_watch.arm()
            msg = await self.conn.recv()
            self.idle_watch.disarm()
            if msg is None:
                break
            if isinstance(msg, str):
                if parse_control(msg) == "end":
                    break
                await self._process([_RESET])
                continue
            self.conn.check_size(msg)
            if self.audio_bytes + len(msg) > max_bytes:  # process up to the limit, then refuse the rest
                msg = msg[: max(0, max_bytes - self.audio_bytes)]
                self.limit_error = ProtocolError(
                    f"stream longer than {cfg.max_stream_seconds:g} s of audio (--max-stream-seconds); the estimates "
                    "up to the limit were sent; open a new connection to go on")
            self.audio_bytes += len(msg)
            # at most BATCH_SECONDS of audio per engine job, so one big message cannot hog a worker
            for i in range(0, len(msg), self.batch_bytes):
                await self._process([msg[i:i + self.batch_bytes]])
            if self.limit_error is not None:
                return
        await self._process([], last=True)

    def _forget(self) -> None:
        """What the worker placement knows of the engine's clock, as after Engine.reset()."""
        self.pushed = 0  # 16 kHz samples pushed since the engine's last reset
        self.hop_end = self.hop_samples or 0  # where the engine's current hop ends, in those samples
        self.classified = False  # whether the current voice has had a window classified

    def _track(self, events: list[dict]) -> None:
        """Follow the engine's hop clock from its events: each event ends a hop and starts the next
        (the first estimate of a voice comes early, mid-hop); a 'no speech' hop may forget the voice."""
        for ev in events:
            if self.hop_samples:
                self.hop_end = int(round(float(ev["t"]) * 16000)) + self.hop_samples
            if ev.get("window_p_female") is not None:
                self.classified = True
            if ev.get("label") == "no speech":
                self.classified = False

    def _prepare(self, batch: list, last: bool) -> tuple[list, bool]:
        """Decode and resample (inline: cheap). Returns the engine operations (arrays to push, _RESET,
        _FLUSH) and whether they may end a hop and classify a window (then they go to a worker thread):
        when they reach the end of the engine's current hop, or while no window of the current voice
        has been classified (the engine's early first estimate can come at any frame). A wrong guess
        only moves work between threads, never changes a result."""
        ops, heavy = [], self.hop_samples is None or not self.classified
        for item in batch:
            if item is _RESET:
                ops.append(_RESET)
                self._forget()
                heavy = True
                continue
            x = self.decoder.feed(item)
            if x.size:
                ops.append(x)
                self.pushed += x.size
                heavy = heavy or self.pushed >= self.hop_end
        if last:
            x = self.decoder.flush()
            if x.size:
                ops.append(x)
            ops.append(_FLUSH)  # the last, partial hop: it may classify a window
            heavy = True
        return ops, heavy

    def _run(self, ops: list) -> list[dict]:
        events = []
        for x in ops:
            if x is _RESET:
                self.engine.reset()
            elif x is _FLUSH:
                flush = getattr(self.engine, "flush", None)
                if flush is not None:
                    events.extend(flush())
            else:
                events.extend(self.engine.push(x))
        return events

    async def _process(self, batch: list, last: bool = False) -> None:
        ops, heavy = self._prepare(batch, last)
        if not ops:
            return
        if heavy:
            events = await asyncio.get_running_loop().run_in_executor(self.server.executor, self._run, ops)
        else:
            events = self._run(ops)
        self._track(events)
        for ev in events:
            self.n_events += 1
            self.window_ps.append({"window_p_female": ev.get("window_p_female"), "level_dbfs": ev.get("level_dbfs")})
            self.send_watch.arm()
            await self.conn.send(encode(ev))
            self.send_watch.disarm()

    def summary(self) -> dict:
        from .engine import summarise

        return end_message(summarise(self.window_ps, self.engine), events=self.n_events,
                           audio_seconds=self.decoder.seconds_in, dropped_bytes=self.decoder.pending_bytes)


# ------------------------------------------------------------------------------------ admission
# Accept-rate limiting: asyncio accepts up to its ``backlog`` argument connections per event-loop turn and
# listening socket. ACCEPT_BATCH keeps that small, while the kernel's queue keeps LISTEN_BACKLOG: a storm
# is taken in at the pace the loop serves its connections, and waits in the kernel (where a bare
# connect/close costs the server nothing until accepted) instead of arriving as one batch of a thousand
# handshakes. A client's handshake deadline starts when it is accepted, so queueing never refuses it.
ACCEPT_BATCH = 32
LISTEN_BACKLOG = 1024


def _relisten(sock, backlog: int) -> None:
    """Set the kernel accept queue of a listening socket (asyncio's ``backlog`` set it to ACCEPT_BATCH)."""
    import socket as _socket

    with contextlib.suppress(OSError, ValueError):
        dup = _socket.socket(fileno=os.dup(sock.fileno()))
        try:
            dup.listen(backlog)
        finally:
            dup.close()


STAT_NAMES = ("active", "pending", "streams", "connections_total", "streams_completed", "refused", "busy", "client_gone",
              "internal_errors", "handshake_timeouts", "evicted", "shed", "auth_failures")
_GAUGES = ("active", "pending", "streams")  # levels, not running totals: zeroed when a --processes child is replaced
EVICT_AFTER_S = 2.0  # a connection still in its handshake can be evicted for a newcomer only after this long
# (long enough for a client whose config waits behind a busy event loop; silent ones are older)
SHED_FACTOR = 8  # past this many times a pre-auth budget (all younger than EVICT_AFTER_S), newcomers are closed
SLOT_POLL_S = 0.02  # how often an authenticated client waiting for a stream slot looks again
LOG_EVERY_S = 10.0  # storms of the same kind of refusal are logged once, then summed up at most this often


class Counters:
    """The server's counters (``/healthz``) and its count of open streams, for the whole server.

    One process: a plain list. ``--processes N``: a table in shared memory made before the fork (one
    row per process, so a process only writes its own row and a sum needs no lock) plus one lock that
    makes "is there a free stream slot? take it" atomic across processes. ``counters[name] += 1``
    works on this process's row; :meth:`total` sums the rows.
    """

    def __init__(self, processes: int = 1, *, shared: bool = False):
        self.processes, self.index = int(processes), 0
        n = self.processes * len(STAT_NAMES)
        if shared:
            import multiprocessing

            ctx = multiprocessing.get_context("fork")
            self._cells, self._lock = ctx.RawArray("q", n), ctx.Lock()
        else:
            self._cells, self._lock = [0] * n, None

    def _at(self, name: str, row: int | None = None) -> int:
        return (self.index if row is None else row) * len(STAT_NAMES) + STAT_NAMES.index(name)

    def __getitem__(self, name: str) -> int:
        return self._cells[self._at(name)]

    def __setitem__(self, name: str, value: int) -> None:
        self._cells[self._at(name)] = value

    def total(self, name: str) -> int:
        return sum(self._cells[self._at(name, r)] for r in range(self.processes))

    def totals(self) -> dict[str, int]:
        return {name: self.total(name) for name in STAT_NAMES}

    def acquire_stream(self, limit: int) -> int | None:
        """Take one of ``limit`` stream slots of the whole server; None when all are taken, else the
        number open after taking it."""
        with (self._lock if self._lock is not None else contextlib.nullcontext()):
            n = self.total("active")
            if n >= limit:
                return None
            self["active"] += 1
            return n + 1

    def release_stream(self) -> None:
        with (self._lock if self._lock is not None else contextlib.nullcontext()):
            self["active"] -= 1

    def reset_gauges(self, row: int) -> None:
        """A --processes child died: its open streams and handshakes died with it."""
        with (self._lock if self._lock is not None else contextlib.nullcontext()):
            for name in _GAUGES:
                self._cells[self._at(name, row)] = 0


class _Pending:
    """The connections of one process that have not yet authenticated, oldest first.

    They do not count against ``--max-connections`` (only authenticated streams do, so those always
    have room), but against a separate, small budget: ``max_pending`` in all and
    ``max_pending_per_address`` per client address. A newcomer over a budget evicts the oldest
    connection of that budget once it has had ``EVICT_AFTER_S`` to finish its handshake: a good client
    sends its config at once and is long authenticated by then, while silent, trickling or guessing
    connections are the oldest. When the whole budget is younger than that (a storm: asyncio accepts
    hundreds of connections in one go), the newcomer is admitted over the budget on a short fuse: it
    has ``EVICT_AFTER_S`` instead of the handshake deadline, enough for a client whose config is already
    on its way, while bare connect/close connections end by themselves. Only past ``SHED_FACTOR`` times
    a budget is a newcomer closed unread (bounding file descriptors).
    """

    def __init__(self, max_total: int, max_per_address: int):
        self.max_total, self.max_per_address = max_total, max_per_address
        self.entries: collections.OrderedDict = collections.OrderedDict()  # conn -> (address, t0, task)
        self.per_address: collections.Counter = collections.Counter()

    def __len__(self) -> int:
        return len(self.entries)

    def admit(self, conn, address: str, task, now: float) -> tuple[float | None, list]:
        """Register ``conn``. Returns (its handshake fuse in seconds: None for the normal deadline, 0 when
        it is shed unread, EVICT_AFTER_S when it came over a full budget of young connections; the
        connections to evict for it)."""
        evict, fuse = [], None
        if self.per_address[address] >= self.max_per_address:
            old = next(c for c, e in self.entries.items() if e[0] == address)
            if now - self.entries[old][1] >= EVICT_AFTER_S:
                evict.append(old)
            elif self.per_address[address] >= SHED_FACTOR * self.max_per_address:
                return 0.0, []
            else:
                fuse = EVICT_AFTER_S
        if len(self.entries) - len(evict) >= self.max_total:
            old = next(c for c in self.entries if c not in evict)
            if now - self.entries[old][1] >= EVICT_AFTER_S:
                evict.append(old)
            elif len(self.entries) >= SHED_FACTOR * self.max_total:
                return 0.0, []
            else:
                fuse = EVICT_AFTER_S
        self.entries[conn] = (address, now, task)
        self.per_address[address] += 1
        return fuse, evict

    def task_of(self, conn):
        entry = self.entries.get(conn)
        return entry[2] if entry else None

    def remove(self, conn) -> None:
        entry = self.entries.pop(conn, None)
        if entry is not None:
            self.per_address[entry[0]] -= 1
            if self.per_address[entry[0]] <= 0:
                del self.per_address[entry[0]]


class _AuthThrottle:
    """Wrong or missing tokens, per client address: each failure waits before its error is sent,
    ``base * 2 ** (recent failures)`` up to ``cap`` seconds; the count decays after ``forget_s`` without
    a failure. A waiting connection is still unauthenticated, so it holds a pre-auth slot (and is
    evicted first), which bounds the guesses one address gets per second."""

    def __init__(self, base: float = 0.05, cap: float = 2.0, forget_s: float = 60.0):
        self.base, self.cap, self.forget_s = base, cap, forget_s
        self.failures: dict[str, tuple[int, float]] = {}

    def delay(self, address: str, now: float) -> float:
        n, last = self.failures.get(address, (0, now))
        if now - last > self.forget_s:
            n = 0
        self.failures[address] = (n + 1, now)
        if len(self.failures) > 10000:  # many addresses: drop the stale ones
            self.failures = {a: v for a, v in self.failures.items() if now - v[1] <= self.forget_s}
        return min(self.cap, self.base * 2 ** min(n, 16))


class _LogAggregate:
    """Log the first event of a kind at once, then at most one line per ``every`` seconds with the count,
    so that a storm (wrong tokens, silent connections, evictions) cannot flood the log."""

    def __init__(self, logger: logging.Logger, every: float = LOG_EVERY_S):
        self.logger, self.every = logger, every
        self.kinds: dict[str, list] = {}  # kind -> [count since the last line, its time, addresses, last message]

    def note(self, kind: str, address: str, message: str, now: float) -> None:
        st = self.kinds.get(kind)
        if st is None:
            self.kinds[kind] = [0, now, collections.Counter(), message]
            self.logger.warning("%s (more of these are summed up every %g s)", message, self.every)
            return
        st[0] += 1
        st[2][address] += 1
        st[3] = message
        if now - st[1] >= self.every:
            self._emit(kind, now)

    def _emit(self, kind: str, now: float) -> None:
        st = self.kinds[kind]
        top = ", ".join(f"{a} x{c}" for a, c in st[2].most_common(3))
        self.logger.warning("%d more %s in the last %.0f s (from %s); last: %s", st[0], kind, now - st[1], top, st[3])
        self.kinds[kind] = [0, now, collections.Counter(), st[3]]

    def flush(self, now: float) -> None:
        """Log the counts that are due (the server calls this every ``every`` seconds, so the tail of a storm
        that then stops is logged too)."""
        for kind, st in list(self.kinds.items()):
            if st[0] and now - st[1] >= self.every:
                self._emit(kind, now)


# ------------------------------------------------------------------------------------ server
class StreamServer:
    """The asyncio server. ``engine_factory()`` makes one Engine per connection (called in a worker)."""

    def __init__(self, engine_factory: Callable[[], Any], config: ServerConfig | None = None, *,
                 sockets: tuple | None = None, counters: Counters | None = None):
        self.engine_factory = engine_factory
        self.config = config or ServerConfig()
        self._socks = sockets  # pre-bound (ws, tcp or None) listening sockets, shared by --processes children
        self.executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._ws_server = None
        self._tcp_server = None
        self.ws_port: int | None = None
        self.tcp_port: int | None = None
        self.stats = counters if counters is not None else Counters()  # whole-server counters (shared under --processes)
        self._pending = _Pending(self.config.max_pending, self.config.max_pending_per_address)
        self._slot_waiters = 0
        self._flusher: asyncio.Task | None = None
        self._auth = _AuthThrottle()
        self._quiet = _LogAggregate(log)
        self._static: dict[str, tuple[bytes, str]] = {}
        self._tasks: set[asyncio.Task] = set()
        self.open_streams: set[_Stream] = set()  # for inspection (tests, /healthz)

    # -- lifecycle
    async def start(self) -> None:
        from websockets.asyncio.server import serve

        cfg = self.config
        if cfg.single_thread_blas:
            limit_blas_threads(1)
        self.executor = concurrent.futures.ThreadPoolExecutor(cfg.workers, thread_name_prefix="infer")
        for path, (name, ctype) in _STATIC.items():
            f = WEB_DIR / name
            if f.is_file():
                self._static[path] = (f.read_bytes(), ctype)
        ws_limit = 2 * cfg.max_message_bytes + cfg.max_config_bytes
        ws_where = {"sock": self._socks[0]} if self._socks else {"host": cfg.host, "port": cfg.port}
        # no keepalive pings: audio flows all the time, --idle-timeout catches a silent or vanished peer,
        # and under backpressure a pong waits behind unread audio frames, so pings would close
        # connections that are merely slow
        self._ws_server = await serve(
            self._ws_handler, **ws_where, process_request=self._process_request, compression=None,
            create_connection=_ws_connection_class(),
            max_size=ws_limit, max_queue=(4, 1), write_limit=2 ** 16, server_header="voicegender",
            open_timeout=min(cfg.handshake_timeout, cfg.idle_timeout), close_timeout=2.0, ping_interval=None,
            backlog=ACCEPT_BATCH)
        self.ws_port = self._ws_server.sockets[0].getsockname()[1]
        if self._socks:
            if self._socks[1] is not None:
                self._tcp_server = await asyncio.start_server(self._tcp_handler, sock=self._socks[1],
                                                              backlog=ACCEPT_BATCH)
        else:
            tcp_port = cfg.tcp_port
            if tcp_port is None:
                tcp_port = 0 if cfg.port == 0 else self.ws_port + 1
            if tcp_port >= 0:
                self._tcp_server = await asyncio.start_server(self._tcp_handler, cfg.host, tcp_port,
                                                              backlog=ACCEPT_BATCH)
        if self._tcp_server is not None:
            self.tcp_port = self._tcp_server.sockets[0].getsockname()[1]
        self._flusher = asyncio.ensure_future(self._flush_logs())
        for srv in (self._ws_server, self._tcp_server):
            for sock in (srv.sockets if srv is not None else ()):
                _relisten(sock, LISTEN_BACKLOG)

    async def serve_forever(self) -> None:
        await asyncio.gather(self._ws_server.serve_forever(),
                             *([self._tcp_server.serve_forever()] if self._tcp_server else []))

    async def _flush_logs(self) -> None:
        while True:
            await asyncio.sleep(LOG_EVERY_S)
            self._quiet.flush(time.monotonic())

    async def aclose(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        for srv in (self._tcp_server, self._ws_server):
            if srv is not None:
                srv.close()
        for task in list(self._tasks):
            task.cancel()
        for srv in (self._tcp_server, self._ws_server):
            if srv is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(srv.wait_closed(), 5.0)
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)

    def urls(self) -> dict:
        host = self.config.host
        h = f"[{host}]" if ":" in host else host
        out = {"ws": f"ws://{h}:{self.ws_port}/", "page": f"http://{h}:{self.ws_port}/"}
        if self.tcp_port is not None:
            out["tcp"] = f"tcp://{h}:{self.tcp_port}"
        return out

    # -- HTTP on the WebSocket port
    def _process_request(self, connection, request):
        method = getattr(request, "method", "GET")
        if method not in ("GET", "HEAD"):
            return self._response(connection, 405, b"method not allowed: only GET and HEAD\n", "text/plain; charset=utf-8",
                                  extra=[("Allow", "GET, HEAD")])
        if method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            body = json.dumps(self.health()).encode()
            resp = (200, body, "application/json")
        elif path in self._static:
            body, ctype = self._static[path]
            resp = (200, body, ctype)
        else:
            resp = (404, b"not found\n", "text/plain; charset=utf-8")
        return self._response(connection, *resp, head=method == "HEAD")

    @property
    def open_connections(self) -> int:
        """Connections of this process whose handler has not finished (closing ones included)."""
        return len(self._tasks)

    @property
    def active(self) -> int:
        """Authenticated streams open in the whole server (every --processes process)."""
        return self.stats.total("active")

    def health(self) -> dict:
        """What /healthz answers: counters of the whole server (summed over every --processes process).
        ``connections`` = stream slots taken, ``streams`` = streams with an Engine (``open_streams``),
        ``pending`` = connections still in their handshake."""
        totals = self.stats.totals()
        return {"status": "ok", "connections": totals.pop("active"), "processes": self.stats.processes, **totals}

    @staticmethod
    def _response(connection, status: int, body: bytes, ctype: str, *, head: bool = False, extra=()):
        """An HTTP response; for HEAD the headers of the GET response without its body."""
        import email.utils
        import http

        from websockets.datastructures import Headers
        from websockets.http11 import Response

        headers = Headers([("Date", email.utils.formatdate(usegmt=True)), ("Connection", "close"),
                           ("Content-Length", str(len(body))), ("Content-Type", ctype),
                           ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"), *extra])
        return Response(status, http.HTTPStatus(status).phrase, headers, b"" if head else body)

    # -- connections
    async def _ws_handler(self, ws) -> None:
        await self._handle(_WsConn(ws, self.config))

    async def _tcp_handler(self, reader, writer) -> None:
        await self._handle(_TcpConn(reader, writer, self.config))

    async def _send(self, conn, obj: dict) -> None:
        try:
            await asyncio.wait_for(conn.send(encode(obj)), self.config.idle_timeout)
        except asyncio.TimeoutError:
            raise _ClientGone(f"not reading events for {self.config.idle_timeout:g} s") from None

    async def _handle(self, conn) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        self.stats["connections_total"] += 1
        counted = False
        t0 = time.monotonic()
        try:
            config = await self._handshake(conn, task)
            if config is None:
                return  # evicted or shed (already counted and closed)
            n = await self._stream_slot(t0)
            if n is None:
                self.stats["busy"] += 1
                raise _Refusal(f"server busy: {self.active} streams open, the limit is {self.config.max_connections} "
                               "(--max-connections); try again later")
            counted = True
            await self._stream(conn, config)
            self.stats["streams_completed"] += 1
            log.info("%s %s: stream done in %.1f s", conn.kind, conn.peer, time.monotonic() - t0)
        except _Quiet as exc:  # storms of these are logged in aggregate
            self.stats["refused"] += 1
            self._quiet.note(exc.kind, _address(conn), f"{conn.kind} {conn.peer}: refused: {exc}", time.monotonic())
            await self._send_error(conn, str(exc))
        except (ProtocolError, _Refusal) as exc:
            self.stats["refused"] += 1
            log.warning("%s %s: refused: %s", conn.kind, conn.peer, exc)
            await self._send_error(conn, str(exc))
        except _ClientGone as exc:
            self.stats["client_gone"] += 1
            log.info("%s %s: client went away (%s)", conn.kind, conn.peer, exc)
            conn.abort()
        except asyncio.CancelledError:
            conn.abort()
            if getattr(conn, "evicted", False):
                return  # evicted for a newcomer while still in its handshake: not a shutdown
            raise
        except Exception as exc:  # a bug or an engine failure: this connection only
            self.stats["internal_errors"] += 1
            log.exception("%s %s: internal error", conn.kind, conn.peer)
            await self._send_error(conn, f"internal server error ({type(exc).__name__}); see the server log")
        finally:
            if counted:
                self.stats.release_stream()
            try:
                await conn.close()
            finally:
                self._tasks.discard(task)  # after the lingering close, so that aclose() cancels that too

    async def _stream_slot(self, t0: float) -> int | None:
        """Take a stream slot of the whole server. When all are taken, an authenticated client waits for
        one, polling, until its handshake deadline (counted from its accept), instead of being refused at
        once: a burst (a storm of clients that send a config and vanish) is absorbed. At most
        ``max_connections`` clients of a process wait; past that, or past the deadline: None (busy)."""
        cfg = self.config
        n = self.stats.acquire_stream(cfg.max_connections)
        if n is not None or self._slot_waiters >= cfg.max_connections:
            return n
        self._slot_waiters += 1
        try:
            deadline = t0 + min(cfg.handshake_timeout, cfg.idle_timeout)
            while n is None and time.monotonic() < deadline:
                await asyncio.sleep(SLOT_POLL_S)
                n = self.stats.acquire_stream(cfg.max_connections)
            return n
        finally:
            self._slot_waiters -= 1

    async def _send_error(self, conn, message: str) -> None:
        try:
            await asyncio.wait_for(conn.send(encode(error_message(message))), 2.0)
        except (Exception, asyncio.TimeoutError):
            conn.abort()

    async def _handshake(self, conn, task) -> StreamConfig | None:
        """Read, parse and authenticate the config within the handshake deadline, as a pre-auth
        connection (see _Pending). None when the connection was shed (closed unread)."""
        cfg = self.config
        now = time.monotonic()
        address = _address(conn)
        fuse, evict = self._pending.admit(conn, address, task, now)
        if fuse == 0.0:
            self.stats["shed"] += 1
            self._quiet.note("shed connections", address, f"{conn.kind} {conn.peer}: closed unread: more than "
                             f"{SHED_FACTOR} x the pre-auth budget opened within {EVICT_AFTER_S:g} s", now)
            conn.abort()
            return None
        for old in evict:
            self._evict(old)
        self.stats["pending"] += 1
        try:
            deadline = min(cfg.handshake_timeout, cfg.idle_timeout, fuse or math.inf)
            try:
                raw = await asyncio.wait_for(conn.read_config(), deadline)
            except asyncio.TimeoutError:
                self.stats["handshake_timeouts"] += 1
                why = ("--handshake-timeout" if fuse is None else
                       "the pre-auth budget (--max-pending) was full of connections younger than that")
                raise _Quiet("handshake timeouts", f"no complete config within {deadline:g} s of connecting ({why}) "
                             "while waiting for the config message; closing") from None
            if conn.kind == "tcp" and raw[:8].split(b" ")[0] in (b"GET", b"HEAD", b"POST", b"PUT", b"OPTIONS"):
                raise ProtocolError(f"this is the raw TCP port (JSON config line, then PCM), not HTTP or WebSocket: "
                                    f"use ws://HOST:{self.ws_port}/ for WebSocket, or tcp://HOST:{self.tcp_port} "
                                    "with the TCP protocol")
            config = parse_config(raw, max_bytes=cfg.max_config_bytes)
            try:
                check_token(config, cfg.token)
            except ProtocolError as exc:
                self.stats["auth_failures"] += 1
                await asyncio.sleep(self._auth.delay(address, time.monotonic()))  # still evictable meanwhile
                raise _Quiet("token failures", str(exc)) from None
            return config
        finally:
            self.stats["pending"] -= 1
            self._pending.remove(conn)

    def _evict(self, conn) -> None:
        task = self._pending.task_of(conn)
        self._pending.remove(conn)
        if task is None or task.done():
            return
        conn.evicted = True
        self.stats["evicted"] += 1
        self._quiet.note("evictions", _address(conn), f"{conn.kind} {conn.peer}: evicted: still not authenticated "
                         f"after {EVICT_AFTER_S:g} s while the pre-auth budget (--max-pending) was full", time.monotonic())
        task.cancel()

    async def _stream(self, conn, config: StreamConfig) -> None:
        loop = asyncio.get_running_loop()
        engine = await loop.run_in_executor(self.executor, self.engine_factory)
        stream = _Stream(self, conn, config, engine)
        hop_s = getattr(getattr(engine, "config", None), "hop_s", None)
        # registered only inside the block that always unregisters it: a client that resets before (or
        # while) the ready message goes out must not leave its stream (and its Engine) behind
        self.open_streams.add(stream)
        self.stats["streams"] += 1
        try:
            await self._send(conn, ready_message(config, hop_s=hop_s, limits=self.config.limits()))
            log.info("%s %s: stream started %s", conn.kind, conn.peer, config.public())
            await stream.run()
        finally:
            self.open_streams.discard(stream)
            self.stats["streams"] -= 1
        await self._send(conn, stream.summary())


def _address(conn) -> str:
    """The client's address without its port (the unit of the per-address budgets)."""
    return conn.peer.rsplit(":", 1)[0] if ":" in conn.peer else conn.peer


class ServerThread:
    """A StreamServer on its own event loop in a daemon thread (tests, embedding). ``start()`` returns
    once it listens; ``ws_url`` / ``tcp_url`` / ``page_url`` then hold the real ports."""

    def __init__(self, engine_factory: Callable[[], Any], config: ServerConfig | None = None):
        self.server = StreamServer(engine_factory, config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None

    def start(self) -> "ServerThread":
        self._thread = threading.Thread(target=self._run, name="stream-server", daemon=True)
        self._thread.start()
        self._started.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        loop = self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)

        async def main():
            self._stop = asyncio.Event()
            try:
                await self.server.start()
            except BaseException as exc:
                self._error = exc
                self._started.set()
                return
            self._started.set()
            await self._stop.wait()
            await self.server.aclose()

        try:
            loop.run_until_complete(main())
        finally:
            loop.close()

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(15)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def ws_url(self) -> str:
        return self.server.urls()["ws"]

    @property
    def page_url(self) -> str:
        return self.server.urls()["page"]

    @property
    def tcp_url(self) -> str:
        return self.server.urls()["tcp"]


def warm_up(engine) -> float:
    """One pass of 2.5 s of noise through a fresh engine, so the first client does not pay the first
    (slow) inference. Returns the seconds it took."""
    import numpy as np

    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    t = np.arange(40000) / 16000
    x = (0.1 * np.sin(2 * np.pi * 150 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
         + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    engine.push(x)
    engine.reset()
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------ command line
def _server_config(args, *, processes: int = 1) -> ServerConfig:
    token = args.token if args.token is not None else os.environ.get("VOICEGENDER_TOKEN") or None
    workers = args.workers if args.workers is not None else max(1, (os.cpu_count() or 1) // processes)
    # --max-connections is for the whole server (a counter shared by the processes); the pre-auth budgets
    # are split between the processes, since each evicts among the handshakes it holds itself
    return ServerConfig(host=args.host, port=args.port, tcp_port=args.tcp_port, token=token,
                        max_connections=args.max_connections, max_message_bytes=args.max_message_bytes,
                        idle_timeout=args.idle_timeout, handshake_timeout=args.handshake_timeout,
                        max_pending=-(-args.max_pending // processes),
                        max_pending_per_address=-(-args.max_pending_per_address // processes),
                        max_stream_seconds=args.max_stream_seconds, workers=workers)


def _banner(cfg: ServerConfig, urls: dict, processes: int) -> str:
    return (f"serving: page {urls['page']}  websocket {urls['ws']}" + (f"  tcp {urls['tcp']}" if "tcp" in urls else "")
            + f"  ({processes} process{'es' if processes > 1 else ''} x {cfg.workers} workers, "
            f"token {'required' if cfg.token else 'off'})")


def _serve_process(args, cfg: ServerConfig, sockets: tuple | None, processes: int,
                   counters: Counters | None = None) -> int:
    """One server process: load the bundles, warm up, serve until SIGINT/SIGTERM."""
    from .bundle import Bundle
    from .options import make_engine

    bundle = Bundle.load(args.models) if args.models else Bundle.load()  # shared by all connections
    # the first inference is slow: pay it now (this also validates the engine options before listening)
    warm = warm_up(make_engine(args, bundle))
    server = StreamServer(lambda: make_engine(args, bundle), cfg, sockets=sockets, counters=counters)

    async def main():
        await server.start()
        log.info("pid %d: warm-up inference took %.0f ms", os.getpid(), warm * 1000)
        if sockets is None:
            print(_banner(cfg, server.urls(), processes), file=sys.stderr, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        serve_task = asyncio.ensure_future(server.serve_forever())
        await stop.wait()
        serve_task.cancel()
        await server.aclose()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    return 0


def _child_process(args, cfg: ServerConfig, sockets: tuple, processes: int, counters: Counters, index: int) -> None:
    # forked: drop the supervisor's signal handlers so that SIGTERM stops this process even during warm-up
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    counters.index = index  # this process writes its own row of the shared counters
    sys.exit(_serve_process(args, cfg, sockets, processes, counters))


def _listen(host: str, port: int) -> "socket.socket":
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=1024, reuse_port=False)
    sock.setblocking(False)
    return sock


def _supervise(args, processes: int) -> int:
    """--processes N: bind the two listening sockets here, fork N server processes that accept on them
    (the kernel hands each new connection to one of them), restart one that dies, stop all on
    SIGINT/SIGTERM. Nothing that starts threads (onnxruntime sessions, executors) runs before the fork."""
    import multiprocessing

    cfg = _server_config(args, processes=processes)
    ws_sock = _listen(cfg.host, cfg.port)
    ws_port = ws_sock.getsockname()[1]
    tcp_port = cfg.tcp_port if cfg.tcp_port is not None else (0 if cfg.port == 0 else ws_port + 1)
    tcp_sock = _listen(cfg.host, tcp_port) if tcp_port >= 0 else None
    h = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    urls = {"page": f"http://{h}:{ws_port}/", "ws": f"ws://{h}:{ws_port}/"}
    if tcp_sock is not None:
        urls["tcp"] = f"tcp://{h}:{tcp_sock.getsockname()[1]}"
    ctx = multiprocessing.get_context("fork")
    counters = Counters(processes, shared=True)  # before the fork: every child maps the same memory

    def spawn(i: int):
        counters.reset_gauges(i)  # a replaced child's open streams died with it
        proc = ctx.Process(target=_child_process, args=(args, cfg, (ws_sock, tcp_sock), processes, counters, i),
                           name=f"voicegender-serve-{i}", daemon=True)
        proc.start()
        return proc

    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    procs = [spawn(i) for i in range(processes)]
    print(_banner(cfg, urls, processes), file=sys.stderr, flush=True)
    restarts: list[float] = []
    try:
        while not stopping.wait(0.5):
            for i, proc in enumerate(procs):
                if proc.is_alive():
                    continue
                now = time.monotonic()
                restarts[:] = [t for t in restarts if now - t < 60] + [now]
                if len(restarts) > 3 * processes:
                    log.error("server processes keep dying (exit code %s); giving up", proc.exitcode)
                    return 1
                log.error("server process %d (pid %s) exited with code %s; restarting it", i, proc.pid, proc.exitcode)
                procs[i] = spawn(i)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    return 0


def _serve(args) -> int:
    where = {"filename": str(args.log_file)} if args.log_file else {"stream": sys.stderr}
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s", **where)
    logging.getLogger("websockets").setLevel(logging.WARNING)
    processes = args.processes
    if processes < 1:
        raise ValueError(f"--processes must be >= 1, got {processes}")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not (args.token or os.environ.get("VOICEGENDER_TOKEN")):
        log.warning("listening on %s without --token: anyone who can reach this port can stream", args.host)
    if processes > 1:
        return _supervise(args, processes)
    return _serve_process(args, _server_config(args), None, 1)


def _arg_int(lo: int, hi: int | None = None, what: str = "") -> Callable[[str], int]:
    """An argparse type: an integer in [lo, hi], refused at parse time with a short message."""
    import argparse

    def parse(text: str) -> int:
        shown = text if len(text) <= 24 else f"{text[:12]}... ({len(text)} characters)"
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {shown!r}") from None
        if v < lo or (hi is not None and v > hi):
            rng = f">= {lo}" if hi is None else f"between {lo} and {hi}"
            raise argparse.ArgumentTypeError(f"must be {rng}{what}, got {shown}")
        return v

    return parse


def _arg_seconds(text: str) -> float:
    """An argparse type: a positive, finite number of seconds (inf and nan are refused)."""
    import argparse

    shown = text if len(text) <= 24 else f"{text[:12]}... ({len(text)} characters)"
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {shown!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a positive, finite number of seconds, got {shown}")
    return v


def add_parser(subparsers) -> None:
    from .options import add_engine_arguments

    d = ServerConfig()
    p = subparsers.add_parser(
        "serve", help="stream server for many concurrent clients (WebSocket + browser page, raw TCP)",
        description="Serve live estimates to many concurrent streams. WebSocket and the browser page (GET /) on "
                    "--port; raw TCP on --tcp-port (default --port + 1). Protocol: a first JSON config message "
                    '(WebSocket) or line (TCP), e.g. {"rate": 16000, "encoding": "s16le", "channels": 1, "token": "..."}, '
                    "then binary PCM; the server answers {\"event\": \"ready\"}, one JSON estimate per hop (as "
                    "`stream --format jsonl`), and {\"event\": \"end\", ...summary} after the client ends the stream "
                    "(WebSocket text {\"event\": \"end\"}; TCP half-close). Errors: {\"event\": \"error\", \"error\": ...} "
                    "then close.")
    p.add_argument("--host", default=d.host, help="address to bind (default: %(default)s, loopback only)")
    p.add_argument("--port", type=_arg_int(0, 65535, " (0: any free port)"), default=d.port, help="WebSocket + page port; 0 = any free (default: %(default)s)")
    p.add_argument("--tcp-port", type=_arg_int(-1, 65535, " (0: any free port, -1: no raw TCP)"), default=None, metavar="PORT",
                   help="raw TCP port (default: --port + 1; -1 disables raw TCP)")
    p.add_argument("--token", default=None,
                   help="shared secret every client must send as \"token\" in its config (default: $VOICEGENDER_TOKEN, "
                        "else none)")
    p.add_argument("--max-connections", type=_arg_int(1, 1_000_000), default=d.max_connections, metavar="N",
                   help="concurrent streams; more are refused (default: %(default)s)")
    p.add_argument("--max-message-bytes", type=_arg_int(1, 1 << 30), default=d.max_message_bytes, metavar="B",
                   help="largest WebSocket message; also the TCP read size (default: %(default)s)")
    p.add_argument("--idle-timeout", type=_arg_seconds, default=d.idle_timeout, metavar="S",
                   help="close a connection that sends nothing (or reads nothing) for this long (default: %(default)s)")
    p.add_argument("--handshake-timeout", type=_arg_seconds, default=d.handshake_timeout, metavar="S",
                   help="a connection must send its complete config (and token) within this long of connecting; "
                        "trickling bytes does not extend it (default: %(default)s)")
    p.add_argument("--max-pending", type=_arg_int(1, 1_000_000), default=d.max_pending, metavar="N",
                   help="connections not yet authenticated, whole server (they do not take --max-connections slots); "
                        "when full, a newcomer evicts the oldest one older than 2 s (default: %(default)s)")
    p.add_argument("--max-pending-per-address", type=_arg_int(1, 1_000_000), default=d.max_pending_per_address, metavar="N",
                   help="of those, from one client address (default: %(default)s)")
    p.add_argument("--max-stream-seconds", type=_arg_seconds, default=d.max_stream_seconds, metavar="S",
                   help="longest stream, in seconds of audio (default: %(default)s)")
    p.add_argument("--workers", type=_arg_int(1, 1024), default=None, metavar="N",
                   help="inference threads per process, shared by its streams (default: CPU count / --processes)")
    p.add_argument("--processes", type=_arg_int(1, 1024), default=1, metavar="N",
                   help="server processes accepting on the same ports, to use more than one core despite Python's "
                        "GIL; --max-connections counts the streams of all of them together (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="log only warnings (refusals) and errors")
    p.add_argument("--log-file", type=Path, default=None, metavar="FILE", help="log there instead of stderr")
    add_engine_arguments(p)
    p.set_defaults(func=_serve)

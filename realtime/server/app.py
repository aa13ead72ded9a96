"""The application: :class:`StreamServer` listens on the WebSocket and TCP ports, takes each connection
through its handshake (config, token, a stream slot) into a :class:`~realtime.server.session.StreamSession`,
answers plain HTTP on the WebSocket port (the browser page, ``/healthz``) and counts everything."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from ..protocol import ProtocolError, StreamConfig, check_token, encode, error_message, parse_config, ready_message
from .admission import (ACCEPT_BATCH, EVICT_AFTER_S, LISTEN_BACKLOG, LOG_EVERY_S, SHED_FACTOR, SLOT_POLL_S,
                        AuthThrottle, Busy, Counters, LogAggregate, PendingConnections, QuietRefusal, relisten)
from .config import ServerConfig
from .engines import limit_blas_threads
from .load import LoadMonitor, TimedExecutor
from .session import Refusal, StreamSession
from .transport import (ClientGone, Connection, TcpConnection, WsConnection, bounded, http_response, start_tcp_server,
                        ws_connection_class)

__all__ = ["StreamServer", "WEB_DIR"]

log = logging.getLogger("realtime.server")

WEB_DIR = Path(__file__).resolve().parents[1] / "web"
_STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
           "/index.html": ("index.html", "text/html; charset=utf-8"),
           "/worklet.js": ("worklet.js", "text/javascript; charset=utf-8")}


class StreamServer:
    """The asyncio server. ``engine_factory()`` makes one Engine per connection (called in a worker)."""

    def __init__(self, engine_factory: Callable[[], Any], config: ServerConfig | None = None, *,
                 sockets: tuple | None = None, counters: Counters | None = None):
        self.engine_factory = engine_factory
        self.config = config or ServerConfig()
        self._socks = sockets  # pre-bound (ws, tcp or None) listening sockets, shared by --processes children
        self.executor: TimedExecutor | None = None
        self._ws_server = None
        self._tcp_server = None
        self.ws_port: int | None = None
        self.tcp_port: int | None = None
        self.stats = counters if counters is not None else Counters()  # whole-server counters (shared under --processes)
        self._pending = PendingConnections(self.config.max_pending, self.config.max_pending_per_address)
        self._slot_waiters = 0
        self._flusher: asyncio.Task | None = None
        self._auth = AuthThrottle()
        self._quiet = LogAggregate(log)
        self._static: dict[str, tuple[bytes, str]] = {}
        self._tasks: set[asyncio.Task] = set()
        self.open_streams: set[StreamSession] = set()  # for inspection (tests, /healthz)
        self.load: LoadMonitor | None = None  # this process's load signal, from start()

    # -- lifecycle
    async def start(self) -> None:
        from websockets.asyncio.server import serve

        cfg = self.config
        if cfg.single_thread_blas:
            limit_blas_threads(1)
        self.executor = TimedExecutor(cfg.workers, thread_name_prefix="infer")
        self.load = LoadMonitor(self.executor, max_lag=cfg.max_lag, max_busy=cfg.max_busy,
                                streams=lambda: self.stats["active"], sessions=lambda: self.open_streams,
                                on_sample=self.stats.set_load)
        self.load.start()
        self.stats.set_load(self.load)
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
            create_connection=ws_connection_class(),
            max_size=ws_limit, max_queue=(4, 1), write_limit=2 ** 16, server_header="voicegender",
            open_timeout=min(cfg.handshake_timeout, cfg.idle_timeout), close_timeout=2.0, ping_interval=None,
            backlog=ACCEPT_BATCH)
        self.ws_port = self._ws_server.sockets[0].getsockname()[1]
        if self._socks:
            if self._socks[1] is not None:
                self._tcp_server = await start_tcp_server(self._tcp_handler, sock=self._socks[1],
                                                              backlog=ACCEPT_BATCH)
        else:
            tcp_port = cfg.tcp_port
            if tcp_port is None:
                tcp_port = 0 if cfg.port == 0 else self.ws_port + 1
            if tcp_port >= 0:
                self._tcp_server = await start_tcp_server(self._tcp_handler, cfg.host, tcp_port,
                                                              backlog=ACCEPT_BATCH)
        if self._tcp_server is not None:
            self.tcp_port = self._tcp_server.sockets[0].getsockname()[1]
        self._flusher = asyncio.ensure_future(self._flush_logs())
        for srv in (self._ws_server, self._tcp_server):
            for sock in (srv.sockets if srv is not None else ()):
                relisten(sock, LISTEN_BACKLOG)

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
        if self.load is not None:
            self.load.stop()
            self.stats.set_load(self.load)
        for srv in (self._tcp_server, self._ws_server):
            if srv is not None:
                srv.close()
        for task in list(self._tasks):
            task.cancel()
        for srv in (self._tcp_server, self._ws_server):
            if srv is not None:
                with contextlib.suppress(Exception):
                    await bounded(srv.wait_closed(), 5.0)
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
            return http_response(405, b"method not allowed: only GET and HEAD\n", "text/plain; charset=utf-8",
                                  extra=[("Allow", "GET, HEAD")])
        if method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket":
            return None  # a busy server answers after the upgrade, with the JSON error the page can show
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            health = self.health()
            # 503 while no new stream would be accepted, so that a balancer's health check (HAProxy's
            # `option httpchk`) takes this server out of rotation until it has room again
            resp = (200 if health["accepting"] else 503, json.dumps(health).encode(), "application/json")
        elif path in self._static:
            body, ctype = self._static[path]
            resp = (200, body, ctype)
        else:
            resp = (404, b"not found\n", "text/plain; charset=utf-8")
        return http_response(*resp, head=method == "HEAD")

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
        ``pending`` = connections still in their handshake. Load: ``accepting`` (would a new stream be
        taken: a slot free and a process with room under ``--max-busy`` and ``--max-lag``), ``load`` (of the
        least loaded process, see LoadMonitor.load, or the slots taken over ``--max-connections`` if more:
        1 and more is full), ``lag_ms`` and ``cpu`` (that process's smoothed event-loop lag or pool queue
        wait, and the cores its loop and pool use), ``processes_load`` (each process's figures: also
        ``loop_cpu`` and ``pool_cpu``, the CPU fractions --max-busy limits), ``overloaded`` (streams refused
        busy for load; ``busy`` counts those and the ones refused for want of a slot)."""
        cfg = self.config
        totals = self.stats.totals()
        loads = self.stats.loads()
        least = min(loads, key=lambda p: p["load"])
        active = totals.pop("active")
        accepting = active < cfg.max_connections and any(p["accepting"] for p in loads)
        return {"status": "ok" if accepting else "busy", "connections": active, "processes": self.stats.processes,
                **totals, "accepting": accepting, "load": round(max(least["load"], active / cfg.max_connections), 3),
                "lag_ms": round(least["lag_ms"], 1), "cpu": least["cpu"], "processes_load": loads}

    # -- connections
    async def _ws_handler(self, ws) -> None:
        await self._handle(WsConnection(ws, self.config))

    async def _tcp_handler(self, reader, writer) -> None:
        await self._handle(TcpConnection(reader, writer, self.config))

    async def _send(self, conn, obj: dict) -> None:
        try:
            await bounded(conn.send(encode(obj)), self.config.idle_timeout)
        except asyncio.TimeoutError:
            raise ClientGone(f"not reading events for {self.config.idle_timeout:g} s") from None

    async def _handle(self, conn) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        self.stats["connections_total"] += 1
        counted = False
        admitted_at = None
        t0 = time.monotonic()
        try:
            config = await self._handshake(conn, task)
            if config is None:
                return  # evicted or shed (already counted and closed)
            why = self.load.refusal()
            if why is not None:
                raise self._busy_for_load(why)  # (no local holds it: a raised exception holds its frames)
            n = await self._stream_slot(t0)
            if n is None:
                self.stats["busy"] += 1
                retry = self.load.retry_after()
                raise Busy(f"server busy: {self.active} streams open, the limit is {self.config.max_connections} "
                           f"(--max-connections); try again in {retry:g} s", retry)
            counted = True
            admitted_at = self.load.admitted()
            await self._stream(conn, config)
            self.stats["streams_completed"] += 1
            log.info("%s %s: stream done in %.1f s", conn.kind, conn.peer, time.monotonic() - t0)
        except QuietRefusal as exc:  # storms of these are logged in aggregate
            self.stats["refused"] += 1
            self._quiet.note(exc.kind, conn.address, f"{conn.kind} {conn.peer}: refused: {exc}", time.monotonic())
            await self._send_error(conn, str(exc), exc.fields() if isinstance(exc, Busy) else None)
        except (ProtocolError, Refusal) as exc:
            self.stats["refused"] += 1
            log.warning("%s %s: refused: %s", conn.kind, conn.peer, str(exc))  # a string: a kept record holds no frames
            await self._send_error(conn, str(exc))
        except ClientGone as exc:
            self.stats["client_gone"] += 1
            log.info("%s %s: client went away (%s)", conn.kind, conn.peer, str(exc))
            conn.abort()
        except asyncio.CancelledError:
            conn.abort()
            if conn.evicted:
                return  # evicted for a newcomer while still in its handshake: not a shutdown
            raise
        except Exception as exc:  # a bug or an engine failure: this connection only
            self.stats["internal_errors"] += 1
            # the traceback as text: a log record that kept the exception (a handler that keeps records, as
            # pytest's does) would keep its frames, and the stream's Engine with them
            log.error("%s %s: internal error\n%s", conn.kind, conn.peer, traceback.format_exc().rstrip())
            await self._send_error(conn, f"internal server error ({type(exc).__name__}); see the server log")
        finally:
            if counted:
                self.stats.release_stream()
                self.load.ended(admitted_at)
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

    def _busy_for_load(self, why: str) -> Busy:
        """Shed load: the refusal (counted) for a new stream when this process has no room for it (``why``:
        LoadMonitor.refusal, asked once the client is authenticated, before it takes a slot); the streams
        open go on."""
        self.stats["busy"] += 1
        self.stats["overloaded"] += 1
        retry = self.load.retry_after()
        return Busy(f"server busy: {why}; try again in {retry:g} s", retry)

    async def _send_error(self, conn, message: str, fields: dict | None = None) -> None:
        try:
            await bounded(conn.send(encode({**error_message(message), **(fields or {})})), 2.0)
        except (Exception, asyncio.TimeoutError):
            conn.abort()

    async def _handshake(self, conn, task) -> StreamConfig | None:
        """Read, parse and authenticate the config within the handshake deadline, as a pre-auth
        connection (see PendingConnections). None when the connection was shed (closed unread)."""
        cfg = self.config
        now = time.monotonic()
        address = conn.address
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
                raw = await bounded(conn.read_config(), deadline)
            except asyncio.TimeoutError:
                self.stats["handshake_timeouts"] += 1
                why = ("--handshake-timeout" if fuse is None else
                       "the pre-auth budget (--max-pending) was full of connections younger than that")
                raise QuietRefusal("handshake timeouts", f"no complete config within {deadline:g} s of connecting "
                                   f"({why}) while waiting for the config message; closing") from None
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
                raise QuietRefusal("token failures", str(exc)) from None
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
        self._quiet.note("evictions", conn.address, f"{conn.kind} {conn.peer}: evicted: still not authenticated "
                         f"after {EVICT_AFTER_S:g} s while the pre-auth budget (--max-pending) was full", time.monotonic())
        task.cancel()

    async def _stream(self, conn: Connection, config: StreamConfig) -> None:
        loop = asyncio.get_running_loop()
        engine = await loop.run_in_executor(self.executor, self.engine_factory)
        stream = StreamSession(conn, config, engine, limits=self.config, executor=self.executor)
        # registered only inside the block that always unregisters it: a client that resets before (or
        # while) the ready message goes out must not leave its stream (and its Engine) behind
        self.open_streams.add(stream)
        self.stats["streams"] += 1
        try:
            await self._send(conn, ready_message(config, hop_s=engine.config.hop_s, limits=self.config.limits()))
            log.info("%s %s: stream started %s", conn.kind, conn.peer, config.public())
            await stream.run()
        finally:
            self.open_streams.discard(stream)
            self.stats["streams"] -= 1
        # the summary may run the voice opinion's encoder (--voice-opinion): in the pool, not on the event loop
        await self._send(conn, await loop.run_in_executor(self.executor, stream.summary))

"""Running the server: :class:`ServerThread` (a StreamServer on its own event loop in a thread, for tests and
embedding) and ``python -m realtime serve`` (:func:`add_parser`): one process, or ``--processes N`` forked
children that accept on listening sockets bound here, with shared counters, restarted when one dies."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .admission import Counters
from .app import StreamServer
from .config import MAX_BATCH_MS, ServerConfig
from .engines import warm_up

__all__ = ["ServerThread", "add_parser"]

if TYPE_CHECKING:
    import socket

log = logging.getLogger("realtime.server")


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
                        max_stream_seconds=args.max_stream_seconds, workers=workers, max_lag=args.max_lag,
                        max_busy=args.max_busy, batch_ms=args.batch_ms)


def _banner(cfg: ServerConfig, urls: dict, processes: int) -> str:
    return (f"serving: page {urls['page']}  websocket {urls['ws']}" + (f"  tcp {urls['tcp']}" if "tcp" in urls else "")
            + f"  ({processes} process{'es' if processes > 1 else ''} x {cfg.workers} workers, "
            f"token {'required' if cfg.token else 'off'})")


def _serve_process(args, cfg: ServerConfig, sockets: tuple | None, processes: int,
                   counters: Counters | None = None) -> int:
    """One server process: load the bundles, warm up, serve until SIGINT/SIGTERM."""
    from ..bundle import DEFAULT_MODELS_DIR, Bundle
    from ..options import make_engine

    # shared by all connections; the voice encoder only where the streams' `end` asks for the voice opinion
    voice = bool(getattr(args, "voice_opinion", False))
    bundle = Bundle.load(args.models or DEFAULT_MODELS_DIR, voice=voice)
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


def _listen(host: str, port: int) -> socket.socket:
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


def _arg_type(convert: Callable[[str], Any], expected: str, ok: Callable[[Any], bool], must: str) -> Callable[[str], Any]:
    """An argparse type: ``convert(text)`` if ``ok`` accepts it, else refused at parse time with a short message
    (a 3,000-digit argument is cut)."""
    import argparse

    def parse(text: str):
        shown = text if len(text) <= 24 else f"{text[:12]}... ({len(text)} characters)"
        try:
            v = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {shown!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"must be {must}, got {shown}")
        return v

    return parse


def _arg_int(lo: int, hi: int | None = None, what: str = "") -> Callable[[str], int]:
    """An argparse type: an integer in [lo, hi] (no upper bound when hi is None)."""
    return _arg_type(int, "an integer", lambda v: v >= lo and (hi is None or v <= hi),
                     (f">= {lo}" if hi is None else f"between {lo} and {hi}") + what)


#: an argparse type: a positive, finite number of seconds (inf and nan are refused)
_arg_seconds = _arg_type(float, "a number of seconds", lambda v: math.isfinite(v) and v > 0,
                         "a positive, finite number of seconds")


def add_parser(subparsers) -> None:
    from ..options import add_engine_arguments

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
    p.add_argument("--max-busy", type=_arg_type(float, "a fraction", lambda v: 0 <= v <= 1, "between 0 and 1 (0: off)"),
                   default=d.max_busy, metavar="F",
                   help="shed overload: a process refuses a new stream (a `busy` error with a `retry_after_s` "
                        "hint; /healthz answers 503 while no process has room) while its event loop's thread or its "
                        "worker pool's jobs have used more than this fraction of their time on a CPU for 2 s "
                        "(thread CPU time, averaged over about 1 s: CPU taken by other processes does not count), "
                        "or, from 32 streams, when the CPU per stream it measured says one more would pass it "
                        "(bursts beyond what it measured taken in steps once it is half this busy); never with "
                        "fewer than 3 streams open; streams already open are never cut; 0: off "
                        "(default: %(default)s, off; e.g. 0.6 with --max-lag 0.25: see the README on what it "
                        "does not catch, and cap the streams with --max-connections from a loadtest)")
    p.add_argument("--max-lag", type=_arg_type(float, "a number of seconds", lambda v: math.isfinite(v) and v >= 0,
                                                "a finite number of seconds >= 0 (0: off)"),
                   default=d.max_lag, metavar="S",
                   help="shed overload once it happens: while a process's work has run this late for 2 s (its "
                        "event loop's lag or its worker pool's queue wait, smoothed over about 1 s) and it used at "
                        "least 0.25 cores itself meanwhile, it refuses new streams busy, until the lag is back under "
                        "half of this (or its CPU under half of 0.25 cores); lag with little CPU of its own (other "
                        "processes taking the cores) refuses nothing; never with fewer than 3 streams open; 0: off "
                        "(default: %(default)s, off; e.g. 0.25)")
    p.add_argument("--processes", type=_arg_int(1, 1024), default=1, metavar="N",
                   help="server processes accepting on the same ports, to use more than one core despite Python's "
                        "GIL; --max-connections counts the streams of all of them together (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="log only warnings (refusals) and errors")
    p.add_argument("--log-file", type=Path, default=None, metavar="FILE", help="log there instead of stderr")
    p.add_argument("--batch-ms", type=_arg_type(float, "a number of milliseconds", lambda v: 0 <= v <= MAX_BATCH_MS,
                                                f"between 0 and {MAX_BATCH_MS:g}"), default=d.batch_ms, metavar="MS",
                   help="batch across streams: the audio of streams whose hop ends within this many milliseconds "
                        "is classified together, one pass of the features and models for all of them (each "
                        "stream's estimates stay exactly what it gets alone; each is delayed by up to MS); "
                        "0 = off, each stream's hop on its own (default: %(default)s)")
    add_engine_arguments(p)
    # a stream's end message: the windows' verdict unless asked (the voice opinion costs up to ~0.1 s of CPU a stream)
    p.set_defaults(func=_serve, voice_opinion=False)

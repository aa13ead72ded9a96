"""Client of ``python -m realtime serve``: stream a file or the microphone, print the estimates.

    python -m realtime client talk.flac --url ws://127.0.0.1:8765/ [--realtime] [--format jsonl]
    python -m realtime client mic --url tcp://127.0.0.1:8766 --token SECRET

Audio goes out as 16 kHz mono s16le in ``--chunk-ms`` pieces (a file is read as fast as possible
unless ``--realtime`` paces it like a live source). Estimates are printed as they arrive, exactly
as ``python -m realtime stream`` prints them; the end-of-stream summary goes to stderr.

From Python, :class:`StreamClient` speaks the protocol of :mod:`realtime.protocol` over either
transport with blocking sockets::

    with StreamClient("tcp://127.0.0.1:8766") as c:
        c.connect()                     # sends the config, returns the server's ready message
        c.send_audio(pcm_bytes); c.end()
        for msg in c.messages(): ...    # estimates, then {"event": "end", ...}

and :class:`AsyncStream` does the same inside an asyncio loop, where hundreds of streams share one thread
(``loadtest``, ``soak``); it sends whatever it is given, so a test can send what a good client would not.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import threading
from typing import Iterator
from urllib.parse import urlsplit

from .errors import VoiceGenderError

__all__ = ["StreamClient", "AsyncStream", "ServerError", "parse_url", "add_parser"]


class ServerError(VoiceGenderError, RuntimeError):
    """The server answered {"event": "error"}; ``str()`` is its message."""


def parse_url(url: str) -> tuple[str, str, int, str]:
    """'tcp://HOST:PORT' | 'ws://HOST:PORT/PATH' | 'wss://...' -> (scheme, host, port, path)."""
    u = urlsplit(url)
    scheme = u.scheme.lower()
    if scheme not in ("tcp", "ws", "wss"):
        raise ValueError(f"--url must start with tcp://, ws:// or wss://, got {url!r}")
    if not u.hostname:
        raise ValueError(f"--url needs a host, e.g. {scheme}://127.0.0.1:8765, got {url!r}")
    try:
        port = u.port
    except ValueError:
        raise ValueError(f"bad port in {url!r}") from None
    if port is None:
        if scheme == "tcp":
            raise ValueError(f"tcp:// needs a port, e.g. tcp://127.0.0.1:8766, got {url!r}")
        port = 443 if scheme == "wss" else 80
    return scheme, u.hostname, port, (u.path or "/") + (f"?{u.query}" if u.query else "")


class StreamClient:
    """One stream to the server over TCP or WebSocket, blocking (a thread may send while another reads)."""

    def __init__(self, url: str, *, token: str | None = None, rate: int = 16000, encoding: str = "s16le",
                 channels: int = 1, timeout: float = 30.0):
        self.url = url
        self.scheme, self.host, self.port, self.path = parse_url(url)
        self.config = {"rate": rate, "encoding": encoding, "channels": channels}
        if token is not None:
            self.config["token"] = token
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._rfile = None
        self._ws = None
        self._ended = False

    # -- connection
    def connect(self) -> dict:
        """Open the connection, send the config, and return the ready message (ServerError if refused)."""
        line = json.dumps(self.config)
        if self.scheme == "tcp":
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            self._sock.settimeout(None)
            self._rfile = self._sock.makefile("rb")
            self._sock.sendall(line.encode() + b"\n")
        else:
            from websockets.exceptions import InvalidHandshake
            from websockets.sync.client import connect

            self._stack = contextlib.ExitStack()
            try:
                self._ws = self._stack.enter_context(connect(
                    f"{self.scheme}://{self.host}:{self.port}{self.path}", compression=None, open_timeout=self.timeout,
                    max_size=2 ** 20, close_timeout=2))
            except (InvalidHandshake, EOFError) as exc:
                raise ConnectionError(
                    f"{self.url}: no WebSocket server answered there ({exc}); is this the server's raw TCP port? "
                    f"use tcp://{self.host}:{self.port} for raw TCP, or the WebSocket port (serve --port)") from None
            self._ws.send(line)
        msg = self.recv()
        if msg is None:
            raise ServerError("the server closed the connection before answering the config")
        if msg.get("event") == "error":
            raise ServerError(msg.get("error"))
        return msg

    def send_audio(self, data: bytes) -> None:
        if self._sock is not None:
            self._sock.sendall(data)
        else:
            self._ws.send(bytes(data))

    def end(self) -> None:
        """No more audio: the server flushes, sends the remaining estimates and the end summary."""
        if self._ended:
            return
        self._ended = True
        if self._sock is not None:
            self._sock.shutdown(socket.SHUT_WR)
        else:
            self._ws.send('{"event": "end"}')

    def recv(self) -> dict | None:
        """The next message from the server, or None once the connection is closed."""
        if self._rfile is not None:
            line = self._rfile.readline()
            return json.loads(line) if line else None
        from websockets.exceptions import ConnectionClosed

        try:
            return json.loads(self._ws.recv())
        except ConnectionClosed:
            return None

    def messages(self) -> Iterator[dict]:
        """Every message until the connection closes (estimates, then end or error)."""
        while True:
            msg = self.recv()
            if msg is None:
                return
            yield msg
            if msg.get("event") in ("end", "error"):
                return

    def close(self) -> None:
        for closer in (getattr(self._rfile, "close", None), getattr(self._sock, "close", None),
                       getattr(self._ws, "close", None)):
            if closer is not None:
                try:
                    closer()
                except Exception:
                    pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncStream:
    """One connection to the server inside an asyncio loop, raw TCP or WebSocket behind the same calls.

    ``send`` takes audio (bytes) or one text message (str: a JSON config or control message; a line on raw
    TCP), as given; ``recv`` returns the next message, or None once the connection is closed.
    """

    def __init__(self, url: str, *, reader=None, writer=None, ws=None):
        self.url = url
        self._reader, self._writer, self._ws = reader, writer, ws

    @classmethod
    async def open(cls, url: str, *, timeout: float = 30.0, ping_interval: float | None = 20.0) -> "AsyncStream":
        """Connect to ``url`` (tcp://, ws://, wss://) within ``timeout`` seconds. ``ping_interval``: WebSocket
        keepalive pings (None: none, as the server sends none)."""
        scheme, host, port, path = parse_url(url)
        if scheme == "tcp":
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            return cls(url, reader=reader, writer=writer)
        from websockets.asyncio.client import connect

        ws = await asyncio.wait_for(connect(f"{scheme}://{host}:{port}{path}", compression=None, max_size=2 ** 20,
                                            open_timeout=timeout, ping_interval=ping_interval), timeout)
        return cls(url, ws=ws)

    @property
    def socket(self):
        """The underlying socket (to reset it, or to name its port in a report)."""
        transport = self._writer if self._writer is not None else self._ws.transport
        return transport.get_extra_info("socket")

    async def send(self, data: bytes | str) -> None:
        if self._writer is not None:
            self._writer.write(data if isinstance(data, bytes) else data.encode() + b"\n")
            await self._writer.drain()
        else:
            await self._ws.send(data)

    async def send_paced(self, pcm: bytes, chunk_s: float, t0: float, *, paced: bool = True) -> None:
        """``pcm`` (16 kHz s16le) in ``chunk_s`` messages, the k-th sent at ``t0 + k * chunk_s`` (loop time;
        at once if not ``paced``) as a live source delivers it, then the end of the audio."""
        loop = asyncio.get_running_loop()
        step = int(chunk_s * 16000) * 2
        for k, i in enumerate(range(0, len(pcm), step)):
            wait = t0 + (k + 1) * chunk_s - loop.time()
            if paced and wait > 0:
                await asyncio.sleep(wait)
            await self.send(pcm[i:i + step])
        await self.end()

    async def end(self) -> None:
        """No more audio (raw TCP: half-close; WebSocket: the end message)."""
        if self._writer is not None:
            self._writer.write_eof()
        else:
            await self._ws.send('{"event": "end"}')

    async def recv(self) -> dict | None:
        if self._reader is not None:
            line = await self._reader.readline()
            return json.loads(line) if line else None
        from websockets.exceptions import ConnectionClosed

        try:
            return json.loads(await self._ws.recv())
        except ConnectionClosed:
            return None

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        else:
            await self._ws.close()


def _summary_line(msg: dict) -> str:
    p = msg.get("p_female")
    return (f"summary: {msg.get('label')}, p_female={'-' if p is None else f'{p:.3f}'}, "
            f"{msg.get('windows')} windows, {msg.get('speech_seconds')} s speech of {msg.get('audio_seconds')} s")


def _client(args) -> int:
    from .audio import float_to_pcm16
    from .events import Event
    from .sinks import make_sink
    from .sources import parse_source

    token = args.token if args.token is not None else os.environ.get("VOICEGENDER_TOKEN") or None
    source = parse_source(args.source, realtime=args.realtime, chunk_seconds=args.chunk_ms / 1000)
    client = StreamClient(args.url, token=token)
    sink = make_sink(args.format, sys.stdout)
    send_error: list[BaseException] = []

    def send() -> None:
        try:
            for chunk in source.chunks():
                client.send_audio(float_to_pcm16(chunk))
            client.end()
        except (OSError, ConnectionError) as exc:  # the server closed: its message (if any) is read below
            send_error.append(exc)
        except Exception as exc:
            send_error.append(exc)
            try:
                client.end()
            except Exception:
                pass

    rc = 0
    try:
        with source, client:
            try:
                client.connect()
            except ServerError as exc:
                print(f"error: server refused the stream: {exc}", file=sys.stderr)
                return 2
            sender = threading.Thread(target=send, name="client-send", daemon=True)
            sender.start()
            try:
                for msg in client.messages():
                    ev = msg.get("event")
                    if ev is None:
                        sink.write(Event.from_dict(msg))
                    elif ev == "end":
                        print(json.dumps(msg) if args.format == "jsonl" else _summary_line(msg), file=sys.stderr)
                    elif ev == "error":
                        print(f"error: {msg.get('error')}", file=sys.stderr)
                        rc = 2
            except KeyboardInterrupt:
                source.close()
                sender.join(5)
                for msg in client.messages():  # the rest, then the summary
                    if msg.get("event") is None:
                        sink.write(Event.from_dict(msg))
                    elif msg.get("event") == "end":
                        print(_summary_line(msg), file=sys.stderr)
            if send_error and rc == 0 and not isinstance(send_error[0], (OSError, ConnectionError)):
                print(f"error: {send_error[0]}", file=sys.stderr)
                rc = 2
    finally:
        sink.close()
    return rc


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "client", help="stream a file or the microphone to a running `serve` and print the estimates",
        description="Stream audio to `python -m realtime serve` over WebSocket (ws://HOST:PORT/) or raw TCP "
                    "(tcp://HOST:PORT) and print one estimate per hop as `stream` does; the end summary goes to stderr.")
    p.add_argument("source", metavar="PATH|mic", help="audio file (wav, flac, ogg, mp3, m4a, webm, mp4, ...), mic, or mic:DEVICE")
    p.add_argument("--url", default="ws://127.0.0.1:8765/", help="server address (default: %(default)s)")
    p.add_argument("--realtime", action="store_true", help="pace a file at real time (default: as fast as possible)")
    p.add_argument("--token", default=None, help="the server's shared token (default: $VOICEGENDER_TOKEN)")
    p.add_argument("--format", choices=("console", "jsonl"), default="console",
                   help="console display or one JSON object per line (default: %(default)s)")
    p.add_argument("--chunk-ms", type=float, default=100.0, metavar="MS",
                   help="audio per message (default: %(default)s)")
    p.set_defaults(func=_client)

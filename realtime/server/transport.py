"""The two transports of the server, as connection objects with one interface (:class:`Connection`):
raw TCP (:class:`TcpConnection`) and WebSocket (:class:`WsConnection`, on websockets' server, with the
refusals its protocol does not give by itself: :func:`ws_connection_class`), and the plain HTTP answers
on the WebSocket port (:func:`http_response`). A new transport is one more :class:`Connection` subclass
and a handler in :class:`realtime.server.app.StreamServer` that wraps its connections in it.
"""
from __future__ import annotations

import asyncio
import contextlib
import weakref

from ..protocol import ProtocolError, encode, error_message
from .config import ServerConfig

__all__ = ["ClientGone", "Connection", "TcpConnection", "WsConnection", "ws_connection_class", "start_tcp_server",
           "http_response", "bounded"]


async def bounded(aw, seconds: float):
    """``await aw`` within ``seconds`` (else TimeoutError). On Python >= 3.11 without ``wait_for``'s extra
    task: a task that ends in an exception keeps it, and its traceback holds ``wait_for``'s frame, which
    holds the task: a reference cycle that also keeps every frame (and Engine) the exception's context
    reaches until a full garbage collection."""
    if hasattr(asyncio, "timeout"):
        async with asyncio.timeout(seconds):
            return await aw
    return await asyncio.wait_for(aw, seconds)


class ClientGone(Exception):
    """The peer closed or reset the connection: nothing more to send."""


def _drop_tracebacks(*errors) -> None:
    """A stream object that keeps the error that ended its connection (asyncio's StreamReader after a reset,
    websockets' protocol after a truncated frame) re-raises it, and its traceback then holds the frames that
    hold the stream object: a reference cycle that keeps the connection's buffers until a full garbage
    collection. A closed connection's errors need no traceback."""
    for exc in errors:
        if exc is not None:
            exc.__traceback__ = None


class Connection:
    """What the server needs of a connection, whatever carries it: ``read_config()``, ``recv()`` (bytes of
    audio, a text control message, or None at the end), ``send(text)``, ``check_size(data)``, ``close()``
    (graceful) and ``abort()``; ``kind`` ("tcp" or "ws"), ``peer`` ("host:port") and ``address`` (the host,
    the unit of the per-address budgets). Transport failures raise :class:`ClientGone`."""

    kind = "?"
    evicted = False  # set when the server evicts it during its handshake

    def __init__(self, peer, cfg: ServerConfig):
        self.cfg = cfg
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)

    @property
    def address(self) -> str:
        """The client's address without its port."""
        return self.peer.rsplit(":", 1)[0] if ":" in self.peer else self.peer


class TcpConnection(Connection):
    """Raw TCP: the config is the first line, then the bytes are audio; half-close ends the stream."""

    kind = "tcp"

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cfg: ServerConfig):
        super().__init__(writer.get_extra_info("peername"), cfg)
        self.reader, self.writer = reader, writer
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
                raise ClientGone("closed before sending a config line")
            buf += chunk

    async def _read(self, n: int) -> bytes:
        try:
            return await self.reader.read(n)
        except (ConnectionError, OSError) as exc:
            raise ClientGone(str(exc)) from exc

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
            raise ClientGone(str(exc)) from exc

    def check_size(self, data: bytes) -> None:
        pass  # a TCP stream has no messages; reads are at most max_message_bytes

    async def close(self) -> None:
        """Lingering close: send FIN, then discard what the client still sends (up to 2 s / 1 MiB) before
        closing. Closing a socket with unread input makes the kernel send RST, which can destroy our
        last message (an error line) in the client's receive buffer before it reads it."""
        async def discard() -> None:
            left = 1 << 20
            with contextlib.suppress(ConnectionError, OSError):  # a reset ends it (no exception kept in its task)
                while left > 0:
                    data = await self.reader.read(65536)
                    if not data:
                        break
                    left -= len(data)

        try:
            with contextlib.suppress(Exception):
                if self.writer.can_write_eof():
                    self.writer.write_eof()
                await bounded(discard(), 2.0)
        finally:
            with contextlib.suppress(Exception):
                self.writer.close()  # the transport flushes and closes on its own
            _drop_tracebacks(self.reader.exception())


    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.transport.abort()
        _drop_tracebacks(self.reader.exception())


class _TcpProtocol(asyncio.StreamReaderProtocol):
    """asyncio's stream protocol, keeping the error that ended a connection without its traceback: the
    protocol's closed future and its reader keep that error (a reset while writing, say), and its traceback
    holds the frames of the write, which hold the TcpConnection: a reference cycle that kept the connection
    and its buffers until a full garbage collection."""

    def connection_lost(self, exc):
        _drop_tracebacks(exc)
        super().connection_lost(exc)


async def start_tcp_server(client_connected_cb, host=None, port=None, **kwargs) -> asyncio.Server:
    """``asyncio.start_server`` with :class:`_TcpProtocol` (the same streams, without the reference cycle)."""
    loop = asyncio.get_running_loop()

    def factory():
        return _TcpProtocol(asyncio.StreamReader(loop=loop), client_connected_cb, loop=loop)

    return await loop.create_server(factory, host, port, **kwargs)


try:
    from websockets.exceptions import ConnectionClosed as _ConnectionClosed
except ImportError:  # pragma: no cover - websockets is a core dependency
    _ConnectionClosed = ConnectionError


def ws_connection_class():
    """websockets' ServerConnection, with two answers its protocol does not give by itself:

    * a frame over ``max_size`` is refused by the library from its header with close code 1009; a JSON
      ``{"event": "error"}`` text frame now goes out just before that close frame, as for every other
      refusal;
    * an HTTP request that cannot be parsed (e.g. a POST with a body) gets ``405`` / ``400`` instead of a
      silent close;

    and it keeps the transport error that ended a connection without its traceback (no reference cycle).
    """
    from websockets.asyncio.server import ServerConnection
    from websockets.exceptions import InvalidMessage
    from websockets.protocol import OPEN

    class _Connection(ServerConnection):
        def __init__(self, protocol, *args, **kwargs):
            # the replacements reach the protocol through a weak reference and its class's methods: a closure
            # over the protocol (or its bound methods) stored on the protocol is a reference cycle that keeps
            # its buffers until a full garbage collection
            ref, cls = weakref.ref(protocol), type(protocol)

            def fail_with_error(code, reason=""):
                proto = ref()
                if proto is None:
                    return
                if code == 1009 and proto.state is OPEN:
                    with contextlib.suppress(Exception):
                        proto.send_text(encode(error_message(
                            f"message too big ({reason}); the limit is set by --max-message-bytes; send audio in "
                            "smaller messages")).encode("utf-8"))
                cls.fail(proto, code, reason)

            def eof_with_response():
                proto = ref()
                if proto is None:
                    return
                exc = getattr(proto, "handshake_exc", None)
                if (isinstance(exc, InvalidMessage) and exc.__cause__ is not None and not isinstance(exc.__cause__, EOFError)
                        and proto.state is not OPEN and not proto.eof_sent):
                    cause = str(exc.__cause__ or "")
                    status, text = ((405, "method not allowed: only GET and HEAD, without a body\n")
                                    if "request body" in cause else (400, "bad request: not a valid HTTP request\n"))
                    with contextlib.suppress(Exception):
                        response = http_response(status, text.encode(), "text/plain; charset=utf-8")
                        proto.writes.append(response.serialize())
                cls.send_eof(proto)

            protocol.fail = fail_with_error
            protocol.send_eof = eof_with_response
            super().__init__(protocol, *args, **kwargs)

        def set_connection_exc(self, exc):
            """The transport error that ended the connection (a reset while sending, say) is kept as the
            cause of every later ConnectionClosed; its traceback holds the frames of ``send_data`` and the
            transport's ``write``, which hold this connection: a reference cycle that kept the connection
            and its buffers until a full garbage collection. The error is kept without its traceback."""
            super().set_connection_exc(exc)
            _drop_tracebacks(self.connection_exc)

    return _Connection


class WsConnection(Connection):
    """WebSocket: the config is the first message, then binary messages are audio and text messages
    control (``{"event": "end"}`` ends the stream)."""

    kind = "ws"

    def __init__(self, ws, cfg: ServerConfig):
        super().__init__(ws.remote_address, cfg)
        self.ws = ws

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
            raise ClientGone(str(exc)) from exc

    def check_size(self, data: bytes) -> None:
        if len(data) > self.cfg.max_message_bytes:
            raise ProtocolError(f"message of {len(data)} bytes exceeds the limit of {self.cfg.max_message_bytes} "
                                "bytes (--max-message-bytes); send audio in smaller messages")

    async def send(self, text: str) -> None:
        try:
            await self.ws.send(text)
        except _ConnectionClosed as exc:
            raise ClientGone(str(exc)) from exc

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()  # bounded by close_timeout
        self._drop_tracebacks()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.transport.abort()
        self._drop_tracebacks()

    def _drop_tracebacks(self) -> None:
        proto = self.ws.protocol
        _drop_tracebacks(getattr(proto, "parser_exc", None), getattr(proto, "handshake_exc", None))


def http_response(status: int, body: bytes, ctype: str, *, head: bool = False, extra=()):
    """An HTTP response; for HEAD the headers of the GET response without its body."""
    import email.utils
    import http

    from websockets.datastructures import Headers
    from websockets.http11 import Response

    headers = Headers([("Date", email.utils.formatdate(usegmt=True)), ("Connection", "close"),
                       ("Content-Length", str(len(body))), ("Content-Type", ctype),
                       ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"), *extra])
    return Response(status, http.HTTPStatus(status).phrase, headers, b"" if head else body)

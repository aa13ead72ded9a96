"""One stream of the server: :class:`StreamSession` reads a connection's messages, decodes them, feeds its
Engine (in the shared worker pool, once its audio may bring an event) and sends the events;
:class:`Deadline` is the cheap per-connection timer behind ``--idle-timeout``."""
from __future__ import annotations

import asyncio
import functools
import time
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..events import Event
from ..protocol import ProtocolError, StreamConfig, encode, end_message, parse_control
from .batcher import hop_batcher
from .config import ServerConfig
from .load import ReadClock
from .transport import ClientGone, Connection

if TYPE_CHECKING:
    import concurrent.futures

    from ..engine import Engine, Steps

__all__ = ["StreamSession", "Deadline", "Refusal", "BATCH_SECONDS"]

BATCH_SECONDS = 0.5  # most audio (at 16 kHz) one executor job handles for one connection


class Refusal(Exception):
    """Refuse the connection with this message (a ProtocolError or a server-side limit)."""


_RESET = object()  # a {"event": "reset"} between audio items
_FLUSH = object()  # end of stream: Engine.flush()


class Deadline:
    """A deadline on one task, cheap to re-arm per message (no task or timer per call): one timer handle is
    kept and re-scheduled lazily; when the deadline passes, ``task`` is cancelled and ``fired`` set, and its
    owner raises ``error()``. It holds no reference to its owner (a callback closing over the session would
    make a reference cycle that keeps the session's Engine alive until a full garbage collection), and
    ``cancel()`` drops the task."""

    __slots__ = ("loop", "seconds", "error", "task", "fired", "deadline", "_handle")

    def __init__(self, loop: asyncio.AbstractEventLoop, seconds: float, error: Callable[[], Exception]):
        """``error()``: the exception to raise once it fired (made then: a stored, raised exception would hold
        the frames of its traceback)."""
        self.loop, self.seconds, self.error = loop, seconds, error
        self.task: asyncio.Task | None = None
        self.fired = False
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
        self.task = None
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
        self.fired = True
        if self.task is not None:
            self.task.cancel()


class StreamSession:
    """One connection's stream, run by one coroutine: read a message, decode it, feed the engine, send
    the events, read the next.

    * Backpressure: while a message is being processed or its events sent, the socket is not read, so
      what a connection can hold is one message plus the transport's small buffers (websockets'
      ``max_queue`` frames; asyncio's 64 KiB stream buffer, then the kernel's) and a fast sender is
      slowed by TCP flow control. Under load TCP reads coalesce into larger batches by themselves.
    * Work placement: decoding and resampling run inline on the event loop. The decoded audio is held
      until it is as long as the engine says its next event needs at the least
      (``Engine.samples_until_event()``: a shorter push would only run the VAD and bring no event), then
      pushed as one array: the events come at the same moments and are the same as with a push per message,
      for a fraction of the per-call work. Those pushes, resets and the final flush run in the shared executor,
      at most one job per connection, so the pool's FIFO queue serves streams round-robin.
    * Deadlines (``--idle-timeout``) for the next message and for each send are re-armed per message
      on one timer handle per connection (no task or timer per call).
    """

    def __init__(self, conn: Connection, config: StreamConfig, engine: Engine, *, limits: ServerConfig,
                 executor: concurrent.futures.Executor):
        """``config``: the client's stream; ``limits``: the server's; ``executor``: the shared worker pool."""
        self.conn, self.config, self.engine = conn, config, engine
        self.limits, self.executor = limits, executor
        self.batcher = hop_batcher(executor, limits)
        self.decoder = config.decoder()
        self.audio_bytes = 0
        self.limit_error: str | None = None  # a message: a stored exception would hold its traceback's frames
        self.summary_rows: list[dict] = []  # what summarise() reads of each event, kept for the end message
        self.n_events = 0
        self.batch_bytes = max(config.frame_bytes, int(BATCH_SECONDS * config.bytes_per_second))
        self.held: list = []  # decoded audio too short to bring an event yet (see _prepare)
        self.held_samples = 0
        self.clock = ReadClock()  # how far its reading is behind its client (LoadMonitor's stream lag)
        loop = asyncio.get_running_loop()
        idle = limits.idle_timeout
        self.idle_watch = Deadline(loop, idle, functools.partial(
            Refusal, f"idle for {idle:g} s waiting for audio (--idle-timeout); closing"))
        self.send_watch = Deadline(loop, idle, functools.partial(ClientGone, f"not reading its events for {idle:g} s"))

    async def run(self) -> None:
        """Until the client ends the stream; raises ProtocolError / Refusal / ClientGone otherwise."""
        watches = (self.idle_watch, self.send_watch)
        for w in watches:
            w.task = asyncio.current_task()
        try:
            await self._loop()
        except asyncio.CancelledError:
            fired = next((w for w in watches if w.fired), None)
            if fired is None:
                raise  # the server is shutting down
            raise fired.error() from None
        finally:
            for w in watches:
                w.cancel()
        if self.limit_error is not None:
            raise ProtocolError(self.limit_error)

    async def _loop(self) -> None:
        cfg = self.limits
        clock, bps = self.clock, self.config.bytes_per_second
        max_bytes = int(cfg.max_stream_seconds * bps)
        while True:
            self.idle_watch.arm()
            clock.reading(time.monotonic())
            msg = await self.conn.recv()
            self.idle_watch.disarm()
            if msg is None:
                break
            if isinstance(msg, str):
                if parse_control(msg) == "end":
                    break
                await self._process([_RESET])
                continue
            clock.read(time.monotonic(), (self.audio_bytes + len(msg)) / bps)
            self.conn.check_size(msg)
            if self.audio_bytes + len(msg) > max_bytes:  # process up to the limit, then refuse the rest
                msg = msg[: max(0, max_bytes - self.audio_bytes)]
                self.limit_error = (
                    f"stream longer than {cfg.max_stream_seconds:g} s of audio (--max-stream-seconds); the estimates "
                    "up to the limit were sent; open a new connection to go on")
            self.audio_bytes += len(msg)
            # at most BATCH_SECONDS of audio per engine job, so one big message cannot hog a worker
            for i in range(0, len(msg), self.batch_bytes):
                await self._process([msg[i:i + self.batch_bytes]])
            if self.limit_error is not None:
                return
        await self._process([], last=True)

    def _prepare(self, batch: list, last: bool) -> list:
        """Decode and resample (inline: cheap). Returns the engine operations (arrays to push, _RESET,
        _FLUSH) that may produce an event, for a worker thread; the audio that cannot (shorter than
        ``Engine.samples_until_event()``) is held for the next messages instead, so it costs no job."""
        ops: list = []
        for item in batch:
            if item is _RESET:
                self._release(ops)
                ops.append(_RESET)
                continue
            self._hold(self.decoder.feed(item))
        if last:
            self._hold(self.decoder.flush())
            self._release(ops)
            ops.append(_FLUSH)  # the last, partial hop: it may classify a window
        elif self.held_samples and self.held_samples >= self.engine.samples_until_event():
            self._release(ops)
        return ops

    def _hold(self, x) -> None:
        if x.size:
            self.held.append(x)
            self.held_samples += x.size

    def _release(self, ops: list) -> None:
        """The held audio as one push, appended to ``ops``."""
        if self.held:
            ops.append(self.held[0] if len(self.held) == 1 else np.concatenate(self.held))
            self.held, self.held_samples = [], 0

    def _steps(self, ops: list) -> Steps:
        """The engine operations as steps (``Engine.push_steps``): for the batcher, or run by ``_run``."""
        events = []
        for x in ops:
            if x is _RESET:
                self.engine.reset()
            elif x is _FLUSH:
                events += yield from self.engine.flush_steps()
            else:
                events += yield from self.engine.push_steps(x)
        return events

    def _run(self, ops: list) -> list[Event]:
        """The engine operations, in a worker, each window classified inline (as ``Engine.push`` does)."""
        from ..engine import drive  # onnxruntime loads with the first stream, not with the server

        return drive(self._steps(ops))

    async def _process(self, batch: list, last: bool = False) -> None:
        ops = self._prepare(batch, last)
        if not ops:
            return
        if self.batcher is not None:  # --batch-ms: with the other streams' pushes, one job
            events = await self.batcher.run(self._steps(ops))
        else:
            events = await asyncio.get_running_loop().run_in_executor(self.executor, self._run, ops)
        for ev in events:
            self.n_events += 1
            self.summary_rows.append({"window_p_female": ev.window_p_female, "level_dbfs": ev.level_dbfs})
            self.send_watch.arm()
            await self.conn.send(encode(ev))
            self.send_watch.disarm()

    def summary(self) -> dict:
        from ..engine import summarise  # onnxruntime loads with the first stream, not with the server

        return end_message(summarise(self.summary_rows, self.engine), events=self.n_events,
                           audio_seconds=self.decoder.seconds_in, dropped_bytes=self.decoder.pending_bytes)

"""Who gets in, and how the server counts: accept pacing, the whole server's counters and stream slots
(:class:`Counters`, shared by ``--processes`` children), the budget of connections not yet authenticated
(:class:`PendingConnections`), the backoff for wrong tokens (:class:`AuthThrottle`), the aggregated
log lines of refusal storms (:class:`LogAggregate`) and the refusals themselves (:class:`QuietRefusal`,
:class:`Busy`)."""
from __future__ import annotations

import collections
import contextlib
import logging
import os

from .session import Refusal

__all__ = ["QuietRefusal", "Busy", "Counters", "PendingConnections", "AuthThrottle", "LogAggregate", "relisten",
           "STAT_NAMES", "LOAD_NAMES",
           "ACCEPT_BATCH", "LISTEN_BACKLOG", "EVICT_AFTER_S", "SHED_FACTOR", "SLOT_POLL_S", "LOG_EVERY_S"]

# Accept-rate limiting: asyncio accepts up to its ``backlog`` argument connections per event-loop turn and
# listening socket. ACCEPT_BATCH keeps that small, while the kernel's queue keeps LISTEN_BACKLOG: a storm
# is taken in at the pace the loop serves its connections, and waits in the kernel (where a bare
# connect/close costs the server nothing until accepted) instead of arriving as one batch of a thousand
# handshakes. A client's handshake deadline starts when it is accepted, so queueing never refuses it.
ACCEPT_BATCH = 32
LISTEN_BACKLOG = 1024


class QuietRefusal(Refusal):
    """A refusal that storms repeat (wrong tokens, handshake timeouts): logged in aggregate by ``kind``."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class Busy(QuietRefusal):
    """No room for a new stream (every slot taken, or the server sheds load): the error says
    ``"code": "busy"`` and ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: float):
        super().__init__("busy refusals", message)
        self.retry_after_s = retry_after_s

    def fields(self) -> dict:
        return {"code": "busy", "retry_after_s": self.retry_after_s}


def relisten(sock, backlog: int) -> None:
    """Set the kernel accept queue of a listening socket (asyncio's ``backlog`` set it to ACCEPT_BATCH)."""
    import socket as _socket

    with contextlib.suppress(OSError, ValueError):
        dup = _socket.socket(fileno=os.dup(sock.fileno()))
        try:
            dup.listen(backlog)
        finally:
            dup.close()


STAT_NAMES = ("active", "pending", "streams", "connections_total", "streams_completed", "refused", "busy", "overloaded",
              "client_gone", "internal_errors", "handshake_timeouts", "evicted", "shed", "auth_failures")
# each process's load (LoadMonitor's figures, in thousandths): not summed
LOAD_NAMES = ("load_pm", "lag_us", "stream_lag_us", "loop_cpu_pm", "pool_cpu_pm", "cpu_pm", "accepting")
_GAUGES = ("active", "pending", "streams", *LOAD_NAMES)  # levels, not totals: zeroed when a --processes child is replaced
_NAMES = STAT_NAMES + LOAD_NAMES
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
    works on this process's row; :meth:`total` sums the rows. Each row also holds its process's load
    (``LOAD_NAMES``: :meth:`set_load`, :meth:`loads`), which is not summed.
    """

    def __init__(self, processes: int = 1, *, shared: bool = False):
        self.processes, self.index = int(processes), 0
        n = self.processes * len(_NAMES)
        if shared:
            import multiprocessing

            ctx = multiprocessing.get_context("fork")
            self._cells, self._lock = ctx.RawArray("q", n), ctx.Lock()
        else:
            self._cells, self._lock = [0] * n, None

    def _at(self, name: str, row: int | None = None) -> int:
        return (self.index if row is None else row) * len(_NAMES) + _NAMES.index(name)

    def __getitem__(self, name: str) -> int:
        return self._cells[self._at(name)]

    def __setitem__(self, name: str, value: int) -> None:
        self._cells[self._at(name)] = value

    def total(self, name: str) -> int:
        return sum(self._cells[self._at(name, r)] for r in range(self.processes))

    def totals(self) -> dict[str, int]:
        return {name: self.total(name) for name in STAT_NAMES}

    def set_load(self, monitor) -> None:
        """This process's load, from its LoadMonitor (realtime.server.load) after each probe."""
        self["load_pm"] = int(monitor.load * 1000)
        self["lag_us"] = int(monitor.lag_s * 1e6)
        self["stream_lag_us"] = int(monitor.stream_lag_s * 1e6)
        self["loop_cpu_pm"] = int(monitor.loop_cpu * 1000)
        self["pool_cpu_pm"] = int(monitor.pool_cpu * 1000)
        self["cpu_pm"] = int(monitor.cpu * 1000)
        self["accepting"] = int(monitor.accepting)

    def loads(self) -> list[dict]:
        """Every process's streams (slots it holds), load, lag_ms, stream_lag_ms, loop_cpu, pool_cpu, cpu (cores)
        and accepting (one that has not started yet reads zeros, not accepting)."""
        def row(r: int) -> dict:
            get = lambda name: self._cells[self._at(name, r)]  # noqa: E731
            return {"streams": get("active"), "load": get("load_pm") / 1000, "lag_ms": get("lag_us") / 1000,
                    "stream_lag_ms": get("stream_lag_us") / 1000,
                    "loop_cpu": get("loop_cpu_pm") / 1000, "pool_cpu": get("pool_cpu_pm") / 1000,
                    "cpu": get("cpu_pm") / 1000,
                    "accepting": bool(get("accepting"))}
        return [row(r) for r in range(self.processes)]

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


class PendingConnections:
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


class AuthThrottle:
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


class LogAggregate:
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

"""The server's load signal, for shedding overload (``--max-lag``): :class:`LoadMonitor` measures how late
the event loop runs a periodic timer and how long a job waits in the worker pool's queue before a worker
starts it, smooths the larger of the two over about a second, and says whether a new stream may come in.

Why these two: a stream's estimates are late by exactly the time its messages wait for the event loop
(reading, decoding, sending) plus the time its engine jobs wait for a worker (plus their compute, which load
does not change). Both stay near zero while the process keeps up and grow without bound once it does not,
so a threshold well below the lag a client tolerates refuses new streams before the open ones fall behind.
"""
from __future__ import annotations

import asyncio
import math
import random
import time

__all__ = ["LoadMonitor", "PROBE_S", "LOAD_WINDOW_S", "RESUME_FRACTION"]

PROBE_S = 0.05  # the probe timer's period (and one pool probe job at most per period)
LOAD_WINDOW_S = 1.0  # time constant of the smoothing (an exponential moving average over time)
RESUME_FRACTION = 0.5  # once refusing, accept again below this fraction of --max-lag (no flapping)


class LoadMonitor:
    """Event-loop lag and worker-pool queue wait of one process, smoothed (``lag_s``); ``load`` is
    ``lag_s / max_lag`` (0 when there is no limit) and ``accepting`` turns False when ``lag_s`` passes
    ``max_lag`` and True again when it falls below ``RESUME_FRACTION`` of it.

    Each ``PROBE_S`` the loop's timer measures its own lateness and, unless the previous one is still
    queued, submits an empty job to the pool; a queued probe counts with the time it has waited so far, so
    a pool that starts nothing still reads as loaded. ``on_sample(lag_ms, accepting)`` (optional) is called
    after each probe (the server publishes them to the shared counters of ``--processes``)."""

    def __init__(self, executor, max_lag: float, *, on_sample=None, window: float = LOAD_WINDOW_S,
                 every: float = PROBE_S):
        self.executor, self.max_lag, self.on_sample = executor, max_lag, on_sample
        self.window, self.every = window, every
        self.lag_s = 0.0  # smoothed
        self.loop_lag_s = self.pool_wait_s = 0.0  # the last probe's raw figures
        self.accepting = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = self._last = 0.0
        self._probe_sent: float | None = None  # time.monotonic() of the queued pool probe
        self._probe_wait: float | None = None  # its wait, set by the worker that starts it

    @property
    def load(self) -> float:
        return self.lag_s / self.max_lag if self.max_lag > 0 else 0.0

    def retry_after(self) -> float:
        """The hint a refused client gets: 1 to 2 smoothing windows, jittered so that refused clients do not
        all come back at once."""
        return round(self.window * (1.0 + random.random()), 1)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._due = self._last = self._loop.time() + self.every
        self._handle = self._loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _started(self, sent: float) -> None:  # runs in a worker thread
        self._probe_wait = time.monotonic() - sent

    def _pool_wait(self) -> float:
        now = time.monotonic()
        if self._probe_sent is not None:
            if self._probe_wait is None:
                return now - self._probe_sent  # still queued: at least this long
            wait, self._probe_sent = self._probe_wait, None
        else:
            wait = 0.0
        self._probe_wait = None
        try:
            self.executor.submit(self._started, now)
            self._probe_sent = now
        except RuntimeError:  # the pool is shut down
            pass
        return wait

    def _tick(self) -> None:
        now = self._loop.time()
        self.loop_lag_s = max(0.0, now - self._due)
        self.pool_wait_s = self._pool_wait()
        sample = max(self.loop_lag_s, self.pool_wait_s)
        dt = now - self._last
        self._last = now
        self.lag_s += (sample - self.lag_s) * (1.0 - math.exp(-dt / self.window))
        if self.max_lag > 0:
            if self.accepting and self.lag_s > self.max_lag:
                self.accepting = False
            elif not self.accepting and self.lag_s < RESUME_FRACTION * self.max_lag:
                self.accepting = True
        if self.on_sample is not None:
            self.on_sample(self.lag_s * 1000.0, self.accepting)
        self._due = now + self.every
        self._handle = self._loop.call_at(self._due, self._tick)

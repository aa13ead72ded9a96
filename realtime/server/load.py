"""The server's load, for shedding overload (``--max-busy``, ``--max-lag``): :class:`LoadMonitor` measures how
much CPU the process's event loop and worker pool use and how late their work runs, and says whether a new
stream may come in; :class:`TimedExecutor` is the pool whose CPU it can read.

Why these signals: a stream's estimates are late by the time its messages wait for the event loop (reading,
decoding, sending) plus the time its engine jobs wait for a worker. Those waits grow without bound once the
process cannot keep up, but they grow just as much when it is merely not given the CPU: other processes on the
machine, other threads of the process holding the GIL (a test's clients). Refusing streams then sheds nothing
of that load. So the busy fractions are CPU time (each thread's own clock: the loop thread's, and the pool's
jobs'), which the process's own work costs and other work on the machine does not change, and lateness
refuses only while the process itself uses at least ``MIN_CPU`` of a core: an overloaded process uses about
one core (the GIL) on a quiet machine, and still its share of one on a busy machine (a third at a load of 5
on 2 cores), a starved one with little work uses little.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import math
import random
import threading
import time

__all__ = ["LoadMonitor", "TimedExecutor", "ReadClock", "WAITED_S", "STREAM_LAG_EVERY_S", "STREAM_LAG_QUANTILE",
           "STREAM_SUSTAIN_S", "PROBE_S", "LOAD_WINDOW_S", "RESUME_FRACTION", "PENDING_WINDOWS",
           "COST_WINDOW_S", "SLOW_START", "SLOW_FRACTION", "GROWTH", "TRUST", "STEADY_FRACTION", "FREE_STREAMS",
           "SUSTAIN_S", "MIN_STREAMS", "MIN_CPU"]

PROBE_S = 0.05  # the probe timer's period (and one pool probe job at most per period)
LOAD_WINDOW_S = 1.0  # time constant of the CPU fractions' and the lag's averages (exponential, over time)
RESUME_FRACTION = 0.5  # once refusing for lag, accept again below this fraction of --max-lag (or of MIN_CPU)
# an admitted stream counts as not yet measured ("pending") for about this many windows: its first engine
# jobs come with its first hop, then the average takes a window to follow
PENDING_WINDOWS = 2.0
COST_WINDOW_S = 5.0  # the per-stream costs: averages over the steady periods of about this long
STEADY_FRACTION = 0.25  # a steady period: at most this fraction of the streams pending (and >= 4 streams)
# Only measured overload of the process's own making refuses a stream:
# * the averaged CPU fraction over its limit, or the lag over its limit while the process uses MIN_CPU cores
#   or more, at every probe for SUSTAIN_S (not one spike: a burst of handshakes);
# * from FREE_STREAMS streams open (a count every process serves: on the 2-core development VM a
#   process saturates past ~110), the look-ahead: the learned CPU per stream times the streams plus the
#   newcomer over --max-busy, and, past TRUST x the most streams of a steady period (where the linear cost was
#   measured), at most max(SLOW_START, GROWTH x the streams open) streams pending: a burst of arrivals beyond
#   what was measured is taken in steps that the measurements can follow (the cost per stream grows with the
#   streams: GIL, caches; and the machine's other load comes and goes), once the process is SLOW_FRACTION of
#   --max-busy busy or late past --max-lag (with MIN_CPU of its own).
# * and never while the process holds fewer than MIN_STREAMS streams: refusing streams would shed nothing.
SUSTAIN_S = 2.0
MIN_CPU = 0.25
MIN_STREAMS = 3
FREE_STREAMS = 32
SLOW_START = 8
SLOW_FRACTION = 0.5
GROWTH = 0.5
TRUST = 1.5


WAITED_S = 0.001  # a read that took this long waited for its client: the stream had read all it was sent
STREAM_LAG_EVERY_S = 0.25  # how often the monitor reads its streams' ReadClocks
STREAM_LAG_QUANTILE = 0.9  # the streams' lag it takes: this quantile over the open streams
# the streams' lag is no spike of handshakes: over --max-lag this long (with MIN_CPU) refuses. Streams admitted
# while a process is over its capacity lag for their whole life, so the sooner the better
STREAM_SUSTAIN_S = 0.5


class ReadClock:
    """How far one stream's reading has fallen behind the audio its client sends, read where the backlog
    waits: in the sockets' buffers, which the event loop's lateness and the pool's queue do not see (a session
    reads its next message only once its last one is processed, so an overloaded server leaves the audio it
    has not got to in the kernel's buffers and the client's).

    The session calls :meth:`reading` before each read and :meth:`read` after it, with the audio seconds
    read so far. A read that waits (``WAITED_S`` or longer) found nothing sent and unread: the stream was
    caught up, and ``offset``, the wall time since its first audio minus the audio read, is what the client's
    own pace leaves (a client that streams in real time keeps it about constant). :meth:`lag` is how much that
    has grown since: the seconds of audio sent (at real time) and not yet read. A client sending faster than
    real time (a file) reads as ahead (never late); one that pauses leaves its reads waiting (caught up)."""

    __slots__ = ("first", "offset", "audio_s", "since")

    def __init__(self):
        self.first: float | None = None  # time.monotonic() of the first audio read
        self.offset = 0.0
        self.audio_s = 0.0
        self.since: float | None = None  # when the read in progress began

    def reading(self, now: float) -> None:
        self.since = now

    def read(self, now: float, audio_s: float) -> None:
        waited = self.since is None or now - self.since >= WAITED_S
        self.since = None
        if self.first is None:
            self.first = now
        self.audio_s = audio_s
        if waited:
            self.offset = (now - self.first) - audio_s

    def lag(self, now: float) -> float:
        if self.first is None or (self.since is not None and now - self.since >= WAITED_S):
            return 0.0  # no audio yet, or waiting for the client now: caught up
        return max(0.0, (now - self.first) - self.audio_s - self.offset)


class TimedExecutor(concurrent.futures.ThreadPoolExecutor):
    """A ThreadPoolExecutor whose CPU time can be read: :meth:`cpu_s`, the sum of its worker threads' own CPU
    clocks (time waiting for the CPU or the GIL does not count, and a long job counts as it runs). Where
    another thread's clock cannot be read (``time.pthread_getcpuclockid``: Unix), the jobs' CPU time is added
    up as each job ends."""

    def __init__(self, max_workers: int, **kwargs):
        super().__init__(max_workers, **kwargs)
        self.workers = max_workers
        self._clocks: dict[int, float] = {}  # worker thread ident -> its CPU seconds when last read
        self._jobs_s = 0.0  # the fallback
        self._jobs_lock = threading.Lock()

    def cpu_s(self) -> float:
        if not _THREAD_CLOCKS:
            return self._jobs_s
        for t in list(self._threads):
            try:
                self._clocks[t.ident] = time.clock_gettime(time.pthread_getcpuclockid(t.ident))
            except (OSError, TypeError):  # not started yet, or ended (it keeps what it had)
                pass
        return sum(self._clocks.values())

    def submit(self, fn, /, *args, **kwargs):
        if _THREAD_CLOCKS:
            return super().submit(fn, *args, **kwargs)
        return super().submit(self._timed, fn, args, kwargs)

    def _timed(self, fn, args, kwargs):
        t = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            dt = time.thread_time() - t
            with self._jobs_lock:
                self._jobs_s += dt


_THREAD_CLOCKS = hasattr(time, "pthread_getcpuclockid")


class LoadMonitor:
    """The load of one process and whether it has room for one more stream.

    Measured each ``PROBE_S`` and averaged over about ``window`` seconds:

    * ``lag_s``: the largest of the event loop's lateness (this timer's), the pool's queue wait (an empty
      probe job, submitted unless the previous one is still queued; a queued probe counts with the time it
      has waited so far, so a pool that starts nothing still reads as loaded) and ``stream_lag_s``, the
      ``STREAM_LAG_QUANTILE`` of the open streams' :class:`ReadClock` lags (``sessions()``: objects with a
      ``clock``; read every ``STREAM_LAG_EVERY_S``): audio their clients sent that waits unread;
    * ``loop_cpu`` / ``pool_cpu``: the fraction of the time the event loop's thread runs on a CPU (its thread
      clock, read by this timer, which runs in it) and the fraction of the pool's threads' time its jobs run
      on a CPU (a :class:`TimedExecutor`'s ``cpu_s()``); ``cpu``: the two in cores (loop + pool CPU seconds
      per second), the process's own work.

    :meth:`refusal` (and :meth:`room`) refuse a stream only on measured overload (a limit of 0 is off):

    * lag: over ``max_lag`` while ``cpu`` is at least ``MIN_CPU``, at every probe for ``SUSTAIN_S`` (the
      streams' lag alone, unaveraged: for ``STREAM_SUSTAIN_S``); then no
      until the lag is back under ``RESUME_FRACTION`` of it or ``cpu`` under that fraction of ``MIN_CPU``;
    * busy: ``loop_cpu`` or ``pool_cpu`` over ``max_busy`` at every probe for ``SUSTAIN_S``;
    * the look-ahead, from ``FREE_STREAMS`` streams open. Lag only grows once a process is past
      what it can do, and a stream admitted then makes every open stream late until streams end; a new
      stream's work shows in the averages only a second or two after it is admitted (``pending`` counts those
      streams still open, decaying over ``PENDING_WINDOWS`` windows), too late for a burst of arrivals. So each
      process learns what one stream costs of its loop's and of its pool's CPU (``loop_cost``, ``pool_cost``:
      CPU fraction per stream, averaged over the steady periods, when few streams are pending) and refuses
      when that cost times the streams open plus the newcomer is over ``max_busy`` (:meth:`predicted_busy`:
      that, or what is measured now if more), or, past ``TRUST`` times the most streams of a steady period
      (where the linear cost was measured), while ``max(SLOW_START, GROWTH x streams)`` or more are pending
      and it is ``SLOW_FRACTION`` of ``max_busy`` busy already or its own lag is over ``max_lag`` (not yet
      for ``SUSTAIN_S``): a burst into an idle process is taken until its CPU or its lateness shows it
      (batching makes the cost per stream fall as the streams grow, so the first costs overstate it).

    None of them refuses while the process holds fewer than ``MIN_STREAMS`` streams. ``streams()`` gives this
    process's open streams, ``sessions()`` their sessions. ``on_sample(monitor)`` (optional) is called after
    each probe (the server publishes the figures)."""

    def __init__(self, executor, *, max_lag: float, max_busy: float, streams=lambda: 0, sessions=lambda: (),
                 on_sample=None, window: float = LOAD_WINDOW_S, every: float = PROBE_S):
        self.executor, self.max_lag, self.max_busy = executor, max_lag, max_busy
        self.streams, self.sessions, self.on_sample = streams, sessions, on_sample
        self.window, self.every = window, every
        self.lag_s = self.loop_cpu = self.pool_cpu = self.cpu = self.stream_lag_s = 0.0
        self._stream_lag_due = 0.0
        self.loop_cost: float | None = None  # CPU fraction per stream, learned in steady periods
        self.pool_cost: float | None = None
        self.pending = 0.0  # admitted streams still open and not yet reflected in the CPU fractions
        self.learned_streams = 0  # the most streams open in a steady period
        self.lag_over_s = self.busy_over_s = 0.0  # how long the lag / CPU fraction has been over its limit
        self.stream_over_s = 0.0  # ... and the streams' lag alone
        self.lag_ok = True  # with hysteresis
        self.accepting = True  # room() at the last probe
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = self._last = self._loop_cpu0 = self._pool_cpu0 = 0.0
        self._probe_sent: float | None = None  # time.monotonic() of the queued pool probe
        self._probe_wait: float | None = None  # its wait, set by the worker that starts it

    # -- the signal
    def predicted_busy(self, extra: int = 1) -> float:
        """The larger CPU fraction (loop or pool) with ``extra`` more streams: what is measured now, or
        the learned cost per stream times the streams, whichever is more."""
        n = self.streams() + extra
        return max(self.loop_cpu, self.pool_cpu, (self.loop_cost or 0.0) * n, (self.pool_cost or 0.0) * n)

    @property
    def load(self) -> float:
        """The larger of lag over ``max_lag`` (while ``cpu`` is at least ``MIN_CPU``: lateness that is the
        process's own) and predicted CPU fraction over ``max_busy``: 1 and more is full."""
        own_lag = self.max_lag > 0 and self.cpu >= MIN_CPU
        return max(self.lag_s / self.max_lag if own_lag else 0.0,
                   self.predicted_busy() / self.max_busy if self.max_busy > 0 else 0.0)

    def refusal(self) -> str | None:
        """Why one more stream may not come in, with the figures (the rule that refuses); None: it may."""
        n = self.streams()
        if n < MIN_STREAMS:
            return None
        if not self.lag_ok:
            return (f"its work runs {self.lag_s * 1000:.0f} ms late while it uses {self.cpu:.2f} cores itself "
                    f"(its streams' {self.stream_lag_s * 1000:.0f} ms; over --max-lag {self.max_lag:g} s with at "
                    f"least {MIN_CPU:g} cores for {SUSTAIN_S:g} s, its streams' for {STREAM_SUSTAIN_S:g} s; "
                    f"it accepts again under {RESUME_FRACTION * self.max_lag * 1000:.0f} ms)")
        if self.max_busy <= 0:
            return None
        if self.busy_over_s >= SUSTAIN_S:
            which = "event loop" if self.loop_cpu >= self.pool_cpu else "worker pool"
            return (f"its {which} has used over --max-busy {self.max_busy:g} of its CPU time for "
                    f"{self.busy_over_s:.1f} s (now {max(self.loop_cpu, self.pool_cpu):.0%})")
        if n < FREE_STREAMS:
            return None
        pending = min(self.pending, n)
        now = max(self.loop_cpu, self.pool_cpu)
        late = self.max_lag > 0 and self.lag_s > self.max_lag and self.cpu >= MIN_CPU
        if ((now >= SLOW_FRACTION * self.max_busy or late) and n + 1 > TRUST * self.learned_streams
                and pending >= max(SLOW_START, GROWTH * n)):
            return (f"slow start: {pending:.0f} of its {n} streams were admitted too recently to be measured, "
                    f"it measured at most {self.learned_streams} streams at once, and it is {now:.0%} busy "
                    f"and {self.lag_s * 1000:.0f} ms late already")
        cost = max(self.loop_cost or 0.0, self.pool_cost or 0.0)
        if cost * (n + 1) > self.max_busy:
            return (f"one more stream would make it {cost * (n + 1):.0%} busy ({n + 1} streams at the "
                    f"{cost:.2%} CPU each it measured), over --max-busy {self.max_busy:g}")
        return None

    def room(self) -> bool:
        """May one more stream come in? (:meth:`refusal` says why not.)"""
        return self.refusal() is None

    def admitted(self) -> float:
        """A stream came in (its load shows in the averages over the next ``PENDING_WINDOWS`` windows); the
        time to give :meth:`ended` when it ends."""
        self.pending += 1.0
        return time.monotonic()

    def ended(self, admitted_at: float) -> None:
        """A stream admitted at ``admitted_at`` ended: what is left of it in ``pending`` goes too (a storm of
        streams that end at once is not a burst the averages have yet to show)."""
        age = time.monotonic() - admitted_at
        self.pending = max(0.0, self.pending - math.exp(-age / (PENDING_WINDOWS * self.window)))

    def retry_after(self) -> float:
        """The hint a refused client gets: 1 to 2 windows, jittered so that refused clients do not all
        come back at once."""
        return round(self.window * (1.0 + random.random()), 1)

    # -- the probe
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_cpu0 = time.thread_time()
        self._pool_cpu0 = self.executor.cpu_s() if hasattr(self.executor, "cpu_s") else 0.0
        self._due = self._last = self._loop.time() + self.every
        self._handle = self._loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.accepting = False

    def _started(self, sent: float) -> None:  # runs in a worker thread
        self._probe_wait = time.monotonic() - sent

    def _pool_wait(self) -> float:
        now = time.monotonic()
        if self._probe_sent is not None:
            if self._probe_wait is None:
                return now - self._probe_sent  # still queued: at least this long
            wait = self._probe_wait
        else:
            wait = 0.0
        self._probe_sent = self._probe_wait = None
        try:
            self.executor.submit(self._started, now)
            self._probe_sent = now
        except RuntimeError:  # the pool is shut down
            pass
        return wait

    def _learn(self, dt: float) -> None:
        """In a steady period (enough streams, few pending), average the CPU fractions per stream."""
        n = self.streams()
        if n < 4 or self.pending > STEADY_FRACTION * n:
            return
        self.learned_streams = max(self.learned_streams, n)
        b = 1.0 - math.exp(-dt / COST_WINDOW_S)
        loop, pool = self.loop_cpu / n, self.pool_cpu / n
        self.loop_cost = loop if self.loop_cost is None else self.loop_cost + (loop - self.loop_cost) * b
        self.pool_cost = pool if self.pool_cost is None else self.pool_cost + (pool - self.pool_cost) * b

    def _judge(self, dt: float) -> None:
        """``dt`` more seconds at the averages now: how long the CPU fraction and the process's own lag have
        been over their limits, and whether the lag is ok (with hysteresis)."""
        self.busy_over_s = self.busy_over_s + dt if max(self.loop_cpu, self.pool_cpu) > self.max_busy else 0.0
        own = self.cpu >= MIN_CPU
        self.lag_over_s = self.lag_over_s + dt if own and self.lag_s > self.max_lag else 0.0
        self.stream_over_s = self.stream_over_s + dt if own and self.stream_lag_s > self.max_lag else 0.0
        if self.max_lag > 0:
            if self.lag_ok and (self.lag_over_s >= SUSTAIN_S or self.stream_over_s >= STREAM_SUSTAIN_S):
                self.lag_ok = False
            elif not self.lag_ok and (max(self.lag_s, self.stream_lag_s) < RESUME_FRACTION * self.max_lag
                                      or self.cpu < RESUME_FRACTION * MIN_CPU):
                self.lag_ok = True

    def _stream_lag(self) -> float:
        """``STREAM_LAG_QUANTILE`` of the open streams' ReadClock lags, read every ``STREAM_LAG_EVERY_S``."""
        now = time.monotonic()
        if now >= self._stream_lag_due:
            self._stream_lag_due = now + STREAM_LAG_EVERY_S
            lags = sorted(s.clock.lag(now) for s in list(self.sessions()))
            self.stream_lag_s = lags[min(len(lags) - 1, int(STREAM_LAG_QUANTILE * len(lags)))] if lags else 0.0
        return self.stream_lag_s

    def _tick(self) -> None:
        now = self._loop.time()
        dt = max(now - self._last, 1e-6)
        self._last = now
        a = 1.0 - math.exp(-dt / self.window)
        self.lag_s += (max(now - self._due, self._pool_wait(), self._stream_lag(), 0.0) - self.lag_s) * a
        t_cpu = time.thread_time()
        loop_s, self._loop_cpu0 = t_cpu - self._loop_cpu0, t_cpu
        pool_s = 0.0
        if hasattr(self.executor, "cpu_s"):
            pool_now = self.executor.cpu_s()
            pool_s, self._pool_cpu0 = max(0.0, pool_now - self._pool_cpu0), pool_now
        self.loop_cpu += (min(1.0, loop_s / dt) - self.loop_cpu) * a
        # (where a job's CPU counts only when it ends, a long one may push one sample past 1)
        workers = getattr(self.executor, "workers", 1)
        self.pool_cpu = min(1.0, self.pool_cpu + (pool_s / (dt * workers) - self.pool_cpu) * a)
        self.cpu += ((loop_s + pool_s) / dt - self.cpu) * a
        self.pending *= math.exp(-dt / (PENDING_WINDOWS * self.window))
        self._learn(dt)
        self._judge(dt)
        self.accepting = self.room()
        if self.on_sample is not None:
            self.on_sample(self)
        self._due = now + self.every
        self._handle = self._loop.call_at(self._due, self._tick)

"""Batching across streams (``serve --batch-ms``): the pushes of a process's streams that may end a hop wait
up to a tick and go to the worker pool together, as one :func:`realtime.batching.run_many` job.

One :class:`HopBatcher` per worker pool (:func:`hop_batcher`). A session hands it the steps of one push
(``Engine.push_steps``) and awaits that stream's events; a stream has at most one push waiting, so its
order and its backpressure stay as without batching. A batch leaves when the tick since its first push
has passed, or at once when ``MAX_BATCH`` pushes wait; while every worker already runs a batch, pushes
keep gathering until one is free (so the busier the server, the larger its batches), and a batch that ends
sends the next one off at once.

A batch's arrays are larger than one window's, large enough that glibc's malloc would map and unmap them
afresh for every batch (page faults cost as much as the batching saved); a process that batches has
malloc keep them on its heap instead (:func:`keep_freed_memory`).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import functools
import logging
import time
import weakref
from typing import TYPE_CHECKING

from .config import ServerConfig

if TYPE_CHECKING:
    from ..engine import Steps
    from ..events import Event

__all__ = ["MAX_BATCH", "HopBatcher", "hop_batcher", "keep_freed_memory"]

MAX_BATCH = 256  # pushes in one batch job at the most
LOG_EVERY_S = 60.0  # how often the batcher logs what it did (at INFO)

log = logging.getLogger("realtime.server")

_BATCHERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # worker pool -> its HopBatcher


def hop_batcher(executor: concurrent.futures.Executor, limits: ServerConfig) -> HopBatcher | None:
    """The batcher of this worker pool (one per server), made on first use in the server's event loop;
    None when ``limits.batch_ms`` is 0 (no batching: each push is its own job)."""
    if not limits.batch_ms:
        return None
    batcher = _BATCHERS.get(executor)
    if batcher is None:
        keep_freed_memory()
        batcher = _BATCHERS[executor] = HopBatcher(executor, limits.batch_ms / 1000, limits.workers)
    return batcher


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 128 << 20) -> bool:
    """glibc only (elsewhere a no-op, False): serve allocations below ``mmap_threshold`` bytes from the heap,
    and give freed heap memory back to the system only beyond ``trim_threshold`` (``mallopt``), for this
    whole process. Else every batch maps its arrays of a few MB afresh and pays a page fault per 4 KiB
    (in a loaded server, 8-9 % of its CPU); the price is the freed memory kept, a few tens of MB."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, mmap_threshold)) & bool(mallopt(m_trim_threshold, trim_threshold))


class HopBatcher:
    """Gathers pushes for up to ``tick_s`` and runs them in ``executor`` as one job, at most ``max_jobs``
    jobs at once. ``batches``, ``pushes`` and ``largest`` count what it did."""

    def __init__(self, executor: concurrent.futures.Executor, tick_s: float, max_jobs: int,
                 max_batch: int = MAX_BATCH):
        self.loop = asyncio.get_running_loop()
        self._executor = weakref.ref(executor)  # the pool owns its batcher, not the other way round
        self.tick_s, self.max_jobs, self.max_batch = tick_s, max_jobs, max_batch
        self._queue: list[tuple[Steps, asyncio.Future]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._running = 0
        self.batches = self.pushes = self.largest = 0
        self._logged = (time.monotonic(), 0, 0)  # when it last logged, and its counts then

    async def run(self, steps: Steps) -> list[Event]:
        """The events of one push (its steps), run in the next batch."""
        fut = self.loop.create_future()
        self._queue.append((steps, fut))
        if len(self._queue) >= self.max_batch:
            self._send()
        elif self._timer is None:
            self._timer = self.loop.call_later(self.tick_s, self._tick)
        try:
            return await fut
        finally:
            # a failed push's exception, raised here, keeps this frame in its traceback, and the future keeps
            # the exception: without this, a reference cycle keeping the stream's frames (and its Engine)
            # until a full garbage collection
            del fut

    def _tick(self) -> None:
        self._timer = None
        self._send()

    def _send(self) -> None:
        """Send the waiting pushes off as one job, if a worker is free (else the end of a job sends them)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._running >= self.max_jobs:
            return
        batch = [(s, f) for s, f in self._queue[: self.max_batch] if not f.done()]  # done: its session was cancelled
        del self._queue[: self.max_batch]
        if self._queue:
            self._timer = self.loop.call_later(self.tick_s, self._tick)
        if not batch:
            return
        from ..batching import run_many  # onnxruntime loads with the first stream, not with the server

        executor = self._executor()
        try:
            if executor is None:
                raise RuntimeError("the server's worker pool is gone")
            job = self.loop.run_in_executor(executor, run_many, [s for s, _ in batch])
        except RuntimeError as exc:  # the pool was shut down: the server is stopping
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        self._running += 1
        self.batches += 1
        self.pushes += len(batch)
        self.largest = max(self.largest, len(batch))
        job.add_done_callback(functools.partial(self._done, batch))

    def _done(self, batch: list[tuple[Steps, asyncio.Future]], job: asyncio.Future) -> None:
        self._running -= 1
        if job.cancelled():
            results = None
        elif job.exception() is not None:
            results = [job.exception()] * len(batch)
        else:
            results = job.result()
        for i, (_, fut) in enumerate(batch):
            if fut.done():
                continue
            r = results[i] if results is not None else None
            if results is None:
                fut.cancel()
            elif isinstance(r, BaseException):
                fut.set_exception(r)
            else:
                fut.set_result(r)
        if self._queue:  # they waited for a free worker: send them now
            self._send()
        t, batches, pushes = self._logged
        now = time.monotonic()
        if now - t >= LOG_EVERY_S:
            self._logged = (now, self.batches, self.pushes)
            log.info("batching: %d pushes in %d batches in the last %.0f s (%.1f a batch; largest so far %d)",
                     self.pushes - pushes, self.batches - batches, now - t,
                     (self.pushes - pushes) / max(self.batches - batches, 1), self.largest)

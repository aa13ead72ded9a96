"""A fixed-size, thread-safe single-channel ring buffer between an audio callback and a reader.

The audio callback calls :meth:`RingBuffer.write`, which holds the lock only for a memcpy into a
preallocated array and a ``notify_all``: no allocation proportional to the data, no compute.
When the reader falls behind, the oldest unread samples are overwritten (live audio should stay
live) and counted in :attr:`overruns` / :attr:`dropped_samples`.

The reader calls :meth:`read`, which waits on a :class:`threading.Condition` (no busy-wait).
:meth:`latest` reads the most recent samples written regardless of what has been read, so the
same buffer also serves as a sliding history.
"""
from __future__ import annotations

import threading

import numpy as np

__all__ = ["RingBuffer"]


class RingBuffer:
    """Preallocated ring of ``capacity_samples`` samples of ``dtype`` (1-D, one channel).

    Positions are kept as monotonically increasing sample counts (``total_written``, read
    position), so wraparound is just ``pos % capacity``.
    """

    def __init__(self, capacity_samples: int, dtype=np.float32):
        capacity_samples = int(capacity_samples)
        if capacity_samples <= 0:
            raise ValueError(f"capacity_samples must be positive, got {capacity_samples}")
        self._buf = np.zeros(capacity_samples, dtype=dtype)
        self._cap = capacity_samples
        self._write_pos = 0  # total samples ever written (after dropping what could not fit)
        self._read_pos = 0  # total samples consumed or dropped
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self.overruns = 0  # number of writes that had to drop unread data
        self.dropped_samples = 0  # unread samples lost to overruns

    # ------------------------------------------------------------------ properties
    @property
    def capacity(self) -> int:
        return self._cap

    @property
    def dtype(self) -> np.dtype:
        return self._buf.dtype

    @property
    def available(self) -> int:
        """Unread samples ready for :meth:`read`."""
        with self._cond:
            return self._write_pos - self._read_pos

    @property
    def total_written(self) -> int:
        """Samples written since creation (including ones later dropped)."""
        with self._cond:
            return self._write_pos

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ writer side
    def write(self, x) -> int:
        """Append samples (any array-like; flattened). Safe to call from an audio callback.

        Never blocks for long and never raises on overflow: if the unread data plus ``x`` exceed
        the capacity, the oldest unread samples are dropped (and counted). Writes after
        :meth:`close` are ignored. Returns the number of samples written.
        """
        x = np.asarray(x).reshape(-1)
        n = x.shape[0]
        if n == 0:
            return 0
        cap = self._cap
        with self._cond:
            if self._closed:
                return 0
            unread = self._write_pos - self._read_pos
            overflow = unread + n - cap
            if n > cap:  # only the newest `cap` samples of x can survive
                x = x[n - cap:]
            k = x.shape[0]
            new_pos = self._write_pos + n
            start = (new_pos - k) % cap
            first = min(k, cap - start)
            self._buf[start:start + first] = x[:first]
            if first < k:
                self._buf[: k - first] = x[first:]
            self._write_pos = new_pos
            if overflow > 0:
                self._read_pos = new_pos - cap
                self.overruns += 1
                self.dropped_samples += overflow
            self._cond.notify_all()
        return n

    def close(self) -> None:
        """Mark the buffer closed and wake any waiting reader. Unread data can still be read."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # ------------------------------------------------------------------ reader side
    def _copy_out(self, start_pos: int, k: int) -> np.ndarray:
        cap = self._cap
        start = start_pos % cap
        first = min(k, cap - start)
        if first == k:
            return self._buf[start:start + k].copy()
        return np.concatenate((self._buf[start:], self._buf[: k - first]))

    def read(self, n: int | None = None, timeout: float | None = None) -> np.ndarray:
        """Consume unread samples, waiting on a condition variable (no polling).

        * ``n=None``: wait until at least one sample is unread, then return all unread samples.
        * ``n=int``: wait until ``n`` samples are unread, then return exactly ``n``.

        If ``timeout`` seconds pass or the buffer is closed first, return whatever is unread (up to
        ``n``), possibly an empty array. ``timeout=None`` waits indefinitely (until data or close).
        """
        if n is not None:
            n = int(n)
            if n < 0:
                raise ValueError(f"n must be >= 0, got {n}")
            if n > self._cap:
                raise ValueError(f"cannot read {n} samples at once from a ring of {self._cap}")
        need = 1 if n is None else n
        with self._cond:
            self._cond.wait_for(lambda: self._closed or self._write_pos - self._read_pos >= need, timeout)
            unread = self._write_pos - self._read_pos
            k = unread if n is None else min(n, unread)
            out = self._copy_out(self._read_pos, k)
            self._read_pos += k
            return out

    def latest(self, n: int) -> np.ndarray:
        """Copy of the last ``n`` samples written (read or not); shorter if fewer were ever written."""
        n = int(n)
        if n < 0 or n > self._cap:
            raise ValueError(f"latest(n) needs 0 <= n <= capacity ({self._cap}), got {n}")
        with self._cond:
            k = min(n, self._write_pos)
            return self._copy_out(self._write_pos - k, k)

    def clear(self) -> None:
        """Discard unread samples (not counted as dropped)."""
        with self._cond:
            self._read_pos = self._write_pos

    def __len__(self) -> int:
        return self.available

    def __repr__(self) -> str:
        return (f"RingBuffer(capacity={self._cap}, available={self.available}, "
                f"overruns={self.overruns}, dropped_samples={self.dropped_samples}, closed={self._closed})")

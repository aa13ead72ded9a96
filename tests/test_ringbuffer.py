import threading
import time

import numpy as np
import pytest

from realtime.ringbuffer import RingBuffer


def test_write_read_and_available():
    rb = RingBuffer(10)
    assert rb.available == 0 and rb.capacity == 10 and rb.dtype == np.float32
    assert rb.write(np.arange(4, dtype=np.float32)) == 4
    assert rb.available == 4
    np.testing.assert_array_equal(rb.read(), [0, 1, 2, 3])
    assert rb.available == 0
    assert rb.read(timeout=0.01).size == 0


def test_wraparound_keeps_order():
    rb = RingBuffer(10)
    rb.write(np.arange(7))
    np.testing.assert_array_equal(rb.read(5), [0, 1, 2, 3, 4])
    rb.write(np.arange(7, 13))  # wraps: positions 7,8,9,0,1,2
    np.testing.assert_array_equal(rb.read(), np.arange(5, 13))
    # many small wrapping writes/reads
    nxt = 13
    expect = 13
    rng = np.random.default_rng(0)
    for _ in range(200):
        k = int(rng.integers(1, rb.capacity - rb.available + 1))  # never overflow here
        rb.write(np.arange(nxt, nxt + k))
        nxt += k
        out = rb.read(int(rng.integers(1, rb.available + 1)))
        np.testing.assert_array_equal(out, np.arange(expect, expect + out.size))
        expect += out.size
    assert rb.overruns == 0


def test_overrun_keeps_newest_and_counts():
    rb = RingBuffer(10)
    rb.write(np.arange(8))
    rb.write(np.arange(8, 13))  # 13 unread > 10: 3 oldest dropped
    assert rb.overruns == 1 and rb.dropped_samples == 3
    np.testing.assert_array_equal(rb.read(), np.arange(3, 13))
    rb.write(np.arange(100, 125))  # a single write larger than the ring
    assert rb.overruns == 2 and rb.dropped_samples == 3 + 15
    np.testing.assert_array_equal(rb.read(), np.arange(115, 125))
    assert rb.total_written == 13 + 25


def test_latest_is_history_independent_of_reads():
    rb = RingBuffer(8)
    assert rb.latest(3).size == 0
    rb.write(np.arange(5))
    np.testing.assert_array_equal(rb.latest(3), [2, 3, 4])
    np.testing.assert_array_equal(rb.latest(8), np.arange(5))  # fewer written than asked
    rb.read()
    rb.write(np.arange(5, 11))  # wraps
    np.testing.assert_array_equal(rb.latest(8), np.arange(3, 11))
    out = rb.latest(4)
    out[:] = -1  # a copy
    np.testing.assert_array_equal(rb.latest(4), [7, 8, 9, 10])
    with pytest.raises(ValueError):
        rb.latest(9)


def test_read_n_blocks_until_enough_then_timeout_partial():
    rb = RingBuffer(100)
    rb.write(np.ones(3))
    t0 = time.monotonic()
    out = rb.read(5, timeout=0.1)  # only 3 there: returns them after the timeout
    assert 0.08 < time.monotonic() - t0 < 1.0 and out.size == 3

    def later():
        time.sleep(0.05)
        rb.write(np.arange(5))

    threading.Thread(target=later).start()
    out = rb.read(5, timeout=5)
    np.testing.assert_array_equal(out, np.arange(5))
    with pytest.raises(ValueError):
        rb.read(101)


def test_close_wakes_reader_and_leftover_still_readable():
    rb = RingBuffer(100)
    got = []
    t = threading.Thread(target=lambda: got.append(rb.read()))
    t.start()
    time.sleep(0.05)
    rb.close()
    t.join(2)
    assert not t.is_alive() and got[0].size == 0
    rb2 = RingBuffer(10)
    rb2.write(np.arange(4))
    rb2.close()
    assert rb2.write(np.arange(3)) == 0  # ignored after close
    np.testing.assert_array_equal(rb2.read(), np.arange(4))


def test_waiting_reader_does_not_burn_cpu():
    rb = RingBuffer(100)
    c0 = time.thread_time()
    rb.read(timeout=0.3)
    assert time.thread_time() - c0 < 0.05


def _writer(rb, total, rng_seed, pause_every=0):
    rng = np.random.default_rng(rng_seed)
    pos = 0
    i = 0
    while pos < total:
        k = int(min(total - pos, rng.integers(1, 600)))
        rb.write(np.arange(pos, pos + k, dtype=np.float64))
        pos += k
        i += 1
        if pause_every and i % pause_every == 0:
            time.sleep(0.0005)
    rb.close()


def _drain(rb, pause=0.0):
    """Read until the writer has closed the ring and it is empty; return the chunks read."""
    parts = []
    while True:
        x = rb.read(timeout=1.0)
        if x.size == 0 and rb.closed and rb.available == 0:
            return parts
        parts.append(x)
        if pause:
            time.sleep(pause)


def test_thread_safety_no_loss_with_large_ring():
    total = 300_000
    rb = RingBuffer(total, dtype=np.float64)
    th = threading.Thread(target=_writer, args=(rb, total, 1))
    th.start()
    parts = _drain(rb)
    th.join()
    np.testing.assert_array_equal(np.concatenate(parts), np.arange(total))
    assert rb.overruns == 0


def test_thread_safety_with_overruns_accounts_every_sample():
    total = 200_000
    rb = RingBuffer(1000, dtype=np.float64)
    th = threading.Thread(target=_writer, args=(rb, total, 2))
    th.start()
    parts = _drain(rb, pause=0.0002)  # a slow reader
    th.join()
    out = np.concatenate(parts)
    # what was read is strictly increasing, each read contiguous, and read + dropped == written
    assert np.all(np.diff(out) > 0)
    for p in parts:
        np.testing.assert_array_equal(p, np.arange(p[0], p[0] + p.size))
    assert out.size + rb.dropped_samples == total
    assert rb.overruns > 0
    assert out[-1] == total - 1  # the newest data always survives

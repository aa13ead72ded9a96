"""Soak test of ``python -m realtime serve``: ``python -m realtime soak`` (not part of CI).

    python -m realtime soak --minutes 10 --streams 100 --churn 20      # spawns its own server
    python -m realtime soak --minutes 0 --storm 20000                  # only the connection storm

For ``--minutes``, ``--streams`` good clients stream real recordings at real time (100 ms messages,
WebSocket and raw TCP alternately, with the server's token), one after another, while ``--churn``
misbehaving clients per second connect beside them: clients that vanish (reset) before their config,
after it, right after ``ready`` and mid-audio; silent and trickling connections; wrong tokens; bad
configs; huge float samples at 44.1 kHz; oversize WebSocket frames; bursts of bare connect/close.
Every good stream's estimates are compared with a solo run of the same audio through a local Engine
(labels exact, probabilities within 1e-6). The server's RSS is printed every ``--every`` seconds.

``--storm N`` first runs N bare connect/close cycles (and N/50 config-then-close connections) from
four threads while good clients stream short recordings one after another, and counts the good
clients refused (they send 1 s of audio at once, four at a time). Exit status 0 when every good
stream matched its solo run, none was refused, and the server's RSS grew by less than
``--max-growth-mb`` from the first sample after the warm-up (the first minute, or a third of the
soak) to the last.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import struct
import threading
import time
from pathlib import Path

import numpy as np

__all__ = ["add_parser"]

TOKEN = "soak-token"
KINDS = ("vanish_before_config", "vanish_after_config", "vanish_after_ready", "vanish_mid_audio", "silent", "trickle",
         "wrong_token", "bad_config", "huge_f32", "oversize_frame", "connect_close_burst")


def _solo(pcm: bytes) -> list[tuple]:
    """The estimates of one stream alone: a fresh local Engine on the same samples."""
    from .audio import pcm16_to_float
    from .bundle import Bundle
    from .engine import Engine
    from .sinks import clean_event

    bundle = _solo.bundle = getattr(_solo, "bundle", None) or Bundle.load()
    engine = Engine(bundle)
    return [_key(clean_event(e)) for e in engine.run(np.array_split(pcm16_to_float(pcm), 20))]


def _key(ev: dict) -> tuple:
    """What must be identical between a served stream and its solo run (timings excluded)."""
    return (ev["t"], ev["label"], ev["speech"], ev.get("window_p_female"), ev.get("p_female"))


def _same(a: list[tuple], b: list[tuple]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x[:3] != y[:3]:
            return False
        for u, v in zip(x[3:], y[3:]):
            if (u is None) != (v is None) or (u is not None and abs(u - v) > 1e-6):
                return False
    return True


class _Stats:
    def __init__(self):
        self.good_done = self.good_same = 0
        self.good_errors: list[str] = []
        self.churn = {k: 0 for k in KINDS}


def _reset(sock) -> None:
    """Vanish: close with RST."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except (OSError, AttributeError):
        pass


async def _open(url: str):
    """A connection for the soak. No keepalive pings (as the server): a pong queued behind audio on a loaded
    machine would make the client itself close a healthy stream with 1011 "keepalive ping timeout"."""
    from .client import AsyncStream

    return await AsyncStream.open(url, timeout=30, ping_interval=None)


def _close(stream) -> None:
    """Close without waiting for the closing handshake (the soak goes on meanwhile)."""
    asyncio.ensure_future(stream.close())


async def _good_stream(url: str, pcm: bytes, solo: list[tuple], stats: _Stats, *, token: str,
                       paced: bool = True) -> None:
    loop = asyncio.get_running_loop()
    events, err = [], None
    stream = None
    try:
        stream = await _open(url)
        await stream.send(json.dumps({"token": token}))
        ready = await asyncio.wait_for(stream.recv(), 30)
        if not ready or ready.get("event") != "ready":
            raise RuntimeError(f"no ready: {ready}")
        task = asyncio.ensure_future(stream.send_paced(pcm, 0.1, loop.time(), paced=paced))
        try:
            while True:
                msg = await asyncio.wait_for(stream.recv(), 60)
                if msg is None:
                    raise RuntimeError("closed before the end message")
                if msg.get("event") is None:
                    events.append(_key(msg))
                elif msg["event"] == "end":
                    break
                else:
                    raise RuntimeError(msg.get("error"))
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    except Exception as exc:  # noqa: BLE001 - a soak test reports every failure
        err = f"{type(exc).__name__}: {exc}"
        if stream is not None:
            with contextlib.suppress(Exception):
                err += f" [{url.split(':')[0]} client port {stream.socket.getsockname()[1]}]"
    finally:
        if stream is not None:
            _close(stream)
    stats.good_done += 1
    if err is not None:
        stats.good_errors.append(err)
    elif _same(events, solo):
        stats.good_same += 1
    else:
        stats.good_errors.append(f"estimates differ from the solo run ({len(events)} vs {len(solo)} events)")


async def _misbehave(kind: str, ws_url: str, tcp_url: str, pcm: bytes) -> None:
    url = ws_url if kind in ("oversize_frame",) or (kind.startswith("vanish") and random.random() < 0.3) else tcp_url
    try:
        if kind == "connect_close_burst":
            host, port = tcp_url[len("tcp://"):].rsplit(":", 1)
            for _ in range(50):
                _, w = await asyncio.open_connection(host, int(port))
                w.close()
            return
        stream = await _open(url)
        try:
            if kind == "vanish_before_config":
                if url.startswith("tcp"):
                    await stream.send(b'{"rate": 16')
                _reset(stream.socket)
            elif kind == "vanish_after_config":
                await stream.send(json.dumps({"token": TOKEN}))
                _reset(stream.socket)
            elif kind in ("vanish_after_ready", "vanish_mid_audio"):
                await stream.send(json.dumps({"token": TOKEN}))
                await asyncio.wait_for(stream.recv(), 30)
                if kind == "vanish_mid_audio":
                    await stream.send(pcm[: 32000 * 2])
                    await asyncio.sleep(random.uniform(0.0, 1.0))
                _reset(stream.socket)
            elif kind == "silent":
                await asyncio.sleep(random.uniform(1, 8))
            elif kind == "trickle":
                for _ in range(8):
                    await stream.send(b" ")
                    await asyncio.sleep(1.0)
            elif kind == "wrong_token":
                await stream.send(json.dumps({"token": "guess%d" % random.randrange(10 ** 6)}))
                await asyncio.wait_for(stream.recv(), 30)
            elif kind == "bad_config":
                await stream.send(json.dumps({"rate": 10 ** 3000 if random.random() < 0.5 else "fast", "token": TOKEN}))
                await asyncio.wait_for(stream.recv(), 30)
            elif kind == "huge_f32":
                await stream.send(json.dumps({"rate": 44100, "encoding": "f32le", "token": TOKEN}))
                await asyncio.wait_for(stream.recv(), 30)
                await stream.send(np.tile(np.array([3e38, -3e38], dtype="<f4"), 22050).tobytes())
                await asyncio.wait_for(stream.recv(), 30)
            elif kind == "oversize_frame":
                await stream.send(json.dumps({"token": TOKEN}))
                await asyncio.wait_for(stream.recv(), 30)
                await stream.send(b"\x00" * 400_000)
                await asyncio.wait_for(stream.recv(), 30)
        finally:
            _close(stream)
    except Exception:  # noqa: BLE001 - misbehaving clients get refused: that is the point
        pass


async def _soak(ws_url: str, tcp_url: str, pcms: list[bytes], solos: list[list[tuple]], *, minutes: float,
                streams: int, churn: float, every: float, rss, stats: _Stats) -> list[tuple]:
    loop = asyncio.get_running_loop()
    t_end = loop.time() + minutes * 60
    samples = []
    background: set[asyncio.Task] = set()

    async def good_worker(i: int) -> None:
        await asyncio.sleep(random.uniform(0, 5))
        k = i
        while loop.time() < t_end:
            j = k % len(pcms)
            await _good_stream(ws_url if k % 2 else tcp_url, pcms[j], solos[j], stats, token=TOKEN)
            k += streams

    async def churner() -> None:
        rng = random.Random(1)
        while loop.time() < t_end:
            await asyncio.sleep(rng.expovariate(churn))
            kind = rng.choice(KINDS)
            stats.churn[kind] += 1
            t = asyncio.ensure_future(_misbehave(kind, ws_url, tcp_url, pcms[0]))
            background.add(t)
            t.add_done_callback(background.discard)

    async def sampler() -> None:
        t0 = loop.time()
        while loop.time() < t_end:
            samples.append((round(loop.time() - t0), rss()))
            print(f"t={samples[-1][0]:5d} s  server RSS {samples[-1][1]:7.1f} MB  good streams done {stats.good_done:5d} "
                  f"identical {stats.good_same:5d} failed {len(stats.good_errors)}  misbehaving {sum(stats.churn.values())}",
                  flush=True)
            await asyncio.sleep(every)

    workers = [asyncio.ensure_future(good_worker(i)) for i in range(streams)]
    extra = [asyncio.ensure_future(churner())] if churn > 0 else []
    sample_task = asyncio.ensure_future(sampler())
    await asyncio.gather(*workers, *extra)
    sample_task.cancel()
    await asyncio.gather(sample_task, *background, return_exceptions=True)
    samples.append((round(minutes * 60), rss()))
    return samples


def _storm(ws_url: str, tcp_url: str, pcm: bytes, solo: list[tuple], n: int, stats: _Stats) -> dict:
    host, port = tcp_url[len("tcp://"):].rsplit(":", 1)
    port = int(port)
    left = [n, n // 50]
    lock = threading.Lock()

    def storm(kind: int) -> None:
        while True:
            with lock:
                if left[kind] <= 0:
                    return
                left[kind] -= 1
            try:
                s = socket.create_connection((host, port), timeout=30)
                if kind:
                    s.sendall(json.dumps({"token": TOKEN}).encode() + b"\n")
                s.close()
            except OSError:
                pass

    threads = [threading.Thread(target=storm, args=(k,)) for k in (0, 0, 0, 1)]
    t0 = time.monotonic()
    for t in threads:
        t.start()

    async def good(i: int) -> int:
        k = 0
        while any(t.is_alive() for t in threads):
            await _good_stream(ws_url if (k + i) % 2 else tcp_url, pcm, solo, stats, token=TOKEN, paced=False)
            k += 1
        return k

    async def goods() -> int:
        return sum(await asyncio.gather(*(good(i) for i in range(4))))

    n_good = asyncio.run(goods())
    for t in threads:
        t.join()
    return {"cycles": n, "config_then_close": n // 50, "seconds": round(time.monotonic() - t0, 1),
            "good_clients": n_good}


def _run(args) -> int:
    from .loadtest import default_files, health, load_pcm, rss_mb

    files = [Path(f) for f in args.files] if args.files else default_files(12)
    pcms = load_pcm(files, args.seconds)
    solos = [_solo(p) for p in pcms]
    server_args = f"--token {TOKEN} " + args.server_args
    if args.server_log:  # the spawned server logs everything (INFO: every connection's end) to this file
        import shlex

        server_args += f" --log-file {shlex.quote(str(args.server_log))}"
    from .loadtest import spawn_server

    proc, ws_url, tcp_url = spawn_server(server_args, quiet=not args.server_log)
    stats = _Stats()
    ok = True
    try:
        rss = lambda: rss_mb(proc.pid)  # noqa: E731
        print(f"server pid {proc.pid}: {ws_url} {tcp_url}; RSS at start {rss():.1f} MB", flush=True)
        if args.storm:
            short = pcms[0][: 16000 * 2]  # 1 s, sent at once: many handshakes during the storm
            row = _storm(ws_url, tcp_url, short, _solo(short), args.storm, stats)
            h = health(ws_url)
            row.update(good_identical=stats.good_same, good_failed=len(stats.good_errors), server_busy=h.get("busy"),
                       server_shed=h.get("shed"), server_evicted=h.get("evicted"), rss_mb=round(rss(), 1))
            print("storm:", json.dumps(row), flush=True)
            ok &= not stats.good_errors
            if stats.good_errors:
                print("  first failure:", stats.good_errors[0], flush=True)
        if args.minutes > 0:
            stats = _Stats()
            samples = asyncio.run(_soak(ws_url, tcp_url, pcms, solos, minutes=args.minutes, streams=args.streams,
                                        churn=args.churn, every=args.every, rss=rss, stats=stats))
            h = health(ws_url)
            # growth is counted from the first sample after the warm-up (every good stream started, pools grown)
            warm = min(60.0, args.minutes * 60 / 3)
            first = next((r for t, r in samples if t >= warm), samples[-1][1])
            last = samples[-1][1]
            peak = max(r for _, r in samples)
            summary = {"minutes": args.minutes, "streams": args.streams, "churn_per_s": args.churn,
                       "good_streams": stats.good_done, "identical_to_solo": stats.good_same,
                       "failed": len(stats.good_errors), "misbehaving": sum(stats.churn.values()),
                       "rss_start_mb": round(samples[0][1], 1), "rss_after_warmup_mb": round(first, 1),
                       "rss_peak_mb": round(peak, 1), "rss_last_mb": round(last, 1),
                       "healthz": h}
            print("soak:", json.dumps(summary), flush=True)
            if stats.good_errors:
                import collections

                kinds = collections.Counter(e.split(" [")[0][:80] for e in stats.good_errors)
                print("  failures:", json.dumps(dict(kinds.most_common(5))), flush=True)
                print("  e.g.:", "; ".join(stats.good_errors[:5]), flush=True)
            ok &= not stats.good_errors and last - first < args.max_growth_mb
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except Exception:  # noqa: BLE001
            proc.kill()
    return 0 if ok else 1


def add_parser(subparsers) -> None:
    import argparse

    p = subparsers.add_parser("soak", help="soak a spawned server: real-time streams amid misbehaving clients",
                              description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="length of the soak (default: %(default)s; 0: none)")
    p.add_argument("--streams", type=int, default=100, help="concurrent good real-time streams (default: %(default)s)")
    p.add_argument("--churn", type=float, default=20.0, help="misbehaving clients per second (default: %(default)s)")
    p.add_argument("--storm", type=int, default=0, metavar="N",
                   help="first, N bare connect/close cycles amid good clients (default: none)")
    p.add_argument("--seconds", type=float, default=20.0, help="audio per good stream (default: %(default)s)")
    p.add_argument("--every", type=float, default=30.0, help="seconds between RSS lines (default: %(default)s)")
    p.add_argument("--max-growth-mb", type=float, default=40.0, help="allowed RSS growth (default: %(default)s)")
    p.add_argument("--files", nargs="+", default=None, help="recordings (default: 12 LibriSpeech files)")
    p.add_argument("--server-args", default="", metavar="ARGS", help="extra arguments for the spawned server")
    p.add_argument("--server-log", type=Path, default=None, metavar="FILE", help="the spawned server's log (warnings)")
    p.set_defaults(func=_run)

"""How many live streams does a server hold? ``python -m realtime loadtest``.

    python -m realtime loadtest --spawn --streams 100,200,300            # starts its own server
    python -m realtime loadtest --url ws://127.0.0.1:8765/ --streams 100  # or a running one

N clients in one asyncio loop each stream a real recording (LibriSpeech beside the repository,
or ``--files``) paced at real time in ``--chunk-ms`` messages, as a microphone would deliver it.
Client starts are spread over ``--ramp`` seconds. For every estimate the client measures its
**lag**: arrival time minus the moment the message holding the estimate's last sample (stream time
``t``) had been sent, i.e. the server's delay (queueing, compute, network). A
stream *holds* when it ends without error and its largest lag stays below ``--max-lag``
(default 1 s). A stream the server refuses as ``busy`` (no free stream slot, or it sheds load:
``serve --max-lag``) is counted apart, with how fast the refusal came; the lag figures are those
of the accepted streams. With ``--spawn`` the server runs as a child process (``--server-args``
passed to ``python -m realtime serve``) and its CPU use is reported too.

    python -m realtime loadtest --spawn --streams 100 --waves 100 --seconds 3   # memory over waves
    python -m realtime loadtest --spawn --find 50:800 --seconds 15             # the largest N that holds

``--waves K`` runs each N K times, one wave after another, and reports the spawned server's RSS
after each wave (once its streams are closed) and its growth from the first wave to the last.

``--find LO:HI`` bisects for the largest N that holds (99 % of its streams) and prints the
``serve --max-connections`` to set on that machine (90 % of it): the cap that refuses the rest
``busy`` instead of letting every stream fall behind.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["StreamResult", "run_load", "find_capacity", "HOLD_FRACTION", "spawn_server", "load_pcm", "default_files", "rss_mb", "health", "add_parser"]

from .audio import data_dir

_LIBRISPEECH = data_dir() / "LibriSpeech"  # $VOICEGENDER_DATA/LibriSpeech, else ../shared/data/LibriSpeech


@dataclass
class StreamResult:
    lags: list = field(default_factory=list)
    events: int = 0
    label: str | None = None
    error: str | None = None
    ended: bool = False
    accepted: bool = False  # got its ready message
    busy: bool = False  # refused with {"code": "busy"} (no stream slot, or the server sheds load)
    retry_after_s: float | None = None  # the busy refusal's hint
    answered_s: float | None = None  # from connecting to the ready message or the refusal

    def holds(self, max_lag: float) -> bool:
        return self.ended and self.error is None and self.events > 0 and max(self.lags, default=0.0) < max_lag


def load_pcm(files: list[Path], seconds: float) -> list[bytes]:
    from .audio import float_to_pcm16, load_audio

    out = []
    n = int(seconds * 16000)
    for f in files:
        x = load_audio(f)
        reps = int(np.ceil(n / max(len(x), 1)))
        out.append(float_to_pcm16(np.tile(x, reps)[:n]))
    return out


async def _one_stream(url: str, pcm: bytes, *, chunk_s: float, delay: float, token: str | None,
                      timeout: float) -> StreamResult:
    from .client import AsyncStream

    res = StreamResult()
    await asyncio.sleep(delay)
    loop = asyncio.get_running_loop()
    config = {"rate": 16000, "encoding": "s16le", "channels": 1}
    if token:
        config["token"] = token
    stream = None
    try:
        t_connect = loop.time()
        stream = await AsyncStream.open(url, timeout=timeout)
        await stream.send(json.dumps(config))
        ready = await asyncio.wait_for(stream.recv(), timeout)
        res.answered_s = loop.time() - t_connect
        if not ready or ready.get("event") != "ready":
            res.error = (ready or {}).get("error", "no ready message")
            res.busy = (ready or {}).get("code") == "busy"
            res.retry_after_s = (ready or {}).get("retry_after_s")
            return res
        res.accepted = True
        t0 = loop.time()
        send_task = asyncio.ensure_future(stream.send_paced(pcm, chunk_s, t0))
        try:
            while True:
                msg = await asyncio.wait_for(stream.recv(), timeout + len(pcm) / 32000)
                if msg is None:
                    res.error = res.error or "connection closed before the end message"
                    break
                ev = msg.get("event")
                if ev is None:
                    res.events += 1
                    # the audio up to t went out with the message that holds sample t (sent at its end)
                    sent_at = t0 + math.ceil(float(msg["t"]) / chunk_s - 1e-6) * chunk_s
                    res.lags.append(loop.time() - sent_at)
                elif ev == "end":
                    res.ended = True
                    res.label = msg.get("label")
                    break
                elif ev == "error":
                    res.error = msg.get("error")
                    break
        finally:
            send_task.cancel()
            await asyncio.gather(send_task, return_exceptions=True)
    except Exception as exc:  # noqa: BLE001 - a load test reports every failure
        res.error = res.error or f"{type(exc).__name__}: {exc}"
    finally:
        if stream is not None:
            await stream.close()
    return res


async def run_load(url: str, pcms: list[bytes], n: int, *, chunk_s: float = 0.1, ramp_s: float = 2.0,
                   token: str | None = None, timeout: float = 30.0, seed: int = 0) -> list[StreamResult]:
    rng = random.Random(seed)
    tasks = [_one_stream(url, pcms[i % len(pcms)], chunk_s=chunk_s, delay=rng.uniform(0, ramp_s), token=token,
                         timeout=timeout) for i in range(n)]
    return list(await asyncio.gather(*tasks))


def _cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of a process and its live children (the --processes workers)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, tail = stat.read_text().rsplit(")", 1)
        except OSError:
            continue
        fields = tail.split()
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def rss_mb(pid: int) -> float:
    """Resident memory (MB) of a process and its live children."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if stat.parent.name == str(pid) or fields[1] == str(pid):
                for line in (stat.parent / "status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except (OSError, IndexError):
            continue
    return total / 1024


def spawn_server(server_args: str, *, quiet: bool = True) -> tuple[subprocess.Popen, str, str]:
    """`python -m realtime serve --port 0` as a child process: (proc, ws url, tcp url) once it listens."""
    cmd = [sys.executable, "-m", "realtime", "serve", "--port", "0", *(["--quiet"] if quiet else []),
           *shlex.split(server_args)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    t_end = time.monotonic() + 120
    while time.monotonic() < t_end:
        line = proc.stderr.readline()
        if not line:
            break
        m = re.search(r"websocket (\S+).*?tcp (\S+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # keep draining
            return proc, m.group(1), m.group(2)
    proc.kill()
    raise RuntimeError(f"the spawned server did not start: {' '.join(cmd)}")


def default_files(k: int) -> list[Path]:
    files = sorted(_LIBRISPEECH.glob("*/*/*/*.flac"))
    if not files:
        raise SystemExit(f"no --files given and no LibriSpeech under {_LIBRISPEECH}")
    return files[:k]


def health(ws_url: str) -> dict:
    """The server's ``/healthz`` JSON (its HTTP status too, as ``http_status``), from its WebSocket URL."""
    import socket

    host, port = ws_url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)
    with socket.create_connection((host.strip("[]"), int(port)), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    return {**json.loads(body), "http_status": int(head.split()[1])}


def _settle(ws_url: str, timeout: float = 60.0) -> dict:
    """Wait until the server has no stream, slot or handshake open (its closes are over); its /healthz."""
    t_end = time.monotonic() + timeout
    while True:
        h = health(ws_url)
        if (h["streams"] == 0 and h["connections"] == 0 and h["pending"] == 0) or time.monotonic() > t_end:
            return h
        time.sleep(0.2)


def _row(n: int, results: list[StreamResult], max_lag: float, wall: float) -> dict:
    """One run's figures: streams held (ended, every estimate below ``max_lag``), refused busy, the lag of
    the accepted streams' estimates, other errors."""
    lags = np.array([x for r in results for x in r.lags]) if any(r.lags for r in results) else np.zeros(1)
    held = sum(r.holds(max_lag) for r in results)
    busy = [r for r in results if r.busy]
    errors = [r.error for r in results if r.error and not r.busy]
    answer = [r.answered_s for r in busy if r.answered_s is not None]
    return {"streams": n, "held": held, "accepted": sum(r.accepted for r in results), "busy": len(busy),
            "busy_answer_p95_s": round(float(np.percentile(answer, 95)), 3) if answer else None,
            "retry_after_s": max((r.retry_after_s for r in busy if r.retry_after_s is not None), default=None),
            "lag_p50_s": round(float(np.percentile(lags, 50)), 3), "lag_p95_s": round(float(np.percentile(lags, 95)), 3),
            "lag_max_s": round(float(lags.max()), 3), "events": int(sum(r.events for r in results)),
            "errors": len(errors), "first_error": errors[0] if errors else None, "wall_s": round(wall, 1)}


def _line(row: dict) -> str:
    return (f"{row['streams']:5d} streams: held {row['held']:5d}  busy {row['busy']:5d}"
            + (f" (answered within {row['busy_answer_p95_s']:.2f} s p95)" if row["busy"] else "")
            + f"  lag p50 {row['lag_p50_s']:.3f}  p95 {row['lag_p95_s']:.3f}  max {row['lag_max_s']:.3f} s"
            f"  errors {row['errors']}  "
            + (f"server {row['server_cpu_cores']:.2f} cores {row['server_peak_rss_mb']} MB  "
               if "server_cpu_cores" in row else "")
            + f"client {row['client_cpu_cores']:.2f} cores"
            + (f"  wave {row['wave']} RSS {row['server_rss_mb']} MB" if "wave" in row else "")
            + (f"  ({row['first_error']})" if row["errors"] else ""))


HOLD_FRACTION = 0.99  # --find: a load holds when at least this share of its streams hold
FIND_HEADROOM = 0.9  # --find: the --max-connections it recommends, as a fraction of the largest N held


def find_capacity(holds, lo: int, hi: int, *, resolution: float = 0.05) -> tuple[int | None, list[int]]:
    """The largest N in [lo, hi] for which ``holds(N)`` is true, by bisection (holding is taken to be
    monotone in N), to within ``resolution`` x N (at least one stream). Returns (that N, or None if even
    ``lo`` does not hold; the Ns tried, in order)."""
    if not 1 <= lo <= hi:
        raise ValueError(f"need 1 <= LO <= HI, got {lo}:{hi}")
    tried: list[int] = []

    def probe(n: int) -> bool:
        tried.append(n)
        return holds(n)

    if not probe(lo):
        return None, tried
    if hi == lo or probe(hi):
        return hi, tried
    good, bad = lo, hi  # holds at good, not at bad
    while bad - good > max(1, int(resolution * good)):
        mid = (good + bad) // 2
        good, bad = (mid, bad) if probe(mid) else (good, mid)
    return good, tried


def _parse_range(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO:HI (stream counts), got {text!r}") from None
    if not 1 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"expected 1 <= LO <= HI, got {text!r}")
    return lo, hi


def _measure(args, url: str, pcms: list[bytes], proc, n: int, seed: int) -> dict:
    """One run of ``n`` streams: its row (``_row``) with the client's and the spawned server's CPU and RSS."""
    cpu0 = _cpu_seconds(proc.pid) if proc else None
    me0 = time.process_time()
    w0 = time.monotonic()
    peak = [0.0]
    done = threading.Event()

    def sample():
        while proc is not None and not done.wait(0.5):
            peak[0] = max(peak[0], rss_mb(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        results = asyncio.run(run_load(url, pcms, n, chunk_s=args.chunk_ms / 1000, ramp_s=args.ramp,
                                       token=args.token, seed=seed))
    finally:
        done.set()
        sampler.join()
    wall = time.monotonic() - w0
    row = _row(n, results, args.max_lag, wall)
    row["client_cpu_cores"] = round((time.process_time() - me0) / wall, 2)
    if proc:
        row["server_cpu_cores"] = round((_cpu_seconds(proc.pid) - cpu0) / wall, 2)
        row["server_peak_rss_mb"] = round(peak[0])
    return row


def _loadtest(args) -> int:
    files = [Path(f) for f in args.files] if args.files else default_files(16)
    pcms = load_pcm(files, args.seconds)
    proc = None
    url = ws_url = args.url
    if args.spawn:
        proc, ws_url, tcp_url = spawn_server(args.server_args)
        url = tcp_url if args.transport == "tcp" else ws_url
    elif not url:
        raise SystemExit("give --url or --spawn")
    if args.waves < 1:
        raise SystemExit(f"--waves must be >= 1, got {args.waves}")
    if args.waves > 1 and proc is None:
        raise SystemExit("--waves measures the spawned server's RSS: give --spawn")
    if args.find and proc is None and not url.startswith("ws"):
        raise SystemExit("--find reads the server's /healthz between runs, on its WebSocket port: give --url ws://... "
                         "or --spawn")
    rows, growth = [], []
    try:
        if args.find:
            return _find(args, url, ws_url, pcms, proc)
        for n in [int(s) for s in str(args.streams).split(",")]:
            rss_waves = []
            for wave in range(1, args.waves + 1):
                row = _measure(args, url, pcms, proc, n, seed=wave - 1)
                if args.waves > 1:  # the RSS once the wave's streams are closed
                    _settle(ws_url)
                    rss_waves.append(rss_mb(proc.pid))
                    row.update(wave=wave, server_rss_mb=round(rss_waves[-1], 1))
                rows.append(row)
                if args.json:
                    print(json.dumps(row), flush=True)
                elif args.waves == 1 or wave in (1, args.waves) or wave % max(1, args.waves // 10) == 0:
                    print(_line(row), flush=True)
            if args.waves > 1:
                g = {"streams": n, "waves": args.waves, "rss_after_first_wave_mb": round(rss_waves[0], 1),
                     "rss_after_last_wave_mb": round(rss_waves[-1], 1), "rss_peak_after_wave_mb": round(max(rss_waves), 1),
                     "growth_mb": round(rss_waves[-1] - rss_waves[0], 1)}
                growth.append(g)
                print(json.dumps(g) if args.json else
                      f"{n} streams x {args.waves} waves: server RSS after the first wave {g['rss_after_first_wave_mb']} MB, "
                      f"after the last {g['rss_after_last_wave_mb']} MB (growth {g['growth_mb']:+.1f} MB, highest "
                      f"{g['rss_peak_after_wave_mb']} MB)", flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    ok = bool(rows) and all(r["held"] == r["streams"] for r in rows)
    return 0 if ok and all(g["growth_mb"] <= args.max_growth_mb for g in growth) else 1


def _find(args, url: str, ws_url: str, pcms: list[bytes], proc) -> int:
    """--find LO:HI: the largest N that holds (HOLD_FRACTION of its streams), and the --max-connections that
    keeps a server under it. Exit status 1 when even LO does not hold."""
    def holds(n: int) -> bool:
        _settle(ws_url)  # the previous run's streams are closed
        row = _measure(args, url, pcms, proc, n, seed=0)
        row["holds"] = row["held"] >= HOLD_FRACTION * n
        print(json.dumps(row) if args.json else _line(row) + ("  -> holds" if row["holds"] else "  -> does not hold"),
              flush=True)
        return row["holds"]

    lo, hi = args.find
    capacity, tried = find_capacity(holds, lo, hi)
    out = {"capacity": capacity, "tried": tried, "hold_fraction": HOLD_FRACTION, "max_lag_s": args.max_lag,
           "recommended_max_connections": None if capacity is None else max(1, int(FIND_HEADROOM * capacity)),
           "server_args": args.server_args if proc is not None else None}
    if args.json:
        print(json.dumps(out), flush=True)
    elif capacity is None:
        print(f"not even {lo} streams hold (>= {HOLD_FRACTION:.0%} of them with every estimate under "
              f"{args.max_lag:g} s late)")
    else:
        print(f"largest N that holds: {capacity}{' (the top of the range)' if capacity == hi else ''}; tried "
              f"{', '.join(map(str, tried))}. Serve with --max-connections {out['recommended_max_connections']} "
              f"({FIND_HEADROOM:.0%} of it) to refuse the rest busy instead of lagging.")
    return 0 if capacity is not None else 1


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "loadtest", help="how many real-time streams a server holds (N paced clients, lag per estimate)",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=None, help="ws://HOST:PORT/ or tcp://HOST:PORT of a running server")
    p.add_argument("--spawn", action="store_true", help="start `python -m realtime serve --port 0` as a child")
    p.add_argument("--server-args", default="", metavar="ARGS", help="extra arguments for the spawned server")
    p.add_argument("--transport", choices=("ws", "tcp"), default="ws", help="with --spawn (default: %(default)s)")
    p.add_argument("--streams", default="50,100", metavar="N[,N...]", help="concurrent streams, one run per value")
    p.add_argument("--seconds", type=float, default=30.0, help="audio per stream (default: %(default)s)")
    p.add_argument("--chunk-ms", type=float, default=100.0, help="audio per message (default: %(default)s)")
    p.add_argument("--ramp", type=float, default=2.0, help="spread client starts over this long (default: %(default)s)")
    p.add_argument("--max-lag", type=float, default=1.0, help="a stream holds if every lag is below (default: %(default)s)")
    p.add_argument("--waves", type=int, default=1, metavar="K",
                   help="with --spawn: run each N K times, one wave after another, and report the server's RSS after "
                        "each wave once its streams are closed, and its growth from the first wave to the last "
                        "(default: %(default)s)")
    p.add_argument("--max-growth-mb", type=float, default=30.0, metavar="MB",
                   help="with --waves: exit status 1 if the RSS grew more from the first wave to the last "
                        "(default: %(default)s)")
    p.add_argument("--find", type=_parse_range, default=None, metavar="LO:HI",
                   help="instead of --streams: bisect for the largest N in LO..HI that holds (at least 99%% of its "
                        "streams with every lag under --max-lag; to within 5%%) and print the --max-connections "
                        "that keeps a server under it (90%% of that N)")
    p.add_argument("--files", nargs="+", default=None, help="recordings to stream (default: 16 LibriSpeech files)")
    p.add_argument("--token", default=None)
    p.add_argument("--json", action="store_true", help="one JSON row per run")
    p.set_defaults(func=_loadtest)

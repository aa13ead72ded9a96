"""How many live streams does a server hold? ``python -m realtime loadtest``.

    python -m realtime loadtest --spawn --streams 100,200,300            # starts its own server
    python -m realtime loadtest --url ws://127.0.0.1:8765/ --streams 100  # or a running one

N clients in one asyncio loop each stream a real recording (LibriSpeech beside the repository,
or ``--files``) paced at real time in ``--chunk-ms`` messages, as a microphone would deliver it.
Client starts are spread over ``--ramp`` seconds. For every estimate the client measures its
**lag**: arrival time minus the moment the message holding the estimate's last sample (stream time
``t``) had been sent, i.e. the server's delay (queueing, compute, network). A
stream *holds* when it ends without error and its largest lag stays below ``--max-lag``
(default 1 s). With ``--spawn`` the server runs as a child process (``--server-args`` passed to
``python -m realtime serve``) and its CPU use is reported too.
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

__all__ = ["StreamResult", "run_load", "spawn_server", "load_pcm", "default_files", "rss_mb", "add_parser"]

from .audio import data_dir

_LIBRISPEECH = data_dir() / "LibriSpeech"  # $VOICEGENDER_DATA/LibriSpeech, else ../shared/data/LibriSpeech


@dataclass
class StreamResult:
    lags: list = field(default_factory=list)
    events: int = 0
    label: str | None = None
    error: str | None = None
    ended: bool = False

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
        stream = await AsyncStream.open(url, timeout=timeout)
        await stream.send(json.dumps(config))
        ready = await asyncio.wait_for(stream.recv(), timeout)
        if not ready or ready.get("event") != "ready":
            res.error = (ready or {}).get("error", "no ready message")
            return res
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


def _loadtest(args) -> int:
    files = [Path(f) for f in args.files] if args.files else default_files(16)
    pcms = load_pcm(files, args.seconds)
    proc = None
    url = args.url
    if args.spawn:
        proc, ws_url, tcp_url = spawn_server(args.server_args)
        url = tcp_url if args.transport == "tcp" else ws_url
    elif not url:
        raise SystemExit("give --url or --spawn")
    rows = []
    try:
        for n in [int(s) for s in str(args.streams).split(",")]:
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
                                               token=args.token))
            finally:
                done.set()
                sampler.join()
            wall = time.monotonic() - w0
            lags = np.array([l for r in results for l in r.lags]) if any(r.lags for r in results) else np.zeros(1)
            held = sum(r.holds(args.max_lag) for r in results)
            errors = [r.error for r in results if r.error]
            row = {"streams": n, "held": held, "lag_p50_s": round(float(np.percentile(lags, 50)), 3),
                   "lag_p95_s": round(float(np.percentile(lags, 95)), 3), "lag_max_s": round(float(lags.max()), 3),
                   "events": int(sum(r.events for r in results)), "errors": len(errors),
                   "first_error": errors[0] if errors else None, "wall_s": round(wall, 1),
                   "client_cpu_cores": round((time.process_time() - me0) / wall, 2)}
            if proc:
                row["server_cpu_cores"] = round((_cpu_seconds(proc.pid) - cpu0) / wall, 2)
                row["server_peak_rss_mb"] = round(peak[0])
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                print(f"{n:5d} streams: held {held:5d}  lag p50 {row['lag_p50_s']:.3f}  p95 {row['lag_p95_s']:.3f}  "
                      f"max {row['lag_max_s']:.3f} s  errors {len(errors)}  "
                      + (f"server {row['server_cpu_cores']:.2f} cores {row['server_peak_rss_mb']} MB  " if proc else "")
                      + f"client {row['client_cpu_cores']:.2f} cores"
                      + (f"  ({errors[0]})" if errors else ""), flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0 if rows and all(r["held"] == r["streams"] for r in rows) else 1


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
    p.add_argument("--files", nargs="+", default=None, help="recordings to stream (default: 16 LibriSpeech files)")
    p.add_argument("--token", default=None)
    p.add_argument("--json", action="store_true", help="one JSON row per run")
    p.set_defaults(func=_loadtest)

"""Scale-out: two real ``python -m realtime serve`` processes behind a real HAProxy (the configuration
deploy/haproxy_config.py renders, the one deploy/haproxy.cfg shows), streams of real speech through
it over WebSocket and raw TCP with the project's own client (realtime.client.StreamClient).

Every stream through the balancer must give exactly what the same file gives streamed straight to a
backend; new streams spread over both backends (their /healthz counters, haproxy's own statistics);
a backend that dies is marked down by the health check on /healthz, and afterwards every new stream
succeeds on the other one, while the streams that had finished lost nothing; a drained backend takes no new
streams while its open ones finish, and one that died before its check failed costs no stream either.
Needs the haproxy binary (``./setup.sh --dev`` installs the Debian package); skipped without it.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import io
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from deploy.haproxy_config import EXAMPLE, Backend, parse_backend, render, spaced
from realtime.audio import float_to_pcm16, load_audio
from realtime.client import StreamClient
from realtime.loadtest import spawn_server

from .data import gender_of, readers_by_gender

REPO = Path(__file__).resolve().parents[1]
HAPROXY = shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy")
                                           if os.access(p, os.X_OK)), None)
needs_haproxy = pytest.mark.skipif(HAPROXY is None, reason="no haproxy binary (./setup.sh --dev installs the "
                                                          "Debian package: apt-get install haproxy)")
GENDER = {"F": "female", "M": "male"}
TIMINGS = ("compute_ms", "stages_ms")  # the only fields that may differ between two runs of one file
CHUNK = 3200  # bytes per message: 0.1 s of 16 kHz s16le
SECONDS = 6  # of each recording: a dozen estimates, enough for a verdict, cheap on a loaded machine


# ------------------------------------------------------------------------------------ helpers
def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that were free a moment ago (bound together, then released)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def wait_for(what: str, cond, timeout: float = 20.0, every: float = 0.05):
    t_end = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > t_end:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def healthz(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        return json.load(r)


def idle(backends: list[Backend]) -> list[dict]:
    """The /healthz of each backend once it has no stream open: a stream's counters are final only after
    its end message went out (what the client waits for) and its handler finished."""
    def done():
        hs = [healthz(b.port) for b in backends]
        return hs if all(h["connections"] == h["pending"] == 0 for h in hs) else None

    return wait_for("the backends to finish their streams", done)


def strip_timings(msgs: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in TIMINGS} for m in msgs]


class Stream:
    """One stream with the project's client: connect (ready), send audio in CHUNK messages, end, read."""

    def __init__(self, url: str):
        self.client = StreamClient(url, timeout=30)
        self.msgs = [self.client.connect()]

    def send(self, pcm: bytes) -> None:
        for i in range(0, len(pcm), CHUNK):
            self.client.send_audio(pcm[i:i + CHUNK])

    def finish(self) -> list[dict]:
        """End the stream and read every message until the server's end (or the connection's close)."""
        try:
            self.client.end()
        except Exception:  # the connection is gone: what the server sent before is still read below
            pass
        try:
            self.msgs += list(self.client.messages())
        except OSError:
            pass
        finally:
            self.client.close()
        return self.msgs


def stream(url: str, pcm: bytes) -> list[dict]:
    s = Stream(url)
    s.send(pcm)
    return s.finish()


def in_parallel(fn, jobs: list[tuple], timeout: float = 60.0) -> list:
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(fn, *job) for job in jobs]
        return [f.result(timeout=timeout) for f in futures]


class Balancer:
    """A real haproxy process running the rendered configuration for ``backends``, on free ports."""

    def __init__(self, backends: list[Backend], workdir: Path, check_interval: str):
        self.ws_port, self.tcp_port, self.stats_port = free_ports(3)
        self.config, self.socket = workdir / "haproxy.cfg", workdir / "admin.sock"
        self.config.write_text(render(backends, ws_bind=f"127.0.0.1:{self.ws_port}",
                                      tcp_bind=f"127.0.0.1:{self.tcp_port}", stats_bind=f"127.0.0.1:{self.stats_port}",
                                      stats_socket=str(self.socket), check_interval=check_interval, fall=3, rise=1,
                                      maxconn=500))  # few file descriptors: no root needed
        check = subprocess.run([HAPROXY, "-c", "-f", str(self.config)], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        self.log = workdir / "haproxy.log"
        with self.log.open("wb") as fh:
            self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(self.config)], stdout=fh, stderr=subprocess.STDOUT)
        self.ws_url = f"ws://127.0.0.1:{self.ws_port}/"
        self.tcp_url = f"tcp://127.0.0.1:{self.tcp_port}"

    def servers(self) -> dict[tuple[str, str], dict]:
        """haproxy's statistics per (backend, server): status (UP, DOWN, ...), stot (sessions so far), ..."""
        if self.proc.poll() is not None:
            raise AssertionError(f"haproxy exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=5) as r:
                text = r.read().decode().lstrip("# ")
        except OSError:
            return {}  # not listening yet
        return {(row["pxname"], row["svname"]): row for row in csv.DictReader(io.StringIO(text))
                if row["svname"] not in ("FRONTEND", "BACKEND")}

    def status(self, server: str) -> set[str]:
        """The status of ``server`` (s1, s2, ...) in both backends, WebSocket and TCP."""
        rows = self.servers()
        return {rows[(px, server)]["status"] for px in ("voicegender_ws", "voicegender_tcp") if (px, server) in rows}

    def sessions(self) -> dict[tuple[str, str], int]:
        return {key: int(row["stot"]) for key, row in self.servers().items()}

    def admin(self, command: str) -> str:
        """One command on haproxy's admin socket (the stats socket of the configuration)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.socket))
            s.sendall(command.encode() + b"\n")
            return b"".join(iter(lambda: s.recv(65536), b"")).decode()

    def redispatched(self, server: str) -> int:
        """Connections haproxy retried on another server after ``server`` refused them, both backends."""
        rows = self.servers()
        return sum(int(rows[(px, server)]["wredis"] or 0) for px in ("voicegender_ws", "voicegender_tcp"))


def stop(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM, then SIGKILL if it is still running after ``grace_s``."""
    if proc.poll() is None:
        proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace_s)
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def voices() -> dict[str, bytes]:
    """s16le 16 kHz bytes of one LibriSpeech reader of each gender: the first SECONDS of the file."""
    files = readers_by_gender(1)
    assert [gender_of(files[g][0]) for g in "FM"] == ["F", "M"]
    return {g: float_to_pcm16(load_audio(files[g][0])[:SECONDS * 16000]) for g in "FM"}


@pytest.fixture
def cluster(tmp_path_factory, monkeypatch):
    """Two `serve` processes (started side by side, ports 0) and haproxy in front of them, checking every
    200 ms, both backends UP: (balancer, backends, server processes); all stopped after the test."""
    monkeypatch.chdir(REPO)  # `python -m realtime` of this checkout
    procs: list[subprocess.Popen] = []
    balancer = None
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(spawn_server, "--workers 1") for _ in range(2)]
        procs += [f.result()[0] for f in futures if f.exception() is None]
        spawned = [f.result() for f in futures]  # the first failure, once the others are tracked for cleanup
        backends = [Backend("127.0.0.1", urlsplit(ws).port, urlsplit(tcp).port) for _, ws, tcp in spawned]
        balancer = Balancer(backends, tmp_path_factory.mktemp("haproxy"), check_interval="200ms")
        wait_for("haproxy to mark both backends up", lambda: all(balancer.status(s) == {"UP"} for s in ("s1", "s2")))
        yield balancer, backends, procs
    finally:
        for proc in procs:
            stop(proc)
        if balancer is not None:
            stop(balancer.proc)
            print(balancer.log.read_text()[-4000:])  # shown when the test fails


# ------------------------------------------------------------------------------------ the configuration
def test_the_example_config_is_current_valid_and_bad_input_is_refused():
    text = render(spaced(2))
    assert EXAMPLE.read_text() == text, "deploy/haproxy.cfg is stale: python deploy/haproxy_config.py -o deploy/haproxy.cfg"
    for needed in ("balance leastconn", "timeout tunnel", "http-check send meth GET uri /healthz",
                   "server s2 127.0.0.1:8783 check port 8782", "server s2 127.0.0.1:8782 check"):
        assert needed in text
    assert "\n    stats socket" not in text  # no admin socket unless asked for: runs without privileges
    assert "\n    stats socket /x.sock mode 600 level admin\n" in render(spaced(1), stats_socket="/x.sock")
    assert parse_backend("10.0.0.7:8765") == Backend("10.0.0.7", 8765, 8766)
    assert parse_backend("[::1]:9000:9100") == Backend("::1", 9000, 9100)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_backend("8780")
    with pytest.raises(ValueError, match="1-65535"):
        parse_backend("h:70000")
    with pytest.raises(ValueError, match="share an address"):
        render([Backend("h", 9000, 9001), Backend("h", 9001, 9002)])
    with pytest.raises(ValueError, match="check interval"):
        render(spaced(1), check_interval="soon")


@needs_haproxy
def test_rendered_configs_pass_haproxys_own_check(tmp_path):
    for n in (1, 2, 5):
        cfg = tmp_path / f"h{n}.cfg"
        cfg.write_text(render(spaced(n)))
        out = subprocess.run([HAPROXY, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stdout + out.stderr


# ------------------------------------------------------------------------------------ the real setup
@needs_haproxy
def test_streams_through_haproxy_spread_over_backends_and_survive_one_dying(cluster, voices):
    balancer, backends, procs = cluster
    urls = {"ws": balancer.ws_url, "tcp": balancer.tcp_url}
    # what each file gives streamed straight to a backend, without the balancer
    direct = {g: strip_timings(stream(f"ws://127.0.0.1:{backends[0].port}/", voices[g])) for g in "FM"}
    for g in "FM":
        assert direct[g][0]["event"] == "ready" and direct[g][-1]["event"] == "end"
        assert direct[g][-1]["label"] == GENDER[g] and direct[g][-1]["events"] == len(direct[g]) - 2 > 10

    def same_as_direct(msgs: list[dict], g: str) -> bool:
        return strip_timings(msgs) == direct[g]

    def completed() -> list[int]:
        return [h["streams_completed"] for h in idle(backends)]

    # 1. eight streams at once, both transports, both voices: all complete and exactly as direct (so are
    # those the backend about to die served), spread over both backends
    before, sessions0 = completed(), balancer.sessions()
    jobs = [(urls[t], g) for t in ("ws", "tcp") for g in "FMFM"]
    results = in_parallel(lambda url, g: stream(url, voices[g]), jobs)
    for (url, g), msgs in zip(jobs, results):
        assert same_as_direct(msgs, g), (url, g, msgs[-1])
    gained = [a - b for a, b in zip(completed(), before)]
    assert sum(gained) == len(jobs) and min(gained) >= 1, gained
    sessions1 = balancer.sessions()
    assert all(sessions1[k] > sessions0[k] for k in sessions1), (sessions0, sessions1)  # every server, both transports

    # 2. four streams in flight (one per backend and transport: leastconn), then backend 1 dies
    victim, survivor = procs[0], backends[1]
    open_streams = []
    for t in ("ws", "ws", "tcp", "tcp"):
        s = Stream(urls[t])  # ready: it holds a stream slot on its backend
        s.send(voices["F"][:len(voices["F"]) // 2])
        open_streams.append(s)
    wait_for("each backend to hold two open streams", lambda: [healthz(b.port)["connections"] for b in backends] == [2, 2])
    survivor_before = healthz(survivor.port)["streams_completed"]
    # what the backend about to die had served lost nothing: every stream it took before these four
    # finished (its end sent: phase 1 checked each client got it, complete), none is open but these
    h = healthz(backends[0].port)
    assert h["streams_completed"] == 2 + gained[0] and h["connections"] == 2  # 2: the direct reference streams
    assert h["client_gone"] == h["internal_errors"] == h["refused"] == 0, h
    victim.terminate()
    victim.wait(20)
    wait_for("haproxy to mark the dead backend down", lambda: balancer.status("s1") == {"DOWN"})
    assert balancer.status("s2") == {"UP"}
    ends = []
    for s in open_streams:
        with contextlib.suppress(Exception):  # the dead backend's streams: their connection is closed
            s.send(voices["F"][len(voices["F"]) // 2:])
        msgs = s.finish()
        ends.append(msgs[-1].get("event") == "end")
        # a stream completes exactly as direct, or (on the dead backend) is cut without an end: never a wrong end
        assert same_as_direct(msgs, "F") if ends[-1] else all(m.get("event") != "end" for m in msgs), msgs[-1]
    assert sum(ends) >= 2 and idle([survivor])[0]["streams_completed"] == survivor_before + 2

    # 3. new streams after the backend was marked down: every one succeeds, on the surviving backend
    sessions2, survivor_before = balancer.sessions(), healthz(survivor.port)["streams_completed"]
    jobs = [(urls[t], g) for t in ("ws", "tcp") for g in "FMF"]
    for (url, g), msgs in zip(jobs, in_parallel(lambda url, g: stream(url, voices[g]), jobs)):
        assert same_as_direct(msgs, g), (url, g, msgs[-1])
    assert idle([survivor])[0]["streams_completed"] == survivor_before + len(jobs)
    sessions3 = balancer.sessions()
    for px in ("voicegender_ws", "voicegender_tcp"):
        assert sessions3[(px, "s1")] == sessions2[(px, "s1")]
        assert sessions3[(px, "s2")] == sessions2[(px, "s2")] + len(jobs) // 2



@needs_haproxy
def test_a_backend_leaving_drained_or_dead_before_its_check_fails_costs_no_stream(cluster, voices):
    """Rolling restart: s1 drained on haproxy's admin socket takes no new streams while its open ones
    finish; stopped once idle. Then the window between a backend's death and its failed health check
    (held open by switching s1's check off, so haproxy keeps it UP): new streams still all succeed, a
    refused connection being retried on the other backend (retries + option redispatch)."""
    balancer, backends, procs = cluster
    pxs = ("voicegender_ws", "voicegender_tcp")
    half = len(voices["F"]) // 2

    def open_streams() -> list[Stream]:
        out = [Stream(url) for url in (balancer.ws_url, balancer.ws_url, balancer.tcp_url, balancer.tcp_url)]
        for s in out:
            s.send(voices["F"][:half])
        return out

    def connections() -> list[int]:
        return [healthz(b.port)["connections"] for b in backends]

    def complete(msgs: list[dict], g: str) -> bool:
        return msgs[-1]["event"] == "end" and msgs[-1]["label"] == GENDER[g] and msgs[-1]["events"] == len(msgs) - 2

    # drain: the open streams (one per backend and transport) stay, new ones all go to s2
    first = open_streams()
    wait_for("two open streams on each backend", lambda: connections() == [2, 2])
    for px in pxs:
        assert balancer.admin(f"set server {px}/s1 state drain").strip() == ""
    second = open_streams()
    wait_for("the new streams on s2 only", lambda: connections() == [2, 6])
    for s in first + second:
        s.send(voices["F"][half:])
        assert complete(s.finish(), "F"), s.msgs[-1]
    idle(backends)

    # dead, but not yet marked down (its check off before it stops, back from drain to ready): every new
    # stream succeeds, retried on s2
    for px in pxs:
        assert balancer.admin(f"disable health {px}/s1").strip() == ""
    procs[0].terminate()
    procs[0].wait(20)
    for px in pxs:
        assert balancer.admin(f"set server {px}/s1 state ready").strip() == ""
    assert balancer.status("s1") == {"no check"}  # haproxy takes it for alive
    before = healthz(backends[1].port)["streams_completed"]
    jobs = [(url, g) for url in (balancer.ws_url, balancer.tcp_url) for g in "FMFM"]
    for (url, g), msgs in zip(jobs, [stream(url, voices[g]) for url, g in jobs]):
        assert complete(msgs, g), (url, g, msgs[-1])
    assert idle(backends[1:])[0]["streams_completed"] == before + len(jobs)
    assert balancer.redispatched("s1") >= 2  # at least one per transport: sent to s1, refused, retried on s2

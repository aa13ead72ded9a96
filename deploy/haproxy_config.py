"""Render the HAProxy configuration for N ``python -m realtime serve`` backends.

    python deploy/haproxy_config.py                           # two backends on 8780 and 8782 (deploy/haproxy.cfg)
    python deploy/haproxy_config.py --count 4 -o haproxy.cfg  # four: serve --port 8780, 8782, 8784, 8786
    python deploy/haproxy_config.py 127.0.0.1:9000 10.0.0.7:8765:9999   # HOST:PORT[:TCP_PORT] each

A backend is one ``serve`` process: WebSocket + HTTP (page, ``/healthz``) on PORT, raw TCP on
TCP_PORT (serve's default: PORT + 1). Clients keep the addresses of a single server: WebSocket on
``--ws-bind`` (127.0.0.1:8765), raw TCP on ``--tcp-bind`` (127.0.0.1:8766). ``deploy/haproxy.cfg``
is this script's output with its defaults, with comments on every choice; regenerate it rather
than edit it (tests/test_scaleout.py checks that it is current). Nothing here is on the live path.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Backend", "parse_backend", "spaced", "render", "main", "EXAMPLE"]

EXAMPLE = Path(__file__).resolve().parent / "haproxy.cfg"
FIRST_PORT = 8780  # the example's first backend: serve --port 8780 (raw TCP 8781), then 8782, ...


@dataclass(frozen=True)
class Backend:
    """One ``serve`` process: its host, WebSocket/HTTP port and raw TCP port."""

    host: str
    port: int
    tcp_port: int

    def __post_init__(self):
        if not self.host or any(c.isspace() for c in self.host):
            raise ValueError(f"backend host must be a name or an address without spaces, got {self.host!r}")
        for name in ("port", "tcp_port"):
            v = getattr(self, name)
            if not (isinstance(v, int) and 1 <= v <= 65535):
                raise ValueError(f"backend {name} must be 1-65535, got {v!r}")
        if self.port == self.tcp_port:
            raise ValueError(f"backend {self.host}: the WebSocket and TCP ports must differ, both are {self.port}")

    def address(self, port: int) -> str:
        return f"[{self.host}]:{port}" if ":" in self.host else f"{self.host}:{port}"


def parse_backend(text: str) -> Backend:
    """'HOST:PORT' (raw TCP on PORT + 1, serve's default), 'HOST:PORT:TCP_PORT', '[::1]:PORT[:TCP_PORT]'."""
    m = re.fullmatch(r"(\[[^\]]+\]|[^:\[\]]+):(\d{1,5})(?::(\d{1,5}))?", text.strip())
    if not m:
        raise ValueError(f"a backend is HOST:PORT or HOST:PORT:TCP_PORT (e.g. 127.0.0.1:8780), got {text!r}")
    host, port, tcp = m.group(1).strip("[]"), int(m.group(2)), m.group(3)
    return Backend(host, port, int(tcp) if tcp else port + 1)


def spaced(count: int, first_port: int = FIRST_PORT, host: str = "127.0.0.1") -> list[Backend]:
    """``count`` backends on one host: serve --port first_port, first_port + 2, ... (raw TCP on each + 1)."""
    if count < 1:
        raise ValueError(f"need at least one backend, got {count}")
    return [Backend(host, first_port + 2 * i, first_port + 2 * i + 1) for i in range(count)]


_TEMPLATE = """\
# HAProxy in front of {count} `python -m realtime serve` backend{plural}: WebSocket (and the page, /healthz)
# on one frontend, raw TCP on another; new streams go to the backend with the fewest open connections;
# every backend is health-checked on GET /healthz of its HTTP port. Streams are independent (one Engine
# each, no state shared between them), so any backend can take any stream.
#
# Rendered by deploy/haproxy_config.py; regenerate rather than edit:
#     python deploy/haproxy_config.py HOST:PORT[:TCP_PORT] ... -o haproxy.cfg   (or --count N)
# Backends:  python -m realtime serve --port PORT     (WebSocket + HTTP on PORT, raw TCP on PORT + 1)
# Run:       haproxy -db -f haproxy.cfg               (foreground; `haproxy -c -f haproxy.cfg` only checks)

global
    # open streams through this haproxy, all backends together (each takes two file descriptors)
    maxconn {maxconn}
    # logs go to stdout: the terminal, or the journal under systemd
    log stdout format raw local0
{stats_socket}    # in production also drop privileges, as Debian's /etc/haproxy/haproxy.cfg does:
    #   user haproxy  group haproxy  chroot /var/lib/haproxy

defaults
    log global
    option dontlognull
    timeout connect 2s
    # before a stream is established (the WebSocket upgrade; a TCP connection until both sides are
    # connected): above serve's --handshake-timeout (5 s) and --idle-timeout (30 s), so that the
    # server's own limits, which tell the client why in an {{"event": "error"}} message, act first
    timeout client 60s
    timeout server 60s
    # an established stream (WebSocket after the upgrade, raw TCP): the limit on silence in both
    # directions, not on its length; streams last as long as serve's --max-stream-seconds allows
    timeout tunnel 1h
    # raw TCP ends with the client's half-close; the server still sends the last estimates and the end
    timeout client-fin 30s
    timeout server-fin 30s
    # a health check's answer (after a connect within min(timeout connect, inter)): a /healthz slower
    # than this means the server's event loop is stalled, and counts as a failure
    timeout check 2s
    # a backend that refuses the connection (died, not yet marked down): try again on another one
    retries 2
    option redispatch 1
    # health checks: every {inter}; down after {fall} failures in a row, up again after {rise} successes.
    # serve answers /healthz with 200 and JSON counters while it listens (a backend whose process died
    # or hangs fails the check); streams already open on a backend that dies are cut (no end message),
    # new ones go to the others.
    default-server inter {inter} fastinter {fastinter} downinter {inter} fall {fall} rise {rise}

frontend voicegender_ws
    # HTTP mode: haproxy sees the WebSocket upgrade and passes it on (then relays the frames as a tunnel);
    # GET / (the browser page) and /healthz of a backend work through here too
    mode http
    bind {ws_bind}
    option httplog
    timeout http-request 10s
    default_backend voicegender_ws

backend voicegender_ws
    mode http
    balance leastconn
    option httpchk
    http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host localhost
    http-check expect status 200
{ws_servers}

frontend voicegender_tcp
    # TCP mode: the JSON config line, then raw PCM, relayed byte for byte
    mode tcp
    bind {tcp_bind}
    option tcplog
    default_backend voicegender_tcp

backend voicegender_tcp
    mode tcp
    balance leastconn
    # the raw TCP port speaks no HTTP: each server is checked on its backend's HTTP port (`port`), so a
    # backend is up or down for both transports at once
    option httpchk
    http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host localhost
    http-check expect status 200
{tcp_servers}

listen stats
    # read-only status page: http://{stats_bind}/stats (CSV: /stats;csv); keep it on loopback
    mode http
    bind {stats_bind}
    no log
    stats enable
    stats uri /stats
    stats refresh 5s
"""


_SOCKET = """\
    # the admin socket{how}: drain a backend for a rolling restart
    # ("set server voicegender_ws/s1 state drain", and voicegender_tcp/s1: no new streams, the open ones
    # finish) or read the state:  echo "show stat" | socat stdio {path}
    # its folder must be writable by haproxy (/run/haproxy is, for root and the haproxy user)
    {off}stats socket {path} mode 600 level admin
"""


def _millis(text: str) -> int:
    m = re.fullmatch(r"(\d+)(ms|s)?", text.strip())
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"a check interval is a positive number of ms or s (e.g. 2s, 250ms), got {text!r}")
    return int(m.group(1)) * (1 if m.group(2) == "ms" else 1000)


def _duration(ms: int) -> str:
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def render(backends: list[Backend], *, ws_bind: str = "127.0.0.1:8765", tcp_bind: str = "127.0.0.1:8766",
           stats_bind: str = "127.0.0.1:8404", stats_socket: str | None = None,
           check_interval: str = "2s", fall: int = 3, rise: int = 2, maxconn: int = 2000) -> str:
    """The configuration text for ``backends`` (servers s1..sN in both backends, in this order);
    ``stats_socket``: the path of the admin socket, None for none (the line stays as a comment)."""
    backends = list(backends)
    if not backends:
        raise ValueError("need at least one backend")
    seen = [a for b in backends for a in (b.address(b.port), b.address(b.tcp_port))]
    if len(set(seen)) != len(seen):
        raise ValueError(f"backends share an address: {', '.join(sorted({a for a in seen if seen.count(a) > 1}))}")
    binds = [ws_bind, tcp_bind, stats_bind]
    if len(set(binds)) != 3:
        raise ValueError(f"the WebSocket, TCP and stats binds must differ, got {', '.join(binds)}")
    for name, value in (("fall", fall), ("rise", rise), ("maxconn", maxconn)):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    inter = _millis(check_interval)
    ws = "\n".join(f"    server s{i} {b.address(b.port)} check" for i, b in enumerate(backends, 1))
    tcp = "\n".join(f"    server s{i} {b.address(b.tcp_port)} check port {b.port}" for i, b in enumerate(backends, 1))
    if stats_socket is not None and (not stats_socket.strip() or any(c.isspace() for c in stats_socket)):
        raise ValueError(f"the admin socket must be a path without spaces, got {stats_socket!r}")
    socket = _SOCKET.format(path=stats_socket or "/run/haproxy/admin.sock", off="" if stats_socket else "# ",
                            how="" if stats_socket else " (off: render with --stats-socket PATH)")
    return _TEMPLATE.format(count=len(backends), plural="s" if len(backends) > 1 else "", maxconn=maxconn,
                            stats_socket=socket, inter=_duration(inter), fastinter=_duration(max(1, inter // 2)),
                            fall=fall, rise=rise, ws_bind=ws_bind, tcp_bind=tcp_bind, stats_bind=stats_bind,
                            ws_servers=ws, tcp_servers=tcp)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python deploy/haproxy_config.py",
        description="Write an HAProxy configuration that balances WebSocket and raw TCP streams over several "
                    "`python -m realtime serve` backends (leastconn, health checks on GET /healthz). "
                    "Start each backend with `python -m realtime serve --port PORT`, then `haproxy -db -f FILE`.")
    p.add_argument("backends", nargs="*", metavar="HOST:PORT[:TCP_PORT]",
                   help="one per serve process: its --port (WebSocket + HTTP) and raw TCP port (default PORT + 1)")
    p.add_argument("--count", type=int, default=None, metavar="N",
                   help=f"instead of listing them: N backends on 127.0.0.1, serve --port {FIRST_PORT}, "
                        f"{FIRST_PORT + 2}, ... (the default is two)")
    p.add_argument("--first-port", type=int, default=FIRST_PORT, metavar="PORT", help="with --count (default: %(default)s)")
    p.add_argument("--ws-bind", default="127.0.0.1:8765", metavar="ADDR:PORT",
                   help="where clients connect over WebSocket (default: %(default)s)")
    p.add_argument("--tcp-bind", default="127.0.0.1:8766", metavar="ADDR:PORT",
                   help="where clients connect over raw TCP (default: %(default)s)")
    p.add_argument("--stats-bind", default="127.0.0.1:8404", metavar="ADDR:PORT",
                   help="the read-only status page /stats (default: %(default)s)")
    p.add_argument("--stats-socket", default=None, metavar="PATH",
                   help="an admin socket to drain a backend or read its state, e.g. /run/haproxy/admin.sock "
                        "(haproxy as root or the haproxy user) (default: none)")
    p.add_argument("--check-interval", default="2s", metavar="T", help="health check period, e.g. 2s, 500ms (default: %(default)s)")
    p.add_argument("--fall", type=int, default=3, help="failed checks before a backend is down (default: %(default)s)")
    p.add_argument("--rise", type=int, default=2, help="passed checks before it is up again (default: %(default)s)")
    p.add_argument("--maxconn", type=int, default=2000, metavar="N",
                   help="streams open through haproxy at once (each takes two file descriptors) (default: %(default)s)")
    p.add_argument("-o", "--output", type=Path, default=None, metavar="FILE", help="write here (default: stdout)")
    args = p.parse_args(argv)
    try:
        if args.backends and args.count is not None:
            raise ValueError("give backends or --count, not both")
        backends = ([parse_backend(b) for b in args.backends] if args.backends
                    else spaced(2 if args.count is None else args.count, args.first_port))
        text = render(backends, ws_bind=args.ws_bind, tcp_bind=args.tcp_bind, stats_bind=args.stats_bind,
                      stats_socket=args.stats_socket, check_interval=args.check_interval, fall=args.fall, rise=args.rise,
                      maxconn=args.maxconn)
    except ValueError as exc:
        p.error(str(exc))
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

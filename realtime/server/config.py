"""The server's settings: :class:`ServerConfig`, every limit with the defaults of ``python -m realtime serve``."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from ..protocol import MAX_CONFIG_BYTES, _short

__all__ = ["ServerConfig"]

MAX_BATCH_MS = 100.0  # a batch tick adds up to this much to an estimate's delay


@dataclass
class ServerConfig:
    """Every limit of the server, with the defaults of ``python -m realtime serve``."""

    host: str = "127.0.0.1"
    port: int = 8765  # WebSocket + HTTP page; 0 picks a free port
    tcp_port: int | None = None  # raw TCP; None: port + 1 (or a free port when port is 0); -1: no TCP
    token: str | None = None
    max_connections: int = 256
    max_message_bytes: int = 65536  # one WebSocket message (2 s of 16 kHz s16le mono)
    max_config_bytes: int = MAX_CONFIG_BYTES
    idle_timeout: float = 30.0  # seconds without a byte from the client (or without it reading events)
    handshake_timeout: float = 5.0  # from accept to a complete, authenticated config (trickling does not extend it)
    max_pending: int = 256  # connections not yet authenticated (whole server); see _Admission
    max_pending_per_address: int = 64  # of those, from one client address
    max_stream_seconds: float = 4 * 3600.0  # of audio, at the declared rate
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    # shed load (realtime.server.load): a process refuses new streams (busy) only on overload of its own making:
    # its event loop's or worker pool's CPU fraction (thread CPU clocks, not wall time) over max_busy, or its
    # smoothed event-loop lag or pool queue wait over max_lag seconds while it uses >= 0.25 cores itself, for
    # 2 s on end; from 32 streams also when its learned CPU per stream says one more would pass max_busy
    # (bursts taken in steps once it is half of max_busy busy); never with fewer than 3 streams; open streams
    # are never cut; 0 turns either limit off. Lag that other processes cause (CPU taken from it) with little
    # CPU of its own refuses nothing. Off by default: on a full machine neither signal sees a 2-10 s burst past
    # capacity in time, and a burst under it is partly refused (README, Shedding overload); --max-connections
    # set from a loadtest is the cap that holds. `serve --max-busy 0.6 --max-lag 0.25` turns it on.
    max_busy: float = 0.0
    max_lag: float = 0.0
    single_thread_blas: bool = True  # see limit_blas_threads: parallelism comes from the streams
    batch_ms: float = 20.0  # gather the pushes that may end a hop this long, classify them as one batch; 0: off

    def __post_init__(self):
        if not (isinstance(self.port, int) and 0 <= self.port <= 65535):
            raise ValueError(f"port must be 0-65535 (0: any free port), got {_short(self.port)}")
        if self.tcp_port is not None and not (isinstance(self.tcp_port, int) and -1 <= self.tcp_port <= 65535):
            raise ValueError(f"tcp_port must be 0-65535 (0: any free port, -1: no TCP), got {_short(self.tcp_port)}")
        for name in ("max_connections", "max_message_bytes", "max_config_bytes", "workers", "max_pending",
                     "max_pending_per_address"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("idle_timeout", "max_stream_seconds", "handshake_timeout"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive finite number of seconds, got {v}")
        if not (isinstance(self.batch_ms, (int, float)) and 0 <= self.batch_ms <= MAX_BATCH_MS):
            raise ValueError(f"batch_ms must be 0 (off) to {MAX_BATCH_MS:g} ms, got {_short(self.batch_ms)}")

        if not (isinstance(self.max_lag, (int, float)) and math.isfinite(self.max_lag) and self.max_lag >= 0):
            raise ValueError(f"max_lag must be a finite number of seconds >= 0 (0: no lag limit), got {self.max_lag}")
        if not (isinstance(self.max_busy, (int, float)) and 0 <= self.max_busy <= 1):
            raise ValueError(f"max_busy must be a fraction between 0 and 1 (0: no busy limit), got {self.max_busy}")

    def limits(self) -> dict:
        """What a client is told in the ready message."""
        return {"max_message_bytes": self.max_message_bytes, "idle_timeout_s": self.idle_timeout,
                "max_stream_seconds": self.max_stream_seconds}


"""Streaming server: many concurrent audio streams over WebSocket and raw TCP, one Engine each.

    python -m realtime serve [--host 127.0.0.1] [--port 8765] [--tcp-port PORT] [--token T] ...
    python -m realtime client talk.flac --url ws://127.0.0.1:8765/      (or tcp://127.0.0.1:8766, or mic)

One asyncio event loop serves two ports:

* ``--port`` (default 8765): WebSocket (``websockets.asyncio.server``); plain HTTP GET on the same
  port serves the browser page (``/``, ``/worklet.js``) and ``/healthz`` (JSON counters).
* ``--tcp-port`` (default ``--port`` + 1): raw TCP (asyncio streams): the JSON config line,
  then raw PCM bytes; half-close to end the stream.

The wire protocol (config, audio, ready / estimate / end / error messages) is in
:mod:`realtime.protocol`. The package has one module per job:

=================  ===================================================================================
``config``         :class:`ServerConfig`: every limit, with the defaults of ``serve``
``transport``      the connections: raw TCP and WebSocket behind one interface, HTTP answers
``session``        one stream: read, decode, feed the Engine (in the pool), send; deadlines
``admission``      who gets in: counters and stream slots, the pre-auth budget, token backoff, log storms
``app``            :class:`StreamServer`: listening, handshake, ``/healthz`` and the page, refusals
``engines``        the shared bundle behind every connection's Engine, BLAS on one thread, warm-up
``supervisor``     :class:`ServerThread`, ``serve`` (:func:`add_parser`), ``--processes`` children
=================  ===================================================================================

Design:

* The Bundle (thread-safe ONNX sessions) is loaded once and shared; every connection gets its own
  :class:`~realtime.engine.Engine` and its own streaming decoder (:class:`realtime.audio.PcmDecoder`).
* Inference runs in one bounded ``ThreadPoolExecutor(--workers)``; each connection has at most one
  job in flight, and a job covers at most ``BATCH_SECONDS`` of audio, so the pool's FIFO queue
  serves streams round-robin and a flood from one client cannot starve the others. Decoding and
  resampling run inline on the event loop; audio too short for the engine's next event (as
  ``Engine.samples_until_event()`` says) is held and pushed with the next messages as one array.
* Backpressure: a connection's coroutine does not read its socket while it processes a message or
  sends its events, so a connection holds at most one message plus the transport's small buffers and
  a fast sender is slowed by TCP flow control instead of being buffered without bound. A client that
  stops reading its events is dropped after ``--idle-timeout``.
* Limits, each refused with ``{"event": "error", "error": "..."}``, a log line, and a close:
  connections (``--max-connections``), message size (``--max-message-bytes``; on TCP it is the
  config line that is limited), time without data (``--idle-timeout``, also for the config),
  stream length (``--max-stream-seconds``), the optional shared token (``--token``, compared in
  constant time). Anything a client sends is handled per connection: the server never dies from it.
* One process holds one core and a bit (the GIL); ``--processes N`` forks N server processes that
  accept on the same two listening sockets (Linux/macOS).
"""
from .admission import Counters
from .app import WEB_DIR, StreamServer
from .config import ServerConfig
from .engines import engine_factory, limit_blas_threads, warm_up
from .supervisor import ServerThread, add_parser

__all__ = ["ServerConfig", "StreamServer", "ServerThread", "engine_factory", "limit_blas_threads", "add_parser",
           "WEB_DIR", "Counters", "warm_up"]

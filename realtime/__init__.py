"""Live speaker-gender classification: sources -> ring buffer -> VAD -> windows -> features -> ONNX ensemble -> smoother -> sinks.

The per-window work is a few small matrix products. OpenBLAS's thread pool makes them 25x slower
on a busy 2-core machine (0.8 ms -> 24 ms per window, measured), so unless told otherwise the
engine runs BLAS on one thread: streams scale across processes and worker threads instead. This
takes effect when ``realtime`` is imported before numpy (the command line always is); set
OPENBLAS_NUM_THREADS yourself to choose otherwise.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

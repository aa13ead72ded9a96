"""Live speaker-gender classification: sources -> ring buffer -> VAD -> windows -> features -> ONNX ensemble -> smoother -> sinks.

The per-window work is a few small matrix products, which OpenBLAS's thread pool makes many times
slower on a busy machine, so unless told otherwise the engine runs BLAS on one thread: streams
scale across processes and worker threads instead. This
takes effect when ``realtime`` is imported before numpy (the command line always is); set
OPENBLAS_NUM_THREADS yourself to choose otherwise.

Python API (imported lazily, so ``import realtime`` stays cheap)::

    from realtime import classify, segments, Engine
    classify("talk.flac")            # {'label': 'female', 'p_female': 0.97, 'speech_seconds': 12.3, ...}
    segments("dialogue.wav")         # [{'start': 0.0, 'end': 4.5, 'label': 'female', 'p_female': 0.96, 'voice_p_female': 0.9}, ...]
    for ev in Engine().run("talk.flac"):
        print(ev.t, ev.label, ev.p_female)

Every error raised on purpose derives from ``VoiceGenderError`` (bad audio: ``AudioError``; an unusable
bundle: ``BundleError``), and also from ``ValueError`` or ``RuntimeError`` as before.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS = {
    "classify": "api", "segments": "api",
    "Engine": "engine", "EngineConfig": "engine",
    "Event": "events", "LABELS": "events",
    "Bundle": "bundle",
    "Source": "sources", "FileSource": "sources", "StdinSource": "sources", "MicSource": "sources",
    "parse_source": "sources", "list_devices": "sources",
    "AudioError": "audio", "BundleError": "bundle", "VoiceGenderError": "errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'realtime' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))

"""The live engine: audio chunks in, one estimate per hop out.

    source -> VAD gate -> speech buffer -> window -> features -> ONNX ensemble -> smoother -> event

Use it from Python::

    from realtime import Engine
    engine = Engine()                      # loads the bundle in models/
    for event in engine.run("talk.flac"):  # a path, a Source, or an iterable of 16 kHz chunks
        print(event.t, event.label, event.p_female)

or push chunks yourself: ``engine.push(chunk, sample_rate=44100)`` returns the events (:class:`realtime.events.Event`)
that chunk completed; float or int16 arrays, mono or ``(N, channels)``, any rate (one streaming resampler per
engine). ``run`` starts every source from a clean state (t = 0).

How it decides (the measurements behind the defaults come from ``python -m offline engine-eval``, saved
in docs/engine_eval_fold0.json, and are summed up in the README and models/MODEL_CARD.md):

* The VAD runs on 20 ms frames, so a hop (``hop_s``) must be a whole number of frames.
* Windows are cut from a **speech-only buffer**: frames the VAD calls non-speech are dropped before
  windowing, so a window holds the bundle's window length of voice even when the talker pauses
  (``speech_only=False``: windows of all audio, pauses too, as training windows are).
* The first estimate of a voice comes as soon as ``first_window_s`` of speech is buffered, without
  waiting for the hop's end (the hop clock restarts there); that shorter window is wrap-padded to the
  full length exactly as training pads short clips (``fit_window``). Later windows are full length.
  :meth:`Engine.samples_until_event` says how much more audio the next event needs at the least.
* A window is classified only in a hop that counts as speech (``speech_fraction`` of its frames) and
  brought at least ``min_new_speech_s`` of new speech. A window the bundle's speech check turns away
  gets no gender, and the hops stay non-speech until a window passes. After ``reset_after_silence_s``
  without speech the buffer and the smoother reset, since the next voice may be someone else.
* Consecutive windows end on whole pitch hops (``frame_alignment``, two STFT hops) of the speech
  stream, so ``StreamingExtractor`` computes only the frames that are new.
* Each classified window's level (RMS, dB re full scale) is reported, and ``summarise`` warns when a
  recording's speech sits outside ``level_range_dbfs``, the levels the models were trained on: the
  features carry the input level, and audio much quieter than the training audio leans female.
* With ``voice_opinion`` and a bundle that has one, the engine also keeps the first seconds of the
  speech its VAD passed in hops whose windows the speech check accepted (``realtime.voice.VoiceSample``);
  ``summarise`` has the bundle's speaker encoder read them once and weighs its opinion into the file
  verdict. Nothing of it runs per hop but the copy.
* With ``live_voice`` (and a bundle with the voice opinion), the live estimate weighs in the encoder's
  opinion of the current voice too: of the speech buffer (its latest 2 s of speech), read in the hop
  whose accepted window brings the voice to ``LIVE_VOICE_FIRST_S`` of speech, then every
  ``LIVE_VOICE_EVERY_S`` of new speech, with the file decision's weights and band (``Smoother.set_opinion``). A
  voice change without a pause reaches the opinion within one refresh; a pause long enough to reset the
  smoother forgets it. Each read costs ~15-25 ms of CPU in its hop (stage ``voice``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Generator, Iterator

import numpy as np

from .audio import SAMPLE_RATE, StreamResampler, as_mono_float
from .bundle import Bundle
from .engine_config import VAD_FRAME_MS, EngineConfig
from .events import Event
from .features import FeatureExtractor, StreamingExtractor, fit_window
from .logodds import sigmoid
from .smoother import Smoother
from .vad import VadGate
from .voice import VoiceSample

#: live voice opinion: seconds of a voice's speech before its first read, and of new speech between reads
LIVE_VOICE_FIRST_S = 1.0
LIVE_VOICE_EVERY_S = 2.0


class SpeechBuffer:
    """The most recent ``capacity`` samples of speech, in fixed memory."""

    def __init__(self, capacity: int):
        self._buf = np.zeros(capacity, dtype=np.float32)
        self.size = 0

    def append(self, x: np.ndarray) -> None:
        n, cap = len(x), len(self._buf)
        if n >= cap:
            self._buf[:] = x[-cap:]
            self.size = cap
            return
        keep = min(self.size, cap - n)
        if keep:
            self._buf[cap - n - keep: cap - n] = self._buf[cap - keep:]
        self._buf[cap - n:] = x
        self.size = keep + n

    def latest(self, n: int | None = None, *, lag: int = 0) -> np.ndarray:
        """The ``n`` samples (default: all held) that end ``lag`` samples before the newest one."""
        cap = len(self._buf)
        n = self.size - lag if n is None else n
        if n + lag > self.size:
            raise ValueError(f"only {self.size} samples held, asked for {n} ending {lag} before the newest")
        return self._buf[cap - lag - n: cap - lag]

    def clear(self) -> None:
        self.size = 0


@dataclass
class _HopState:
    frames: int = 0
    speech_frames: int = 0
    sumsq: float = 0.0  # of all samples in the hop, for its input level
    stages: dict = field(default_factory=dict)


@dataclass
class WindowJob:
    """A window a hop classifies (``Engine._due_window``): ``window`` lies in the engine's speech buffer and
    stays valid until the engine's steps go on; ``start``: its position in the speech stream (None: wrap-padded)."""

    engine: "Engine"
    window: np.ndarray
    start: int | None


@dataclass
class WindowResult:
    """What classifying a window gives (``Engine.classify``, ``realtime.batching.classify_many``): its features,
    the speech check's p (None without the model), p_female (None when the speech check turned it away) and
    the milliseconds of each stage."""

    stats: np.ndarray
    mfcc: np.ndarray
    p_speech: float | None
    p_female: float | None
    stages: dict


#: a push or flush as steps: yields the windows to classify, is sent their results, returns the events
Steps = Generator[WindowJob, WindowResult, "list[Event]"]


def drive(steps: Steps) -> list[Event]:
    """Run an engine's steps (``Engine.push_steps`` / ``flush_steps``) to the end, classifying each window
    inline with its engine (``Engine.classify``); the events."""
    try:
        job = next(steps)
        while True:
            job = steps.send(job.engine.classify(job))
    except StopIteration as done:
        return done.value


class Engine:
    """Stateful per-stream classifier. One Engine per stream; the Bundle (ONNX sessions) can be shared."""

    def __init__(self, bundle: Bundle | None = None, config: EngineConfig | None = None):
        self.bundle = bundle if bundle is not None else Bundle.load()
        self.config = cfg = config or EngineConfig()
        self.extractor = FeatureExtractor(self.bundle.definition)
        self.streaming = StreamingExtractor(self.extractor)
        self.window_samples = self.bundle.definition.window_samples
        self.align = self.bundle.definition.frame_alignment
        th = self.bundle.thresholds
        self.vad = VadGate(cfg.vad_aggressiveness, frame_ms=VAD_FRAME_MS, sample_rate=SAMPLE_RATE)
        self.smoother = Smoother(cfg.forget_s, cfg.hop_s, threshold_female=th["female"], threshold_male=th["male"],
                                 hysteresis=min(cfg.hysteresis, th["male"] - 1e-3, 1 - th["female"] - 1e-3),
                                 reset_after_silence_s=cfg.reset_after_silence_s)
        self.frame_samples = SAMPLE_RATE * VAD_FRAME_MS // 1000
        self.hop_frames = round(cfg.hop_s * 1000 / VAD_FRAME_MS)
        self.first_samples = int(cfg.first_window_s * SAMPLE_RATE)
        self.min_new = int(cfg.min_new_speech_s * SAMPLE_RATE)
        self.speech = SpeechBuffer(self.window_samples + self.align)
        self.voice: VoiceSample | None = None  # the speech the file verdict's voice opinion reads
        if cfg.voice_opinion and self.bundle.has_voice_opinion:
            self.voice = VoiceSample(int(self.bundle.voice_encoder.frontend.max_speech_seconds * SAMPLE_RATE))
        self.live_voice = bool(cfg.live_voice and self.bundle.has_voice_opinion)
        self.reset()

    def reset(self) -> None:
        """Forget the stream: next push starts at t = 0 with an empty buffer and smoother."""
        self.vad.reset()
        self.smoother.reset()
        self._clear_speech()
        if self.voice is not None:
            self.voice.clear()
        self._pending = np.zeros(0, dtype=np.float32)  # samples not yet in a complete VAD frame
        self.last_window: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._frames_done = 0
        self.speech_samples = 0  # all speech seen since reset, for reporting
        self._hop = _HopState()
        self._not_speech = False  # the last window was judged not speech (music, tones...): hops stay non-speech
        self.rejected_windows = 0  # windows the bundle's speech check turned away since reset
        self._resampler: StreamResampler | None = None  # for push(sample_rate != 16000), kept across pushes

    def _clear_speech(self) -> None:
        self.speech.clear()
        self.streaming.reset()
        self._speech_pos = 0  # samples of speech appended since the buffer was last cleared
        self._new_speech = 0
        self._classified = False  # whether a window of this voice was classified yet
        self._voice_new = 0  # speech since the live voice opinion last read this voice (live_voice)
        self._voice_read = False

    def _window(self) -> tuple[np.ndarray, int | None]:
        """The newest 2 s of speech, ending on a whole pitch hop of the speech stream so that the
        streaming extractor can reuse the previous window's frames; shorter speech is wrap-padded."""
        lag = self._speech_pos % self.align
        if self.speech.size - lag >= self.window_samples:
            return self.speech.latest(self.window_samples, lag=lag), self._speech_pos - lag - self.window_samples
        return fit_window(self.speech.latest(), self.window_samples), None

    @property
    def t(self) -> float:
        """Stream time in seconds of the audio consumed so far (whole VAD frames)."""
        return self._frames_done * self.frame_samples / SAMPLE_RATE

    def samples_until_event(self) -> int:
        """The fewest 16 kHz samples a push needs before it can return an event: pushes shorter than this
        return none (they only run the VAD), a push this long or longer may end a hop and classify a window.

        It is the rest of the current hop, or less while the current voice awaits its first estimate,
        which comes as soon as ``first_window_s`` of speech is buffered, mid-hop. At the end of the stream
        :meth:`flush` emits the partial hop, whatever is left."""
        frames = self.hop_frames - self._hop.frames
        if not self._classified:  # frames that could bring the buffer to first_window_s (at least the next one)
            frames = min(frames, max(1, -(-(self.first_samples - self.speech.size) // self.frame_samples)))
        return frames * self.frame_samples - self._pending.size

    def push(self, chunk: np.ndarray, sample_rate: float = SAMPLE_RATE) -> list[Event]:
        """Feed audio of any length; return the events of the hops it completed.

        ``chunk``: float samples in [-1, 1] or int16 (scaled by 1/32768), 1-D or ``(N, channels)`` (averaged).
        ``sample_rate``: its rate; anything but 16 kHz goes through one streaming resampler kept by the
        engine, so a stream may come in chunks of any size. NaN or infinite samples, float samples far
        outside [-1, 1] (int16 values cast to float?) and other dtypes are a ``ValueError``.
        """
        return drive(self.push_steps(chunk, sample_rate))

    def push_steps(self, chunk: np.ndarray, sample_rate: float = SAMPLE_RATE) -> Steps:
        """:meth:`push` as steps: a generator that yields each window the push must classify (a
        :class:`WindowJob`), takes its :class:`WindowResult` back (``send``) and returns the events.
        :func:`drive` classifies inline; ``realtime.batching.run_many`` classifies many streams' windows
        at once. Nothing else may use the engine until the generator is done."""
        chunk = as_mono_float(chunk)
        rate = float(sample_rate)
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"sample_rate must be a positive number of Hz, got {sample_rate!r}")
        events: list[Event] = []
        rs = self._resampler
        if rs is not None and rs.in_rate != rate:  # the rate changed: drain the old resampler first
            events += yield from self._push16(rs(np.zeros(0, dtype=np.float32), last=True))
            rs = self._resampler = None
        if rate != SAMPLE_RATE:
            if rs is None:
                rs = self._resampler = StreamResampler(rate)
            chunk = rs(chunk)
        return events + (yield from self._push16(chunk))

    def _push16(self, chunk: np.ndarray) -> Steps:
        """The engine proper: 16 kHz mono float32."""
        if chunk.size == 0:
            return []
        t0 = time.perf_counter()
        decisions = self.vad.process(chunk)
        vad_ms_per_frame = (time.perf_counter() - t0) * 1000 / max(len(decisions), 1)
        audio = np.concatenate((self._pending, chunk)) if self._pending.size else chunk
        n = len(decisions) * self.frame_samples
        frames, self._pending = audio[:n], audio[n:].copy()
        events = []
        cfg, fs = self.config, self.frame_samples
        i = 0
        while i < len(decisions):
            take = min(self.hop_frames - self._hop.frames, len(decisions) - i)
            sel = decisions[i: i + take]
            early = self._first_window_ready_at(sel) if not self._classified else None
            if early is not None:
                take, sel = early, sel[:early]
            block = frames[i * fs:(i + take) * fs]
            self._hop.sumsq += float(np.dot(block, block))
            if sel.any() or not cfg.speech_only:
                n_voiced = int(sel.sum()) * fs
                voiced = block.reshape(take, fs)[sel].ravel()
                self.speech.append(voiced if cfg.speech_only else block)
                if self.voice is not None:
                    self.voice.add(voiced)
                self._speech_pos += n_voiced if cfg.speech_only else block.size
                self._new_speech += n_voiced
                self._voice_new += n_voiced
                self.speech_samples += n_voiced
            self._hop.frames += take
            self._hop.speech_frames += int(sel.sum())
            self._hop.stages["vad"] = self._hop.stages.get("vad", 0.0) + vad_ms_per_frame * take
            self._frames_done += take
            i += take
            if early is not None or self._hop.frames == self.hop_frames:
                events.append((yield from self._end_hop()))
        return events

    def _first_window_ready_at(self, sel: np.ndarray) -> int | None:
        """How many of these frames complete the first window of a voice, if they do (in a hop that counts as
        speech). The first estimate then comes at once instead of at the hop's end, and the hop clock restarts."""
        fs, hop = self.frame_samples, self._hop
        grow = np.cumsum(sel) if self.config.speech_only else np.arange(1, len(sel) + 1)
        ready = np.flatnonzero(self.speech.size + grow * fs >= self.first_samples)
        if ready.size == 0:
            return None
        take = int(ready[0]) + 1
        speech_frames = hop.speech_frames + int(sel[:take].sum())
        return take if speech_frames >= self.config.speech_fraction * (hop.frames + take) else None

    def flush(self) -> list[Event]:
        """End of stream: drain the resampler and emit the last, partial hop (if any audio is left in it),
        so short clips still get a verdict."""
        return drive(self.flush_steps())

    def flush_steps(self) -> Steps:
        """:meth:`flush` as steps (see :meth:`push_steps`)."""
        events = []
        if self._resampler is not None:
            events += yield from self._push16(self._resampler(np.zeros(0, dtype=np.float32), last=True))
            self._resampler = None
        if self._hop.frames:
            events.append((yield from self._end_hop()))
        return events

    def _end_hop(self) -> Steps:
        """The end of a hop: the window it classifies, if any (yielded: whoever drives the steps classifies
        it), then its event."""
        job = self._due_window()
        result = (yield job) if job is not None else None
        return self._finish_hop(job, result)

    def _due_window(self) -> WindowJob | None:
        """The window this hop classifies, or None: in a hop that counts as speech, with enough speech
        buffered and enough of it new."""
        cfg, hop = self.config, self._hop
        speech = hop.speech_frames >= cfg.speech_fraction * hop.frames
        if not (speech and self.speech.size >= self.first_samples and self._new_speech >= self.min_new):
            return None
        window, start = self._window()
        self._classified = True
        self._new_speech = 0
        return WindowJob(self, window, start)

    def classify(self, job: WindowJob) -> WindowResult:
        """Features, speech check and the three models of one window of this engine's stream."""
        t0 = time.perf_counter()
        stats, mfcc = self.streaming.extract(job.window, job.start)
        stages = {"features": (time.perf_counter() - t0) * 1000}
        p_speech = window_p = None
        if self.bundle.has_speech_model:
            t0 = time.perf_counter()
            p_speech = float(self.bundle.p_speech(stats)[0])
            stages["speech_check"] = (time.perf_counter() - t0) * 1000
        if p_speech is None or p_speech >= self.bundle.speech_threshold:
            window_p, _, model_ms = self.bundle.predict_one(stats, mfcc)
            stages.update(model_ms)
        return WindowResult(stats, mfcc, p_speech, window_p, stages)

    def _finish_hop(self, job: WindowJob | None, result: WindowResult | None) -> Event:
        """The hop's event from its window's result (None: no window), through the smoother."""
        cfg, hop = self.config, self._hop
        dt = hop.frames * self.frame_samples / SAMPLE_RATE
        stages = hop.stages
        speech = hop.speech_frames >= cfg.speech_fraction * hop.frames
        window_p = level = p_speech = None
        if result is not None:
            window = job.window
            self.last_window = (window.copy(), result.stats, result.mfcc)  # what was classified (a copy: the buffer moves on)
            stages.update(result.stages)
            p_speech = result.p_speech
            if p_speech is not None:
                self._not_speech = p_speech < self.bundle.speech_threshold
                self.rejected_windows += self._not_speech
            if self.voice is not None:
                self.voice.judged(not self._not_speech)
            if not self._not_speech:  # else no window was classified
                window_p = result.p_female
                level = 10.0 * math.log10(max(float(np.dot(window, window)) / window.size, 1e-12))
        speech = speech and not self._not_speech
        if window_p is not None and self.live_voice:
            self._read_voice(stages)
        t0 = time.perf_counter()
        est = self.smoother.update(window_p, speech, dt)
        if est.label == "no speech" and self.speech.size:
            self._clear_speech()  # a long pause: the next voice may be someone else
        stages["smoother"] = (time.perf_counter() - t0) * 1000
        n = hop.frames * self.frame_samples
        input_level = 10.0 * math.log10(max(hop.sumsq / n, 1e-12)) if n else None
        self._hop = _HopState()
        return Event(
            t=round(self.t, 3),
            label=est.label,
            p_female=None if est.p_female is None else round(float(est.p_female), 4),
            window_p_female=None if window_p is None else round(float(window_p), 4),
            p_speech=None if p_speech is None else round(p_speech, 4),
            level_dbfs=None if level is None else round(level, 1),
            input_dbfs=None if input_level is None else round(input_level, 1),
            speech=bool(speech),
            confidence=round(float(est.confidence), 4),
            compute_ms=round(sum(stages.values()), 3),
            stages_ms={k: round(v, 3) for k, v in stages.items()},
        )

    def _read_voice(self, stages: dict) -> None:
        """The live voice opinion (``live_voice``): when due, the encoder reads the speech buffer and the
        smoother weighs its log-odds in from this hop on."""
        due = (LIVE_VOICE_EVERY_S if self._voice_read else LIVE_VOICE_FIRST_S) * SAMPLE_RATE
        if self._voice_new < due:
            return
        t0 = time.perf_counter()
        v = self.bundle.voice_logit(self.speech.latest())
        stages["voice"] = (time.perf_counter() - t0) * 1000
        if v is None:
            return
        self._voice_new, self._voice_read = 0, True
        b = self.bundle
        self.smoother.set_opinion(b.voice_weight * v, b.file_scale / b.file_scale_without_voice,
                                  (b.file_thresholds["female"], b.file_thresholds["male"]))

    def run(self, source, *, sample_rate: float = SAMPLE_RATE) -> Iterator[Event]:
        """Events for a whole source, from a clean state (t = 0; nothing carried over from an earlier source).

        ``source``: a path (str or Path: any file soundfile reads), anything with ``chunks()`` (a
        :mod:`realtime.sources` Source), a 1-D / ``(N, channels)`` array, or an iterable of chunks;
        arrays and chunks are at ``sample_rate``. The stream's end flushes the last partial hop.
        Events carry ``overruns`` when the source counts them (the microphone's ring buffer).
        """
        import os

        self.reset()
        if isinstance(source, (str, os.PathLike)):
            from .sources import FileSource

            with FileSource(source) as src:
                yield from self.run(src)
            return
        if isinstance(source, np.ndarray):
            step = max(1, int(round(0.1 * sample_rate)))
            source = [source[i:i + step] for i in range(0, len(source), step)]
        chunks = source.chunks() if hasattr(source, "chunks") else source
        for chunk in chunks:
            for event in self.push(chunk, sample_rate):
                yield self._with_overruns(event, source)
        for event in self.flush():
            yield self._with_overruns(event, source)

    @staticmethod
    def _with_overruns(event: Event, source) -> Event:
        overruns = getattr(source, "overruns", None)
        if overruns is not None:
            event.overruns = int(overruns)
        return event


def level_warning(level_dbfs: float | None, level_range_dbfs: tuple[float, float]) -> str | None:
    """A hint when speech at ``level_dbfs`` lies outside the levels the models were trained on, else None."""
    if level_dbfs is None:
        return None
    lo, hi = level_range_dbfs
    if level_dbfs < lo:
        return (f"speech at {level_dbfs:.0f} dBFS is quieter than the training audio ({lo:.0f}..{hi:.0f} dBFS): "
                f"raise the input gain; quiet voices lean female")
    if level_dbfs > hi:
        return (f"speech at {level_dbfs:.0f} dBFS is louder than the training audio ({lo:.0f}..{hi:.0f} dBFS): "
                f"lower the input gain")
    return None


def file_decision(window_ps, bundle: Bundle, voice_logit: float | None = None) -> tuple[str, float | None]:
    """The decision for a whole recording (or a segment) from its windows' p_female: the mean log-odds,
    scaled, plus the bundle's voice opinion of its speech when given (``voice_logit``: ``Bundle.voice_logit``),
    read through the file-level band the bundle fitted on held-out speakers' files (``Bundle.file_verdict``).
    Returns (label, p): ('no speech', None) without windows, else female / male / uncertain and p."""
    return bundle.file_verdict((p for p in window_ps if p is not None), voice_logit)


def summarise(events: list, engine: Engine, *, voice: bool = True) -> dict:
    """One verdict for a whole recording (events: Event objects or their dicts).

    ``label`` is female | male | uncertain | no speech (see :func:`file_decision`); ``p_female`` its p (null
    without windows); ``speech_seconds`` the speech the VAD heard; ``windows`` how many were classified;
    ``level_dbfs`` the median level of the classified windows; ``warning`` says why the verdict may be
    missing or unreliable (speech too short for a window, speech quieter or louder than the training
    audio), else null; ``voice_p_female`` the voice opinion alone (the speaker encoder's probe, weighed into
    ``p_female``), null without one (no encoder in the bundle, ``voice_opinion`` off, under 1 s of speech;
    ``voice=False``: not computed, for a caller that wants only the warning)."""
    windows = sum(e["window_p_female"] is not None for e in events)
    voice_logit = None
    if voice and engine.voice is not None and windows:
        voice_logit = engine.bundle.voice_logit(engine.voice.speech())
    label, p = file_decision([e["window_p_female"] for e in events], engine.bundle, voice_logit)
    speech_s = round(engine.speech_samples / SAMPLE_RATE, 2)
    levels = [e["level_dbfs"] for e in events if e.get("level_dbfs") is not None and e["window_p_female"] is not None]
    level = round(float(np.median(levels)), 1) if levels else None
    warning = level_warning(level, engine.config.level_range_dbfs)
    if windows == 0:
        first = engine.config.first_window_s
        if engine.rejected_windows:
            warning = (f"the VAD passed {speech_s:.2f} s as speech, but the speech check judged all "
                       f"{engine.rejected_windows} window(s) of it not speech (music, tones or noise)")
        elif speech_s > 0:
            warning = (f"only {speech_s:.2f} s of speech, less than the {first:g} s a first estimate needs"
                       if speech_s < first else
                       f"{speech_s:.2f} s of speech, but never {first:g} s of it within a hop of speech")
        else:
            heard = [e["input_dbfs"] for e in events if e.get("input_dbfs") is not None]
            loudest = max(heard) if heard else None
            warning = "the voice activity detector heard no speech" + (
                f" (loudest hop {loudest:.0f} dBFS)" if loudest is not None else "")
        speech_levels = [e["input_dbfs"] for e in events if e.get("speech") and e.get("input_dbfs") is not None]
        if speech_levels:
            hint = level_warning(float(np.median(speech_levels)), engine.config.level_range_dbfs)
            warning = f"{warning}; {hint}" if hint else warning
    return {"label": label, "p_female": None if p is None else round(p, 4), "speech_seconds": speech_s,
            "windows": int(windows), "level_dbfs": level, "warning": warning,
            "voice_p_female": None if voice_logit is None else round(float(sigmoid(voice_logit)), 4)}

"""Training-time augmentation: coloured noise at an exact SNR, small pitch shifts, gain, and real capture
channels (a source sampled at 8 or 11.025 kHz, a telephone line, low-bitrate MP3 and Opus), a microphone's
frequency response (``mic_response``); room reverberation (``reverb``) and the phone codecs AAC and AMR-NB
(``phone_codec``) for evaluation.

Never used on the live path. All outputs are finite float32 in [-1, 1].
"""
from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, fields

import numpy as np

from realtime.audio import RESAMPLE_QUALITY, SAMPLE_RATE

COLORS = ("white", "pink", "brown")
MAX_SEMITONES = 1.0  # beyond about one semitone a shift starts to move voices across the gender boundary
CHANNELS = ("8k", "11k", "telephone", "mp3", "opus")  # see ``channel``
# low-bitrate lossy codecs through libsndfile (soundfile's wheel bundles LAME/mpg123 and Opus):
# (container, subtype, compression level); at 16 kHz mono these come out near 21 and 9 kbit/s
CODECS = {"mp3": ("MP3", "MPEG_LAYER_III", 0.99), "opus": ("OGG", "OPUS", 0.99)}


def _finite_clip(x: np.ndarray) -> np.ndarray:
    y = np.nan_to_num(np.asarray(x, dtype=np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(y, -1.0, 1.0, out=y)


def colored_noise(n: int, color: str = "white", rng: np.random.Generator | None = None, *,
                  sr: int = SAMPLE_RATE, f_low: float = 20.0) -> np.ndarray:
    """``n`` samples of noise with power spectrum flat (white), 1/f (pink) or 1/f^2 (brown).

    Pink and brown are white noise shaped in the frequency domain, with content below ``f_low`` Hz removed
    (inaudible drift that would otherwise hold most of their power and fake a high noise level).
    """
    if color not in COLORS:
        raise ValueError(f"color must be one of {COLORS}, got {color!r}")
    rng = np.random.default_rng() if rng is None else rng
    white = rng.standard_normal(n)
    if color == "white" or n < 2:
        return white
    spectrum = np.fft.rfft(white)
    f = np.fft.rfftfreq(n, d=1.0 / sr)
    keep = f >= max(f_low, f[1])
    # amplitude 1/sqrt(f) -> power 1/f (pink); amplitude 1/f -> power 1/f^2 (brown)
    spectrum[keep] /= np.sqrt(f[keep]) if color == "pink" else f[keep]
    spectrum[~keep] = 0.0
    return np.fft.irfft(spectrum, n)


def add_noise(x: np.ndarray, snr_db: float, color: str = "white", rng: np.random.Generator | None = None, *,
              sr: int = SAMPLE_RATE) -> np.ndarray:
    """``x`` plus noise scaled so that 10*log10(sum(x^2) / sum(noise^2)) == ``snr_db`` over the whole clip.

    Pass ``rng`` for reproducible noise (a fresh unseeded generator otherwise).
    If the mix would clip, the whole mix is scaled down by its peak, which keeps the SNR exact. A silent
    clip is returned unchanged (no SNR can be defined).
    """
    x = np.asarray(x, dtype=np.float32)
    p_signal = float(np.mean(np.square(x, dtype=np.float64))) if x.size else 0.0
    if p_signal <= 0.0:
        return x.copy()
    noise = colored_noise(x.shape[0], color, rng, sr=sr)
    noise *= np.sqrt(p_signal / (np.mean(noise ** 2) * 10.0 ** (snr_db / 10.0)))
    y = x.astype(np.float64) + noise
    peak = float(np.max(np.abs(y)))
    if peak > 1.0:
        y /= peak
    return _finite_clip(y)


def pitch_shift(x: np.ndarray, semitones: float, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Shift pitch by ``semitones`` (|semitones| <= 1) keeping duration; phase vocoder + soxr resampling."""
    if not abs(semitones) <= MAX_SEMITONES:
        raise ValueError(f"pitch shift is limited to +-{MAX_SEMITONES} semitone, got {semitones}")
    x = np.asarray(x, dtype=np.float32)
    if semitones == 0 or x.size == 0:
        return x.copy()
    import librosa

    # The STFT keywords go to both stft and istft, so pad_mode (istft has none) stays at stft's default,
    # 'constant' since librosa 0.10.
    y = librosa.effects.pitch_shift(x, sr=sr, n_steps=float(semitones), bins_per_octave=12, res_type="soxr_hq",
                                    scale=False, n_fft=1024, hop_length=256, win_length=1024, window="hann",
                                    center=True)
    return _finite_clip(y)


def gain(x: np.ndarray, db: float) -> np.ndarray:
    """Multiply by ``10 ** (db / 20)`` and clip to [-1, 1]."""
    return _finite_clip(np.asarray(x, dtype=np.float32) * np.float32(10.0 ** (db / 20.0)))


def _same_length(y: np.ndarray, n: int) -> np.ndarray:
    """``y`` cut or zero-padded at the end to ``n`` samples."""
    return y[:n] if y.shape[0] >= n else np.pad(y, (0, n - y.shape[0]))


def _round_trip(x: np.ndarray, rate: int, sr: int, inner=None) -> np.ndarray:
    """``x`` resampled to ``rate`` (soxr, the live engine's resampler), through ``inner``, and back to ``sr``
    at its own length."""
    import soxr

    y = soxr.resample(x, sr, rate, quality=RESAMPLE_QUALITY)
    if inner is not None:
        y = inner(y).astype(np.float32)
    y = soxr.resample(y, rate, sr, quality=RESAMPLE_QUALITY)
    return _finite_clip(_same_length(y, x.shape[0]))


def band_limit(x: np.ndarray, source_rate: int, sr: int = SAMPLE_RATE) -> np.ndarray:
    """What a recording made at ``source_rate`` Hz sounds like after resampling to ``sr``: nothing above
    ``source_rate / 2``."""
    x = np.asarray(x, dtype=np.float32)
    if source_rate >= sr or x.size == 0:
        return x.copy()
    return _round_trip(x, source_rate, sr)


def room_response(rt60: float, drr_db: float, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A synthetic room impulse response: the direct sound (1.0 at t = 0), then from 3 ms an exponentially
    decaying noise tail that falls 60 dB in ``rt60`` seconds, low-passed at 4 kHz (walls and air absorb the
    highs), scaled so that direct / reverberant energy is ``drr_db`` (0 dB: as much echo as voice)."""
    from scipy.signal import butter, sosfilt

    if not (rt60 > 0 and np.isfinite(drr_db)):
        raise ValueError(f"rt60 must be > 0 s and drr_db finite, got {rt60}, {drr_db}")
    n = int(min(1.2 * rt60, 1.5) * sr)
    t = np.arange(n) / sr
    tail = rng.standard_normal(n) * np.exp(-np.log(1000.0) * t / rt60)  # -60 dB at rt60
    tail[: int(0.003 * sr)] = 0.0
    tail = sosfilt(butter(1, 4000.0, fs=sr, output="sos"), tail)
    tail *= np.sqrt(10.0 ** (-drr_db / 10.0) / np.sum(tail ** 2))
    tail[0] = 1.0
    return tail


def reverb(x: np.ndarray, rt60: float = 0.6, drr_db: float = 3.0, rng: np.random.Generator | None = None,
           sr: int = SAMPLE_RATE) -> np.ndarray:
    """``x`` as heard across a room (``room_response``), at its own length and RMS level."""
    from scipy.signal import fftconvolve

    x = np.asarray(x, dtype=np.float32)
    if x.size == 0:
        return x.copy()
    h = room_response(rt60, drr_db, rng if rng is not None else np.random.default_rng(0), sr)
    y = fftconvolve(x.astype(np.float64), h)[: x.size]
    p_x, p_y = float(np.mean(np.square(x, dtype=np.float64))), float(np.mean(y * y))
    if p_y > 0:
        y *= np.sqrt(p_x / p_y)
    return _finite_clip(y.astype(np.float32))


MIC_KNOTS_HZ = (100.0, 7000.0)  # the band a microphone curve's random knots span (log-spaced)
MIC_KNOTS = 6


def mic_curve(freqs: np.ndarray, rng: np.random.Generator, *, max_db: float = 6.0, max_tilt_db: float = 2.0,
              highpass_range: tuple[float, float] = (50.0, 300.0)) -> np.ndarray:
    """A random microphone's magnitude response in dB at ``freqs`` (Hz): a smooth curve through ``MIC_KNOTS``
    log-spaced knots each drawn from +-``max_db`` (resonances, dips, presence peaks), a tilt of up to
    +-``max_tilt_db`` per octave around 1 kHz (bright or dull capsules), and a 12 dB/octave roll-off below a
    corner drawn from ``highpass_range`` (small capsules and phone voice paths lose the lows)."""
    knots = np.geomspace(*MIC_KNOTS_HZ, MIC_KNOTS)
    knot_db = rng.uniform(-max_db, max_db, MIC_KNOTS)
    tilt = rng.uniform(-max_tilt_db, max_tilt_db)
    corner = rng.uniform(*highpass_range)
    octaves = np.log2(np.maximum(np.asarray(freqs, dtype=np.float64), 1.0) / 1000.0)
    db = np.interp(octaves, np.log2(knots / 1000.0), knot_db) + tilt * octaves
    below = np.asarray(freqs) < corner
    db[below] -= 12.0 * np.log2(corner / np.maximum(np.asarray(freqs, dtype=np.float64)[below], 1.0))
    return db


def mic_response(x: np.ndarray, rng: np.random.Generator, sr: int = SAMPLE_RATE, **curve) -> np.ndarray:
    """``x`` as a different microphone would have heard it: filtered (zero phase, in one FFT of the whole
    signal) by a random ``mic_curve`` (``curve``: its keyword options), at its own length and RMS level.
    Moves the long-term spectrum the way devices do, and neither pitch nor formant spacing."""
    x = np.asarray(x, dtype=np.float32)
    if x.size == 0:
        return x.copy()
    n = x.size
    spec = np.fft.rfft(x.astype(np.float64))
    spec *= 10.0 ** (mic_curve(np.fft.rfftfreq(n, 1.0 / sr), rng, **curve) / 20.0)
    y = np.fft.irfft(spec, n)
    p_x, p_y = float(np.mean(np.square(x, dtype=np.float64))), float(np.mean(y * y))
    if p_y > 0:
        y *= np.sqrt(p_x / p_y)
    return _finite_clip(y.astype(np.float32))


def telephone(x: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A narrow-band phone line: at 8 kHz, the 300-3400 Hz voice band and 8-bit mu-law (G.711); back at ``sr``."""
    from scipy.signal import butter, sosfilt

    x = np.asarray(x, dtype=np.float32)
    if x.size == 0:
        return x.copy()
    band = butter(4, [300.0, 3400.0], btype="bandpass", fs=8000, output="sos")

    def line(y: np.ndarray) -> np.ndarray:
        y = sosfilt(band, y.astype(np.float64))
        peak = float(np.max(np.abs(y)))
        if peak > 1.0:
            y /= peak
        mu = 255.0
        code = np.round(np.sign(y) * np.log1p(mu * np.abs(y)) / np.log1p(mu) * 127.0) / 127.0  # 8-bit mu-law
        return np.sign(code) * np.expm1(np.abs(code) * np.log1p(mu)) / mu

    return _round_trip(x, 8000, sr, line)


def lossy(x: np.ndarray, codec: str, sr: int = SAMPLE_RATE) -> np.ndarray:
    """``x`` encoded with a low-bitrate lossy codec ('mp3' or 'opus', see ``CODECS``) and decoded again."""
    import io

    import soundfile as sf

    x = np.asarray(x, dtype=np.float32)
    if x.size == 0:
        return x.copy()
    container, subtype, level = CODECS[codec]
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=container, subtype=subtype, compression_level=level)
    buf.seek(0)
    y, rate = sf.read(buf, dtype="float32")
    if rate != sr:
        raise RuntimeError(f"{codec} round trip came back at {rate} Hz, not {sr}")
    return _finite_clip(_same_length(y, x.shape[0]))


WORLD_FRAME_MS = 5.0


def world_voice(x: np.ndarray, f0_median: float | None, warp: float = 1.0, sr: int = SAMPLE_RATE, *,
                max_factor: float = 2.0) -> np.ndarray:
    """Re-synthesise ``x`` with the WORLD vocoder (pyworld) moving pitch and vocal-tract size independently.

    ``f0_median``: the voiced frames' F0 are scaled so that their median becomes this (Hz; None: unchanged),
    the factor limited to ``1 / max_factor .. max_factor``; the spectral envelope (formants) is kept.
    ``warp``: the spectral envelope is stretched along frequency by this factor (formants times ``warp``, as
    a shorter or longer vocal tract; pitch kept). A voice whose pitch moves into the other sex's range while
    its formants stay (or the reverse) keeps its label: so the models cannot let pitch alone decide.
    The output has the input's length and RMS.
    """
    import pyworld as pw

    x = np.asarray(x, dtype=np.float32)
    if x.size < sr // 10:
        return x.copy()
    xd = x.astype(np.float64)
    f0, t = pw.dio(xd, sr, frame_period=WORLD_FRAME_MS)
    f0 = pw.stonemask(xd, f0, t, sr)
    sp = pw.cheaptrick(xd, f0, t, sr)
    ap = pw.d4c(xd, f0, t, sr)
    voiced = f0 > 0
    if f0_median is not None and voiced.any():
        factor = float(np.clip(f0_median / np.median(f0[voiced]), 1.0 / max_factor, max_factor))
        f0 = f0 * factor
    if warp != 1.0:
        bins = np.arange(sp.shape[1], dtype=np.float64)
        src = bins / warp  # envelope value at f comes from f / warp: formants move up by ``warp``
        sp = np.stack([np.interp(src, bins, row, right=row[-1]) for row in sp])
        ap = np.stack([np.interp(src, bins, row, right=row[-1]) for row in ap])
    y = pw.synthesize(f0, np.ascontiguousarray(sp), np.ascontiguousarray(ap), sr, frame_period=WORLD_FRAME_MS)
    y = _same_length(np.asarray(y, dtype=np.float64), x.shape[0])
    rx, ry = float(np.sqrt(np.mean(xd ** 2))), float(np.sqrt(np.mean(y ** 2)))
    if ry > 0:
        y *= rx / ry
    peak = float(np.max(np.abs(y)))
    if peak > 1.0:
        y /= peak
    return _finite_clip(y)


#: the codecs phones record and call with, through FFmpeg (PyAV): (container, encoder, its rate, bit rate);
#: evaluation channels (``channel``), not in the training recipe's ``CHANNELS``
PHONE_CODECS = {"aac": ("ipod", "aac", 16000, 24000),  # a voice memo's AAC-LC in M4A, at a low rate
                "amr": ("amr", "libopencore_amrnb", 8000, 12200)}  # AMR-NB, the GSM / 3G voice codec
ALL_CHANNELS = CHANNELS + tuple(PHONE_CODECS)  # every name ``channel`` takes


def ffmpeg_encode(x: np.ndarray, sr: int, container: str, codec: str, *, rate: int | None = None,
                  channels: int = 1, bit_rate: int | None = None) -> bytes:
    """Mono ``x`` at ``sr`` encoded by FFmpeg's ``codec`` into ``container`` (a file's bytes), at ``rate``
    (default ``sr``) with ``channels`` copies of it and ``bit_rate`` (default: the encoder's)."""
    import io

    import av
    import soxr

    rate = rate or sr
    y = np.asarray(x, dtype=np.float32)
    if rate != sr:
        y = soxr.resample(y, sr, rate, quality=RESAMPLE_QUALITY).astype(np.float32)
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "stereo" if channels == 2 else "mono"
        if bit_rate:
            stream.bit_rate = bit_rate
        fmt = stream.codec_context.format.name  # the sample format the encoder takes (fltp, s16, ...)
        frame_size = stream.codec_context.frame_size or 1024
        planar = np.stack([np.clip(y, -1.0, 1.0)] * channels)
        for start in range(0, planar.shape[1], frame_size):
            part = planar[:, start:start + frame_size]
            if fmt.startswith("s16"):
                part = np.round(part * 32767).astype(np.int16)
            if not fmt.endswith("p"):  # packed: one row of interleaved samples
                part = part.T.reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(part), format=fmt, layout=stream.layout.name)
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def phone_codec(x: np.ndarray, codec: str, sr: int = SAMPLE_RATE) -> np.ndarray:
    """``x`` through a phone codec ('aac' or 'amr', see ``PHONE_CODECS``) and decoded again as the engine
    decodes such a file (``realtime.decode.read``), back at ``sr`` and at its length (the codec's priming
    delay kept, as a real recording has it)."""
    import io

    from realtime.audio import resample, to_mono
    from realtime.decode import read

    x = np.asarray(x, dtype=np.float32)
    if x.size == 0:
        return x.copy()
    container, encoder, rate, bit_rate = PHONE_CODECS[codec]
    y, got = read(io.BytesIO(ffmpeg_encode(x, sr, container, encoder, rate=rate, bit_rate=bit_rate)), name=codec)
    return _finite_clip(_same_length(resample(to_mono(y), got, sr), x.shape[0]))


def channel(x: np.ndarray, name: str, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Pass ``x`` through a named capture channel: '8k' / '11k' (a source sampled at 8 / 11.025 kHz),
    'telephone' (``telephone``), 'mp3' / 'opus' (``lossy``), or the phone codecs 'aac' / 'amr'
    (``phone_codec``, evaluation only)."""
    if name == "8k":
        return band_limit(x, 8000, sr)
    if name == "11k":
        return band_limit(x, 11025, sr)
    if name == "telephone":
        return telephone(x, sr)
    if name in CODECS:
        return lossy(x, name, sr)
    if name in PHONE_CODECS:
        return phone_codec(x, name, sr)
    raise ValueError(f"channel must be one of {ALL_CHANNELS}, got {name!r}")


@dataclass(frozen=True)
class AugmentOptions:
    """What one augmented copy may go through, and how likely each step is (validated, tuples normalised).

    Pitch shift of up to ``max_semitones`` (probability ``p_pitch``), or instead with probability ``p_voice``
    a WORLD re-synthesis (``world_voice``: median F0 moved into ``voice_f0_range``, formants warped by
    ``1 +- voice_warp``); with probability ``p_room`` a room (``reverb``, RT60 and direct-to-reverberant ratio
    from ``room_rt60_range`` / ``room_drr_range``); with probability ``p_mic`` another microphone's frequency
    response (``mic_response`` with ``mic_db``, ``mic_tilt_db``, ``mic_highpass_range``); a gain from ``gain_db_range`` (never clipping); noise of a
    colour from ``colors`` at an SNR from ``snr_range`` (probability ``p_noise``); a capture channel from
    ``channels`` (probability ``p_channel``). Shared by ``Augmenter`` (which draws them) and ``AugmentConfig`` (the
    training recipe's choice)."""

    snr_range: tuple[float, float] = (5.0, 30.0)
    colors: tuple[str, ...] = COLORS
    max_semitones: float = MAX_SEMITONES
    gain_db_range: tuple[float, float] = (-6.0, 6.0)
    p_noise: float = 0.8
    p_pitch: float = 0.5
    p_channel: float = 0.0
    channels: tuple[str, ...] = CHANNELS
    p_voice: float = 0.0                       # share of copies re-synthesised by ``world_voice``
    voice_f0_range: tuple[float, float] = (140.0, 210.0)   # target median F0: where the sexes overlap
    voice_warp: float = 0.06                   # formant warp drawn from 1 +- voice_warp
    p_room: float = 0.0                        # share of copies heard across a room (``reverb``)
    room_rt60_range: tuple[float, float] = (0.2, 0.9)   # reverberation time, seconds
    room_drr_range: tuple[float, float] = (0.0, 12.0)   # direct-to-reverberant ratio, dB (0: as much echo as voice)
    p_mic: float = 0.0                         # share of copies heard through another microphone (``mic_response``)
    mic_db: float = 6.0                        # its curve's knots drawn from +- mic_db
    mic_tilt_db: float = 2.0                   # its tilt, dB per octave, from +- mic_tilt_db
    mic_highpass_range: tuple[float, float] = (50.0, 300.0)  # its low roll-off's corner, Hz

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_semitones <= MAX_SEMITONES:
            raise ValueError(f"max_semitones must be in [0, {MAX_SEMITONES}], got {self.max_semitones}")
        bad = [c for c in self.colors if c not in COLORS]
        if bad or not self.colors:
            raise ValueError(f"colors must be a non-empty subset of {COLORS}, got {self.colors}")
        if any(c not in ALL_CHANNELS for c in self.channels) or not self.channels:
            raise ValueError(f"channels must be a non-empty subset of {ALL_CHANNELS} (default "
                             f"{CHANNELS}), got {self.channels}")
        for name in ("p_noise", "p_pitch", "p_channel", "p_voice", "p_room", "p_mic"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.room_rt60_range[0]:
            raise ValueError(f"room_rt60_range must be > 0 s, got {self.room_rt60_range}")
        if not (self.mic_db >= 0.0 and self.mic_tilt_db >= 0.0 and self.mic_highpass_range[0] > 0.0):
            raise ValueError(f"mic_db and mic_tilt_db must be >= 0 and mic_highpass_range > 0 Hz, got "
                             f"{self.mic_db}, {self.mic_tilt_db}, {self.mic_highpass_range}")
        for name in ("snr_range", "gain_db_range", "voice_f0_range", "room_rt60_range", "room_drr_range",
                     "mic_highpass_range"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name} must be (low, high), got {(lo, hi)}")
        object.__setattr__(self, "colors", tuple(self.colors))
        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "snr_range", tuple(map(float, self.snr_range)))
        object.__setattr__(self, "gain_db_range", tuple(map(float, self.gain_db_range)))
        object.__setattr__(self, "voice_f0_range", tuple(map(float, self.voice_f0_range)))
        object.__setattr__(self, "room_rt60_range", tuple(map(float, self.room_rt60_range)))
        object.__setattr__(self, "room_drr_range", tuple(map(float, self.room_drr_range)))
        object.__setattr__(self, "mic_highpass_range", tuple(map(float, self.mic_highpass_range)))

    def options(self) -> dict:
        """The ``AugmentOptions`` fields only, by name."""
        return {f.name: getattr(self, f.name) for f in fields(AugmentOptions)}


@dataclass(frozen=True)
class AugmentConfig(AugmentOptions):
    """The audio augmentation of a training run (``offline.train.TrainConfig.augment``, recorded in bundle.json):
    ``copies`` augmented versions of every training utterance (0: none), each drawn by ``augmenter(seed)``
    with these options. Defaults: the release recipe, which also passes a share of the copies through a
    capture channel (``p_channel``) and re-synthesises another share with WORLD, pitch and vocal-tract size
    moved independently (``p_voice``; measured leave-one-corpus-out, see the model card)."""

    p_channel: float = 0.4
    p_voice: float = 0.5
    copies: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.copies, bool) or not isinstance(self.copies, int) or self.copies < 0:
            raise ValueError(f"copies must be a whole number >= 0, got {self.copies!r}")

    def augmenter(self, seed: int) -> "Augmenter":
        return Augmenter(seed=seed, **self.options())

    def to_dict(self) -> dict:
        """Plain JSON (tuples as lists), every field."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Augmenter(AugmentOptions):
    """One random augmentation per call, with the options of ``AugmentOptions``: pitch shift (or WORLD voice
    change), gain, noise, then a capture channel. Calling with the same ``rng`` state gives the same output;
    ``rng_for`` derives a generator from (seed, key, copy) so results do not depend on processing order."""

    seed: int = 0

    def to_dict(self) -> dict:
        """Plain-JSON configuration (used in cache keys)."""
        d = asdict(self)
        if not self.p_channel:  # channels off: the key of an augmenter from before channels existed
            del d["p_channel"], d["channels"]
        if not self.p_voice:  # likewise for the WORLD voice changes
            del d["p_voice"], d["voice_f0_range"], d["voice_warp"]
        if not self.p_room:  # and for rooms
            del d["p_room"], d["room_rt60_range"], d["room_drr_range"]
        if not self.p_mic:  # and for microphones
            del d["p_mic"], d["mic_db"], d["mic_tilt_db"], d["mic_highpass_range"]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def rng_for(self, key: str, copy: int = 0, extra_seed: int = 0) -> np.random.Generator:
        """Generator determined by (seed, extra_seed, key, copy) only."""
        return np.random.default_rng([self.seed, extra_seed, zlib.crc32(key.encode("utf-8")), copy])

    def __call__(self, x: np.ndarray, rng: np.random.Generator | None = None, *, sr: int = SAMPLE_RATE
                 ) -> np.ndarray:
        """One random augmentation of ``x``. Without ``rng``, one is seeded from ``seed``."""
        rng = np.random.default_rng(self.seed) if rng is None else rng
        # Draw every random number up front so each choice is independent of the others being taken.
        do_pitch, do_noise = rng.random() < self.p_pitch, rng.random() < self.p_noise
        semitones = rng.uniform(-self.max_semitones, self.max_semitones)
        db = rng.uniform(*self.gain_db_range)
        snr = rng.uniform(*self.snr_range)
        color = self.colors[int(rng.integers(len(self.colors)))]
        # drawn only when channels are on, so an augmenter without them reproduces its earlier outputs
        do_channel = self.p_channel > 0.0 and rng.random() < self.p_channel
        chan = self.channels[int(rng.integers(len(self.channels)))] if self.p_channel > 0.0 else None
        # drawn only when voice changes are on (same reason)
        do_voice = self.p_voice > 0.0 and rng.random() < self.p_voice
        f0_target = rng.uniform(*self.voice_f0_range) if self.p_voice > 0.0 else None
        warp = 1.0 + rng.uniform(-self.voice_warp, self.voice_warp) if self.p_voice > 0.0 else 1.0
        # drawn only when rooms are on (same reason)
        do_room = self.p_room > 0.0 and rng.random() < self.p_room
        room = (rng.uniform(*self.room_rt60_range), rng.uniform(*self.room_drr_range),
                int(rng.integers(2**31))) if self.p_room > 0.0 else None
        # drawn only when microphones are on (same reason)
        do_mic = self.p_mic > 0.0 and rng.random() < self.p_mic
        mic_seed = int(rng.integers(2**31)) if self.p_mic > 0.0 else None
        y = np.asarray(x, dtype=np.float32)
        if do_voice:
            y = world_voice(y, f0_target, warp, sr)
        elif do_pitch and semitones != 0.0:
            y = pitch_shift(y, semitones, sr)
        if do_room:  # the room before the gain, the microphone's noise and the channel
            rt60, drr, room_seed = room
            y = reverb(y, rt60, drr, np.random.default_rng(room_seed), sr)
        if do_mic:  # the microphone hears the room; its own noise and the channel come after
            y = mic_response(y, np.random.default_rng(mic_seed), sr, max_db=self.mic_db,
                             max_tilt_db=self.mic_tilt_db, highpass_range=self.mic_highpass_range)
        peak = float(np.max(np.abs(y))) if y.size else 0.0
        if peak > 0.0:  # never let the gain itself clip: cap it at the clip's headroom
            db = min(db, -20.0 * np.log10(peak))
        y = gain(y, db)
        if do_noise:
            y = add_noise(y, snr, color, rng, sr=sr)
        if do_channel:
            y = channel(y, chan, sr)
        return _finite_clip(y)

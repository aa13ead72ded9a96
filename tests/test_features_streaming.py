"""StreamingExtractor reuses frames across overlapping windows and still equals FeatureExtractor.extract."""
import numpy as np

from realtime.audio import load_audio
from realtime.features import DEFAULT, FeatureExtractor, StreamingExtractor

from .data import librispeech_files


def test_streaming_equals_full_extraction_on_real_audio():
    fe = FeatureExtractor()
    sx = StreamingExtractor(fe)
    y = load_audio(librispeech_files()[5])
    hop = DEFAULT.hop_length * 22  # ~0.5 s, a whole number of STFT hops
    n = DEFAULT.window_samples
    starts = list(range(0, len(y) - n, hop))
    assert len(starts) >= 10
    for start in starts:
        w = y[start:start + n]
        s_stream, m_stream = sx.extract(w, start=start)
        s_full, m_full = fe.extract(w)
        np.testing.assert_allclose(m_stream, m_full, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(s_stream, s_full, rtol=1e-4, atol=1e-4)
    # after the first window, at most 22 + 3 edge frames of 87 are new per step
    assert sx.reused_frames >= (len(starts) - 1) * (87 - 25)


def test_unaligned_or_unknown_start_recomputes_everything():
    fe = FeatureExtractor()
    sx = StreamingExtractor(fe)
    y = load_audio(librispeech_files()[6])[: 3 * DEFAULT.window_samples]
    n = DEFAULT.window_samples
    sx.extract(y[:n], start=0)
    s, m = sx.extract(y[1000:1000 + n], start=1000)  # not a multiple of the STFT hop
    np.testing.assert_allclose(s, fe.extract(y[1000:1000 + n])[0], rtol=1e-5, atol=1e-5)
    assert sx.reused_frames == 0
    sx.extract(y[:n], start=None)
    assert sx.reused_frames == 0


def test_streaming_equals_full_extraction_for_any_whole_hop_shift():
    """The reused frames move in place by the shift: short, long, zero and too-long shifts all still equal extract()."""
    fe = FeatureExtractor()
    sx = StreamingExtractor(fe)
    y = load_audio(librispeech_files()[7])
    n, hop = DEFAULT.window_samples, DEFAULT.hop_length
    start, reused, pitch_reused = 0, [], []
    for shift in (0, 1, 5, 22, 0, 40, 3, 86, 87, 100, 2):
        start += shift * hop
        assert start + n <= len(y)
        before, pitch_before = sx.reused_frames, sx.reused_pitch_frames
        s_stream, m_stream = sx.extract(y[start:start + n], start=start)
        s_full, m_full = fe.extract(y[start:start + n])
        np.testing.assert_allclose(m_stream, m_full, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(s_stream, s_full, rtol=1e-4, atol=1e-4)
        reused.append(sx.reused_frames - before)
        pitch_reused.append(sx.reused_pitch_frames - pitch_before)
    # 84 of 87 frames are interior (away from the padded edges); a shift of k hops shares 84 - k of them.
    # First window: nothing to reuse; shifts of 87 frames or more: nothing shared.
    assert reused == [0, 83, 79, 62, 84, 44, 81, 0, 0, 0, 82]
    # pitch frames (every second STFT frame) are reused only across an even number of STFT hops; 42 of 44 are
    # interior, a shift of 2k hops shares 42 - k of them; odd shifts recompute every pitch frame
    assert pitch_reused == [0, 0, 0, 31, 42, 22, 0, 0, 0, 0, 41]

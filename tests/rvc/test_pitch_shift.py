"""pitch_shift moves the F0 given to the synthesizer by exactly n semitones."""

from __future__ import annotations

import numpy as np
import pytest

import rvc

pytestmark = pytest.mark.numerical

#: Semitones. The shift itself is exact (float64); only storing both F0 tracks as float32
#: rounds them, by ≤ 2⁻²⁴ each: ≤ 12·log2((1 + 2⁻²⁴)/(1 − 2⁻²⁴)) ≈ 2.1e-6 semitones, whatever
#: the CPU (measured 1.5e-6). A shift off by one cent (0.01) fails by 100×.
SEMITONE_TOLERANCE = 1e-4


def converter_with_f0_spy(assets, captured: list):
    voice = rvc.load_voice(assets["v2_48k"])
    real_infer = voice.synthesizer.infer

    def spying_infer(features, pitch=None, f0=None, *args, **kwargs):
        captured.append((pitch.clone(), f0.clone()))
        return real_infer(features, pitch, f0, *args, **kwargs)  # the real network still runs

    voice.synthesizer.infer = spying_infer  # type: ignore[method-assign]  # a spy in front of the real network
    return rvc.VoiceConverter(
        voice, rvc.load_content_encoder(assets["hubert"]), rvc.load_f0_estimator("pm"), noise=False
    )


@pytest.mark.parametrize("semitones", [7.0, -12.0, 2.5])
def test_f0_fed_to_the_synthesizer_moves_by_exactly_n_semitones(assets, speech, semitones):
    audio, sr = speech
    captured: list = []
    converter = converter_with_f0_spy(assets, captured)
    converter.convert(audio, sr, pitch_shift=0.0)
    converter.convert(audio, sr, pitch_shift=semitones)
    (pitch0, f0_plain), (pitch1, f0_shifted) = captured
    f0_plain, f0_shifted = f0_plain[0].numpy().astype(np.float64), f0_shifted[0].numpy().astype(np.float64)
    voiced = f0_plain > 0
    assert voiced.mean() > 0.3  # real speech: plenty of voiced frames
    np.testing.assert_array_equal(f0_shifted > 0, voiced)
    steps = 12 * np.log2(f0_shifted[voiced] / f0_plain[voiced])
    np.testing.assert_allclose(steps, semitones, atol=SEMITONE_TOLERANCE)
    # coarse pitch bins follow (mel-spaced, so compare direction only)
    assert np.sign(float((pitch1 - pitch0)[0][voiced].float().mean())) == np.sign(semitones)


def test_streaming_applies_the_same_shift(assets, speech):
    from rvc.converter import resample

    audio, sr = speech
    x = resample(audio, sr, 16000)
    captured: list = []
    converter = converter_with_f0_spy(assets, captured)
    for shift in (0.0, 5.0):
        stream = rvc.StreamingConverter(converter, 16000, block_ms=500, context_ms=500)
        stream.process(x[: 16000 * 2], pitch_shift=shift)
    n = len(captured) // 2
    for (_, a), (_, b) in zip(captured[:n], captured[n:], strict=True):
        a, b = a[0].numpy().astype(np.float64), b[0].numpy().astype(np.float64)
        v = a > 0
        np.testing.assert_allclose(12 * np.log2(b[v] / a[v]), 5.0, atol=SEMITONE_TOLERANCE)


@pytest.mark.parametrize("bad", [24.5, -30.0, float("nan")])
def test_pitch_shift_outside_two_octaves_is_rejected(assets, speech, bad):
    audio, sr = speech
    converter = converter_with_f0_spy(assets, [])
    with pytest.raises(ValueError, match="pitch_shift"):
        converter.convert(audio, sr, pitch_shift=bad)
    with pytest.raises(ValueError, match="pitch_shift"):
        rvc.StreamingConverter(converter, sr).process(audio[:100], pitch_shift=bad)

"""The streaming resampler: chunked output equals one-shot resampling, sample for sample."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from tts_server.resample import StreamResampler


@pytest.mark.parametrize("in_rate", [32_000, 22_050, 40_000])
@pytest.mark.parametrize("chunk", [1, 2048, 4097])
def test_chunked_resampling_equals_one_shot(in_rate, chunk):
    rng = np.random.default_rng(0)
    signal = (rng.standard_normal(in_rate // 2) * 0.3).astype(np.float32)
    resampler = StreamResampler(in_rate, 48_000)
    parts = [resampler.process(signal[i : i + chunk]) for i in range(0, len(signal), chunk)]
    streamed = np.concatenate([*parts, resampler.flush()])
    one_shot = soxr.resample(signal, in_rate, 48_000, quality="HQ")
    assert streamed.shape == one_shot.shape == (round(len(signal) * 48_000 / in_rate),)
    np.testing.assert_array_equal(streamed, one_shot)


def test_flush_starts_a_fresh_signal():
    resampler = StreamResampler(32_000, 48_000)
    tone = np.sin(np.arange(3200) * 0.05).astype(np.float32)
    first = np.concatenate([resampler.process(tone), resampler.flush()])
    second = np.concatenate([resampler.process(tone), resampler.flush()])
    np.testing.assert_array_equal(first, second)
    assert resampler.flush().size == 0


def test_same_rate_is_a_passthrough():
    resampler = StreamResampler(48_000, 48_000)
    x = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(resampler.process(x), x)
    assert resampler.flush().size == 0

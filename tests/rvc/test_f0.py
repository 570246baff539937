"""The F0 estimators RVC users pick, with their real weights where they have any: error in
cents on signals of known F0, agreement on real (espeak-ng) speech, stable block edges
when streamed, and a clear refusal when a method's package is missing.

Bounds: RVC quantises F0 into 255 mel-spaced bins (about 10–30 cents wide between 80 and
400 Hz) and the NSF source takes the exact value, so an estimator within 20 cents (median)
of the truth is as good as the synthesizer can use; the networks' bins are 20 cents apart
and are interpolated, the DSP trackers are exact on clean harmonics.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import rvc
from rvc.streaming import StreamingF0

SR = 16000
METHODS = ["pm", "harvest", "dio", "crepe-tiny", "crepe", "fcpe"]


def harmonic(f0_per_sample: np.ndarray) -> np.ndarray:
    """Five harmonics with 1/k amplitudes, phase the running sum of the instantaneous F0."""
    phase = 2 * np.pi * np.cumsum(f0_per_sample) / SR
    return np.sum([0.3 / k * np.sin(k * phase) for k in range(1, 6)], axis=0).astype(np.float32)


def glide(f_from: float, f_to: float, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """An exponential glide and its F0 at each 10 ms frame centre."""
    n = int(seconds * SR)
    f = f_from * (f_to / f_from) ** (np.arange(n) / n)
    return harmonic(f), f[::160][: n // 160]


def cents(est: np.ndarray, ref: np.ndarray) -> np.ndarray:
    both = (est > 0) & (ref > 0)
    return 1200 * np.abs(np.log2(est[both] / ref[both]))


@pytest.fixture(scope="module", params=METHODS)
def estimator(request):
    return rvc.load_f0_estimator(request.param)


@pytest.mark.parametrize("f0", [100.0, 150.0, 220.0, 330.0])
def test_steady_tones_within_20_cents(estimator, f0):
    x = harmonic(np.full(SR, f0))
    est = estimator.estimate(x, len(x) // 160)[10:-10]  # away from the signal's own edges
    assert (est > 0).mean() > 0.95, "a clean harmonic tone is voiced"
    assert np.median(cents(est, np.full(len(est), f0))) <= 20.0


def test_glide_within_20_cents(estimator):
    x, truth = glide(100.0, 300.0, 2.0)
    est = estimator.estimate(x, len(truth))
    err = cents(est[10:-10], truth[10:-10])
    assert len(err) > 0.95 * (len(truth) - 20)
    assert np.median(err) <= 20.0
    assert np.percentile(err, 90) <= 50.0


def test_streamed_f0_at_block_edges_equals_whole_file_within_20_cents(estimator):
    x, _ = glide(110.0, 260.0, 3.0)
    whole = estimator.estimate(x, len(x) // 160)
    block = 25  # 250 ms blocks
    stream = StreamingF0(estimator, block, 4 * block)
    edge = estimator.edge_frames
    errors = []
    for i in range(0, len(x) - block * 160 + 1, block * 160):
        track = stream.push(x[i : i + block * 160])
        end = (i + block * 160) // 160
        if end < 2 * block + estimator.context_frames:
            continue  # the stream's first blocks have silence on their left
        # the first frame of the new block and the held edge frames just rewritten
        for k in (end - block - edge, end - block):
            got, ref = track[k - end], whole[k]
            assert got > 0 and ref > 0
            errors.append(abs(1200 * np.log2(got / ref)))
    assert errors and max(errors) <= 20.0


@pytest.fixture(scope="module")
def espeak_pair():
    """The same sentence from espeak-ng at pitch settings 30 and 70, at 16 kHz."""
    from rvc.converter import resample
    from tts_server.engines.espeak import synthesize_speech

    out = []
    for pitch in (30, 70):
        audio, sr = synthesize_speech("Where were you when we were away?", pitch=pitch)
        out.append(resample(audio, sr, SR))
    return out


def test_espeak_speech_agrees_with_harvest_and_follows_the_pitch_setting(estimator, espeak_pair):
    # No ground truth in speech: WORLD's Harvest (a DSP tracker) is the reference, and the
    # ratio between espeak's two pitch settings must come out the same for every method.
    harvest = rvc.load_f0_estimator("harvest")
    medians = []
    for x in espeak_pair:
        n = len(x) // 160
        est, ref = estimator.estimate(x, n), harvest.estimate(x, n)
        err = cents(est, ref)
        assert len(err) > 0.3 * n, "plenty of frames voiced in both"
        assert np.median(err) <= 30.0
        medians.append((np.median(est[est > 0]), np.median(ref[ref > 0])))
    (lo, lo_ref), (hi, hi_ref) = medians
    assert hi > lo * 1.1, "the higher pitch setting gives a higher F0"
    assert abs(1200 * np.log2((hi / lo) / (hi_ref / lo_ref))) <= 30.0


def test_a_method_whose_package_is_missing_is_refused_with_the_pip_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchfcpe" else real(name, *a))
    with pytest.raises(ValueError, match=r"pip install --no-deps torchfcpe"):
        rvc.load_f0_estimator("fcpe")
    with pytest.raises(ValueError, match="unknown F0 method 'yin'"):
        rvc.load_f0_estimator("yin")

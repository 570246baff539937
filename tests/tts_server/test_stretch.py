"""The time-stretch stage (tts_server/stretch.py): duration, pitch, and no clicks at chunk edges."""

from __future__ import annotations

import numpy as np
import pytest

from testing import stretch_signals
from testing.stretch_signals import in_chunks
from tts_server.stretch import TimeStretcher

SAMPLE_RATE = 32_000  # Soprano's rate: what the stage sees without an RVC voice


def voiced_tone(seconds: float = 3.0) -> np.ndarray:
    return stretch_signals.voiced_tone(SAMPLE_RATE, seconds)


def stretch_whole(x: np.ndarray, speed: float) -> np.ndarray:
    stretcher = TimeStretcher(SAMPLE_RATE, speed)
    return np.concatenate([stretcher.process(x), stretcher.flush()])


def stretch_streamed(x: np.ndarray, speed: float) -> np.ndarray:
    """As the renderer does: one stretcher for the stream, fed chunk by chunk, flushed at the end."""
    stretcher = TimeStretcher(SAMPLE_RATE, speed)
    return np.concatenate([*(stretcher.process(c) for c in in_chunks(x)), stretcher.flush()])


def stretch_per_chunk(x: np.ndarray, speed: float) -> np.ndarray:
    """The naive way (what clicked before): each chunk stretched on its own."""
    return np.concatenate([stretch_whole(c, speed) for c in in_chunks(x)])


def click_level_db(y: np.ndarray) -> float:
    """Loudest 5 ms above 7 kHz (dB): the tone has nothing there, a click is broadband."""
    return stretch_signals.click_level_db(y, SAMPLE_RATE)


def median_f0_hz(y: np.ndarray) -> float:
    return stretch_signals.median_f0_hz(y, SAMPLE_RATE)


def test_speed_one_is_bypassed_bit_identical():
    x = voiced_tone(0.5)
    stretcher = TimeStretcher(SAMPLE_RATE, 1.0)
    assert stretcher.bypassed
    chunks = in_chunks(x)
    out = [stretcher.process(c) for c in chunks]
    assert all(o is c for o, c in zip(out, chunks, strict=True))  # handed through, not copied
    assert stretcher.flush().size == 0


@pytest.mark.parametrize("speed", [0.5, 0.8, 1.5, 2.0])
def test_duration_changes_by_one_over_speed(speed):
    x = voiced_tone()
    y = stretch_streamed(x, speed)
    # WSOLA emits whole synthesis hops: it may leave out the last partial analysis frame
    # and hop of the input (each at most one frame, 1024 samples at 32 kHz, i.e. frame / speed
    # of output) and the tail of the last synthesis frame (one frame of output).
    frame = 1024
    tolerance = frame * (1 + 2 / speed)
    assert abs(y.size - x.size / speed) <= tolerance, (y.size, x.size / speed)


@pytest.mark.parametrize("speed", [0.5, 2.0])
def test_pitch_is_kept(speed):
    x = voiced_tone()
    # Within 1 %: the ±3 % vibrato averages out in the median; a stretch that let the pitch
    # follow the rate would move it by 50 % or 100 %.
    assert median_f0_hz(stretch_streamed(x, speed)) == pytest.approx(median_f0_hz(x), rel=0.01)


@pytest.mark.parametrize("speed", [0.5, 1.25, 2.0])
def test_streamed_in_chunks_is_the_whole_signal_stretched_and_has_no_clicks(speed):
    x = voiced_tone()
    whole = stretch_whole(x, speed)
    streamed = stretch_streamed(x, speed)
    assert np.array_equal(streamed, whole)  # the chunking leaves no trace at all
    # The measure, and that it catches clicks: the whole-signal stretch stays near the
    # filter's floor, a per-chunk stretch breaks the waveform at every chunk edge.
    clean = click_level_db(whole)
    assert click_level_db(streamed) <= clean + 6.0
    assert click_level_db(stretch_per_chunk(x, speed)) > clean + 30.0


def test_a_flushed_stretcher_starts_afresh_and_reset_drops_what_it_held():
    x = voiced_tone(1.0)
    stretcher = TimeStretcher(SAMPLE_RATE, 1.5)
    first = np.concatenate([stretcher.process(x), stretcher.flush()])
    second = np.concatenate([stretcher.process(x), stretcher.flush()])
    assert np.array_equal(first, second)
    stretcher.process(x[:5000])
    stretcher.reset()
    assert np.array_equal(np.concatenate([stretcher.process(x), stretcher.flush()]), first)


@pytest.mark.parametrize("speed", [0.2, 4.5, float("nan")])
def test_out_of_range_speeds_are_refused(speed):
    with pytest.raises(ValueError, match="out of range"):
        TimeStretcher(SAMPLE_RATE, speed)

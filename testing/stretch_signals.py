"""Signals and measures for judging a time stretch (tests and ``benchmarks.stretch``).

* :func:`voiced_tone` — a vowel-like harmonic signal with vibrato, band-limited to 3.5 kHz;
* :func:`click_level_db` — the loudest 5 ms above 7 kHz: where the signal has nothing, so a
  discontinuity (broadband) shows there as a burst;
* :func:`median_f0_hz` — Praat's F0 (parselmouth), median over voiced frames;
* :func:`in_chunks` — irregular chunk sizes as the engines hand them over.
"""

from __future__ import annotations

import numpy as np
import parselmouth
import scipy.signal

#: Irregular chunk sizes, as the engines hand them over (Soprano's decoded chunks vary;
#: espeak-ng's are 2205 samples), none a multiple of a stretcher's hop.
CHUNK_SIZES = (1500, 2400, 3999, 5120, 2205)


def voiced_tone(sample_rate: int, seconds: float = 3.0, f0_hz: float = 150.0) -> np.ndarray:
    """Harmonics of ``f0_hz`` up to 3.5 kHz (amplitude 1/k), ±3 % vibrato at 3 Hz (so a
    stretch must re-align every frame), 20 ms fades; ``(N,)`` float32, peak 0.5."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    phase = 2 * np.pi * np.cumsum(f0_hz * (1 + 0.03 * np.sin(2 * np.pi * 3 * t))) / sample_rate
    x = sum(np.sin(k * phase) / k for k in range(1, int(3500 / f0_hz) + 1))
    fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.02)
    return (0.5 * x / np.abs(x).max() * fade).astype(np.float32)


def in_chunks(x: np.ndarray, sizes: tuple[int, ...] = CHUNK_SIZES) -> list[np.ndarray]:
    """``x`` cut in chunks of ``sizes``, cycled."""
    chunks, start, i = [], 0, 0
    while start < x.size:
        chunks.append(x[start : start + sizes[i % len(sizes)]])
        start += sizes[i % len(sizes)]
        i += 1
    return chunks


def click_level_db(y: np.ndarray, sample_rate: int) -> float:
    """Loudest 5 ms of ``y`` above 7 kHz (8th-order Butterworth high-pass), in dB full scale."""
    sos = scipy.signal.butter(8, 7000, "hp", fs=sample_rate, output="sos")
    high = scipy.signal.sosfilt(sos, y.astype(np.float64))
    frame = sample_rate // 200
    rms = np.sqrt((high[: high.size // frame * frame].reshape(-1, frame) ** 2).mean(axis=1))
    return float(20 * np.log10(rms.max() + 1e-12))


def median_f0_hz(y: np.ndarray, sample_rate: int) -> float:
    """Median F0 over Praat's voiced frames (autocorrelation method, default settings)."""
    pitch = parselmouth.Sound(y.astype(np.float64), sample_rate).to_pitch()
    f0 = pitch.selected_array["frequency"]
    return float(np.median(f0[f0 > 0]))

"""Stage 4: streaming resampling to the output rate (48 kHz).

A stateful ``soxr.ResampleStream`` (libsoxr, high quality): chunks resampled one by one
and then flushed concatenate to exactly the one-shot resampling of the whole signal,
so chunk edges add no clicks and lose no samples.
"""

from __future__ import annotations

import numpy as np
import soxr

from .events import OUTPUT_SAMPLE_RATE


class StreamResampler:
    """Resample a float32 mono stream from ``in_rate`` to ``out_rate`` chunk by chunk.

    Args:
        in_rate: input sample rate in Hz.
        out_rate: output sample rate in Hz (48 000 for the server's output).
        quality: soxr quality recipe (``"HQ"``, ``"VHQ"``, ``"MQ"``, ``"LQ"``).
    """

    def __init__(self, in_rate: int, out_rate: int = OUTPUT_SAMPLE_RATE, quality: str = "HQ") -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.quality = quality
        self._stream: soxr.ResampleStream | None = None
        self._fresh = True

    def _get(self) -> soxr.ResampleStream:
        if self._stream is None:
            self._stream = soxr.ResampleStream(self.in_rate, self.out_rate, 1, dtype="float32", quality=self.quality)
        return self._stream

    def process(self, audio: np.ndarray) -> np.ndarray:
        """Resample the next ``(N,)`` chunk; returns the ``(M,)`` float32 output ready so far.

        The filter's delay holds back a few milliseconds until :meth:`flush`.
        """
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        if self.in_rate == self.out_rate:
            return audio
        if audio.size == 0:
            return audio
        self._fresh = False
        return self._get().resample_chunk(audio)

    def flush(self) -> np.ndarray:
        """End of the signal: return the held tail and start afresh for the next one."""
        if self.in_rate == self.out_rate or self._fresh:
            return np.zeros(0, dtype=np.float32)
        tail = self._get().resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self.reset()
        return tail

    def reset(self) -> None:
        """Drop held samples (barge-in)."""
        self._stream = None
        self._fresh = True

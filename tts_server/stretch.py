"""Stage between the voice stage and the resampler: speaking-rate change that keeps pitch.

A client's ``speed`` (0.5–2.0 on the Kokoro protocols, OpenAI's ``speed``) is applied
here when the engine cannot speak at another rate itself (Soprano; espeak-ng changes its
own rate, see :class:`~tts_server.engines.base.StyledEngine`). The stretch is WSOLA
(waveform-similarity overlap-add: Verhelst & Roelands, ICASSP 1993), through the
``audiotsm`` library (MIT): its analysis–synthesis loop is stateful and reads its input
piece by piece, so one stretcher per stream, fed the stream's chunks as they come and
flushed at the end of an utterance, gives exactly the output of stretching the whole
signal at once (no clicks or gaps at chunk edges: ``tests/tts_server/test_stretch.py``).
WSOLA suits speech: it copies whole waveform periods, so the pitch and the formants are
kept and nothing is smeared as by a phase vocoder.

Why after the voice stage: RVC tracks F0 and its content features best on speech at its
natural rate, and its block timing is tuned to the engine's chunking; the stretcher works
on any signal. Why before the resampler: it works at the voice stage's rate, so the one
resampling of the stream stays last and the stream's output rate is unchanged.
"""

from __future__ import annotations

import logging

import numpy as np
from audiotsm import wsola

log = logging.getLogger(__name__)

#: Speeds the stretcher accepts (OpenAI's range; the Kokoro protocols allow 0.5–2.0).
MIN_SPEED = 0.25
MAX_SPEED = 4.0
#: WSOLA frame length in seconds: two periods of an 80 Hz voice, so every frame holds
#: whole pitch periods to align (the library's own default, 1024 samples, at 32 kHz).
FRAME_S = 0.032


class _Feed:
    """``audiotsm`` reader over the chunks handed to :meth:`TimeStretcher.process`."""

    channels = 1

    def __init__(self) -> None:
        self.data = np.zeros((1, 0), dtype=np.float32)

    @property
    def empty(self) -> bool:
        return self.data.shape[1] == 0

    def read(self, buffer: np.ndarray) -> int:
        n = min(buffer.shape[1], self.data.shape[1])
        buffer[:, :n] = self.data[:, :n]
        self.data = self.data[:, n:]
        return n

    def skip(self, n: int) -> int:
        n = min(n, self.data.shape[1])
        self.data = self.data[:, n:]
        return n


class _Sink:
    """``audiotsm`` writer collecting its output until taken."""

    channels = 1

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []

    def write(self, buffer: np.ndarray) -> int:
        self.parts.append(np.array(buffer[0], dtype=np.float32))
        return buffer.shape[1]

    def take(self) -> np.ndarray:
        out = np.concatenate(self.parts) if self.parts else np.zeros(0, dtype=np.float32)
        self.parts = []
        return out


class TimeStretcher:
    """Change a float32 mono stream's speaking rate chunk by chunk, keeping its pitch.

    At speed 1.0 with nothing held it is bypassed: the input comes back unchanged (the
    same array), so a stream at normal speed is bit-identical to one without the stage.
    Output is about ``len(input) / speed`` samples; the stretcher holds back up to about
    one frame (:data:`FRAME_S`) until :meth:`flush`.

    Args:
        sample_rate: of the input and the output, in Hz.
        speed: rate factor (2.0: twice as fast, half the duration), in
            [:data:`MIN_SPEED`, :data:`MAX_SPEED`].

    Raises:
        ValueError: ``speed`` out of range.
    """

    def __init__(self, sample_rate: int, speed: float = 1.0) -> None:
        self.sample_rate = sample_rate
        self._frame = 2 * max(64, round(sample_rate * FRAME_S / 2))
        self._tsm = wsola(1, speed=1.0, frame_length=self._frame)
        self._feed = _Feed()
        self._sink = _Sink()
        self._active = False  # fed since the last flush: no bypass until flushed
        self.speed = 1.0
        self.set_speed(speed)

    def set_speed(self, speed: float) -> None:
        """Use ``speed`` from the next sample on (no flush: the signal stays continuous).

        Raises:
            ValueError: out of range.
        """
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise ValueError(f"speed {speed:g} is out of range [{MIN_SPEED:g}, {MAX_SPEED:g}]")
        self.speed = float(speed)
        self._tsm.set_speed(self.speed)

    @property
    def bypassed(self) -> bool:
        """Speed 1.0 and nothing held: :meth:`process` returns its input unchanged."""
        return self.speed == 1.0 and not self._active

    def process(self, audio: np.ndarray) -> np.ndarray:
        """Stretch the next ``(N,)`` float32 chunk; returns the ``(M,)`` float32 output ready so far."""
        if self.bypassed or audio.size == 0:
            return audio
        self._active = True
        self._feed.data = np.asarray(audio, dtype=np.float32)[None, :]
        self._tsm.run(self._feed, self._sink, flush=False)
        return self._sink.take()

    def flush(self) -> np.ndarray:
        """End of the signal: return what is held, and start afresh (bypassed again at speed 1.0)."""
        if not self._active:
            return np.zeros(0, dtype=np.float32)
        finished = False
        while not finished:
            _, finished = self._tsm.flush_to(self._sink)
        self.reset()
        return self._sink.take()

    def reset(self) -> None:
        """Drop what is held (barge-in); the speed is kept."""
        self._tsm.clear()
        self._feed = _Feed()
        self._active = False

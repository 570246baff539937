"""Stage 3: voice conversion (PCM in, PCM out).

The pipeline holds one :class:`VoiceStage` per client stream. :class:`Passthrough`
is used when no RVC voice is configured; the RVC streaming converter (``rvc/``)
implements the same protocol. ``pitch_shift`` (semitones) travels with every chunk of
a segment so the converter can apply it.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class VoiceStage(Protocol):
    """A streaming voice converter.

    Attributes:
        output_sample_rate: sample rate in Hz of the audio it returns.
    """

    output_sample_rate: int

    def process(self, audio: np.ndarray, pitch_shift: float) -> np.ndarray:
        """Convert the next ``(N,)`` float32 chunk; return the ``(M,)`` float32 audio ready so far."""
        ...

    def flush(self) -> np.ndarray:
        """End of an utterance: return everything still held; the stage stays usable."""
        ...

    def reset(self) -> None:
        """Drop everything held (barge-in)."""
        ...


class Passthrough:
    """No voice conversion: audio leaves as it came, ``pitch_shift`` is ignored.

    Args:
        sample_rate: sample rate in Hz of the input (and output).
    """

    def __init__(self, sample_rate: int) -> None:
        self.output_sample_rate = sample_rate

    def process(self, audio: np.ndarray, pitch_shift: float) -> np.ndarray:
        """Return ``audio`` unchanged."""
        return audio

    def flush(self) -> np.ndarray:
        """Nothing is held."""
        return np.zeros(0, dtype=np.float32)

    def reset(self) -> None:
        """Nothing is held."""

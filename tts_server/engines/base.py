"""The TTS engine interface: text in, PCM chunks out.

Every engine (Soprano, espeak-ng, ...) sits behind this one small protocol so that
the pipeline does not care which one runs (the shape RealtimeTTS uses for its
engines). An engine is called only from the pipeline's inference thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import numpy as np


class EngineLoadError(RuntimeError):
    """An engine could not be loaded; the message names the file and what is wrong."""


@runtime_checkable
class TTSEngine(Protocol):
    """A streaming text-to-speech engine.

    Attributes:
        name: engine id as configured (``"soprano"``, ``"espeak"``).
        model: model or voice identifier, reported by ``/health``.
        device: where inference runs (``"cpu"``, ``"cuda"``, ...).
        sample_rate: sample rate in Hz of every chunk :meth:`synthesize` yields.
    """

    name: str
    model: str
    device: str
    sample_rate: int

    def synthesize(self, text: str) -> Iterator[np.ndarray]:
        """Speak one segment of text, chunk by chunk.

        Args:
            text: one segment as cut by the segmenter (already free of markdown).

        Yields:
            ``(N,)`` float32 mono chunks at :attr:`sample_rate`, in order. A segment
            may yield nothing (no speakable content). The caller stops synthesis
            early by ceasing to iterate and calling ``close()`` on the generator,
            so an engine must do at most one chunk of work per ``next()``.
        """
        ...

"""The TTS engine interface: text in, PCM chunks out.

Every engine (Soprano, espeak-ng, ...) sits behind this one small protocol so that
the pipeline does not care which one runs (the shape RealtimeTTS uses for its
engines). An engine is called only from the pipeline's inference thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

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


@runtime_checkable
class PrefillingEngine(TTSEngine, Protocol):
    """An engine that can start on a sentence while it is still being written.

    The prefill handle is opaque to the pipeline: whatever :meth:`prefill` returns is
    handed back to the next :meth:`prefill` of the same sentence, and finally to
    :meth:`synthesize`.
    """

    def prefill(self, text: str, previous: Any | None = None) -> Any | None:
        """Precompute what the unfinished sentence ``text`` allows (e.g. a prompt's KV cache).

        Args:
            text: the sentence so far, raw (the engine normalises it).
            previous: the handle of an earlier prefill of this sentence (``None``: none).

        Returns:
            A handle for :meth:`synthesize` (or the next prefill); ``None`` when there is
            nothing worth keeping.
        """
        ...

    def synthesize(self, text: str, prefill: Any | None = None) -> Iterator[np.ndarray]:
        """As :meth:`TTSEngine.synthesize`, starting from a prefill of a prefix of ``text``."""
        ...

"""Stage 3: voice conversion (PCM in, PCM out), and where a stream's voice comes from.

The pipeline holds one :class:`VoiceStage` per client stream, made by the server's
:class:`VoiceProvider` from a voice name. :class:`Passthrough` is used when no RVC
voice is configured; the RVC streaming converter (``rvc.StreamingConverter``)
implements the same protocol. ``pitch_shift`` (semitones) travels with every chunk of
a segment so the converter can apply it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .events import UnknownVoice


@runtime_checkable
class VoiceStage(Protocol):
    """A streaming voice converter.

    Attributes:
        output_sample_rate: sample rate in Hz of the audio it returns.
    """

    @property
    def output_sample_rate(self) -> int:
        """Sample rate in Hz of the audio :meth:`process` and :meth:`flush` return."""
        ...

    def process(self, audio: np.ndarray, pitch_shift: float) -> np.ndarray:
        """Convert the next ``(N,)`` float32 chunk; return the ``(M,)`` float32 audio ready so far."""
        ...

    def flush(self) -> np.ndarray:
        """End of an utterance: return everything still held; the stage stays usable."""
        ...

    def reset(self) -> None:
        """Drop everything held (barge-in)."""
        ...


@runtime_checkable
class VoiceProvider(Protocol):
    """The voices a server offers: names, a default, and a new stage per stream.

    Attributes:
        default: the voice a stream gets when it names none (``None``: no conversion).
    """

    @property
    def default(self) -> str | None:
        """Name of the default voice (``None``: streams are not converted by default)."""
        ...

    def names(self) -> list[str]:
        """The voice names a stream may choose."""
        ...

    def describe(self) -> list[dict[str, Any]]:
        """What ``GET /voices`` lists, one JSON object per voice (at least its ``name``)."""
        ...

    def __call__(self, name: str | None) -> VoiceStage:
        """A new stage for one stream (blocking: may load files; never on the event loop).

        Args:
            name: a voice name, or ``None`` for the default.

        Raises:
            UnknownVoice: no such voice, or its files are unusable (the message says why).
        """
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


class DefaultVoiceOnly:
    """A :class:`VoiceProvider` with no named voices: every stream gets ``make_stage()``.

    Args:
        make_stage: builds the default stage of a new stream (e.g. a :class:`Passthrough`
            at the engine's sample rate).
    """

    default: str | None = None

    def __init__(self, make_stage: Callable[[], VoiceStage]) -> None:
        self._make_stage = make_stage

    def names(self) -> list[str]:
        """No named voices."""
        return []

    def describe(self) -> list[dict[str, Any]]:
        """No named voices."""
        return []

    def __call__(self, name: str | None) -> VoiceStage:
        """The default stage; any name is refused with :class:`UnknownVoice`."""
        if name is not None:
            raise UnknownVoice(f"unknown voice {name!r}: no RVC voices are configured")
        return self._make_stage()

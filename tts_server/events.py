"""What flows through a pipeline stream, and the errors the pipeline raises.

Text goes in as :class:`Segment` objects (cut by the segmenter); audio and events come
out, in order: :class:`Audio` chunks of a segment, then its :class:`SegmentDone`, and a
:class:`Flushed` after all audio of the text sent before a flush. Every transport (the
WebSocket, the HTTP API, the Discord bot) reads the same events.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Sample rate in Hz of all audio a pipeline stream emits (and of ``/ws/stream``).
OUTPUT_SAMPLE_RATE = 48_000


@dataclass(frozen=True)
class Segment:
    """One speakable piece of text, cut by the segmenter.

    Attributes:
        index: 0-based position in the stream.
        text: the cleaned text that is spoken.
        pitch_shift: semitones, handed to the voice stage with every chunk.
        queued_at: ``time.monotonic()`` when it was cut.
        speed: speaking-rate factor (2.0: twice as fast), by the engine or the time stretch.
        language: language code as the client gave it (``"en-us"``, ``"fr-fr"``, Kokoro's
            ``"a"``...; ``None``: the engine's own), honoured where the engine has it.
    """

    index: int
    text: str
    pitch_shift: float
    queued_at: float
    speed: float = 1.0
    language: str | None = None


@dataclass(frozen=True)
class Audio:
    """A chunk of output audio.

    Attributes:
        pcm: ``(N,)`` float32 mono at ``sample_rate``.
        segment: index of the segment it belongs to (``-1``: unknown, e.g. received
            from a remote server).
        sample_rate: in Hz (the emitting stream's, :data:`OUTPUT_SAMPLE_RATE` unless opened with another).
    """

    pcm: np.ndarray
    segment: int
    sample_rate: int = OUTPUT_SAMPLE_RATE

    @property
    def duration_s(self) -> float:
        """Length in seconds."""
        return self.pcm.size / self.sample_rate


@dataclass(frozen=True)
class SegmentDone:
    """All audio of a segment has been emitted before this event.

    Attributes:
        index, text: the segment.
        audio_samples: its length in samples at the stream's sample rate.
        ttfa_ms: time to first audio, from the segment being cut to its first chunk.
        synth_ms: inference time spent on it.
    """

    index: int
    text: str
    audio_samples: int
    ttfa_ms: float | None
    synth_ms: float


@dataclass(frozen=True)
class Flushed:
    """Everything sent before the flush ``flush_id`` has been emitted before this event.

    Attributes:
        flush_id: 1 for a stream's first flush, then 2, 3, ...
        segments: indices of the segments completed since the previous flush.
        audio_samples: their length in samples at the stream's sample rate.
    """

    flush_id: int
    segments: tuple[int, ...]
    audio_samples: int


@dataclass(frozen=True)
class StreamError:
    """Synthesis of a segment (or a voice change) failed; the stream stays usable."""

    message: str
    segment: int | None = None


@dataclass(frozen=True)
class Cancelled:
    """A cancel took effect: nothing of the text sent before it follows (wire clients only)."""


Event = Audio | SegmentDone | Flushed | StreamError


class PipelineBusy(RuntimeError):
    """The configured maximum of concurrent streams is reached."""


class UnknownVoice(ValueError):
    """A stream asked for a voice the server does not have (or cannot load)."""


class PendingTextFull(ValueError):
    """A token would push the stream's unspoken text past ``max_pending_chars``."""

"""The TTS engine interfaces: text in, PCM chunks out; and the batched form for many streams.

Every engine (Soprano, espeak-ng, ...) sits behind one small protocol,
:class:`TTSEngine`, so that the pipeline does not care which one runs (the shape
RealtimeTTS uses for its engines). An engine is called only from the pipeline's
inference thread.

An engine that can advance many sentences at once in one model call (continuous
batching, as vLLM's scheduler does it) also implements :class:`BatchedEngine`: the
scheduler then owns the loop. Each step it hands the engine the sequences to advance
(one generated token each, or a chunk of a prompt) and, when a stream's listener needs
audio, the sequences to decode; the engine owns the model, the KV cache and the decoder
state, and never decides who runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

#: Share of the listener's lead (audio sent ahead of the clock) that making one chunk may
#: take: the next chunk must be ready before the listener runs dry, with room for jitter.
CHUNK_LEAD_USE = 0.7


class EngineLoadError(RuntimeError):
    """An engine could not be loaded; the message names the file and what is wrong."""


class BatchOutOfMemory(MemoryError):
    """A batch did not fit the device's memory. Nothing was changed: a smaller batch may be retried."""


def chunk_target_samples(lead_s: float, rtf: float, sample_rate: int, min_samples: int, max_samples: int) -> int:
    """How much new audio to gather before decoding the next chunk of a stream.

    A chunk may be as long as the listener's lead allows: making ``n`` samples takes
    ``n / sample_rate · rtf`` seconds, and that must stay within ``CHUNK_LEAD_USE`` of the
    ``lead_s`` seconds of audio the listener still has. Longer chunks amortise the
    decoder's fixed cost per call; shorter ones keep a listener with little lead fed.

    Args:
        lead_s: seconds of audio already sent and not yet played.
        rtf: measured real-time factor of the stream (wall seconds per audio second).
        sample_rate: of the engine's output, in Hz.
        min_samples, max_samples: bounds of the answer.

    Returns:
        Samples, in ``[min_samples, max_samples]``.
    """
    wanted = int(CHUNK_LEAD_USE * max(0.0, lead_s) / max(rtf, 1e-6) * sample_rate)
    return min(max_samples, max(min_samples, wanted))


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


@runtime_checkable
class StyledEngine(TTSEngine, Protocol):
    """An engine that speaks at another speaking rate, and in other languages, itself.

    The renderer then hands it each segment's ``speed`` and ``language`` and applies no
    time stretch (see :mod:`tts_server.stretch` for engines without this).
    """

    def speaks_language(self, language: str) -> bool:
        """True if ``language`` (a code such as ``"fr-fr"``, or Kokoro's ``"f"``) has a voice here."""
        ...

    def synthesize_styled(self, text: str, speed: float = 1.0, language: str | None = None) -> Iterator[np.ndarray]:
        """As :meth:`TTSEngine.synthesize`, at ``speed`` (rate factor) and in ``language``.

        A language it does not have is spoken in its own (the caller logs it).
        """
        ...


@runtime_checkable
class EngineSequence(Protocol):
    """One segment inside a :class:`BatchedEngine`: what the scheduler may read of it.

    A sequence is made by :meth:`BatchedEngine.start` (a complete segment) or
    :meth:`BatchedEngine.speculate` (a sentence still being written: it only prefills).
    """

    @property
    def speculative(self) -> bool:
        """True while it only prefills an unfinished sentence (it never generates then)."""
        ...

    @property
    def finished(self) -> bool:
        """No more tokens will be generated (end of speech, a length cap, or nothing to say)."""
        ...

    @property
    def ended(self) -> bool:
        """Finished, and all its audio has been decoded: the segment is complete."""
        ...

    @property
    def resident(self) -> bool:
        """It holds one of the engine's KV-cache slots."""
        ...

    @property
    def pending_tokens(self) -> int:
        """Tokens to run through the model before it can generate again (prompt, recompute; 1 when generating)."""
        ...

    @property
    def ready_samples(self) -> int:
        """Samples that a :meth:`BatchedEngine.decode` would return now."""
        ...

    @property
    def decoded_samples(self) -> int:
        """Samples already returned by :meth:`BatchedEngine.decode`."""
        ...

    @property
    def rtf(self) -> float:
        """Wall seconds spent per second of audio generated so far (from its first step)."""
        ...


@runtime_checkable
class BatchedEngine(TTSEngine, Protocol):
    """An engine that advances many sequences in one model call (continuous batching).

    The scheduler calls, per step: :meth:`step` with the sequences to run (each gets one
    generated token, or up to its budget of prompt tokens), then :meth:`decode` with the
    sequences whose listeners need audio. It must keep at most :attr:`max_batch` sequences
    resident (running a non-resident sequence makes it resident; :meth:`evict` and
    :meth:`release` free a slot). Calls are transactional: a call that raises changed no
    sequence, so the scheduler may retry a part of the batch (:class:`BatchOutOfMemory`:
    split it; any other exception: find the sequence that fails).

    Concurrency: :meth:`decode` (with :meth:`evict` and :meth:`release`) may run on one
    thread while :meth:`step` runs on another, so that the decoder of step *k*'s audio
    and the backbone of step *k + 1* use two cores. ``decode`` takes each sequence's
    latents as they are when it starts; those a concurrent ``step`` adds are left for
    the next call. Slot bookkeeping must be safe across the two threads.

    Attributes:
        max_batch: KV-cache slots: sequences that can be resident (and run) at once.
        min_chunk_samples, max_chunk_samples: bounds of a decoded chunk once a stream's
            first audio is out (see :func:`chunk_target_samples`).
    """

    max_batch: int
    min_chunk_samples: int
    max_chunk_samples: int

    @property
    def free_slots(self) -> int:
        """KV-cache slots not held by any sequence."""
        ...

    def start(self, text: str, prefill: EngineSequence | None = None) -> EngineSequence:
        """A sequence for a complete segment (no model work yet).

        Args:
            text: the segment, raw (the engine normalises it).
            prefill: a :meth:`speculate` sequence of this sentence: it is taken over
                (its slot and the KV cache of the common prefix are reused).

        Raises:
            ValueError: the segment cannot be spoken by this model (too long...).
        """
        ...

    def speculate(self, text: str, previous: EngineSequence | None = None) -> EngineSequence | None:
        """A prefill-only sequence for the unfinished sentence ``text`` (no model work yet).

        Returns ``previous`` updated (the common prefix of its KV cache kept), a new
        sequence, or ``None`` when there is nothing worth prefilling.
        """
        ...

    def step(self, rows: Sequence[tuple[EngineSequence, int]]) -> None:
        """One model call: every ``(sequence, budget)`` runs up to ``budget`` of its pending tokens.

        A generating sequence whose pending tokens are all run produces one latent (its
        audio becomes decodable) or finishes. Sequences must be distinct, not finished,
        and resident or able to take a free slot.

        Raises:
            BatchOutOfMemory: the batch does not fit; nothing changed.
        """
        ...

    def decode(self, sequences: Sequence[EngineSequence]) -> list[np.ndarray]:
        """Decode what each sequence has ready, in one call.

        Returns:
            Per sequence, ``(N,)`` float32 mono at :attr:`sample_rate` continuing its
            previous chunk exactly (possibly empty).

        Raises:
            BatchOutOfMemory: the batch does not fit; nothing changed.
        """
        ...

    def evict(self, sequence: EngineSequence) -> None:
        """Free its KV slot; it keeps its tokens and recomputes the cache when it runs again."""
        ...

    def release(self, sequence: EngineSequence) -> None:
        """The sequence is done with (ended, cancelled, failed): free everything it holds."""
        ...

"""One stream's way from a segment of text to output audio: engine → voice stage → resampler.

A :class:`SegmentRenderer` belongs to one client stream and is used only on the
pipeline's inference thread. It renders one segment at a time and knows nothing of
queues, clients or events beyond the :class:`~tts_server.events.SegmentDone` figures it
returns. It works in one of two ways, chosen by the scheduler:

* **chunk by chunk** (any :class:`~tts_server.engines.base.TTSEngine`): :meth:`~SegmentRenderer.step`
  pulls the engine's next chunk, so the scheduler can interleave streams (and drop a
  stream's work) at every chunk boundary;
* **batched** (a :class:`~tts_server.engines.base.BatchedEngine` with batching on):
  :meth:`~SegmentRenderer.begin` makes the segment's engine sequence
  (:attr:`~SegmentRenderer.sequence`), the scheduler advances it together with every
  other stream's in one model call, and hands the decoded audio to
  :meth:`~SegmentRenderer.render`.

Either way the engine's audio goes through the stream's voice stage and resampler here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .engines.base import BatchedEngine, EngineSequence, PrefillingEngine, TTSEngine
from .events import OUTPUT_SAMPLE_RATE, Segment, SegmentDone
from .resample import StreamResampler
from .segmenter import clean_for_speech
from .voice_stage import VoiceStage

log = logging.getLogger(__name__)


class Renderer(Protocol):
    """What a :class:`~tts_server.stream.Stream` needs from its renderer (inference thread only)."""

    @property
    def busy(self) -> bool:
        """A segment is being rendered (from :meth:`begin` to :meth:`end`)."""
        ...

    @property
    def segment(self) -> Segment | None:
        """The segment being rendered."""
        ...

    @property
    def sequence(self) -> EngineSequence | None:
        """Batched mode: the engine sequence of the segment being rendered."""
        ...

    @property
    def speculation(self) -> EngineSequence | None:
        """Batched mode: the engine sequence prefilling the sentence still being written."""
        ...

    @property
    def prefilled_text(self) -> str:
        """The raw text the current prefill was computed from (``""``: none)."""
        ...

    def prefill(self, text: str) -> None:
        """Let the engine start on the unfinished sentence ``text``."""
        ...

    def begin(self, segment: Segment) -> None:
        """Start rendering ``segment``."""
        ...

    def step(self) -> np.ndarray | None:
        """Chunk mode: render the engine's next chunk (``None``: the segment is complete)."""
        ...

    def render(self, pcm: np.ndarray, cost_s: float) -> np.ndarray:
        """Batched mode: take decoded engine audio through the voice stage and the resampler."""
        ...

    def drain(self) -> np.ndarray:
        """Flush what the voice stage and the resampler hold."""
        ...

    def end(self) -> SegmentDone:
        """Close the segment in progress and return its figures."""
        ...

    def set_voice(self, voice: VoiceStage) -> np.ndarray:
        """Install another voice stage; return what the old one still held."""
        ...

    def drop_prefill(self) -> None:
        """Forget the speculative prefill (its engine resources are released)."""
        ...

    def abandon(self) -> None:
        """Drop the segment in progress, the prefill and everything held."""
        ...


@dataclass
class _Job:
    segment: Segment
    chunks: Generator[np.ndarray, None, None] | None = None
    sequence: EngineSequence | None = None
    prefill: Any | None = None
    synth_s: float = 0.0
    samples: int = 0
    first_audio: float | None = None
    started: float = field(default_factory=time.monotonic)


class SegmentRenderer:
    """Renders a stream's segments (inference thread only; see the module docstring).

    Args:
        engine: the TTS engine (stage 2); its prefill is used when it has one.
        voice: the stream's voice stage (stage 3), fed at ``engine.sample_rate``.
        out_rate: sample rate in Hz of everything returned (stage 4 resamples to it).
        batched: render through the engine's batched interface (the engine must be a
            :class:`~tts_server.engines.base.BatchedEngine`).

    Raises:
        TypeError: ``batched`` with an engine that is not a ``BatchedEngine``.
    """

    def __init__(
        self, engine: TTSEngine, voice: VoiceStage, out_rate: int = OUTPUT_SAMPLE_RATE, *, batched: bool = False
    ) -> None:
        if batched and not isinstance(engine, BatchedEngine):
            raise TypeError(f"engine {engine.name!r} cannot batch")
        self.engine = engine
        self.batched = batched
        self.out_rate = out_rate
        self.voice = voice
        self.resampler = StreamResampler(voice.output_sample_rate, out_rate)
        self._job: _Job | None = None
        self._prefill: Any | None = None
        self._prefilled_text = ""

    @property
    def busy(self) -> bool:
        """True while a segment is being rendered (from :meth:`begin` to :meth:`end`)."""
        return self._job is not None

    @property
    def segment(self) -> Segment | None:
        """The segment being rendered, if any."""
        return self._job.segment if self._job is not None else None

    @property
    def sequence(self) -> EngineSequence | None:
        """Batched mode: the engine sequence of the segment being rendered."""
        return self._job.sequence if self._job is not None else None

    @property
    def speculation(self) -> EngineSequence | None:
        """Batched mode: the engine sequence prefilling the next sentence, if any."""
        return self._prefill if self.batched else None

    @property
    def prefilled_text(self) -> str:
        """The raw text the current prefill was computed from (``""`` when there is none)."""
        return self._prefilled_text

    def prefill(self, text: str) -> None:
        """Let the engine start on the unfinished sentence ``text`` (a failure only costs the speed-up).

        Chunk mode: the engine computes the prefill now (:meth:`PrefillingEngine.prefill`).
        Batched mode: the engine's speculative sequence is updated and the scheduler runs
        its tokens in the next steps (:meth:`BatchedEngine.speculate`).
        """
        engine = self.engine
        try:
            if self.batched and isinstance(engine, BatchedEngine):
                self._prefill = engine.speculate(clean_for_speech(text), self._prefill)
            elif isinstance(engine, PrefillingEngine):
                self._prefill = engine.prefill(clean_for_speech(text), self._prefill)
            else:
                return
        except Exception:
            log.exception("prefill failed")
            self._release_prefill()
        self._prefilled_text = text

    def begin(self, segment: Segment) -> None:
        """Start rendering ``segment`` (chunk mode: the engine starts on the first :meth:`step`).

        Raises:
            Exception: batched mode, whatever the engine's ``start`` raised (the segment
                cannot be spoken); the renderer stays idle.
        """
        prefill, self._prefill, self._prefilled_text = self._prefill, None, ""
        engine = self.engine
        if self.batched and isinstance(engine, BatchedEngine):
            self._job = _Job(segment, sequence=engine.start(segment.text, prefill))
        elif prefill is not None and isinstance(engine, PrefillingEngine):
            self._job = _Job(segment, chunks=_lazy(lambda: engine.synthesize(segment.text, prefill)), prefill=prefill)
        else:
            self._job = _Job(segment, chunks=_lazy(lambda: engine.synthesize(segment.text)))

    def step(self) -> np.ndarray | None:
        """Chunk mode: render the next engine chunk through the voice stage and the resampler.

        Returns:
            ``(N,)`` float32 at :attr:`out_rate` (possibly empty: the stages hold audio
            back), or ``None`` when the segment has no more chunks (call :meth:`end`).

        Raises:
            RuntimeError: no segment was begun, or the renderer is in batched mode.
            Exception: whatever the engine or the voice stage raised (call :meth:`abandon`).
        """
        job = self._job
        if job is None or job.chunks is None:
            raise RuntimeError("no segment is being rendered chunk by chunk")
        t0 = time.perf_counter()
        chunk = next(job.chunks, None)
        if chunk is None:
            job.synth_s += time.perf_counter() - t0
            return None
        return self._convert(job, chunk, time.perf_counter() - t0, t0)

    def render(self, pcm: np.ndarray, cost_s: float) -> np.ndarray:
        """Batched mode: take decoded engine audio through the voice stage and the resampler.

        Args:
            pcm: ``(N,)`` float32 at the engine's sample rate (may be empty).
            cost_s: this segment's share of the batched model calls that made it.

        Returns:
            ``(M,)`` float32 at :attr:`out_rate` (possibly empty).

        Raises:
            RuntimeError: no segment is being rendered.
            Exception: whatever the voice stage raised (call :meth:`abandon`).
        """
        job = self._job
        if job is None:
            raise RuntimeError("no segment is being rendered")
        return self._convert(job, pcm, cost_s, time.perf_counter())

    def _convert(self, job: _Job, chunk: np.ndarray, cost_s: float, t0: float) -> np.ndarray:
        if chunk.size:
            converted = self.voice.process(np.asarray(chunk, dtype=np.float32), job.segment.pitch_shift)
            pcm = self.resampler.process(converted)
        else:
            pcm = np.zeros(0, dtype=np.float32)
        job.synth_s += cost_s + (time.perf_counter() - t0)
        if pcm.size and job.first_audio is None:
            job.first_audio = time.monotonic()
        job.samples += pcm.size
        return pcm

    def drain(self) -> np.ndarray:
        """Flush what the voice stage and the resampler hold (end of an utterance).

        Returns:
            ``(N,)`` float32 at :attr:`out_rate`, counted to the segment in progress if any.
        """
        held = self.voice.flush()
        pcm = self.resampler.process(held) if held.size else np.zeros(0, dtype=np.float32)
        pcm = np.concatenate([pcm, self.resampler.flush()])
        if self._job is not None:
            self._job.samples += pcm.size
        return pcm

    def end(self) -> SegmentDone:
        """Close the segment in progress and return its figures (its engine sequence is released)."""
        job = self._job
        if job is None:
            raise RuntimeError("no segment is being rendered")
        self._job = None
        self._release(job)
        seg = job.segment
        ttfa = None if job.first_audio is None else (job.first_audio - seg.queued_at) * 1000
        return SegmentDone(seg.index, seg.text, job.samples, ttfa, job.synth_s * 1000)

    def set_voice(self, voice: VoiceStage) -> np.ndarray:
        """Install another voice stage; returns what the old one (and the resampler) still held."""
        held = self.drain()
        self.voice = voice
        self.resampler = StreamResampler(voice.output_sample_rate, self.out_rate)
        return held

    def drop_prefill(self) -> None:
        """Forget the speculative prefill (its engine resources are released)."""
        self._release_prefill()

    def abandon(self) -> None:
        """Drop the segment in progress, the prefill and everything the stages hold (barge-in)."""
        job, self._job = self._job, None
        self._release_prefill()
        if job is not None:
            self._release(job)
        self.voice.reset()
        self.resampler.reset()

    def _release(self, job: _Job) -> None:
        if job.chunks is not None:
            job.chunks.close()  # the engine's generator stops its work here
        # An engine sequence holds a KV-cache slot until released: the segment's own, and a
        # prefill handed to a generator that never started (releasing twice is harmless).
        for handle in (job.sequence, job.prefill):
            self._release_handle(handle)

    def _release_prefill(self) -> None:
        prefill, self._prefill, self._prefilled_text = self._prefill, None, ""
        self._release_handle(prefill)

    def _release_handle(self, handle: Any | None) -> None:
        if handle is not None and isinstance(self.engine, BatchedEngine) and isinstance(handle, EngineSequence):
            self.engine.release(handle)


def _lazy(make: Callable[[], Iterable[np.ndarray]]) -> Generator[np.ndarray, None, None]:
    """Defer ``make()`` to the first ``next()``, so the engine's start is timed as a chunk."""
    yield from make()

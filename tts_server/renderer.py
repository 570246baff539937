"""One stream's way from a segment of text to output audio: engine → voice stage → time stretch → resampler.

A :class:`SegmentRenderer` belongs to one client stream and is used only on the
pipeline's inference thread. It knows nothing of queues, clients or events beyond the
:class:`~tts_server.events.SegmentDone` figures it returns. It works in one of two ways,
chosen by the scheduler:

* **chunk by chunk** (any :class:`~tts_server.engines.base.TTSEngine`): one segment at a
  time; :meth:`~SegmentRenderer.step` pulls the engine's next chunk, so the scheduler can
  interleave streams (and drop a stream's work) at every chunk boundary;
* **batched** (a :class:`~tts_server.engines.base.BatchedEngine` with batching on):
  :meth:`~SegmentRenderer.begin` makes a segment's engine sequence, and the scheduler
  advances it together with every other stream's in one model call. Segments whose text
  is complete may be begun while an earlier one is still being spoken: their sequences
  are generated ahead (:attr:`~SegmentRenderer.sequences`), their decoded audio is held
  (:meth:`~SegmentRenderer.hold`), and it goes through the voice stage only when they
  become the current segment, so the stream's audio stays in order and the voice stage
  sees one continuous signal.

Either way the engine's audio goes through the stream's voice stage, time stretcher and
resampler here. A segment's ``speed`` is spoken by the engine itself when it is a
:class:`~tts_server.engines.base.StyledEngine` (espeak-ng), otherwise by the stretcher
(:mod:`tts_server.stretch`: bypassed at speed 1.0); its ``language`` is honoured by a
``StyledEngine`` that has it, and otherwise logged once per stream and not used.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .engines.base import BatchedEngine, EngineSequence, PrefillingEngine, StyledEngine, TTSEngine
from .events import OUTPUT_SAMPLE_RATE, Segment, SegmentDone
from .resample import StreamResampler
from .segmenter import clean_for_speech
from .stretch import TimeStretcher
from .voice_stage import VoiceStage

log = logging.getLogger(__name__)


class Renderer(Protocol):
    """What a :class:`~tts_server.stream.Stream` needs from its renderer (inference thread only)."""

    @property
    def out_rate(self) -> int:
        """Sample rate in Hz of the audio it returns (the last stage resamples to it)."""
        ...

    @property
    def busy(self) -> bool:
        """A segment is in flight (begun and not yet ended)."""
        ...

    @property
    def in_flight(self) -> int:
        """Segments begun and not yet ended (the current one and those generated ahead)."""
        ...

    @property
    def segment(self) -> Segment | None:
        """The current segment: the one whose audio is being output."""
        ...

    @property
    def sequence(self) -> EngineSequence | None:
        """Batched mode: the engine sequence of the current segment."""
        ...

    @property
    def sequences(self) -> list[EngineSequence]:
        """Batched mode: the engine sequences in flight, the current segment's first."""
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
        """Start rendering ``segment`` (batched: after the segments already in flight)."""
        ...

    def step(self) -> np.ndarray | None:
        """Chunk mode: render the engine's next chunk (``None``: the segment is complete)."""
        ...

    def render(self, pcm: np.ndarray, cost_s: float) -> np.ndarray:
        """Batched mode: take the current segment's decoded audio through the voice stage and the resampler."""
        ...

    def hold(self, sequence: EngineSequence, pcm: np.ndarray, cost_s: float, final: bool) -> None:
        """Batched mode: keep decoded audio of a segment generated ahead until it is current."""
        ...

    @property
    def held_final(self) -> bool:
        """Batched mode: the current segment's last audio was among what it held."""
        ...

    def take_held(self) -> tuple[np.ndarray, float]:
        """Batched mode: the audio held for the (new) current segment, and its cost; cleared."""
        ...

    def drain(self) -> np.ndarray:
        """Flush what the voice stage and the resampler hold."""
        ...

    def end(self) -> SegmentDone:
        """Close the current segment and return its figures (the next in flight becomes current)."""
        ...

    def set_voice(self, voice: VoiceStage) -> np.ndarray:
        """Install another voice stage; return what the old one still held."""
        ...

    def drop_prefill(self) -> None:
        """Forget the speculative prefill (its engine resources are released)."""
        ...

    def drop(self, sequence: EngineSequence) -> Segment | None:
        """Batched mode: abandon the one segment whose engine sequence this is; return it."""
        ...

    def abandon(self) -> None:
        """Drop every segment in flight, the prefill and everything held."""
        ...


@dataclass
class _Job:
    segment: Segment
    chunks: Generator[np.ndarray, None, None] | None = None
    sequence: EngineSequence | None = None
    prefill: Any | None = None
    held: list[np.ndarray] = field(default_factory=list)
    held_cost_s: float = 0.0
    held_final: bool = False
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
        self.stretcher = TimeStretcher(voice.output_sample_rate)
        self._languages_logged: set[str] = set()
        self._jobs: collections.deque[_Job] = collections.deque()
        self._prefill: Any | None = None
        self._prefilled_text = ""

    @property
    def busy(self) -> bool:
        """True while a segment is in flight (from :meth:`begin` to its :meth:`end`)."""
        return bool(self._jobs)

    @property
    def in_flight(self) -> int:
        """Segments begun and not yet ended."""
        return len(self._jobs)

    @property
    def segment(self) -> Segment | None:
        """The current segment, if any."""
        return self._jobs[0].segment if self._jobs else None

    @property
    def sequence(self) -> EngineSequence | None:
        """Batched mode: the engine sequence of the current segment."""
        return self._jobs[0].sequence if self._jobs else None

    @property
    def sequences(self) -> list[EngineSequence]:
        """Batched mode: the engine sequences in flight, the current segment's first."""
        return [job.sequence for job in self._jobs if job.sequence is not None]

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
        """Start rendering ``segment``.

        Chunk mode: it must be the only segment in flight; the engine starts on the first
        :meth:`step`. Batched mode: its engine sequence is made now (taking over the
        speculative prefill), after any segments already in flight.

        Raises:
            RuntimeError: chunk mode with a segment already in flight.
            Exception: batched mode, whatever the engine's ``start`` raised (the segment
                cannot be spoken); nothing is begun.
        """
        prefill, self._prefill, self._prefilled_text = self._prefill, None, ""
        engine = self.engine
        self._check_language(segment)
        if self.batched and isinstance(engine, BatchedEngine):
            self._jobs.append(_Job(segment, sequence=engine.start(segment.text, prefill)))
            return
        if self._jobs:
            self._release_handle(prefill)
            raise RuntimeError("a segment is already being rendered chunk by chunk")
        if isinstance(engine, StyledEngine):
            self._release_handle(prefill)
            speed, language = segment.speed, segment.language
            chunks = _lazy(lambda: engine.synthesize_styled(segment.text, speed, language))
            self._jobs.append(_Job(segment, chunks=chunks))
        elif prefill is not None and isinstance(engine, PrefillingEngine):
            chunks = _lazy(lambda: engine.synthesize(segment.text, prefill))
            self._jobs.append(_Job(segment, chunks=chunks, prefill=prefill))
        else:
            self._jobs.append(_Job(segment, chunks=_lazy(lambda: engine.synthesize(segment.text))))

    def step(self) -> np.ndarray | None:
        """Chunk mode: render the next engine chunk through the voice stage and the resampler.

        Returns:
            ``(N,)`` float32 at :attr:`out_rate` (possibly empty: the stages hold audio
            back), or ``None`` when the segment has no more chunks (call :meth:`end`).

        Raises:
            RuntimeError: no segment was begun, or the renderer is in batched mode.
            Exception: whatever the engine or the voice stage raised (call :meth:`abandon`).
        """
        job = self._jobs[0] if self._jobs else None
        if job is None or job.chunks is None:
            raise RuntimeError("no segment is being rendered chunk by chunk")
        t0 = time.perf_counter()
        chunk = next(job.chunks, None)
        if chunk is None:
            job.synth_s += time.perf_counter() - t0
            return None
        return self._convert(job, chunk, time.perf_counter() - t0, t0)

    def render(self, pcm: np.ndarray, cost_s: float) -> np.ndarray:
        """Batched mode: take the current segment's decoded audio through the voice stage and the resampler.

        Args:
            pcm: ``(N,)`` float32 at the engine's sample rate (may be empty).
            cost_s: this segment's share of the batched model calls that made it.

        Returns:
            ``(M,)`` float32 at :attr:`out_rate` (possibly empty).

        Raises:
            RuntimeError: no segment is being rendered.
            Exception: whatever the voice stage raised (call :meth:`abandon`).
        """
        if not self._jobs:
            raise RuntimeError("no segment is being rendered")
        return self._convert(self._jobs[0], pcm, cost_s, time.perf_counter())

    def hold(self, sequence: EngineSequence, pcm: np.ndarray, cost_s: float, final: bool) -> None:
        """Batched mode: keep decoded audio of a segment generated ahead until it is current.

        Args:
            final: this is the segment's last audio (its sequence has ended).

        Raises:
            KeyError: ``sequence`` is not in flight here.
        """
        for job in self._jobs:
            if job.sequence is sequence:
                if pcm.size:
                    job.held.append(pcm)
                job.held_cost_s += cost_s
                job.held_final |= final
                return
        raise KeyError("the sequence is not in flight in this renderer")

    @property
    def held_final(self) -> bool:
        """Batched mode: the current segment's last audio was among what it held."""
        return bool(self._jobs) and self._jobs[0].held_final

    def take_held(self) -> tuple[np.ndarray, float]:
        """Batched mode: the engine audio held for the current segment and its cost (then forgotten)."""
        if not self._jobs:
            return np.zeros(0, dtype=np.float32), 0.0
        job = self._jobs[0]
        held = np.concatenate(job.held) if job.held else np.zeros(0, dtype=np.float32)
        cost, job.held, job.held_cost_s = job.held_cost_s, [], 0.0
        return held, cost

    def _check_language(self, segment: Segment) -> None:
        """Log once per stream and language that the engine cannot speak it (it speaks its own)."""
        language = segment.language
        if language is None or language in self._languages_logged:
            return
        engine = self.engine
        if self.batched or not (isinstance(engine, StyledEngine) and engine.speaks_language(language)):
            self._languages_logged.add(language)
            log.info("language %r accepted; engine %r speaks its own", language, engine.name)

    def _stretch_speed(self, segment: Segment) -> float:
        """The speed the stretcher applies to ``segment`` (1.0: the engine spoke it at its speed,
        as a :class:`StyledEngine` does chunk by chunk, the way :meth:`begin` calls it)."""
        native = isinstance(self.engine, StyledEngine) and not self.batched
        return 1.0 if native else segment.speed

    def _convert(self, job: _Job, chunk: np.ndarray, cost_s: float, t0: float) -> np.ndarray:
        if chunk.size:
            converted = self.voice.process(np.asarray(chunk, dtype=np.float32), job.segment.pitch_shift)
            speed = self._stretch_speed(job.segment)
            if speed != self.stretcher.speed:
                self.stretcher.set_speed(speed)
            pcm = self.resampler.process(self.stretcher.process(converted))
        else:
            pcm = np.zeros(0, dtype=np.float32)
        job.synth_s += cost_s + (time.perf_counter() - t0)
        if pcm.size and job.first_audio is None:
            job.first_audio = time.monotonic()
        job.samples += pcm.size
        return pcm

    def drain(self) -> np.ndarray:
        """Flush what the voice stage, the stretcher and the resampler hold (end of an utterance).

        Returns:
            ``(N,)`` float32 at :attr:`out_rate`, counted to the current segment if any.
        """
        held = self.voice.flush()
        held = np.concatenate([self.stretcher.process(held), self.stretcher.flush()])
        pcm = self.resampler.process(held) if held.size else np.zeros(0, dtype=np.float32)
        pcm = np.concatenate([pcm, self.resampler.flush()])
        if self._jobs:
            self._jobs[0].samples += pcm.size
        return pcm

    def end(self) -> SegmentDone:
        """Close the current segment and return its figures (its engine sequence is released)."""
        if not self._jobs:
            raise RuntimeError("no segment is being rendered")
        job = self._jobs.popleft()
        self._release(job)
        seg = job.segment
        ttfa = None if job.first_audio is None else (job.first_audio - seg.queued_at) * 1000
        return SegmentDone(seg.index, seg.text, job.samples, ttfa, job.synth_s * 1000)

    def set_voice(self, voice: VoiceStage) -> np.ndarray:
        """Install another voice stage; returns what the old one (and the resampler) still held."""
        held = self.drain()
        self.voice = voice
        self.resampler = StreamResampler(voice.output_sample_rate, self.out_rate)
        self.stretcher = TimeStretcher(voice.output_sample_rate, self.stretcher.speed)
        return held

    def drop_prefill(self) -> None:
        """Forget the speculative prefill (its engine resources are released)."""
        self._release_prefill()

    def drop(self, sequence: EngineSequence) -> Segment | None:
        """Batched mode: abandon the one segment whose engine sequence this is (it failed).

        Its sequence is released; if it was the current segment, the voice stage and the
        resampler are reset too (its audio stops mid-way). Returns the segment, or ``None``
        if the sequence is not in flight here.
        """
        for i, job in enumerate(self._jobs):
            if job.sequence is sequence:
                del self._jobs[i]
                self._release(job)
                if i == 0:
                    self.voice.reset()
                    self.stretcher.reset()
                    self.resampler.reset()
                return job.segment
        return None

    def abandon(self) -> None:
        """Drop every segment in flight, the prefill and everything the stages hold (barge-in)."""
        jobs, self._jobs = list(self._jobs), collections.deque()
        self._release_prefill()
        for job in jobs:
            self._release(job)
        self.voice.reset()
        self.stretcher.reset()
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

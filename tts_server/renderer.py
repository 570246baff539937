"""One stream's way from a segment of text to output audio: engine → voice stage → resampler.

A :class:`SegmentRenderer` belongs to one client stream and is used only on the
pipeline's inference thread. It renders one segment at a time, one engine chunk per
:meth:`~SegmentRenderer.step`, so the scheduler can interleave streams (and drop a
stream's work) at every chunk boundary. It knows nothing of queues, clients or events
beyond the :class:`~tts_server.events.SegmentDone` figures it returns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .engines.base import PrefillingEngine, TTSEngine
from .events import OUTPUT_SAMPLE_RATE, Segment, SegmentDone
from .resample import StreamResampler
from .segmenter import clean_for_speech
from .voice_stage import VoiceStage

log = logging.getLogger(__name__)


@dataclass
class _Job:
    segment: Segment
    chunks: Generator[np.ndarray, None, None]
    synth_s: float = 0.0
    samples: int = 0
    first_audio: float | None = None
    started: float = field(default_factory=time.monotonic)


class SegmentRenderer:
    """Renders a stream's segments chunk by chunk (inference thread only).

    Args:
        engine: the TTS engine (stage 2); its :meth:`~PrefillingEngine.prefill` is used
            when it has one.
        voice: the stream's voice stage (stage 3), fed at ``engine.sample_rate``.
        out_rate: sample rate in Hz of everything returned (stage 4 resamples to it).
    """

    def __init__(self, engine: TTSEngine, voice: VoiceStage, out_rate: int = OUTPUT_SAMPLE_RATE) -> None:
        self.engine = engine
        self.out_rate = out_rate
        self.voice = voice
        self.resampler = StreamResampler(voice.output_sample_rate, out_rate)
        self._job: _Job | None = None
        self._prefill: Any | None = None
        #: The raw text the current prefill was computed from ("" when there is none).
        self.prefilled_text = ""

    @property
    def busy(self) -> bool:
        """True while a segment is being rendered (from :meth:`begin` to :meth:`end`)."""
        return self._job is not None

    @property
    def segment(self) -> Segment | None:
        """The segment being rendered, if any."""
        return self._job.segment if self._job is not None else None

    def prefill(self, text: str) -> None:
        """Let the engine start on the unfinished sentence ``text`` (a failure only costs the speed-up)."""
        engine = self.engine
        if not isinstance(engine, PrefillingEngine):
            return
        try:
            self._prefill = engine.prefill(clean_for_speech(text), self._prefill)
        except Exception:
            log.exception("prefill failed")
            self._prefill = None
        self.prefilled_text = text

    def begin(self, segment: Segment) -> None:
        """Start rendering ``segment`` (the engine starts on the first :meth:`step`)."""
        prefill, self._prefill, self.prefilled_text = self._prefill, None, ""
        engine = self.engine
        if prefill is not None and isinstance(engine, PrefillingEngine):
            chunks = _lazy(lambda: engine.synthesize(segment.text, prefill))
        else:
            chunks = _lazy(lambda: engine.synthesize(segment.text))
        self._job = _Job(segment, chunks)

    def step(self) -> np.ndarray | None:
        """Render the next engine chunk through the voice stage and the resampler.

        Returns:
            ``(N,)`` float32 at :attr:`out_rate` (possibly empty: the stages hold audio
            back), or ``None`` when the segment has no more chunks (call :meth:`end`).

        Raises:
            RuntimeError: no segment was begun.
            Exception: whatever the engine or the voice stage raised (call :meth:`abandon`).
        """
        job = self._job
        if job is None:
            raise RuntimeError("no segment is being rendered")
        t0 = time.perf_counter()
        chunk = next(job.chunks, None)
        if chunk is None:
            job.synth_s += time.perf_counter() - t0
            return None
        converted = self.voice.process(np.asarray(chunk, dtype=np.float32), job.segment.pitch_shift)
        pcm = self.resampler.process(converted)
        job.synth_s += time.perf_counter() - t0
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
        """Close the segment in progress and return its figures."""
        job = self._job
        if job is None:
            raise RuntimeError("no segment is being rendered")
        self._job = None
        seg = job.segment
        ttfa = None if job.first_audio is None else (job.first_audio - seg.queued_at) * 1000
        return SegmentDone(seg.index, seg.text, job.samples, ttfa, job.synth_s * 1000)

    def set_voice(self, voice: VoiceStage) -> np.ndarray:
        """Install another voice stage; returns what the old one (and the resampler) still held."""
        held = self.drain()
        self.voice = voice
        self.resampler = StreamResampler(voice.output_sample_rate, self.out_rate)
        return held

    def abandon(self) -> None:
        """Drop the segment in progress, the prefill and everything the stages hold (barge-in)."""
        job, self._job = self._job, None
        self._prefill, self.prefilled_text = None, ""
        if job is not None:
            job.chunks.close()  # the engine's generator stops its work here
        self.voice.reset()
        self.resampler.reset()


def _lazy(make: Callable[[], Iterable[np.ndarray]]) -> Generator[np.ndarray, None, None]:
    """Defer ``make()`` to the first ``next()``, so the engine's start is timed as a chunk."""
    yield from make()

"""One client's handle on the pipeline: text in, audio and events out, with backpressure.

A :class:`Stream` is opened by the scheduler (:class:`~tts_server.scheduler.Pipeline`)
for each client (a WebSocket, an HTTP request, a Discord guild's reply).

Event-loop side: :meth:`Stream.push` cuts tokens into segments at once (the segmenter)
and queues them (:meth:`Stream.push_steps` does it one cut at a time, so that a long
token never holds the event loop); :meth:`Stream.flush`, :meth:`Stream.cancel`,
:meth:`Stream.close`; :meth:`Stream.get` returns audio and events in order.

Inference-thread side: the scheduler asks each stream for its deadline
(:meth:`Stream.deadline`). Chunk by chunk (an engine that cannot batch, or batching
switched off), it lets the most urgent stream do one chunk of work (:meth:`Stream.step`)
through its renderer (:class:`~tts_server.renderer.Renderer`). Batched, it calls
:meth:`Stream.prepare` on every stream before each step (cancels, flush marks, the next
segment's engine sequence, speculative prefill), advances all streams' sequences in one
model call, and hands each stream its decoded audio (:meth:`Stream.deliver`) or its
failure (:meth:`Stream.fail`). Results go back to the event loop with
``call_soon_threadsafe``; a cancel in between makes them stale (each carries the
stream's generation) and they are dropped there.

Backpressure. A stream's outgoing queue holds at most ``max_queued_samples`` of audio.
When it is full the stream has no deadline (the scheduler skips it) until its client
reads, so a slow client costs memory for that much audio at most and never slows the
others. Unspoken text is bounded by ``max_pending_chars``: past it a token is refused
with :class:`~tts_server.events.PendingTextFull` and nothing already buffered is lost.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .engines.base import EngineSequence
from .events import (
    OUTPUT_SAMPLE_RATE,
    Audio,
    Event,
    Flushed,
    PendingTextFull,
    Segment,
    SegmentDone,
    StreamError,
    UnknownVoice,
)
from .metrics import Metrics, StreamMetrics
from .renderer import Renderer
from .segmenter import Segmenter
from .stretch import MAX_SPEED, MIN_SPEED
from .voice_stage import Passthrough, VoiceStage

log = logging.getLogger(__name__)

#: A prefill is scheduled as if its deadline were this far in the future: it runs when no
#: stream's listener will run out of audio sooner.
PREFILL_SLACK_S = 0.25
#: A prefill starts only after the text has paused this long: tokens arriving in a burst
#: would complete the sentence while the prefill still runs, delaying it instead.
PREFILL_PAUSE_S = 0.015
#: Prefill again once the pending text has grown by this many characters. Each prefill
#: call reads all the model's weights once, so prefilling every token would cost ~20×
#: the compute of prefilling a few words at a time (on CPU).
PREFILL_STEP_CHARS = 16


class StreamHost(Protocol):
    """What a stream needs from the scheduler that opened it."""

    @property
    def max_pending_chars(self) -> int:
        """Unspoken characters a stream may hold."""
        ...

    @property
    def max_queued_samples(self) -> int:
        """Samples of audio a stream may have queued for its client."""
        ...

    @property
    def prefills(self) -> bool:
        """True if streams should prefill sentences still being written."""
        ...

    @property
    def segments_ahead(self) -> int:
        """Batched mode: segments a stream may generate beyond the one being spoken."""
        ...

    def new_segmenter(self) -> Segmenter:
        """A segmenter for a new stream."""
        ...

    def check_voice(self, name: str | None) -> None:
        """Raise :class:`~tts_server.events.UnknownVoice` unless ``name`` is offered."""
        ...

    def voice_stage(self, name: str | None) -> VoiceStage:
        """A new voice stage (blocking; raises :class:`~tts_server.events.UnknownVoice`)."""
        ...

    def wake(self) -> None:
        """Some stream may have work."""
        ...

    def recheck_after(self, delay_s: float) -> None:
        """Called while choosing a stream: look again after ``delay_s`` even if nobody wakes."""
        ...


@dataclass(frozen=True)
class _FlushMark:
    flush_id: int
    queued_at: float


class Stream:
    """One client's stream through the pipeline (see the module docstring).

    Args:
        host: the scheduler that opened it.
        stream_id: unique per pipeline.
        loop: the event loop its consumer runs on.
        renderer: engine → voice stage → resampler for this stream; its ``out_rate`` is the
            stream's :attr:`sample_rate` (the one resampling of the stream's audio).
        metrics: the pipeline's instruments (``None``: nothing is counted).
        converts: the renderer's first voice stage converts (an RVC voice, not a passthrough).

    Attributes:
        sample_rate: Hz of every :class:`~tts_server.events.Audio` it emits (48 kHz unless the
            client's protocol asked for another when the stream was opened).
    """

    def __init__(
        self,
        host: StreamHost,
        stream_id: int,
        loop: asyncio.AbstractEventLoop,
        renderer: Renderer,
        *,
        metrics: Metrics | None = None,
        converts: bool = False,
    ) -> None:
        self.id = stream_id
        self.sample_rate: int = renderer.out_rate
        # The host's bound is in samples at 48 kHz: the same seconds of audio at this rate.
        self._max_queued_samples = host.max_queued_samples * self.sample_rate // OUTPUT_SAMPLE_RATE
        self._metrics = metrics
        self._stream_metrics = StreamMetrics(metrics, self.sample_rate) if metrics is not None else None
        #: Inference thread: the current voice stage converts (RVC), i.e. is not a passthrough.
        self._converts = converts
        self._host = host
        self._loop = loop
        self._segmenter = host.new_segmenter()
        self.pitch_shift = 0.0
        #: Speaking-rate factor of the segments cut from now on (see :meth:`set_speed`).
        self.speed = 1.0
        #: Language of the segments cut from now on (``None``: the engine's own).
        self.language: str | None = None
        self._start_pitch = 0.0  # pitch_shift given with the first token of the pending text
        self._segment_counter = itertools.count()
        self._segments_cut = 0
        self._flush_counter = itertools.count(1)
        self._flush_segments: list[int] = []
        self._flush_samples = 0
        self._out: asyncio.Queue[Event] = asyncio.Queue()
        self._lock = threading.Lock()
        self._epoch = 0
        self._work: collections.deque[Segment | _FlushMark] = collections.deque()
        # Batched mode, inference thread: segments begun (current first) and the flush marks
        # between them, in order; a mark is posted once every segment before it is done.
        self._flight: collections.deque[Segment | _FlushMark] = collections.deque()
        self._queued_samples = 0
        self._queued_chars = 0  # text of the segments in _work
        self._closed = False
        # Inference-thread state.
        self.renderer = renderer
        self._next_voice: str | bool | None = False  # False: no change pending
        self._stage_epoch = 0
        self._pending_text = ""  # snapshot of the segmenter's buffer, for prefill
        self._last_push = 0.0
        self._play_until = time.monotonic()
        #: Batched mode: this stream's share of the model calls since its last delivery (seconds).
        self.step_cost_s = 0.0

    # -- event-loop side -----------------------------------------------------------------

    @property
    def pending_chars(self) -> int:
        """Characters buffered in the segmenter, not yet cut into a segment."""
        return self._segmenter.pending_chars

    @property
    def segments_cut(self) -> int:
        """Segments cut from the text so far (each gets a :class:`SegmentDone` or a :class:`StreamError`)."""
        return self._segments_cut

    @property
    def unspoken_chars(self) -> int:
        """Characters not yet being spoken: buffered plus cut into segments still queued."""
        with self._lock:
            queued = self._queued_chars
        return self._segmenter.pending_chars + queued

    def push(self, token: str, pitch_shift: float | None = None) -> list[Segment]:
        """Add an LLM token; segments it completes are queued for synthesis at once.

        Args:
            token: text as the LLM produced it.
            pitch_shift: semitones from this token on (kept until changed); a segment is
                spoken with the value given with its first token.

        Returns:
            The segments this token completed.

        Raises:
            PendingTextFull: the token would exceed ``max_pending_chars`` (nothing is added).
        """
        return [segment for step in self.push_steps(token, pitch_shift) for segment in step]

    def push_steps(self, token: str, pitch_shift: float | None = None) -> Iterator[list[Segment]]:
        """As :meth:`push`, one cut at a time: each segment is queued as soon as it is cut.

        For long tokens: each step costs well under a millisecond, so an event loop can
        serve other clients between steps (the server does, past a few hundred characters).
        Call no other method of the stream until the iterator is exhausted.

        Raises:
            PendingTextFull: at the first step, if the token would exceed ``max_pending_chars``
                (nothing is added).
        """
        unspoken = self.unspoken_chars
        limit = self._host.max_pending_chars
        if unspoken + len(token) > limit:
            raise PendingTextFull(
                f"too much unspoken text: {unspoken} characters are waiting to be spoken and the limit is {limit}"
            )
        if pitch_shift is not None:
            self.pitch_shift = float(pitch_shift)
        if self._segmenter.pending_chars == 0:
            self._start_pitch = self.pitch_shift
        for text in self._segmenter.push_steps(token):
            yield self._enqueue([text] if text else [])
        with self._lock:
            self._pending_text = self._segmenter.pending_text
            self._last_push = time.monotonic()
        if self._host.prefills:
            self._host.wake()

    def flush(self) -> int:
        """Cut everything buffered into segments; a :class:`Flushed` event follows their audio.

        Returns:
            The flush id carried by that event.
        """
        self._enqueue(self._segmenter.flush())
        flush_id = next(self._flush_counter)
        with self._lock:
            self._pending_text = ""
            self._work.append(_FlushMark(flush_id, time.monotonic()))
        self._host.wake()
        return flush_id

    def set_speed(self, speed: float) -> None:
        """Speak the segments cut from now on at ``speed`` (2.0: twice as fast; pitch kept).

        The engine applies it when it can (espeak-ng's rate), else the time stretch does
        (:mod:`tts_server.stretch`).

        Raises:
            ValueError: outside [:data:`~tts_server.stretch.MIN_SPEED`, :data:`~tts_server.stretch.MAX_SPEED`].
        """
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise ValueError(f"speed {speed:g} is out of range [{MIN_SPEED:g}, {MAX_SPEED:g}]")
        self.speed = float(speed)

    def set_language(self, language: str | None) -> None:
        """Speak the segments cut from now on in ``language`` where the engine has it (else logged once)."""
        self.language = language

    def set_voice(self, name: str | None) -> None:
        """Speak the following segments in voice ``name`` (``None``: the default voice).

        The change takes effect at the next segment boundary, after the current voice's
        held audio is flushed. The voice is loaded then, on the inference thread (never
        on the event loop); if its files turn out to be unusable, a :class:`StreamError`
        says so and the stream keeps its current voice.

        Raises:
            UnknownVoice: the server has no voice of that name (the current one stays).
        """
        self._host.check_voice(name)
        with self._lock:
            self._next_voice = name

    def cancel(self) -> None:
        """Barge-in: drop buffered text, queued segments, the segment being spoken and unsent audio."""
        self._segmenter.clear()
        with self._lock:
            self._epoch += 1
            self._pending_text = ""
            self._work.clear()
            self._queued_chars = 0
            self._queued_samples = 0
        self._flush_segments = []
        self._flush_samples = 0
        while not self._out.empty():
            self._out.get_nowait()
        self._host.wake()

    def close(self) -> None:
        """The client is gone: stop synthesis at the next chunk boundary and free the stream."""
        if self._closed:
            return
        self.cancel()
        self._closed = True
        if self._metrics is not None:
            self._metrics.streams_closed.inc()
        self._host.wake()

    @property
    def busy(self) -> bool:
        """True while there is work for the client: segments queued or being synthesized, or
        events it has not taken yet (text still being written, without a sentence end or a
        flush, does not count: it waits on the client)."""
        with self._lock:
            queued = bool(self._work)
        return queued or self.renderer.busy or not self._out.empty()

    @property
    def queued_audio_s(self) -> float:
        """Seconds of synthesized audio queued for the client, not yet taken with :meth:`get`."""
        return self._queued_samples / self.sample_rate

    @property
    def pending_events(self) -> int:
        """Events (audio included) delivered to the stream and not yet taken with :meth:`get`."""
        return self._out.qsize()

    @property
    def generation(self) -> int:
        """Incremented by every :meth:`cancel`: audio received under an older value is stale."""
        return self._epoch

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    async def get(self) -> Event:
        """Wait for the next event (audio in order, then the events that follow it)."""
        event = await self._out.get()
        if isinstance(event, Audio):
            with self._lock:
                self._queued_samples -= event.pcm.size
            self._host.wake()
        return event

    async def events(self) -> AsyncIterator[Event]:
        """Iterate over events forever (until the task is cancelled)."""
        while True:
            yield await self.get()

    def _enqueue(self, texts: list[str]) -> list[Segment]:
        """Queue cut segments: the first keeps the pitch its text began with, later ones the current."""
        now = time.monotonic()
        pitches = [self._start_pitch] + [self.pitch_shift] * (len(texts) - 1)
        segments = [
            Segment(next(self._segment_counter), t, p, now, self.speed, self.language)
            for t, p in zip(texts, pitches, strict=False)
        ]
        self._segments_cut += len(segments)
        if texts:
            self._start_pitch = self.pitch_shift
        if segments:
            with self._lock:
                self._work.extend(segments)
                self._queued_chars += sum(len(seg.text) for seg in segments)
            self._host.wake()
        return segments

    def _deliver(self, epoch: int, event: Event) -> None:
        """Runs on the event loop: queue an event unless a cancel made it stale."""
        if epoch != self._epoch or self._closed:
            return
        if isinstance(event, SegmentDone):
            self._flush_segments.append(event.index)
            self._flush_samples += event.audio_samples
        elif isinstance(event, Flushed):
            event = Flushed(event.flush_id, tuple(self._flush_segments), self._flush_samples)
            self._flush_segments = []
            self._flush_samples = 0
        if self._stream_metrics is not None:
            self._stream_metrics.observe_event(event)
        self._out.put_nowait(event)

    # -- inference-thread side -----------------------------------------------------------

    @property
    def idle(self) -> bool:
        """True when no segment is being rendered (a closed, idle stream can be dropped)."""
        return not self.renderer.busy

    def deadline(self) -> float | None:
        """Scheduling key (smaller is more urgent), or ``None`` when there is nothing to do.

        It is the moment the listener runs out of audio already sent, or when the current
        (or next) segment was queued, whichever is later. A prefill waits for a pause in
        the text (the host is told when to look again) and is not urgent.
        """
        with self._lock:
            if self._stage_epoch != self._epoch:
                return float("-inf")  # a cancel to apply: cheap, do it now
            if self._queued_samples >= self._max_queued_samples:
                return None
            segment = self.renderer.segment
            if segment is not None:
                head = segment.queued_at
            elif self._work:
                head = self._work[0].queued_at
            elif self._prefill_due():
                now = time.monotonic()
                if now < self._last_push + PREFILL_PAUSE_S:
                    self._host.recheck_after(self._last_push + PREFILL_PAUSE_S - now)
                    return None
                return now + PREFILL_SLACK_S
            else:
                return None
        return max(self._play_until, head)

    def _prefill_due(self) -> bool:
        """Called under ``_lock``: is there new unspoken text worth prefilling?"""
        return self._host.prefills and len(self._pending_text) - len(self.renderer.prefilled_text) >= PREFILL_STEP_CHARS

    def _post(self, epoch: int, event: Event) -> bool:
        with self._lock:
            if epoch != self._epoch:
                return False
            if isinstance(event, Audio):
                self._queued_samples += event.pcm.size
        try:
            self._loop.call_soon_threadsafe(self._deliver, epoch, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            return False
        return True

    def _post_audio(self, epoch: int, pcm: np.ndarray, segment: int) -> None:
        if pcm.size == 0:
            return
        self._play_until = max(self._play_until, time.monotonic()) + pcm.size / self.sample_rate
        self._post(epoch, Audio(pcm, segment, self.sample_rate))

    @property
    def lead_s(self) -> float:
        """Seconds of audio sent to the client and not yet played (0 when it has run dry)."""
        return max(0.0, self._play_until - time.monotonic())

    @property
    def sequence(self) -> EngineSequence | None:
        """Batched mode: the engine sequence of the segment being spoken."""
        return self.renderer.sequence

    @property
    def sequences_ahead(self) -> list[EngineSequence]:
        """Batched mode: engine sequences of later segments, generated ahead (in order)."""
        return self.renderer.sequences[1:]

    @property
    def speculation(self) -> EngineSequence | None:
        """Batched mode: the engine sequence prefilling the sentence still being written."""
        return self.renderer.speculation

    def prepare(self) -> None:
        """Batched mode, before each step (inference thread only).

        Applies a cancel (the engine sequences are released); begins the segments whose
        text is complete, up to ``segments_ahead`` beyond the one being spoken (their
        engine sequences then wait for the scheduler to run them); posts the flush marks
        that are due; updates the speculative prefill of the sentence still being
        written. A segment the engine refuses gets a :class:`StreamError`; one with
        nothing to speak completes when its turn comes.
        """
        renderer = self.renderer
        room = 1 + self._host.segments_ahead
        while True:
            with self._lock:
                epoch = self._epoch
                cancelled = self._stage_epoch != epoch
                self._stage_epoch = epoch
                segments = sum(isinstance(item, Segment) for item in self._flight)
                take = not cancelled and self._work and (segments < room or isinstance(self._work[0], _FlushMark))
                item = self._work.popleft() if take else None
                if isinstance(item, Segment):
                    self._queued_chars -= len(item.text)
                pending = self._pending_text if item is None and self._prefill_due() else None
                pause_over = time.monotonic() >= self._last_push + PREFILL_PAUSE_S
            if cancelled:
                renderer.abandon()
                self._flight.clear()
                continue
            if isinstance(item, _FlushMark):
                if self._flight:
                    self._flight.append(item)  # after the segments still in flight
                else:
                    self._post(epoch, Flushed(item.flush_id, (), 0))
                continue
            if isinstance(item, Segment):
                current = not renderer.busy
                if current:
                    self._switch_voice(epoch)
                try:
                    renderer.begin(item)
                except Exception as exc:  # the engine cannot speak it (too long...): this segment only
                    log.warning("stream %d: segment %d refused: %s", self.id, item.index, exc)
                    self._post(epoch, StreamError(f"synthesis failed for segment {item.index}: {exc}", item.index))
                    continue
                self._flight.append(item)
                continue
            if pending is not None and pause_over:
                renderer.prefill(pending)
            return

    def deliver(self, sequence: EngineSequence, pcm: np.ndarray, cost_s: float) -> None:
        """Batched mode: engine audio decoded for one of this stream's segments (inference thread only).

        Audio of the segment being spoken goes through the voice stage and the resampler
        and is posted; once its engine sequence has ended the segment completes
        (:class:`SegmentDone`) and the next one in flight takes over, with the audio it was
        given meanwhile. Audio of a segment generated ahead is held until then.

        Args:
            sequence: whose audio this is.
            pcm: ``(N,)`` float32 at the engine's sample rate (may be empty).
            cost_s: this segment's share of the batched model calls.
        """
        renderer = self.renderer
        with self._lock:
            epoch = self._epoch
            if self._stage_epoch != epoch:
                return  # a cancel came in: the next prepare() drops the segments
        if sequence is not renderer.sequence:
            with contextlib.suppress(KeyError):  # KeyError: dropped by a failure in the same step
                renderer.hold(sequence, pcm, cost_s, sequence.ended)
            return
        try:
            out = renderer.render(pcm, cost_s)
        except Exception as exc:  # the voice stage failed: this segment only
            self.fail(exc)
            return
        self._post_audio(epoch, out, self._current_index)
        if sequence.ended:
            self._finish(epoch)

    def fail(self, exc: BaseException, sequence: EngineSequence | None = None) -> None:
        """Batched mode: a segment failed; report it and drop it, and only it (the stream goes on).

        Args:
            exc: what went wrong.
            sequence: the failing segment's engine sequence (``None``: the current one).
        """
        renderer = self.renderer
        with self._lock:
            epoch = self._epoch
        target = sequence if sequence is not None else renderer.sequence
        current = target is not None and target is renderer.sequence
        segment = renderer.drop(target) if target is not None else None
        if segment is None and sequence is not None:
            # Already dropped (it failed in the decoder while the model call that was running
            # it raised too, or a cancel came first): reported once, or not at all.
            log.debug("stream %d: failure of a segment no longer in flight: %s", self.id, exc)
            return
        index = segment.index if segment is not None else -1
        log.error("stream %d: synthesis of segment %d failed: %s", self.id, index, exc, exc_info=exc)
        self.count_error("synthesis")
        self._post(epoch, StreamError(f"synthesis failed for segment {index}: {exc}", index))
        for i, item in enumerate(self._flight):
            if item is segment:
                del self._flight[i]
                break
        if current:
            self._post_marks(epoch)
            if renderer.busy:
                self._switch_voice(epoch)
            self._promote(epoch)

    def _finish(self, epoch: int) -> None:
        """The current segment is complete: flush the stages if nothing follows, post its figures, go on."""
        renderer = self.renderer
        with self._lock:
            more = renderer.in_flight > 1 or any(isinstance(queued, Segment) for queued in self._work)
        if not more:  # out of text for now: push out what the stages still hold
            self._post_audio(epoch, renderer.drain(), self._current_index)
        self._post(epoch, renderer.end())
        if self._converts and self._metrics is not None:
            self._metrics.rvc_conversions.inc()
        if self._flight:
            self._flight.popleft()  # the segment that ended (marks before it were posted already)
        self._post_marks(epoch)
        if renderer.busy:
            self._switch_voice(epoch)
        self._promote(epoch)

    def _promote(self, epoch: int) -> None:
        """The current segment takes over: send the audio held for it; complete it if it has ended."""
        renderer = self.renderer
        if not renderer.busy:
            return
        held, cost = renderer.take_held()
        try:
            out = renderer.render(held, cost)
        except Exception as exc:  # the voice stage failed: this segment only
            self.fail(exc)
            return
        self._post_audio(epoch, out, self._current_index)
        # Complete only once its last audio has been handed over: an engine sequence may
        # end in a decode whose audio is delivered after this, in the same step.
        if renderer.held_final:
            self._finish(epoch)

    def _post_marks(self, epoch: int) -> None:
        """Post the flush marks now at the head of the flight (no segment before them is left)."""
        flight = self._flight
        while flight and isinstance(flight[0], _FlushMark):
            mark = flight.popleft()
            assert isinstance(mark, _FlushMark)
            self._post(epoch, Flushed(mark.flush_id, (), 0))

    def step(self) -> None:
        """Chunk mode: do one chunk of work for this stream (inference thread only)."""
        renderer = self.renderer
        with self._lock:
            epoch = self._epoch
            cancelled = self._stage_epoch != epoch
            self._stage_epoch = epoch
            item = self._work.popleft() if not cancelled and not renderer.busy and self._work else None
            if isinstance(item, Segment):
                self._queued_chars -= len(item.text)
            pending = self._pending_text if item is None and not renderer.busy and self._prefill_due() else None
        if cancelled:
            renderer.abandon()
            return
        if pending is not None:
            renderer.prefill(pending)
            return
        if isinstance(item, _FlushMark):
            self._post(epoch, Flushed(item.flush_id, (), 0))
            return
        if isinstance(item, Segment):
            self._switch_voice(epoch)
            renderer.begin(item)
        if not renderer.busy:
            return
        try:
            pcm = renderer.step()
        except Exception as exc:  # one bad segment must not kill the stream or the thread
            index = self._current_index
            log.exception("stream %d: synthesis of segment %d failed", self.id, index)
            self.count_error("synthesis")
            renderer.abandon()
            self._post(epoch, StreamError(f"synthesis failed for segment {index}: {exc}", index))
            return
        if pcm is not None:
            self._post_audio(epoch, pcm, self._current_index)
            return
        self._finish(epoch)

    @property
    def _current_index(self) -> int:
        segment = self.renderer.segment
        return segment.index if segment is not None else -1

    def _switch_voice(self, epoch: int) -> None:
        """Install a voice chosen with :meth:`set_voice`, flushing what the old one holds."""
        with self._lock:
            name, self._next_voice = self._next_voice, False
        if name is False:
            return
        voice = name if isinstance(name, str) else None
        try:
            stage = self._host.voice_stage(voice)
        except Exception as exc:  # a bad voice file must not end the stream
            message = str(exc) if isinstance(exc, UnknownVoice) else f"voice {voice!r} refused: {exc}"
            log.warning("stream %d: %s", self.id, message)
            self.count_error("voice")
            self._post(epoch, StreamError(message))
            return
        self._converts = not isinstance(stage, Passthrough)
        self._post_audio(epoch, self.renderer.set_voice(stage), -1)

    def count_error(self, kind: str) -> None:
        """Count an error of ``kind`` (see :data:`~tts_server.metrics.ERROR_KINDS`) told to this stream's client."""
        if self._metrics is not None:
            self._metrics.error(kind)

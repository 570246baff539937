"""The pipeline: segmenter → TTS engine → voice stage → resampler, per client stream.

One :class:`Pipeline` owns the engine and a single inference thread. Each client
(a WebSocket, an HTTP request, a Discord guild) opens a :class:`Stream`: tokens go in
on the event loop, cut into segments at once; the inference thread turns segments into
48 kHz float32 audio one chunk at a time and hands every chunk back to the event loop.

Scheduling. The thread serves the stream whose listener runs out of audio first
(earliest deadline: when the audio already sent to it will have finished playing,
or when its next segment was queued), one chunk per turn, so several streams share
the engine fairly and a new stream's first chunk is not stuck behind another's long
sentence. Cancellation and disconnects take effect at the next chunk boundary.

Speculative prefill. When the engine supports it (Soprano) and the thread has nothing
more urgent, it runs the sentence a stream is still receiving through the model's
prompt prefill, so that when the sentence completes only its last tokens remain to be
computed before generation starts.

Backpressure. A stream's outgoing queue holds at most ``queue_s`` seconds of audio.
When it is full the thread stops synthesising for that stream (it is skipped until its
client reads), so a slow client costs memory for ``queue_s`` seconds of audio at most
and never slows the others. Unspoken text is bounded by ``max_pending_chars``: past it
a token is refused with an error and nothing already buffered is lost.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from .engines.base import TTSEngine
from .resample import OUTPUT_SAMPLE_RATE, StreamResampler
from .segmenter import Segmenter, clean_for_speech
from .voice import Passthrough, VoiceStage

log = logging.getLogger(__name__)


# -- what flows through a stream ---------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """One speakable piece of text, cut by the segmenter.

    Attributes:
        index: 0-based position in the stream.
        text: the cleaned text that is spoken.
        pitch_shift: semitones, handed to the voice stage with every chunk.
        queued_at: ``time.monotonic()`` when it was cut.
    """

    index: int
    text: str
    pitch_shift: float
    queued_at: float


@dataclass(frozen=True)
class _FlushMark:
    flush_id: int
    queued_at: float


@dataclass(frozen=True)
class Audio:
    """Output audio: ``pcm`` is ``(N,)`` float32 mono at 48 kHz, from segment ``segment``."""

    pcm: np.ndarray
    segment: int


@dataclass(frozen=True)
class SegmentDone:
    """All audio of a segment has been queued before this event.

    Attributes:
        index, text: the segment.
        audio_samples: its length in 48 kHz samples.
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
    """Everything sent before the flush ``flush_id`` has been queued before this event."""

    flush_id: int
    segments: tuple[int, ...]
    audio_samples: int


@dataclass(frozen=True)
class StreamError:
    """Synthesis of a segment failed; the stream stays usable."""

    message: str
    segment: int | None = None


Event = Audio | SegmentDone | Flushed | StreamError


class PipelineBusy(RuntimeError):
    """The configured maximum of concurrent streams is reached."""


class UnknownVoice(ValueError):
    """A stream asked for a voice the server does not have (or cannot load)."""


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

#: Makes a stream's voice stage: ``None`` = the default voice. Raises :class:`UnknownVoice`.
VoiceFactory = Callable[[str | None], VoiceStage]


class PendingTextFull(ValueError):
    """A token would push the stream's unspoken text past ``max_pending_chars``."""


@dataclass
class _Job:
    segment: Segment
    chunks: Iterator[np.ndarray]
    started: float = field(default_factory=time.monotonic)
    synth_s: float = 0.0
    samples: int = 0
    first_audio: float | None = None


class Stream:
    """One client's stream through the pipeline.

    Event-loop side: :meth:`push`, :meth:`flush`, :meth:`cancel`, :meth:`close`,
    :meth:`get` / :meth:`events`. The inference thread touches the work queue and the
    stages under ``_lock`` only.
    """

    def __init__(self, pipeline: Pipeline, stream_id: int, loop: asyncio.AbstractEventLoop, voice: VoiceStage) -> None:
        self.id = stream_id
        self._pipeline = pipeline
        self._loop = loop
        self._segmenter = pipeline.new_segmenter()
        self.pitch_shift = 0.0
        self._start_pitch = 0.0  # pitch_shift given with the first token of the pending text
        self._segment_counter = itertools.count()
        self._flush_counter = itertools.count(1)
        self._flush_segments: list[int] = []
        self._flush_samples = 0
        self._out: asyncio.Queue[Event] = asyncio.Queue()
        self._lock = threading.Lock()
        self._epoch = 0
        self._work: collections.deque[Segment | _FlushMark] = collections.deque()
        self._queued_samples = 0
        self._queued_chars = 0  # text of the segments in _work
        self._closed = False
        # Inference-thread state.
        self.voice_name: str | None = None
        self.voice = voice
        self.resampler = StreamResampler(voice.output_sample_rate, OUTPUT_SAMPLE_RATE)
        self._next_voice: str | None | bool = False  # False: no change pending
        self._job: _Job | None = None
        self._stage_epoch = 0
        self._pending_text = ""  # snapshot of the segmenter's buffer, for prefill
        self._last_push = 0.0
        self._prefill: object | None = None
        self._prefilled_text = ""
        self._play_until = time.monotonic()

    # -- event-loop side -----------------------------------------------------------------

    @property
    def pending_chars(self) -> int:
        """Characters buffered in the segmenter, not yet cut into a segment."""
        return self._segmenter.pending_chars

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
        unspoken = self.unspoken_chars
        if unspoken + len(token) > self._pipeline.max_pending_chars:
            raise PendingTextFull(
                f"too much unspoken text: {unspoken} characters are waiting to be spoken and the "
                f"limit is {self._pipeline.max_pending_chars}"
            )
        if pitch_shift is not None:
            self.pitch_shift = float(pitch_shift)
        if self._segmenter.pending_chars == 0:
            self._start_pitch = self.pitch_shift
        segments = self._enqueue(self._segmenter.push(token))
        with self._lock:
            self._pending_text = self._segmenter.pending_text
            self._last_push = time.monotonic()
        if self._pipeline.prefills:
            self._pipeline.wake()
        return segments

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
        self._pipeline.wake()
        return flush_id

    def set_voice(self, name: str | None) -> None:
        """Speak the following segments in voice ``name`` (``None``: the default voice).

        The change takes effect at the next segment boundary, after the current voice's
        held audio is flushed. The voice is loaded then, on the inference thread (never
        on the event loop); if its files turn out to be unusable, a :class:`StreamError`
        says so and the stream keeps its current voice.

        Raises:
            UnknownVoice: the server has no voice of that name (the current one stays).
        """
        self._pipeline.check_voice(name)
        with self._lock:
            self._next_voice = name
        self.voice_name = name

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
        self._pipeline.wake()

    def close(self) -> None:
        """The client is gone: stop synthesis at the next chunk boundary and free the stream."""
        if self._closed:
            return
        self.cancel()
        self._closed = True
        self._pipeline.wake()

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
            self._pipeline.wake()
        return event

    async def events(self) -> AsyncIterator[Event]:
        """Iterate over events forever (until the task is cancelled)."""
        while True:
            yield await self.get()

    def _enqueue(self, texts: list[str]) -> list[Segment]:
        """Queue cut segments: the first keeps the pitch its text began with, later ones the current."""
        now = time.monotonic()
        pitches = [self._start_pitch] + [self.pitch_shift] * (len(texts) - 1)
        segments = [Segment(next(self._segment_counter), t, p, now) for t, p in zip(texts, pitches)]
        if texts:
            self._start_pitch = self.pitch_shift
        if segments:
            with self._lock:
                self._work.extend(segments)
                self._queued_chars += sum(len(seg.text) for seg in segments)
            self._pipeline.wake()
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
        self._out.put_nowait(event)

    # -- inference-thread side -----------------------------------------------------------

    def _deadline(self) -> float | None:
        """Scheduling key, or ``None`` when there is nothing to do (or no room to put it)."""
        with self._lock:
            if self._stage_epoch != self._epoch:
                return float("-inf")  # a cancel to apply: cheap, do it now
            if self._queued_samples >= self._pipeline.max_queued_samples:
                return None
            if self._job is not None:
                head = self._job.segment.queued_at
            elif self._work:
                head = self._work[0].queued_at
            elif self._prefill_due():
                now = time.monotonic()
                if now < self._last_push + PREFILL_PAUSE_S:
                    self._pipeline.recheck_after(self._last_push + PREFILL_PAUSE_S - now)
                    return None
                return now + PREFILL_SLACK_S
            else:
                return None
        return max(self._play_until, head)

    def _prefill_due(self) -> bool:
        """Called under ``_lock``: is there new unspoken text worth prefilling?"""
        return (
            self._pipeline.prefills
            and len(self._pending_text) - len(self._prefilled_text) >= PREFILL_STEP_CHARS
        )

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

    def _post_audio(self, epoch: int, pcm: np.ndarray, segment: int) -> int:
        if pcm.size == 0:
            return 0
        self._play_until = max(self._play_until, time.monotonic()) + pcm.size / OUTPUT_SAMPLE_RATE
        self._post(epoch, Audio(pcm, segment))
        return pcm.size

    def _step(self, engine: TTSEngine) -> None:
        """Do one chunk of work for this stream (inference thread only)."""
        with self._lock:
            epoch = self._epoch
            cancelled = self._stage_epoch != epoch
            self._stage_epoch = epoch
            item = self._work.popleft() if not cancelled and self._job is None and self._work else None
            if isinstance(item, Segment):
                self._queued_chars -= len(item.text)
            pending = self._pending_text if item is None and self._job is None and self._prefill_due() else None
        if cancelled:
            self._abandon()
            return
        if pending is not None:
            self._prefill_step(engine, pending)
            return
        if isinstance(item, _FlushMark):
            self._post(epoch, Flushed(item.flush_id, (), 0))
            return
        prefill = None
        if isinstance(item, Segment):
            self._switch_voice(epoch)
            self._job = _Job(item, iter(()))
            prefill, self._prefill, self._prefilled_text = self._prefill, None, ""
        job = self._job
        if job is None:
            return
        t0 = time.perf_counter()
        try:
            if isinstance(item, Segment):
                job.chunks = iter(engine.synthesize(item.text, prefill) if prefill else engine.synthesize(item.text))
            chunk = next(job.chunks, None)
            if chunk is None:
                job.synth_s += time.perf_counter() - t0
                self._finish(epoch, job)
                return
            converted = self.voice.process(np.asarray(chunk, dtype=np.float32), job.segment.pitch_shift)
            pcm = self.resampler.process(converted)
        except Exception as exc:  # one bad segment must not kill the stream or the thread
            log.exception("stream %d: synthesis of segment %d failed", self.id, job.segment.index)
            self._abandon()
            self._post(epoch, StreamError(f"synthesis failed for segment {job.segment.index}: {exc}", job.segment.index))
            return
        job.synth_s += time.perf_counter() - t0
        if pcm.size and job.first_audio is None:
            job.first_audio = time.monotonic()
        job.samples += self._post_audio(epoch, pcm, job.segment.index)

    def _prefill_step(self, engine: TTSEngine, text: str) -> None:
        """Prefill the sentence still being received (a failure only costs the speed-up)."""
        try:
            self._prefill = engine.prefill(clean_for_speech(text), self._prefill)
        except Exception:
            log.exception("stream %d: prefill failed", self.id)
            self._prefill = None
        self._prefilled_text = text

    def _switch_voice(self, epoch: int) -> None:
        """Install a voice chosen with :meth:`set_voice`, flushing what the old one holds."""
        with self._lock:
            name, self._next_voice = self._next_voice, False
        if name is False:
            return
        try:
            stage = self._pipeline.voice_factory(name)
        except Exception as exc:  # a bad voice file must not end the stream
            log.warning("stream %d: voice %r refused: %s", self.id, name, exc)
            self._post(epoch, StreamError(f"voice {name!r} refused: {exc}"))
            return
        self._drain_stages(epoch, -1)
        self.voice = stage
        self.resampler = StreamResampler(stage.output_sample_rate, OUTPUT_SAMPLE_RATE)

    def _drain_stages(self, epoch: int, segment: int) -> int:
        """Flush what the voice stage and the resampler hold and post it; returns the samples posted."""
        held = self.voice.flush()
        pcm = self.resampler.process(held) if held.size else np.zeros(0, dtype=np.float32)
        return self._post_audio(epoch, np.concatenate([pcm, self.resampler.flush()]), segment)

    def _abandon(self) -> None:
        """Drop the segment in progress, the prefill and everything the stages hold."""
        job, self._job = self._job, None
        self._prefill, self._prefilled_text = None, ""
        if job is not None:
            job.chunks.close() if hasattr(job.chunks, "close") else None
        self.voice.reset()
        self.resampler.reset()

    def _finish(self, epoch: int, job: _Job) -> None:
        self._job = None
        with self._lock:
            more = any(isinstance(item, Segment) for item in self._work)
        if not more:  # out of text for now: push out what the stages still hold
            job.samples += self._drain_stages(epoch, job.segment.index)
        ttfa = None if job.first_audio is None else (job.first_audio - job.segment.queued_at) * 1000
        self._post(epoch, SegmentDone(job.segment.index, job.segment.text, job.samples, ttfa, job.synth_s * 1000))


class Pipeline:
    """Owns the TTS engine and the inference thread; opens :class:`Stream` objects.

    Args:
        engine: the TTS engine (stage 2).
        voice_factory: makes a stream's voice stage (stage 3) from a voice name (``None``:
            the default); may load files (blocking) and raise :class:`UnknownVoice`.
            Without one every stream is a passthrough. If it has a ``names()`` method,
            names outside it are refused at once by :meth:`Stream.set_voice`.
        max_streams: concurrent streams allowed; :meth:`open_stream` raises past it.
        queue_s: seconds of audio a stream may have queued for its client.
        max_pending_chars: unspoken characters a stream may hold (buffered text plus
            segments waiting for synthesis).
        segmenter_factory: makes one segmenter per stream.
        prefill: let the engine prefill sentences still being received (if it can).
    """

    def __init__(
        self,
        engine: TTSEngine,
        *,
        voice_factory: VoiceFactory | None = None,
        max_streams: int = 16,
        queue_s: float = 30.0,
        max_pending_chars: int = 50_000,
        segmenter_factory: Callable[[], Segmenter] = Segmenter,
        prefill: bool = True,
    ) -> None:
        self.engine = engine
        #: Prefill prompts speculatively (the engine can, and it is not switched off).
        self.prefills = prefill and callable(getattr(engine, "prefill", None))
        self._recheck_s: float | None = None
        self.voice_factory: VoiceFactory = voice_factory or self._no_voices
        self.max_streams = max_streams
        self.max_queued_samples = int(queue_s * OUTPUT_SAMPLE_RATE)
        self.max_pending_chars = max_pending_chars
        self.new_segmenter = segmenter_factory
        self._streams: dict[int, Stream] = {}
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def check_voice(self, name: str | None) -> None:
        """Raise :class:`UnknownVoice` if ``name`` is not one of the server's voices."""
        if name is None:
            return
        names = getattr(self.voice_factory, "names", None)
        known = names() if names is not None else None
        if self.voice_factory == self._no_voices or (known is not None and name not in known):
            offered = ", ".join(known or []) or "none are configured"
            raise UnknownVoice(f"unknown voice {name!r}: available voices: {offered}")

    def _no_voices(self, name: str | None) -> VoiceStage:
        if name is not None:
            raise UnknownVoice(f"unknown voice {name!r}: no RVC voices are configured")
        return Passthrough(self.engine.sample_rate)

    @property
    def active_streams(self) -> int:
        """Number of open (not closed) streams."""
        return sum(not stream.closed for stream in list(self._streams.values()))

    def start(self) -> None:
        """Start the inference thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tts-inference", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the inference thread after its current chunk."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def open_stream(self, loop: asyncio.AbstractEventLoop | None = None, voice: str | None = None) -> Stream:
        """Open a stream whose events are delivered on ``loop`` (the running loop by default).

        Args:
            loop: event loop of the stream's consumer.
            voice: voice name (``None``: the default voice).

        Raises:
            PipelineBusy: ``max_streams`` streams are open.
            UnknownVoice: no such voice.
        """
        active = self.active_streams
        if active >= self.max_streams:
            raise PipelineBusy(f"server busy: {active} of {self.max_streams} streams in use")
        self.check_voice(voice)
        stream = Stream(self, next(self._ids), loop or asyncio.get_running_loop(), self.voice_factory(None))
        if voice is not None:
            stream.set_voice(voice)
        with self._cond:
            self._streams[stream.id] = stream
        return stream

    def wake(self) -> None:
        """Tell the inference thread that some stream may have work."""
        with self._cond:
            self._cond.notify_all()

    def recheck_after(self, delay_s: float) -> None:
        """Called under the condition's lock: wake the thread after ``delay_s`` even if nobody notifies."""
        self._recheck_s = delay_s if self._recheck_s is None else min(self._recheck_s, delay_s)

    def _pick(self) -> Stream | None:
        best: Stream | None = None
        best_key = float("inf")
        for stream in self._streams.values():
            key = stream._deadline()
            if key is not None and key < best_key:
                best, best_key = stream, key
        return best

    def _run(self) -> None:
        import torch

        with torch.inference_mode():  # this thread only ever runs inference
            while True:
                with self._cond:
                    while True:
                        if self._stopping:
                            return
                        self._recheck_s = None
                        stream = self._pick()
                        if stream is not None:
                            break
                        self._cond.wait(self._recheck_s)
                try:
                    stream._step(self.engine)
                except Exception:  # never let the thread die: other streams depend on it
                    log.exception("stream %d: pipeline step failed", stream.id)
                if stream.closed and stream._job is None:
                    with self._cond:
                        self._streams.pop(stream.id, None)

    async def speak(self, text: str, pitch_shift: float = 0.0, voice: str | None = None) -> np.ndarray:
        """One-shot synthesis through a temporary stream.

        Returns:
            ``(N,)`` float32 mono at 48 kHz.

        Raises:
            PipelineBusy: no stream is free.
            UnknownVoice: no such voice.
            RuntimeError: synthesis of a segment failed.
        """
        stream = self.open_stream(voice=voice)
        try:
            stream.push(text, pitch_shift)
            stream.flush()
            parts: list[np.ndarray] = []
            async for event in stream.events():
                if isinstance(event, Audio):
                    parts.append(event.pcm)
                elif isinstance(event, StreamError):
                    raise RuntimeError(event.message)
                elif isinstance(event, Flushed):
                    break
            return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
        finally:
            stream.close()

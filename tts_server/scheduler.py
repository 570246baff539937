"""The pipeline's scheduler: owns the engine, the voices and the one inference thread.

:class:`Pipeline` opens one :class:`~tts_server.stream.Stream` per client and runs the
engine for all of them on one thread, in one of two ways:

**Continuous batching** (an engine that implements
:class:`~tts_server.engines.base.BatchedEngine`, e.g. Soprano, with ``batching`` on), as
vLLM's scheduler does it. Each step:

1. every stream is prepared (:meth:`Stream.prepare`): a cancel or disconnect drops its
   sequences, a sentence whose text is complete becomes an engine sequence at once,
   even while an earlier sentence of the stream is still being spoken (up to
   ``segments_ahead`` of them: their audio is held until their turn);
2. the batch is assembled: every stream with a sequence and room in its outbox is a
   candidate, earliest playback deadline first (the moment its listener runs out of
   audio). At most ``max_batch`` sequences hold the engine's KV-cache slots; when a
   sentence being spoken has none and no slot is free, a slot is taken from a
   speculative prefill, then from a sentence generated ahead, then from a paused stream
   (full outbox: a slow client), then from the running sequence with the latest
   deadline if that is more than :data:`PREEMPT_MARGIN_S` later than the candidate's
   (its cache is recomputed when it runs again). Whoever does not get a slot waits;
   sentences generated ahead and speculative prefills use free slots only;
3. one model call (:meth:`BatchedEngine.step`) advances every sequence in the batch:
   one audio token each for those generating, and up to ``prefill_chunk_tokens`` prompt
   tokens shared by those joining (chunked prefill: a long prompt takes several steps
   and never stalls the others for more than one), then by speculative prefills of
   sentences still being written (only into free slots);
4. meanwhile (on this thread, while the model call of step 3 runs on a second one, so
   that the two use two cores) the decoder runs once (:meth:`BatchedEngine.decode`) on
   the latents of the steps before, for every stream whose listener needs audio (its
   first audio, its last, or a chunk as long as its lead allows:
   :func:`~tts_server.engines.base.chunk_target_samples`), and for the others with at
   least a token's audio ready (sharing the decoder's fixed cost);
5. each stream takes its audio through its voice stage and resampler
   (:meth:`Stream.deliver`); a finished sentence leaves the batch at once.

A slow client pauses only its own stream; a cancel takes effect at the next step.
A call that raises is retried on halves of the batch: :class:`BatchOutOfMemory` is
logged as a warning and the halves both run (nothing is lost); any other error is
narrowed down to the sequences that cause it, which get a
:class:`~tts_server.events.StreamError` and leave the batch while the others go on.

**Chunk by chunk** (any other engine, e.g. espeak-ng, or ``batching`` off): the thread
serves the stream with the earliest deadline, one chunk per turn, so several streams
share the engine fairly and a new stream's first chunk is not stuck behind another's
long sentence.

Speculative prefill. When the engine supports it and the thread has time, a sentence
that a stream is still receiving is run through the model's prompt prefill, so that
when it completes only its last tokens remain to be computed before generation starts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from .engines.base import (
    BatchedEngine,
    BatchOutOfMemory,
    EngineSequence,
    PrefillingEngine,
    TTSEngine,
    chunk_target_samples,
)
from .events import OUTPUT_SAMPLE_RATE, Audio, Flushed, PipelineBusy, StreamError, UnknownVoice
from .metrics import Metrics
from .renderer import SegmentRenderer
from .segmenter import Segmenter
from .stream import Stream
from .voice_stage import DefaultVoiceOnly, Passthrough, VoiceProvider, VoiceStage

log = logging.getLogger(__name__)

#: A running sequence gives its KV slot to a waiting one only if its deadline is this much
#: later: its cache must then be recomputed, which is worth it only for a clear gain.
PREEMPT_MARGIN_S = 1.0
#: With work that cannot run (every slot held by paused streams...), look again after this long.
IDLE_RECHECK_S = 0.05

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


@dataclass
class _Row:
    """A stream's sequence in this step's batch, with its token budget."""

    stream: Stream
    sequence: EngineSequence
    budget: int


def _key(deadline: float | None) -> float:
    return float("inf") if deadline is None else deadline


class Pipeline:
    """Owns the TTS engine and the inference thread; opens :class:`Stream` objects.

    Args:
        engine: the TTS engine (stage 2).
        voices: the voices streams may choose (stage 3); without one every stream is a
            :class:`~tts_server.voice_stage.Passthrough`.
        max_streams: concurrent streams allowed; :meth:`open_stream` raises past it.
        queue_s: seconds of audio a stream may have queued for its client.
        max_pending_chars: unspoken characters a stream may hold (buffered text plus
            segments waiting for synthesis).
        segmenter_factory: makes one segmenter per stream.
        prefill: let the engine prefill sentences still being received (if it can).
        batching: advance all streams in one model call per step when the engine is a
            :class:`~tts_server.engines.base.BatchedEngine` (``False``: chunk by chunk).
        prefill_chunk_tokens: prompt tokens one batched step may run in all (new
            sentences first, then speculative prefills).
        segments_ahead: batched mode: segments of a stream whose text is complete that
            may be generated while an earlier one is still being spoken (in free KV slots).
        overlap: batched mode: run each step's model call on a thread of its own while
            the inference thread decodes and renders the previous steps' audio (two cores
            at work instead of one; ``False``: one after the other).

    Attributes:
        batched: True when the streams are served by continuous batching.
        metrics: its Prometheus instruments, in a registry of its own (``GET /metrics``).
    """

    def __init__(
        self,
        engine: TTSEngine,
        *,
        voices: VoiceProvider | None = None,
        max_streams: int = 16,
        queue_s: float = 30.0,
        max_pending_chars: int = 50_000,
        segmenter_factory: Callable[[], Segmenter] = Segmenter,
        prefill: bool = True,
        batching: bool = True,
        prefill_chunk_tokens: int = 32,
        segments_ahead: int = 2,
        overlap: bool = True,
    ) -> None:
        if prefill_chunk_tokens < 1:
            raise ValueError(f"prefill_chunk_tokens must be at least 1, got {prefill_chunk_tokens}")
        self.engine = engine
        self.batched = batching and isinstance(engine, BatchedEngine)
        self._batch_engine: BatchedEngine | None = (
            engine if self.batched and isinstance(engine, BatchedEngine) else None
        )
        self._prefill_chunk_tokens = prefill_chunk_tokens
        self._segments_ahead = segments_ahead if self._batch_engine is not None else 0
        self._prefills = prefill and (isinstance(engine, PrefillingEngine) or self._batch_engine is not None)
        self._recheck_s: float | None = None
        self.voices: VoiceProvider = voices or DefaultVoiceOnly(lambda: Passthrough(engine.sample_rate))
        self.max_streams = max_streams
        self._max_queued_samples = int(queue_s * OUTPUT_SAMPLE_RATE)
        self._max_pending_chars = max_pending_chars
        self._new_segmenter = segmenter_factory
        self._streams: dict[int, Stream] = {}
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._overlap = overlap and self._batch_engine is not None
        self._backbone: concurrent.futures.ThreadPoolExecutor | None = None
        self.metrics = Metrics(self)

    # -- what streams ask of it (StreamHost) ------------------------------------------------

    @property
    def prefills(self) -> bool:
        """True if sentences still being written are prefilled (the engine can, and it is on)."""
        return self._prefills

    @property
    def max_pending_chars(self) -> int:
        """Unspoken characters a stream may hold."""
        return self._max_pending_chars

    @property
    def segments_ahead(self) -> int:
        """Batched mode: segments a stream may generate beyond the one being spoken (0 otherwise)."""
        return self._segments_ahead

    @property
    def max_queued_samples(self) -> int:
        """Samples (at :data:`~tts_server.events.OUTPUT_SAMPLE_RATE`) a stream may have queued."""
        return self._max_queued_samples

    def new_segmenter(self) -> Segmenter:
        """A segmenter for a new stream."""
        return self._new_segmenter()

    def check_voice(self, name: str | None) -> None:
        """Raise :class:`UnknownVoice` if ``name`` is not one of the server's voices."""
        if name is None:
            return
        known = self.voices.names()
        if name not in known:
            offered = ", ".join(known) or "none are configured"
            raise UnknownVoice(f"unknown voice {name!r}: available voices: {offered}")

    def voice_stage(self, name: str | None) -> VoiceStage:
        """A new voice stage for ``name`` (blocking: may load files).

        Raises:
            UnknownVoice: no such voice, or its files are unusable.
        """
        return self.voices(name)

    def preload_voice(self, name: str | None) -> None:
        """Check ``name`` and load its files now (blocking: call it off the event loop).

        Raises:
            UnknownVoice: no such voice, or its files are unusable.
        """
        self.check_voice(name)
        self.voices(name)

    def wake(self) -> None:
        """Tell the inference thread that some stream may have work."""
        with self._cond:
            self._cond.notify_all()

    def recheck_after(self, delay_s: float) -> None:
        """Called while choosing a stream: wake the thread after ``delay_s`` even if nobody notifies."""
        self._recheck_s = delay_s if self._recheck_s is None else min(self._recheck_s, delay_s)

    # -- streams --------------------------------------------------------------------------

    @property
    def active_streams(self) -> int:
        """Number of open (not closed) streams."""
        return sum(not stream.closed for stream in list(self._streams.values()))

    @property
    def queued_audio_s(self) -> float:
        """Seconds of synthesized audio queued for all clients and not yet taken."""
        return sum(stream.queued_audio_s for stream in list(self._streams.values()))

    def open_stream(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        voice: str | None = None,
        sample_rate: int = OUTPUT_SAMPLE_RATE,
    ) -> Stream:
        """Open a stream whose events are delivered on ``loop`` (the running loop by default).

        Blocking when the default voice's stage must load files: call it off the event
        loop if the server has RVC voices.

        Args:
            loop: event loop of the stream's consumer.
            voice: voice name (``None``: the default voice).
            sample_rate: Hz of the stream's audio; the stream's resampler (stage 4) converts
                to it directly, so a protocol that speaks 24 kHz gets one conversion, not two.

        Raises:
            PipelineBusy: ``max_streams`` streams are open.
            UnknownVoice: no such voice.
        """
        active = self.active_streams
        if active >= self.max_streams:
            self.metrics.streams_refused.inc()
            raise PipelineBusy(f"server busy: {active} of {self.max_streams} streams in use")
        self.check_voice(voice)
        stage = self.voices(None)
        renderer = SegmentRenderer(self.engine, stage, sample_rate, batched=self.batched)
        stream = Stream(
            self,
            next(self._ids),
            loop or asyncio.get_running_loop(),
            renderer,
            metrics=self.metrics,
            converts=not isinstance(stage, Passthrough),
        )
        if voice is not None:
            stream.set_voice(voice)
        with self._cond:
            self._streams[stream.id] = stream
        self.metrics.streams_opened.inc()
        return stream

    async def speak(self, text: str, pitch_shift: float = 0.0, voice: str | None = None) -> np.ndarray:
        """One-shot synthesis through a temporary stream.

        Returns:
            ``(N,)`` float32 mono at :data:`~tts_server.events.OUTPUT_SAMPLE_RATE`.

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

    # -- the inference thread ---------------------------------------------------------------

    def start(self) -> None:
        """Start the inference thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tts-inference", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the inference thread after its current chunk (waiting at most ``timeout_s``)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if not self._thread.is_alive():
                with self._cond:
                    self._streams.clear()  # their engines' and resamplers' state goes now, not at exit
            self._thread = None

    def _pick(self) -> Stream | None:
        best: Stream | None = None
        best_key = float("inf")
        for stream in self._streams.values():
            key = stream.deadline()
            if key is not None and key < best_key:
                best, best_key = stream, key
        return best

    def _run(self) -> None:
        import torch

        with torch.inference_mode():  # this thread only ever runs inference
            if self._batch_engine is not None:
                self._run_batched(self._batch_engine)
            else:
                self._run_chunked()

    def _run_chunked(self) -> None:
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
                stream.step()
            except Exception:  # never let the thread die: other streams depend on it
                log.exception("stream %d: pipeline step failed", stream.id)
            if stream.closed and stream.idle:
                with self._cond:
                    self._streams.pop(stream.id, None)

    # -- continuous batching ------------------------------------------------------------------

    def _run_batched(self, engine: BatchedEngine) -> None:
        if self._overlap:
            self._backbone = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tts-backbone")
        try:
            self._loop_batched(engine)
        finally:
            if self._backbone is not None:
                self._backbone.shutdown(wait=True)
                self._backbone = None

    def _loop_batched(self, engine: BatchedEngine) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    self._recheck_s = None
                    streams = list(self._streams.values())
                    if self._has_work(engine, streams):
                        break
                    self._cond.wait(self._recheck_s)
            try:
                progressed = self._step(engine, streams)
            except Exception:  # never let the thread die: other streams depend on it
                log.exception("batched step failed")
                progressed = False
            with self._cond:
                for stream in streams:
                    if stream.closed and stream.idle:
                        self._streams.pop(stream.id, None)
                if not progressed and not self._stopping:
                    self._cond.wait(IDLE_RECHECK_S)

    def _has_work(self, engine: BatchedEngine, streams: list[Stream]) -> bool:
        """Called under the condition: is there anything a step could do?"""
        for stream in streams:
            if stream.deadline() is not None or (stream.closed and not stream.idle):
                return True
            speculation = stream.speculation
            if speculation is not None and speculation.pending_tokens and (speculation.resident or engine.free_slots):
                return True
        return False

    def _step(self, engine: BatchedEngine, streams: list[Stream]) -> bool:
        """One step of continuous batching (see the module docstring); False when nothing could run."""
        for stream in streams:
            try:
                stream.prepare()
            except Exception:  # one stream's bookkeeping must not stop the others
                log.exception("stream %d: prepare failed", stream.id)
        deadlines = {stream.id: stream.deadline() for stream in streams}
        rows = self._assemble(engine, streams, deadlines)
        if not rows:
            return self._decode(engine, streams, deadlines)
        self.metrics.batch_size.observe(len(rows))
        failed: list[tuple[_Row, BaseException]] = []  # handled here, after the call: not on two threads

        def model_call() -> tuple[list[tuple[list[_Row], None]], float]:
            import torch

            started = time.perf_counter()
            with torch.inference_mode():  # thread-local: the backbone's thread enters it too
                done = self._run_split(
                    lambda part: engine.step([(r.sequence, r.budget) for r in part]),
                    rows,
                    lambda row, exc: failed.append((row, exc)),
                )
            return done, time.perf_counter() - started

        if self._backbone is not None:
            call = self._backbone.submit(model_call)
            self._decode(engine, streams, deadlines)  # the previous steps' audio, meanwhile
            done, elapsed = call.result()
        else:
            done, elapsed = model_call()
            self._decode(engine, streams, deadlines)
        for row, exc in failed:
            self._fail_row(row, exc)
        cost = elapsed / max(1, len(rows))
        for part, _ in done:
            for row in part:
                row.stream.step_cost_s += cost
        return True

    def _assemble(self, engine: BatchedEngine, streams: list[Stream], deadlines: dict[int, float | None]) -> list[_Row]:
        """Choose this step's batch: slots by earliest deadline, then the prompt-token budget.

        Order of claim: the segments being spoken (earliest deadline first; they may take
        a slot from others), then segments generated ahead, then speculative prefills
        (both only into free slots).
        """
        current: list[tuple[float, Stream, EngineSequence]] = []
        ahead: list[tuple[float, int, Stream, EngineSequence]] = []
        for stream in streams:
            deadline = deadlines[stream.id]
            if deadline is None:  # nothing to do, or its client is not reading
                continue
            sequence = stream.sequence
            if sequence is not None and not sequence.finished and sequence.pending_tokens:
                current.append((deadline, stream, sequence))
            for position, later in enumerate(stream.sequences_ahead, 1):
                if not later.finished and later.pending_tokens:
                    ahead.append((deadline, position, stream, later))
        current.sort(key=lambda c: c[0])
        ahead.sort(key=lambda c: (c[0], c[1]))
        chosen: list[tuple[Stream, EngineSequence]] = []
        free = engine.free_slots
        for index, (deadline, stream, sequence) in enumerate(current):
            if len(chosen) >= engine.max_batch:
                break
            if not sequence.resident:
                if not free and self._free_a_slot(engine, streams, deadlines, deadline, current[index + 1 :]):
                    free += 1
                if not free:
                    continue
                free -= 1
            chosen.append((stream, sequence))
        for _, _, stream, sequence in ahead:
            if len(chosen) >= engine.max_batch:
                break
            if not sequence.resident:
                if not free:
                    continue
                free -= 1
            chosen.append((stream, sequence))
        rows: list[_Row] = []
        budget = self._prefill_chunk_tokens
        for stream, sequence in chosen:
            pending = sequence.pending_tokens
            if pending == 1:
                rows.append(_Row(stream, sequence, 1))
            elif budget > 0 or not rows:
                take = min(pending, max(budget, 1))
                rows.append(_Row(stream, sequence, take))
                budget -= take
        # Speculative prefills take what is left of the budget, and only free slots.
        for stream in sorted(streams, key=lambda s: _key(deadlines[s.id])):
            speculation = stream.speculation
            if budget <= 0 or len(rows) >= engine.max_batch:
                break
            if speculation is None or not speculation.pending_tokens:
                continue
            if not speculation.resident:
                if not free:
                    continue
                free -= 1
            take = min(speculation.pending_tokens, budget)
            rows.append(_Row(stream, speculation, take))
            budget -= take
        return rows

    def _free_a_slot(
        self,
        engine: BatchedEngine,
        streams: list[Stream],
        deadlines: dict[int, float | None],
        deadline: float,
        later: list[tuple[float, Stream, EngineSequence]],
    ) -> bool:
        """Evict one resident sequence for a segment being spoken with ``deadline`` (module docstring)."""
        for stream in streams:  # speculative prefills first: they are only a speed-up
            speculation = stream.speculation
            if speculation is not None and speculation.resident:
                engine.evict(speculation)
                return True
        for stream in sorted(streams, key=lambda s: _key(deadlines[s.id]), reverse=True):  # then work ahead
            for sequence in reversed(stream.sequences_ahead):
                if sequence.resident:
                    engine.evict(sequence)
                    return True
        for stream in streams:  # then streams whose client is not reading
            paused = stream.sequence
            if paused is not None and paused.resident and deadlines[stream.id] is None:
                engine.evict(paused)
                return True
        for other_deadline, _, sequence in reversed(later):  # then the latest deadline, if much later
            if sequence.resident and other_deadline > deadline + PREEMPT_MARGIN_S:
                engine.evict(sequence)
                log.debug("preempted a sequence (deadline %.2f s later)", other_deadline - deadline)
                return True
        return False

    def _decode(self, engine: BatchedEngine, streams: list[Stream], deadlines: dict[int, float | None]) -> bool:
        """Decode for every stream whose listener needs audio now, with the others that have some ready.

        Due: a segment being spoken that has its first audio ready, has finished, or has
        gathered a chunk as long as its listener's lead allows. When a call is due, it also
        takes every segment being spoken with at least a token of audio ready, and segments
        generated ahead that have finished or gathered a largest chunk (their audio is
        held until their turn).
        """
        due = False
        batch: list[tuple[Stream, EngineSequence]] = []
        for stream in streams:
            if deadlines[stream.id] is None:
                continue
            sequence = stream.sequence
            if sequence is not None:
                ready = sequence.ready_samples
                if sequence.finished:
                    due = True
                    batch.append((stream, sequence))
                elif ready > 0:
                    if sequence.decoded_samples == 0:
                        due = True
                    else:
                        target = chunk_target_samples(
                            stream.lead_s,
                            sequence.rtf,
                            engine.sample_rate,
                            engine.min_chunk_samples,
                            engine.max_chunk_samples,
                        )
                        due |= ready >= target
                    if ready >= engine.min_chunk_samples or sequence.decoded_samples == 0:
                        batch.append((stream, sequence))
            for later in stream.sequences_ahead:
                if (later.finished and not later.ended) or later.ready_samples >= engine.max_chunk_samples:
                    batch.append((stream, later))
        if not due or not batch:
            return False
        started = time.perf_counter()
        done = self._run_split(lambda part: engine.decode([seq for _, seq in part]), batch, self._fail_decode)
        elapsed = time.perf_counter() - started
        for part, audio in done:
            for (stream, sequence), pcm in zip(part, audio, strict=True):
                cost, stream.step_cost_s = stream.step_cost_s + elapsed / len(batch), 0.0
                stream.deliver(sequence, pcm, cost)
        return True

    def _fail_row(self, row: _Row, exc: BaseException) -> None:
        if row.sequence is row.stream.speculation:
            log.warning("stream %d: speculative prefill failed: %s", row.stream.id, exc)
            row.stream.renderer.drop_prefill()  # the sentence is prefilled with its segment instead
            return
        row.stream.fail(exc, row.sequence)

    def _fail_decode(self, item: tuple[Stream, EngineSequence], exc: BaseException) -> None:
        stream, sequence = item
        stream.fail(exc, sequence)

    def _run_split(
        self,
        call: Callable[[list[_Item]], _Result],
        items: list[_Item],
        fail: Callable[[_Item, BaseException], None],
    ) -> list[tuple[list[_Item], _Result]]:
        """``call(items)``; on failure, retry on halves (the engine's calls change nothing when they raise).

        Out of memory is a warning and both halves run; any other error is narrowed down
        to single items, which are handed to ``fail`` while the rest go on.
        """
        try:
            return [(items, call(items))]
        except BatchOutOfMemory as exc:
            if len(items) == 1:
                fail(items[0], exc)
                return []
            log.warning("out of memory with a batch of %d; running it in two halves", len(items))
        except Exception as exc:
            if len(items) == 1:
                fail(items[0], exc)
                return []
        half = len(items) // 2
        return self._run_split(call, items[:half], fail) + self._run_split(call, items[half:], fail)

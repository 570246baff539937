"""The pipeline's scheduler: owns the engine, the voices and the one inference thread.

:class:`Pipeline` opens one :class:`~tts_server.stream.Stream` per client. Its thread
serves the stream whose listener runs out of audio first (earliest deadline: when the
audio already sent to it will have finished playing, or when its next segment was
queued), one chunk per turn, so several streams share the engine fairly and a new
stream's first chunk is not stuck behind another's long sentence. Cancellation and
disconnects take effect at the next chunk boundary.

Speculative prefill. When the engine supports it (a
:class:`~tts_server.engines.base.PrefillingEngine`, e.g. Soprano) and the thread has
nothing more urgent, it runs the sentence a stream is still receiving through the
model's prompt prefill, so that when the sentence completes only its last tokens
remain to be computed before generation starts.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Callable

import numpy as np

from .engines.base import PrefillingEngine, TTSEngine
from .events import OUTPUT_SAMPLE_RATE, Audio, Flushed, PipelineBusy, StreamError, UnknownVoice
from .renderer import SegmentRenderer
from .segmenter import Segmenter
from .stream import Stream
from .voice_stage import DefaultVoiceOnly, Passthrough, VoiceProvider, VoiceStage

log = logging.getLogger(__name__)


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
    ) -> None:
        self.engine = engine
        self._prefills = prefill and isinstance(engine, PrefillingEngine)
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

    def open_stream(self, loop: asyncio.AbstractEventLoop | None = None, voice: str | None = None) -> Stream:
        """Open a stream whose events are delivered on ``loop`` (the running loop by default).

        Blocking when the default voice's stage must load files: call it off the event
        loop if the server has RVC voices.

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
        renderer = SegmentRenderer(self.engine, self.voices(None))
        stream = Stream(self, next(self._ids), loop or asyncio.get_running_loop(), renderer)
        if voice is not None:
            stream.set_voice(voice)
        with self._cond:
            self._streams[stream.id] = stream
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

"""One spoken reply: text pieces in, through the TTS stream, into a server's audio buffer.

:class:`Reply` runs two tasks side by side:

* the *feeder* sends each piece of text to the TTS stream as it arrives (from the LLM,
  or from ``say``) and flushes at the end; an LLM failure mid-reply ends the text there
  (what was written is still spoken, and the failure is reported afterwards);
* the *consumer* writes the stream's audio into the :class:`~bot.audio.BufferSource`,
  holding playback back until :class:`~bot.pacing.StartGate` says the reply will not
  stall, and ends when the stream confirms the flush.

Then :meth:`Reply.run` waits until the last frame has gone to the player. The two halves
are :meth:`Reply.synthesize` and :meth:`Reply.wait_played`: the bot begins the next queued
reply between them, so that it is ready when this one ends. Cancelling
the task that runs it (``stop``) leaves the reply's figures readable: what was heard
(:meth:`Reply.heard`) is what the conversation history records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterable, Callable

from tts_server import Audio, Flushed, SegmentDone, StreamError

from .audio import SAMPLE_RATE, BufferSource, ReplyPlayback
from .errors import LLMError
from .pacing import RateEstimate, StartGate
from .tts import TTSStream

log = logging.getLogger(__name__)

#: How often the end of playback (and the player's health) is checked.
PLAYBACK_POLL_S = 0.02


async def iterate(pieces: list[str]) -> AsyncIterable[str]:
    """The pieces as an async stream (``say``: all text is there at once)."""
    for piece in pieces:
        yield piece


class Reply:
    """One reply on its way from text to the player.

    Args:
        tts: the reply's TTS stream.
        source: the server's audio buffer (the long-lived player reads it).
        estimate: the voice's rate estimate (updated with this reply's segments).
        pitch_shift: semitones for every piece of text.
        on_text: called with the whole text so far whenever it grows.
        check_playback: raises (e.g. :class:`~bot.errors.VoiceConnectionLost`) when the
            audio can no longer be played; polled while waiting for playback to end.
        start_gate: makes the reply's :class:`~bot.pacing.StartGate` from the estimate and
            the reply's start time.
    """

    def __init__(
        self,
        tts: TTSStream,
        source: BufferSource,
        estimate: RateEstimate,
        pitch_shift: float = 0.0,
        on_text: Callable[[str], None] | None = None,
        check_playback: Callable[[], None] | None = None,
        start_gate: Callable[[RateEstimate, float], StartGate] = StartGate,
    ) -> None:
        self.tts = tts
        self.source = source
        self.estimate = estimate
        self.pitch_shift = pitch_shift
        self.on_text = on_text
        self.check_playback = check_playback
        self.start_gate = start_gate
        self.text = ""
        self.llm_error: LLMError | None = None
        #: Messages of segments the TTS failed to speak (skipped; the channel is told).
        self.tts_errors: list[str] = []
        self.playback: ReplyPlayback | None = None
        self.pushed_chars = 0
        self.done_chars = 0
        self.written_samples = 0
        self.segments: list[tuple[int, str]] = []  # (written samples at its end, text)
        self._segment_samples = 0  # written since the last finished segment
        self.started_at = 0.0
        self.first_text_at: float | None = None
        self.released_at: float | None = None
        self.flushed: Flushed | None = None
        self._flush_id: int | None = None
        self._gate: StartGate | None = None

    async def run(self, pieces: AsyncIterable[str]) -> None:
        """Speak the pieces; returns once the last frame has been handed to the player
        (:meth:`synthesize`, then :meth:`wait_played`).

        Raises:
            TTSError: the TTS stream failed (``TTSUnavailable``: connection lost).
            VoiceConnectionLost: (from ``check_playback``) the audio cannot be played.
        """
        await self.synthesize(pieces)
        await self.wait_played()

    async def synthesize(self, pieces: AsyncIterable[str]) -> None:
        """Send the pieces through the TTS stream into the buffer; returns once the stream
        has confirmed the flush, with all the reply's audio written (and released). It may
        still be playing, or waiting behind the reply before it.

        Raises:
            TTSError: the TTS stream failed (``TTSUnavailable``: connection lost).
        """
        self.started_at = time.perf_counter()
        self.playback = self.source.begin_reply(hold=True)
        self._gate = self.start_gate(self.estimate, self.started_at)
        feeder = asyncio.create_task(self._feed(pieces), name="reply-feeder")
        consumer = asyncio.create_task(self._consume(), name="reply-consumer")
        try:
            done, _ = await asyncio.wait({feeder, consumer}, return_when=asyncio.FIRST_EXCEPTION)
            for task in (feeder, consumer):
                if task in done and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in (feeder, consumer):
                task.cancel()
            for task in (feeder, consumer):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def heard(self) -> tuple[str, bool]:
        """What the listeners heard: the text of the segments fully played, and whether more
        (part of the next segment) was played too."""
        played = self.playback.played_samples if self.playback else 0
        full = [text for end, text in self.segments if end <= played]
        last_end = self.segments[len(full) - 1][0] if full else 0
        return " ".join(t.strip() for t in full), played > last_end

    @property
    def underrun_frames(self) -> int:
        """Silence frames inserted after the reply began playing (stalls)."""
        return self.playback.underrun_frames if self.playback else 0

    # -- the two tasks ---------------------------------------------------------------------

    async def _feed(self, pieces: AsyncIterable[str]) -> None:
        try:
            async for piece in pieces:
                if self.first_text_at is None:
                    self.first_text_at = time.perf_counter()
                self.text += piece
                await self.tts.push(piece, self.pitch_shift)
                self.pushed_chars += len(piece)
                if self.on_text is not None:
                    self.on_text(self.text)
        except LLMError as exc:  # speak what was written, report the failure afterwards
            self.llm_error = exc
        self._flush_id = await self.tts.flush()

    async def _consume(self) -> None:
        source, gate = self.source, self._gate
        assert gate is not None and self.playback is not None
        while True:
            event = await self.tts.get()
            now = time.perf_counter()
            if self.playback.done:  # cleared by a stop: this reply takes no more audio
                return
            if isinstance(event, Audio):
                if event.pcm.size == 0:
                    continue
                if source.full:
                    self._release(now)  # a full buffer is as much head start as there can be
                    await source.wait_for_room()
                source.write(event.pcm)
                self.written_samples += event.pcm.size
                self._segment_samples += event.pcm.size
                gate.on_audio(event.pcm.size, now)
                self.estimate.observe_chunk(event.pcm.size)
            elif isinstance(event, SegmentDone):
                self.estimate.observe_segment(event.text, event.audio_samples, event.synth_ms)
                self.done_chars += len(event.text)
                self.segments.append((self.written_samples, event.text))
                self._segment_samples = 0
            elif isinstance(event, StreamError):
                log.warning("TTS error in a reply: %s", event.message)
                self.tts_errors.append(event.message)
            elif isinstance(event, Flushed) and self._flush_id is not None and event.flush_id == self._flush_id:
                self.flushed = event
                self._release(now)
                source.end_reply()
                return
            if self.playback.held:
                remaining = max(0, self.pushed_chars - self.done_chars)
                if gate.ready(source.buffered_s, remaining, now, self._segment_samples / SAMPLE_RATE):
                    self._release(now)

    def _release(self, now: float) -> None:
        if self.released_at is None:
            self.released_at = now
            self.source.release()
            assert self._gate is not None
            log.debug(
                "reply starts: %.2f s buffered of %.2f s received, rtf %.2f, %d chars to go (%.3f s/char)",
                self.source.buffered_s,
                self.audio_s,
                self._gate.rtf(now),
                max(0, self.pushed_chars - self.done_chars),
                self.estimate.seconds_per_char,
            )

    async def wait_played(self) -> None:
        """Return once the reply's last frame has been handed to the player (or it was dropped).

        Raises:
            VoiceConnectionLost: (from ``check_playback``) the audio cannot be played.
        """
        assert self.playback is not None, "synthesize() first"
        while not self.playback.done:
            if self.check_playback is not None:
                self.check_playback()
            await asyncio.sleep(PLAYBACK_POLL_S)

    @property
    def start_delay_s(self) -> float | None:
        """Seconds the first audio was held back for pacing (``None`` before it started)."""
        if self._gate is None or self._gate.first_audio_at is None or self.released_at is None:
            return None
        return max(0.0, self.released_at - self._gate.first_audio_at)

    @property
    def audio_s(self) -> float:
        """Seconds of audio written."""
        return self.written_samples / SAMPLE_RATE

"""Transport stage: a Discord ``AudioSource`` fed by the TTS pipeline.

discord.py's player thread calls :meth:`BufferSource.read` every 20 ms and expects 3840
bytes (20 ms of 48 kHz s16le stereo); ``b""`` ends the player for good. Stopping a
player and starting a new one leaks the old thread's five silence frames into the new
audio (measured with discord.py 2.7's ``AudioPlayer``), so each server keeps *one*
long-lived player whose source is this buffer:

* the event loop writes float32 mono 48 kHz audio as the pipeline delivers it;
* the player thread reads 20 ms frames; when the buffer is momentarily empty it gets a
  silence frame (the player keeps its timing and stays alive), and ``b""`` only after
  :meth:`BufferSource.close`;
* a reply can be *held* (audio is buffered but not played) until enough is buffered
  that it will not stall once it starts (:mod:`bot.pacing`), then released;
* the next reply may be begun while the one before is still playing: its audio waits
  behind, and follows the last sample of the one before with no gap (the bot speaks a
  queued reply back to back);
* :meth:`BufferSource.clear` drops everything buffered at once (barge-in): the next
  frame read, at most 20 ms later, is silence.

Every method is thread-safe; :meth:`BufferSource.read` never blocks on anything but a
short lock.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field

import discord
import numpy as np

from tts_server import OUTPUT_SAMPLE_RATE

log = logging.getLogger(__name__)

#: Discord voice runs at 48 kHz; the pipeline's output rate is the same, so audio goes
#: through untouched (checked here rather than assumed).
SAMPLE_RATE = discord.opus.Encoder.SAMPLING_RATE
if SAMPLE_RATE != OUTPUT_SAMPLE_RATE:  # pragma: no cover - a discord.py or pipeline change
    raise ImportError(f"Discord voice runs at {SAMPLE_RATE} Hz but the pipeline emits {OUTPUT_SAMPLE_RATE} Hz")
CHANNELS = discord.opus.Encoder.CHANNELS
FRAME_SAMPLES = discord.opus.Encoder.SAMPLES_PER_FRAME  # 20 ms
FRAME_BYTES = discord.opus.Encoder.FRAME_SIZE  # s16 stereo
SILENCE = bytes(FRAME_BYTES)


def to_s16_stereo(pcm: np.ndarray) -> bytes:
    """Convert ``(N,)`` float32 mono in [-1, 1] (clipped) to ``4·N`` bytes of s16le stereo."""
    mono = np.round(np.clip(np.asarray(pcm, dtype=np.float32), -1.0, 1.0) * 32767.0).astype("<i2")
    return np.repeat(mono, CHANNELS).tobytes()


@dataclass
class ReplyPlayback:
    """Playback state and figures of one reply (read them from the event loop).

    Attributes:
        held: audio is buffered but not played until :meth:`BufferSource.release`.
        ended: no more audio will be written (:meth:`BufferSource.end_reply`).
        done: the reply's last frame has been read (or it was cleared).
        interrupted: :meth:`BufferSource.clear` dropped it.
        written_samples: 48 kHz samples written.
        played_samples: 48 kHz samples of the reply handed to the player.
        audio_frames: 20 ms frames of the reply handed to the player.
        underrun_frames: silence frames inserted after the reply began playing and
            before its end (the stalls a listener hears).
        started_at, done_at: ``time.perf_counter()`` of the first frame and of the last
            (``None`` until then).
        first_underrun_at: ``played_samples`` when the first stall began (``None``: none).
    """

    held: bool = False
    ended: bool = False
    done: bool = False
    interrupted: bool = False
    written_samples: int = 0
    played_samples: int = 0
    audio_frames: int = 0
    underrun_frames: int = 0
    started_at: float | None = None
    done_at: float | None = None
    first_underrun_at: int | None = None


@dataclass
class _Queued:
    """One reply's audio waiting to be played (under :class:`BufferSource`'s lock)."""

    playback: ReplyPlayback
    chunks: collections.deque[bytes] = field(default_factory=collections.deque)
    head: int = 0  # bytes of chunks[0] already read
    buffered: int = 0  # bytes

    def take(self, size: int) -> bytes:
        parts = []
        while size and self.chunks:
            first = self.chunks[0]
            piece = first[self.head : self.head + size]
            parts.append(piece)
            size -= len(piece)
            self.head += len(piece)
            if self.head >= len(first):
                self.chunks.popleft()
                self.head = 0
        data = b"".join(parts)
        self.buffered -= len(data)
        return data


class BufferSource(discord.AudioSource):
    """A thread-safe buffer of one server's speech, played by a long-lived player.

    Replies play one after another, with no gap between the last sample of one and the
    first of the next: the next reply may be begun (and written, and released) while the
    one before is still playing, and its audio waits behind. Replies are *written* one at
    a time: :meth:`write`, :meth:`release` and :meth:`end_reply` address the reply begun
    last.

    Args:
        max_buffer_s: seconds of audio (of all replies) the writer may buffer ahead of
            playback; the writer waits for room (:meth:`wait_for_room`) past it.
    """

    def __init__(self, max_buffer_s: float = 60.0) -> None:
        self.max_buffer_samples = int(max_buffer_s * SAMPLE_RATE)
        self._lock = threading.Lock()
        self._queued: collections.deque[_Queued] = collections.deque()  # in playing order, none done
        self._writing: _Queued | None = None  # the reply begun last
        self._buffered = 0  # bytes, all replies
        self._closed = False

    # -- writer side (event loop) ----------------------------------------------------------

    def begin_reply(self, hold: bool = False) -> ReplyPlayback:
        """Start a new reply; it plays after the replies still buffered.

        A reply begun before the one before it was ended (:meth:`end_reply`) is dropped
        (its writer gave up on it).

        Args:
            hold: buffer its audio without playing it until :meth:`release`.

        Returns:
            The reply's live playback state.
        """
        with self._lock:
            last = self._writing
            if last is not None and not last.playback.ended:
                self._remove(last, interrupted=True)
            self._writing = _Queued(ReplyPlayback(held=hold))
            self._queued.append(self._writing)
            return self._writing.playback

    def write(self, pcm: np.ndarray) -> None:
        """Append ``(N,)`` float32 mono audio at 48 kHz to the reply begun last.

        Raises:
            RuntimeError: no reply was begun, or it has ended or been dropped.
        """
        data = to_s16_stereo(pcm)
        with self._lock:
            entry = self._writing
            if entry is None or entry.playback.ended or entry.playback.done:
                raise RuntimeError("write() outside a reply: call begin_reply() first")
            if data:
                entry.chunks.append(data)
                entry.buffered += len(data)
                self._buffered += len(data)
                entry.playback.written_samples += len(data) // (2 * CHANNELS)

    def release(self) -> None:
        """Let the held reply begun last play once those before it are done (no-op if not held)."""
        with self._lock:
            if self._writing is not None:
                self._writing.playback.held = False

    def end_reply(self) -> None:
        """No more audio for the reply begun last: its last partial frame is completed with
        the next reply's first samples when they are there, else padded with silence."""
        with self._lock:
            entry = self._writing
            if entry is None or entry.playback.done:
                return
            entry.playback.ended = True
            entry.playback.held = False
            if entry.buffered == 0:
                self._remove(entry)

    def drop(self, playback: ReplyPlayback) -> int:
        """Drop one reply's audio (it failed); it is over (``interrupted``), the others play on.

        Returns:
            The 48 kHz samples dropped.
        """
        with self._lock:
            entry = next((e for e in self._queued if e.playback is playback), None)
            if entry is None:
                return 0
            dropped = entry.buffered // (2 * CHANNELS)
            self._remove(entry, interrupted=True)
            return dropped

    def clear(self) -> int:
        """Barge-in: drop all buffered audio; every reply not yet played is over (``interrupted``).

        Returns:
            The 48 kHz samples dropped.
        """
        with self._lock:
            dropped = self._buffered // (2 * CHANNELS)
            while self._queued:
                self._remove(self._queued[0], interrupted=True)
            return dropped

    def close(self) -> None:
        """End playback for good: the next :meth:`read` returns ``b""`` and the player stops."""
        with self._lock:
            self._closed = True
            self._queued.clear()
            self._buffered = 0

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    @property
    def buffered_samples(self) -> int:
        """48 kHz samples written and not yet read (all replies)."""
        return self._buffered // (2 * CHANNELS)

    @property
    def buffered_s(self) -> float:
        """Seconds of audio written and not yet read (all replies)."""
        return self.buffered_samples / SAMPLE_RATE

    @property
    def full(self) -> bool:
        """True when ``max_buffer_s`` of audio is buffered."""
        return self.buffered_samples >= self.max_buffer_samples

    async def wait_for_room(self, poll_s: float = 0.02) -> None:
        """Wait until the buffer holds less than ``max_buffer_s`` (returns at once if it does).

        A held reply never drains: the caller must release it when :attr:`full`.
        """
        while self.full and not self._closed:
            queued = self._queued
            if not queued or queued[0].playback.held:
                return
            await asyncio.sleep(poll_s)

    # -- player side (discord.py's player thread) ------------------------------------------

    def read(self) -> bytes:
        """Return the next 20 ms frame (3840 bytes of 48 kHz s16le stereo), or ``b""`` once closed.

        A silence frame when nothing is due: between replies, while a reply is held,
        and on an underrun (counted in the reply's ``underrun_frames``). A frame that
        holds the end of one reply goes on with the start of the next when it is there.
        """
        with self._lock:
            if self._closed:
                return b""
            parts: list[bytes] = []
            need = FRAME_BYTES
            now = time.perf_counter()
            while need and self._queued:
                entry = self._queued[0]
                reply = entry.playback
                if reply.held:
                    break
                if entry.buffered < need and not reply.ended:
                    if not parts and reply.started_at is not None:
                        reply.underrun_frames += 1
                        if reply.first_underrun_at is None:
                            reply.first_underrun_at = reply.played_samples
                    break
                piece = entry.take(need)
                self._buffered -= len(piece)
                need -= len(piece)
                parts.append(piece)
                if reply.started_at is None:
                    reply.started_at = now
                reply.audio_frames += 1
                reply.played_samples += len(piece) // (2 * CHANNELS)
                if reply.ended and entry.buffered == 0:
                    self._remove(entry, now=now)
            if not parts:
                return SILENCE
            frame = b"".join(parts)
            return frame if len(frame) == FRAME_BYTES else frame + bytes(FRAME_BYTES - len(frame))

    def is_opus(self) -> bool:
        """PCM: discord.py encodes it."""
        return False

    def cleanup(self) -> None:
        """Called by a player that ends; the buffer outlives players, so nothing is freed."""

    # -- internals (under _lock) ------------------------------------------------------------

    def _remove(self, entry: _Queued, interrupted: bool = False, now: float | None = None) -> None:
        """Take a reply out of the queue: it is over (at ``now``, ``time.perf_counter()``)."""
        self._buffered -= entry.buffered
        entry.chunks.clear()
        entry.head = entry.buffered = 0
        with contextlib.suppress(ValueError):
            self._queued.remove(entry)
        reply = entry.playback
        if not reply.done:
            reply.interrupted = interrupted
            reply.done = True
            reply.held = False
            reply.done_at = time.perf_counter() if now is None else now

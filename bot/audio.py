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
* :meth:`BufferSource.clear` drops everything buffered at once (barge-in): the next
  frame read, at most 20 ms later, is silence.

Every method is thread-safe; :meth:`BufferSource.read` never blocks on anything but a
short lock.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass

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


class BufferSource(discord.AudioSource):
    """A thread-safe buffer of one server's speech, played by a long-lived player.

    Args:
        max_buffer_s: seconds of audio the writer may buffer ahead of playback; the
            writer waits for room (:meth:`wait_for_room`) past it.
    """

    def __init__(self, max_buffer_s: float = 60.0) -> None:
        self.max_buffer_samples = int(max_buffer_s * SAMPLE_RATE)
        self._lock = threading.Lock()
        self._chunks: collections.deque[bytes] = collections.deque()
        self._head = 0  # bytes of _chunks[0] already read
        self._buffered = 0  # bytes
        self._reply: ReplyPlayback | None = None
        self._closed = False

    # -- writer side (event loop) ----------------------------------------------------------

    def begin_reply(self, hold: bool = False) -> ReplyPlayback:
        """Start a new reply (anything still buffered is dropped).

        Args:
            hold: buffer its audio without playing it until :meth:`release`.

        Returns:
            The reply's live playback state.
        """
        with self._lock:
            self._drop()
            self._reply = ReplyPlayback(held=hold)
            return self._reply

    def write(self, pcm: np.ndarray) -> None:
        """Append ``(N,)`` float32 mono audio at 48 kHz to the current reply.

        Raises:
            RuntimeError: no reply was begun, or it has ended or been cleared.
        """
        data = to_s16_stereo(pcm)
        with self._lock:
            reply = self._reply
            if reply is None or reply.ended or reply.done:
                raise RuntimeError("write() outside a reply: call begin_reply() first")
            if data:
                self._chunks.append(data)
                self._buffered += len(data)
                reply.written_samples += len(data) // (2 * CHANNELS)

    def release(self) -> None:
        """Let a held reply play (no-op if it is not held)."""
        with self._lock:
            if self._reply is not None:
                self._reply.held = False

    def end_reply(self) -> None:
        """No more audio for the current reply: its last partial frame is padded with silence."""
        with self._lock:
            reply = self._reply
            if reply is None or reply.done:
                return
            reply.ended = True
            reply.held = False
            if self._buffered == 0:
                self._finish(reply)

    def clear(self) -> int:
        """Barge-in: drop all buffered audio; the current reply is over (``interrupted``).

        Returns:
            The 48 kHz samples dropped.
        """
        with self._lock:
            dropped = self._buffered // (2 * CHANNELS)
            self._drop()
            reply = self._reply
            if reply is not None and not reply.done:
                reply.interrupted = True
                self._finish(reply)
            return dropped

    def close(self) -> None:
        """End playback for good: the next :meth:`read` returns ``b""`` and the player stops."""
        with self._lock:
            self._closed = True
            self._drop()

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    @property
    def buffered_samples(self) -> int:
        """48 kHz samples written and not yet read."""
        return self._buffered // (2 * CHANNELS)

    @property
    def buffered_s(self) -> float:
        """Seconds of audio written and not yet read."""
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
            reply = self._reply
            if reply is None or reply.done or reply.held:
                return
            await asyncio.sleep(poll_s)

    # -- player side (discord.py's player thread) ------------------------------------------

    def read(self) -> bytes:
        """Return the next 20 ms frame (3840 bytes of 48 kHz s16le stereo), or ``b""`` once closed.

        A silence frame when nothing is due: between replies, while a reply is held,
        and on an underrun (counted in the reply's ``underrun_frames``).
        """
        with self._lock:
            if self._closed:
                return b""
            reply = self._reply
            if reply is None or reply.done or reply.held:
                return SILENCE
            if self._buffered < FRAME_BYTES and not reply.ended:
                if reply.started_at is not None:
                    reply.underrun_frames += 1
                    if reply.first_underrun_at is None:
                        reply.first_underrun_at = reply.played_samples
                return SILENCE
            frame = self._take(FRAME_BYTES)
            if reply.started_at is None:
                reply.started_at = time.perf_counter()
            reply.audio_frames += 1
            reply.played_samples += len(frame) // (2 * CHANNELS)
            if reply.ended and self._buffered == 0:
                self._finish(reply)
            return frame if len(frame) == FRAME_BYTES else frame + bytes(FRAME_BYTES - len(frame))

    def is_opus(self) -> bool:
        """PCM: discord.py encodes it."""
        return False

    def cleanup(self) -> None:
        """Called by a player that ends; the buffer outlives players, so nothing is freed."""

    # -- internals (under _lock) ------------------------------------------------------------

    def _take(self, size: int) -> bytes:
        parts = []
        while size and self._chunks:
            head = self._chunks[0]
            piece = head[self._head : self._head + size]
            parts.append(piece)
            size -= len(piece)
            self._head += len(piece)
            if self._head >= len(head):
                self._chunks.popleft()
                self._head = 0
        frame = b"".join(parts)
        self._buffered -= len(frame)
        return frame

    def _drop(self) -> None:
        self._chunks.clear()
        self._head = 0
        self._buffered = 0

    @staticmethod
    def _finish(reply: ReplyPlayback) -> None:
        reply.done = True
        reply.held = False
        reply.done_at = time.perf_counter()

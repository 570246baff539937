"""Transport pieces every protocol shares: the WebSocket session and its serving loop, the
application keys, and event-loop slicing of long text.

:mod:`tts_server.app` builds the application from these; each protocol adapter
(:mod:`tts_server.protocols`) builds on them too, so imports run one way:
``app`` → ``protocols`` → ``transport`` → the pipeline.

Event-loop discipline. Nothing whose cost grows with a client's input holds the event
loop for long: a token longer than :data:`INLINE_TEXT_CHARS` (up to 10 000 characters:
up to 30 ms of segmenting when it holds 5 000 sentences) is cut in slices of at most
:data:`LOOP_SLICE_S`, the other clients served in between (:func:`push_sliced`); the
session reads the client's next message only once it is done, so order, cancel and the
pending-text bound are exact. Messages waiting on one socket are handled in a row until
they have taken :data:`LOOP_SLICE_S` of loop time, then the other clients are let in: a
client flooding messages gets its turn like the others instead of all of them, and one
that sends a sentence as eight tokens and a flush does not wait eight turns for its flush. Why not a
worker thread: segmenting is Python and holds the GIL, and with a thread doing it every
socket write of the loop (which releases the GIL) waited up to a 5 ms switch interval to
get it back; a 10 000-character token stalled the loop 30 ms that way, in slices it
stalls it about 2 ms.

A client's WebSocket is closed (one INFO line says why): by the client; with 1000 when
it has been idle for ``idle_timeout_s`` (nothing received, nothing to synthesize or
send); with 1008 when it has not read its audio for as long; with 1001 when the server
shuts down (after the chunk in flight has been sent); with 1009 for a frame over
:data:`MAX_FRAME_HARD_BYTES`. A frame over :func:`max_frame_bytes` but under that gets the
protocol's error and is dropped: the connection, and the text it had buffered, are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
from aiohttp import WSCloseCode, WSMsgType, web

from .config import Config
from .events import OUTPUT_SAMPLE_RATE, Audio, Cancelled, PendingTextFull, PipelineBusy, StreamError, UnknownVoice
from .guards import CLIENT, Guards
from .protocol import ProtocolError, audio_frames, event_json, parse_message
from .scheduler import Pipeline
from .segmenter import estimated_speech_s
from .stream import Stream

log = logging.getLogger(__name__)

#: Largest HTTP body (``/api/speak``): ``max_pending_chars`` of text, JSON-escaped, fits.
MAX_BODY_BYTES = 1 << 20
#: Text up to this many characters is cut into segments in one go (well under a
#: millisecond); longer text is cut in slices of :data:`LOOP_SLICE_S`.
INLINE_TEXT_CHARS = 256
#: Longest stretch the event loop spends on one client's text or messages before serving the others.
LOOP_SLICE_S = 0.002
#: Seconds a close frame may take to leave before the connection is dropped instead.
CLOSE_TIMEOUT_S = 2.0
#: Frames up to this size are read whole even when over :func:`max_frame_bytes`, so that
#: the client gets its protocol's error and keeps the connection; larger ones close it
#: with 1009. It bounds what one connection can make the server hold for a frame (aiohttp
#: assembles a frame before handing it over): 4 MiB is 400 × the largest token at its
#: plainest, far more than a client that merely sent too much text needs.
MAX_FRAME_HARD_BYTES = 4 << 20


def max_frame_bytes(max_token_chars: int) -> int:
    """Largest WebSocket frame used: a ``max_token_chars`` token, every character JSON-escaped
    as a surrogate pair (12 bytes), and the other fields. Larger frames get the protocol's
    error (:meth:`Session.error`) and are dropped; past :data:`MAX_FRAME_HARD_BYTES` the
    socket is closed (1009)."""
    return 12 * max_token_chars + 4096


async def push_sliced(stream: Stream, text: str, pitch_shift: float | None = None) -> None:
    """:meth:`Stream.push` on the event loop, letting other clients in every :data:`LOOP_SLICE_S`.

    Cutting 10 000 characters into 5 000 sentences takes about 30 ms; this spends at most
    about 2 ms of it at a time. Order and the pending-text bound are those of ``push`` (the
    caller reads the client's next message only after it returns).

    Raises:
        PendingTextFull: as :meth:`Stream.push` (nothing is added).
    """
    started = time.perf_counter()
    for _ in stream.push_steps(text, pitch_shift):
        if time.perf_counter() - started > LOOP_SLICE_S:
            await asyncio.sleep(0)
            started = time.perf_counter()


async def estimate_speech_s(text: str) -> float:
    """:func:`~tts_server.segmenter.estimated_speech_s` in slices (8 000 characters, ~1 ms each)."""
    total = 0.0
    for start in range(0, len(text), 8000):
        if start:
            await asyncio.sleep(0)
        total += estimated_speech_s(text[start : start + 8000])
    return total


CONFIG = web.AppKey("config", Config)
PIPELINE = web.AppKey("pipeline", Pipeline)
GUARDS = web.AppKey("guards", Guards)
#: The open /ws/stream sessions (closed with 1001 at shutdown).
SESSIONS: web.AppKey[set[Session]] = web.AppKey("sessions")
STOPPING = web.AppKey("stopping", asyncio.Event)


class Session:
    """One WebSocket client: its stream, whether it opted in to JSON events, and its liveliness.

    Args:
        ws: the prepared WebSocket.
        stream: its pipeline stream.
        max_token_chars: longest token accepted.
        idle_timeout_s: see the module docstring.
        transport: the connection, dropped when a close frame cannot leave.
        load_voice: checks a voice name and loads its files (blocking; run in a worker thread
            before the stream switches to it, so the inference thread never waits for a load).
        app: the application serving it (for protocols that need its settings).
    """

    def __init__(
        self,
        ws: web.WebSocketResponse,
        stream: Stream,
        max_token_chars: int,
        *,
        idle_timeout_s: float = 120.0,
        transport: asyncio.Transport | None = None,
        load_voice: Callable[[str | None], None],
        app: web.Application | None = None,
    ) -> None:
        self.ws = ws
        self.app = app
        self.stream = stream
        self.load_voice = load_voice
        self.max_token_chars = max_token_chars
        self.idle_timeout_s = idle_timeout_s
        self.transport = transport
        self.events = False
        self.last_activity = time.monotonic()
        self.sending_since: float | None = None  # a frame is being written (the client may not read)
        self._sending = 0  # frames being written: audio and events by the sender, errors by the reader
        self.shutting_down = False
        self.close_reason: str | None = None
        self._drained = asyncio.Event()  # the sender waits for an event with nothing queued

    async def switch_voice(self, name: str | None) -> None:
        """Speak the following segments in voice ``name``, loaded first in a worker thread.

        Loading a voice's files (and, with ``auto_block``, measuring it) takes seconds: done
        here, off the event loop and off the inference thread, so no stream waits for it.

        Raises:
            UnknownVoice: no such voice, or its files are unusable.
        """
        try:
            await asyncio.to_thread(self.load_voice, name)
        except UnknownVoice:
            self.stream.count_error("voice")
            raise
        self.stream.set_voice(name)

    async def handle_text(self, data: str) -> None:
        try:
            message = parse_message(data, self.max_token_chars)
        except ProtocolError as exc:
            self.stream.count_error("protocol")
            await self._send(self.ws.send_json, {"error": str(exc)})
            return
        if message.events is not None:
            self.events = message.events
        if message.cancel:
            self.stream.cancel()
            if self.events:
                await self._send(self.ws.send_str, event_json(Cancelled()))
        if message.voice is not msgspec.UNSET:
            try:
                await self.switch_voice(message.voice)
            except UnknownVoice as exc:
                await self._send(self.ws.send_json, {"error": str(exc)})
        if message.token is not None or message.pitch_shift is not None:
            token = message.token or ""
            try:
                if len(token) > INLINE_TEXT_CHARS:
                    await push_sliced(self.stream, token, message.pitch_shift)
                else:
                    self.stream.push(token, message.pitch_shift)
            except PendingTextFull as exc:
                self.stream.count_error("pending_text_full")
                await self._send(self.ws.send_json, {"error": str(exc)})
        if message.flush:
            self.stream.flush()

    async def error(self, message: str) -> None:
        """Send this protocol's error message (``/ws/stream``: ``{"error": message}``)."""
        await self._send(self.ws.send_json, {"error": message})

    async def handle_oversized(self, size: int, limit: int) -> None:
        """A frame of ``size`` bytes, over ``limit``: dropped unread, with the protocol's error.

        Nothing buffered is touched: the stream's text and audio go on as before.
        """
        self.stream.count_error("protocol")
        await self.error(f"frame of {size} bytes is over the limit of {limit} bytes: it was dropped")

    async def handle_binary(self, data: bytes) -> None:
        """A binary frame: this protocol takes none (subclasses may answer in their own format)."""
        await self._send(self.ws.send_json, {"error": "binary frames are not accepted: send JSON text frames"})

    async def _send(self, send: Callable[[Any], Any], data: Any) -> None:
        """Write one frame with ``send``; every frame a session writes goes through here, so a
        client that does not read is closed (:meth:`watch`) whichever frame it leaves unread:
        a client flooding tokens it is refused, and not reading the errors, blocks the reading
        of its own messages and would otherwise hold its stream for good."""
        if not self._sending:
            self.sending_since = time.monotonic()
        self._sending += 1
        try:
            await send(data)
        finally:
            self._sending -= 1
            if not self._sending:
                self.sending_since = None
        self.last_activity = time.monotonic()

    async def send_events(self) -> None:
        """Write the stream's audio (binary) and events (text) to the socket, in order.

        A cancel between two frames of one event stops the rest of it, so nothing of
        the cancelled audio follows the ``cancelled`` acknowledgement.
        """
        while True:
            if not self.stream.pending_events:
                self._drained.set()
            event = await self.stream.get()
            self._drained.clear()
            if isinstance(event, Audio):
                generation = self.stream.generation
                for frame in audio_frames(event.pcm):
                    if self.stream.generation != generation:
                        break
                    await self._send(self.ws.send_bytes, frame)
            elif isinstance(event, StreamError) or self.events:
                await self._send(self.ws.send_str, event_json(event))

    async def watch(self) -> None:
        """Close the socket when the client is idle or does not read (see the module docstring)."""
        timeout = self.idle_timeout_s
        while not self.ws.closed:
            await asyncio.sleep(min(1.0, timeout / 4))
            now = time.monotonic()
            if self.sending_since is not None and now - self.sending_since >= timeout:
                await self.close(WSCloseCode.POLICY_VIOLATION, f"not reading: no audio taken for {timeout:g} s")
                return
            if self.sending_since is None and not self.stream.busy and now - self.last_activity >= timeout:
                await self.close(WSCloseCode.OK, f"idle for {timeout:g} s")
                return

    async def close(self, code: int, reason: str) -> None:
        """Send a close frame; drop the connection if it cannot leave within :data:`CLOSE_TIMEOUT_S`."""
        if self.close_reason is None:
            self.close_reason = reason
        if self.ws.closed:
            return
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self.ws.close(code=code, message=reason.encode())
        except (TimeoutError, ConnectionError, RuntimeError):
            if self.transport is not None:
                self.transport.abort()

    async def shut_down(self, deadline: float) -> None:
        """Send what was synthesized (until ``deadline``, loop time), then close with 1001."""
        self.shutting_down = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self._drained.wait()
        await self.close(WSCloseCode.GOING_AWAY, "server shutting down")


async def serve_websocket(
    request: web.Request, session_type: type[Session], sample_rate: int = OUTPUT_SAMPLE_RATE
) -> web.WebSocketResponse:
    """Serve one WebSocket client with a ``session_type`` over a stream of ``sample_rate`` Hz.

    Every WebSocket protocol shares this: the stream limit (1013 when none is free), the
    idle and not-reading timeouts, the frame size limits (over :func:`max_frame_bytes`: the
    protocol's error, the connection kept; over :data:`MAX_FRAME_HARD_BYTES`: 1009),
    shutdown with 1001, and one message handled at a time (text by ``handle_text``, binary
    by ``handle_binary``).
    """
    app = request.app
    settings = app[CONFIG].server
    client = request[CLIENT]
    frame_limit = max_frame_bytes(settings.max_token_chars)
    hard_limit = max(MAX_FRAME_HARD_BYTES, frame_limit)
    ws = web.WebSocketResponse(compress=False, max_msg_size=hard_limit, heartbeat=30.0)
    await ws.prepare(request)
    try:
        stream = app[PIPELINE].open_stream(sample_rate=sample_rate)
    except PipelineBusy as exc:
        log.info("WebSocket from %s refused: %s", client.label, exc)
        await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=str(exc).encode())
        return ws
    session = session_type(
        ws,
        stream,
        settings.max_token_chars,
        idle_timeout_s=settings.idle_timeout_s,
        transport=request.transport,
        load_voice=app[PIPELINE].preload_voice,
        app=app,
    )
    app[SESSIONS].add(session)
    opened = time.monotonic()
    sender = asyncio.create_task(session.send_events())
    watcher = asyncio.create_task(session.watch())
    lost: str | None = None
    spent = 0.0  # loop time on this client's messages since it last let the others in
    try:
        async for msg in ws:
            started = time.perf_counter()
            session.last_activity = time.monotonic()
            if session.shutting_down:
                continue
            size = _frame_bytes(msg, frame_limit)
            if size > frame_limit:
                await session.handle_oversized(size, frame_limit)
            elif msg.type == WSMsgType.TEXT:
                await session.handle_text(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await session.handle_binary(msg.data)
            elif msg.type == WSMsgType.ERROR:
                lost = f"connection error ({ws.exception() or 'unknown'})"
                break
            if sender.done():
                break
            spent += time.perf_counter() - started
            if spent > LOOP_SLICE_S:  # let the other clients in before this client's next message
                await asyncio.sleep(0)
                spent = 0.0
    except (ConnectionError, RuntimeError) as exc:  # the client vanished while we answered it
        lost = f"connection lost ({type(exc).__name__})"
    finally:
        app[SESSIONS].discard(session)
        stream.close()
        watcher.cancel()
        sender.cancel()
        for task in (watcher, sender):
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, RuntimeError):
                await task
        reason = session.close_reason or lost or _client_close_reason(ws)
        log.info(
            "stream %d from %s closed after %.1f s: %s", stream.id, client.label, time.monotonic() - opened, reason
        )
    return ws


def _frame_bytes(msg: Any, limit: int) -> int:
    """A data frame's size in bytes, exact when it may be over ``limit`` (0 for other messages)."""
    if msg.type == WSMsgType.BINARY:
        return len(msg.data)
    if msg.type != WSMsgType.TEXT:
        return 0
    # UTF-8 takes at most 4 bytes a character: only a text this long can be over the limit.
    return len(msg.data.encode()) if 4 * len(msg.data) > limit else len(msg.data)


def _client_close_reason(ws: web.WebSocketResponse) -> str:
    if ws.close_code is None:
        return "connection lost"
    return f"client closed ({ws.close_code})"


def encode_wav(audio: np.ndarray, sample_rate: int, fmt: str = "f32") -> bytes:
    """Encode ``(N,)`` float32 mono as a WAV file: IEEE float32 (``"f32"``) or 16-bit PCM (``"s16"``)."""
    from scipy.io import wavfile

    if fmt == "s16":
        audio = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)
    else:
        audio = audio.astype(np.float32, copy=False)
    buf = io.BytesIO()
    wavfile.write(buf, sample_rate, audio)
    return buf.getvalue()

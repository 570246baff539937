"""Seed 003, TTSFM's WebSocket streaming, over Socket.IO at ``/socket.io`` (websocket and polling).

Events, as the seed names them:

* client → server ``generate_stream {text, voice, format, chunk_size, request_id?}``: the
  text is cut into chunks of at most ``chunk_size`` characters (64–4096, default 1024),
  at sentence boundaries first (the server's own segmenter), so ``total_chunks`` is known
  before any audio. Then ``stream_started {request_id, timestamp}``; per chunk, in order,
  ``audio_chunk {request_id, chunk_index, total_chunks, audio_data, format, duration,
  generation_time, chunk_text}`` with ``audio_data`` a complete file of ``format``
  (``wav``, ``mp3`` or ``opus``; 24 kHz mono, encoded by PyAV or as 16-bit WAV) in hex, and
  ``stream_progress {request_id, progress, total_chunks, chunks_completed, status}``
  (progress 0–100, never backwards); then ``stream_complete {request_id, total_chunks,
  status: "completed", timestamp}``.
* ``cancel_stream {request_id}``: the generation stops at once (its pipeline stream is
  closed: nothing of it is sent after), answered with ``stream_error {request_id,
  error: "cancelled", timestamp}``, the event the seed's clients end a request on.
* ``stream_error {request_id, error, timestamp}`` for every bad request (missing or
  wrong-typed fields, unknown format, ``chunk_size`` out of range, empty or too long
  text, unknown ``request_id`` to cancel, no stream free); the session stays usable.

A ``request_id`` sent by the client is echoed; otherwise one is made. All chunks of a
request go through one pipeline stream (the same guards, engine, voice stage and one
resampling to 24 kHz as every protocol), pushed at once with a flush after each chunk, so
the engine works ahead while earlier chunks are encoded and sent.

Guards: every HTTP request of Socket.IO (the polling requests and the WebSocket upgrade)
passes :mod:`tts_server.guards` like any other (API key, Origin, Host). The key goes in
the query (``?api_key=``, what a browser can do, and what works with every client) or in a
header (over polling only for clients that send their headers with every request; the
Socket.IO ``auth`` payload is not read: it comes after the HTTP request was refused).
``/socket.io/`` itself is unmetered, because polling holds one request
open and makes others beside it; instead each *generation* takes one of the client's
stream shares while it runs, and a session runs one generation at a time. A session with
no generation for ``idle_timeout_s`` is disconnected. Memory per session is bounded by
``max_speak_s`` of audio (the text is refused above its estimate), twice over in hex.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import socketio
from aiohttp import web

from ..events import Audio, Flushed, PipelineBusy, StreamError, UnknownVoice
from ..guards import CLIENT, Client
from ..segmenter import Segmenter
from ..stream import Stream
from ..transport import CONFIG, GUARDS, PIPELINE, STOPPING, estimate_speech_s, push_sliced
from .common import VOICE_NAMES, next_event
from .openai_speech import make_encoder

log = logging.getLogger(__name__)

#: Hz of every chunk's audio (TTSFM's, and OpenAI's speech).
SAMPLE_RATE = 24_000
#: Formats a chunk may be encoded in.
FORMATS = ("wav", "mp3", "opus")
#: ``chunk_size`` range and default, in characters.
MIN_CHUNK_CHARS, MAX_CHUNK_CHARS, DEFAULT_CHUNK_CHARS = 64, 4096, 1024
#: Longest client ``request_id`` echoed.
MAX_REQUEST_ID_CHARS = 128
#: Socket.IO's path (its default).
PATH = "/socket.io/"
#: Where the application keeps its Socket.IO server.
SOCKETIO = web.AppKey("socketio", socketio.AsyncServer)


class BadEvent(ValueError):
    """A client event that cannot be served; its message goes back in ``stream_error``."""


def split_chunks(text: str, chunk_size: int) -> list[str]:
    """Cut ``text`` into chunks of at most ``chunk_size`` characters, sentences kept whole where they fit.

    Sentences come from the server's segmenter; consecutive ones are packed into a chunk
    while it stays within ``chunk_size``; a sentence longer than that is cut at white
    space (or, with none, every ``chunk_size`` characters). Linear in ``len(text)``.
    """
    segmenter = Segmenter()
    sentences = [*segmenter.push(text), *segmenter.flush()]
    chunks: list[str] = []
    current = ""
    for sentence in sentences:
        for piece in _cut(sentence, chunk_size):
            if current and len(current) + 1 + len(piece) <= chunk_size:
                current = f"{current} {piece}"
            else:
                if current:
                    chunks.append(current)
                current = piece
    if current:
        chunks.append(current)
    return chunks


def _cut(sentence: str, limit: int) -> Iterator[str]:
    start = 0
    while len(sentence) - start > limit:
        space = sentence.rfind(" ", start, start + limit + 1)
        end = space if space > start else start + limit
        piece = sentence[start:end].strip()
        if piece:
            yield piece
        start = end
    if sentence[start:].strip():
        yield sentence[start:].strip()


@dataclass
class _Session:
    """One Socket.IO client: who it is, and its generation in flight."""

    client: Client
    last_activity: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None
    request_id: str | None = None


@dataclass
class _Request:
    request_id: str
    text: str
    voice: str | None
    fmt: str
    chunk_size: int


def _parse(data: Any) -> _Request:
    if not isinstance(data, dict):
        raise BadEvent("generate_stream takes an object {text, voice, format, chunk_size}")
    request_id = data.get("request_id")
    if request_id is None:
        request_id = uuid.uuid4().hex
    elif not isinstance(request_id, str) or not request_id or len(request_id) > MAX_REQUEST_ID_CHARS:
        raise BadEvent(f"request_id must be a string of 1 to {MAX_REQUEST_ID_CHARS} characters")
    text = data.get("text")
    if not isinstance(text, str):
        raise BadEvent("text is missing or not a string")
    if not text.strip():
        raise BadEvent("text is empty")
    voice = data.get("voice")
    if voice is not None and not isinstance(voice, str):
        raise BadEvent("voice must be a string")
    fmt = data.get("format", "mp3")
    if fmt not in FORMATS:
        raise BadEvent(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    chunk_size = data.get("chunk_size", DEFAULT_CHUNK_CHARS)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise BadEvent("chunk_size must be an integer")
    if not MIN_CHUNK_CHARS <= chunk_size <= MAX_CHUNK_CHARS:
        raise BadEvent(f"chunk_size must be {MIN_CHUNK_CHARS} to {MAX_CHUNK_CHARS} characters, got {chunk_size}")
    return _Request(request_id, text, voice, fmt, chunk_size)


def _encode(fmt: str, pcm: np.ndarray) -> bytes:
    """One complete file of ``fmt`` for ``pcm`` (24 kHz float32 mono); blocking (FFmpeg)."""
    encoder = make_encoder(fmt, SAMPLE_RATE)
    return encoder.encode(pcm) + encoder.finish()


class TTSFMServer:
    """The seed-003 events over a python-socketio ``AsyncServer`` attached to ``app``."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        # Origins are checked by the guards' middleware for every HTTP request of
        # Socket.IO (an empty list turns python-engineio's own, stricter check off).
        self.sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins=[], logger=False)
        # Not sio.attach(app): the polling POSTs' bodies are read by engine.io itself, so
        # their time is bounded here (the guards leave such paths' bodies to the handler).
        for method in ("GET", "POST", "OPTIONS"):
            app.router.add_route(method, PATH, self.handle_request)
        self.sessions: dict[str, _Session] = {}
        self.sio.on("connect", self.connect)
        self.sio.on("disconnect", self.disconnect)
        self.sio.on("generate_stream", self.generate_stream)
        self.sio.on("cancel_stream", self.cancel_stream)

    async def handle_request(self, request: web.Request) -> web.StreamResponse:
        """Every HTTP request of Socket.IO; a polling POST must arrive within ``request_timeout_s``."""
        if request.method != "POST":
            return await self.sio.handle_request(request)
        timeout = self.app[CONFIG].server.request_timeout_s
        try:
            async with asyncio.timeout(timeout):
                return await self.sio.handle_request(request)
        except TimeoutError:
            return web.json_response({"error": f"the request body did not arrive within {timeout:g} s"}, status=408)

    # -- events ----------------------------------------------------------------------------

    async def connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        request: web.Request = environ["aiohttp.request"]
        if self.app[GUARDS].shutting_down:
            return False
        self.sessions[sid] = _Session(request[CLIENT])
        log.info("Socket.IO session %s from %s", sid, request[CLIENT].label)
        return True

    async def disconnect(self, sid: str, reason: Any = None) -> None:
        session = self.sessions.pop(sid, None)
        if session is not None and session.task is not None:
            session.task.cancel()  # its stream closes in the task's finally: within one chunk
        log.info("Socket.IO session %s closed (%s)", sid, reason or "client")

    async def generate_stream(self, sid: str, data: Any = None) -> None:
        session = self.sessions.get(sid)
        if session is None:
            return
        session.last_activity = time.monotonic()
        request_id = data.get("request_id") if isinstance(data, dict) else None
        try:
            request = _parse(data)
            if session.task is not None:
                raise BadEvent(f"request {session.request_id} is still running: cancel it or wait for it")
            settings = self.app[CONFIG].server
            if len(request.text) > settings.max_pending_chars:
                raise BadEvent(f"text is {len(request.text)} characters; the limit is {settings.max_pending_chars}")
            estimate = await estimate_speech_s(request.text)
            if estimate > settings.max_speak_s:
                raise BadEvent(
                    f"the text would take about {estimate:.0f} s to speak; the limit is {settings.max_speak_s:g} s"
                )
        except BadEvent as exc:
            await self._error(sid, request_id if isinstance(request_id, str) else None, str(exc))
            return
        session.request_id = request.request_id
        session.task = asyncio.create_task(self._run(sid, session, request))

    async def cancel_stream(self, sid: str, data: Any = None) -> None:
        session = self.sessions.get(sid)
        if session is None:
            return
        session.last_activity = time.monotonic()
        request_id = data.get("request_id") if isinstance(data, dict) else None
        if not isinstance(request_id, str):
            await self._error(sid, None, "cancel_stream takes {request_id}")
            return
        task = session.task
        if task is None or session.request_id != request_id:
            await self._error(sid, request_id, f"no request {request_id!r} is running")
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await self._error(sid, request_id, "cancelled")

    # -- one generation --------------------------------------------------------------------

    async def _run(self, sid: str, session: _Session, request: _Request) -> None:
        shares = self.app[GUARDS].shares
        stream: Stream | None = None
        shared = False
        try:
            if not shares.acquire(session.client):
                await self._error(sid, request.request_id, f"too many streams from {session.client.label}")
                return
            shared = True
            pipeline = self.app[PIPELINE]
            voice = self.app[VOICE_NAMES].resolve(request.voice, pipeline.voices)
            try:
                await asyncio.to_thread(pipeline.preload_voice, voice)
                stream = pipeline.open_stream(voice=voice, sample_rate=SAMPLE_RATE)
            except (PipelineBusy, UnknownVoice) as exc:
                await self._error(sid, request.request_id, str(exc))
                return
            chunks = await asyncio.to_thread(split_chunks, request.text, request.chunk_size)
            await self.sio.emit("stream_started", {"request_id": request.request_id, "timestamp": time.time()}, to=sid)
            for chunk in chunks:
                await push_sliced(stream, chunk)
                stream.flush()
            await self._send_chunks(sid, session, request, stream, chunks)
        finally:
            if stream is not None:
                stream.close()
            if shared:
                shares.release(session.client)
            if session.task is asyncio.current_task():
                session.task = None
                session.request_id = None
            session.last_activity = time.monotonic()

    async def _send_chunks(
        self, sid: str, session: _Session, request: _Request, stream: Stream, chunks: list[str]
    ) -> None:
        total = len(chunks)
        stopping = self.app[STOPPING]
        parts: list[np.ndarray] = []
        started = time.perf_counter()
        index = 0
        while index < total:
            event = await next_event(stream, stopping)
            if event is None:
                await self._error(sid, request.request_id, "the server is shutting down")
                return
            session.last_activity = time.monotonic()
            if isinstance(event, Audio):
                parts.append(event.pcm)
            elif isinstance(event, StreamError):
                await self._error(sid, request.request_id, event.message)
                return
            elif isinstance(event, Flushed):
                pcm = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
                parts = []
                data = await asyncio.to_thread(_encode, request.fmt, pcm)
                now = time.perf_counter()
                await self.sio.emit(
                    "audio_chunk",
                    {
                        "request_id": request.request_id,
                        "chunk_index": index,
                        "total_chunks": total,
                        "audio_data": data.hex(),
                        "format": request.fmt,
                        "duration": pcm.size / SAMPLE_RATE,
                        "generation_time": now - started,
                        "chunk_text": chunks[index][:100],
                    },
                    to=sid,
                )
                started = now
                index += 1
                await self.sio.emit(
                    "stream_progress",
                    {
                        "request_id": request.request_id,
                        "progress": round(100 * index / total),
                        "total_chunks": total,
                        "chunks_completed": index,
                        "status": "completed" if index == total else "processing",
                    },
                    to=sid,
                )
        await self.sio.emit(
            "stream_complete",
            {"request_id": request.request_id, "total_chunks": total, "status": "completed", "timestamp": time.time()},
            to=sid,
        )

    async def _error(self, sid: str, request_id: str | None, message: str) -> None:
        self.app[PIPELINE].metrics.error("protocol")
        await self.sio.emit(
            "stream_error", {"request_id": request_id, "error": message, "timestamp": time.time()}, to=sid
        )

    # -- idle sessions and shutdown --------------------------------------------------------

    async def watch_idle(self) -> None:
        """Disconnect sessions with no generation and no event for ``idle_timeout_s``."""
        timeout = self.app[CONFIG].server.idle_timeout_s
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            now = time.monotonic()
            for sid, session in list(self.sessions.items()):
                if session.task is None and now - session.last_activity >= timeout:
                    log.info("Socket.IO session %s idle for %g s: disconnected", sid, timeout)
                    await self.sio.disconnect(sid)

    async def shut_down(self) -> None:
        """Stop every generation and disconnect every session (the server is stopping)."""
        for session in self.sessions.values():
            if session.task is not None:
                session.task.cancel()
        for sid in list(self.sessions):
            with contextlib.suppress(Exception):
                await self.sio.disconnect(sid)

    def status(self) -> dict[str, Any]:
        """``GET /api/websocket/status``."""
        return {
            "status": "ok",
            "transports": ["websocket", "polling"],
            "path": "/socket.io",
            "active_sessions": len(self.sessions),
            "active_streams": sum(1 for s in self.sessions.values() if s.task is not None),
        }


TTSFM = web.AppKey("ttsfm", TTSFMServer)


async def websocket_status(request: web.Request) -> web.Response:
    """``GET /api/websocket/status``: the Socket.IO endpoint's transports and sessions."""
    return web.json_response(request.app[TTSFM].status())


def add_routes(app: web.Application) -> None:
    """Attach the Socket.IO server (``/socket.io/``) and ``GET /api/websocket/status`` to ``app``."""
    server = TTSFMServer(app)
    app[TTSFM] = server
    app.router.add_get("/api/websocket/status", websocket_status)

    async def lifetime(app: web.Application) -> Any:
        watcher = asyncio.create_task(server.watch_idle())
        yield
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher

    async def shut_down(app: web.Application) -> None:
        await server.shut_down()

    app.cleanup_ctx.append(lifetime)
    app.on_shutdown.append(shut_down)

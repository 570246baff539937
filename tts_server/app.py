"""Transport: the aiohttp application (``/ws/stream``, ``/api/speak``, ``/health``, ``/voices``,
``/metrics``; the other seeds' protocols are added from :mod:`tts_server.protocols`).

A thin adapter over :class:`~tts_server.scheduler.Pipeline`: it parses messages
(:mod:`tts_server.protocol`), feeds the client's stream and writes its events back.
Protocol parsing never reaches inference; inference never sees JSON. Every request
first passes :mod:`tts_server.guards` (keys, origins, hosts, fair shares, timeouts).

Event-loop discipline. Nothing whose cost grows with a client's input holds the event
loop for long: a token longer than :data:`INLINE_TEXT_CHARS` (up to 10 000 characters:
up to 30 ms of segmenting when it holds 5 000 sentences) is cut in slices of at most
:data:`LOOP_SLICE_S`, the other clients served in between (:func:`push_sliced`); the
session reads the client's next message only once it is done, so order, cancel and the
pending-text bound are exact. The loop also yields after every message, so a client
flooding messages gets its turn like the others instead of all of them. Why not a
worker thread: segmenting is Python and holds the GIL, and with a thread doing it every
socket write of the loop (which releases the GIL) waited up to a 5 ms switch interval to
get it back; a 10 000-character token stalled the loop 30 ms that way, in slices it
stalls it about 2 ms.

A client's WebSocket is closed (one INFO line says why): by the client; with 1000 when
it has been idle for ``idle_timeout_s`` (nothing received, nothing to synthesize or
send); with 1008 when it has not read its audio for as long; with 1001 when the server
shuts down (after the chunk in flight has been sent).

``POST /api/speak`` streams its WAV (chunked) as the audio is synthesized. Peak memory
per request: the queued audio of one stream (``stream_queue_s``, 5.8 MB of float32 at
the default 30 s: a client that does not read pauses synthesis), one chunk being encoded,
and the text (at most ``max_pending_chars``).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import msgspec
import numpy as np
from aiohttp import WSCloseCode, WSMsgType, hdrs, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .agent import agent_context
from .config import Config, ServerSettings
from .engines import TTSEngine
from .events import (
    OUTPUT_SAMPLE_RATE,
    Audio,
    Cancelled,
    PendingTextFull,
    PipelineBusy,
    StreamError,
    UnknownVoice,
)
from .guards import CLIENT, Guards, handler_args, json_error, warn_if_exposed
from .protocol import PitchShift, ProtocolError, audio_frames, event_json, parse_message
from .protocols.common import BadRequest, RawEncoder, read_json_body, stream_audio_body
from .scheduler import Pipeline
from .segmenter import estimated_speech_s
from .service import build_pipeline
from .stream import Stream
from .voice_stage import VoiceProvider

log = logging.getLogger(__name__)

#: Largest HTTP body (``/api/speak``): ``max_pending_chars`` of text, JSON-escaped, fits.
MAX_BODY_BYTES = 1 << 20
#: Text up to this many characters is cut into segments in one go (well under a
#: millisecond); longer text is cut in slices of :data:`LOOP_SLICE_S`.
INLINE_TEXT_CHARS = 256
#: Longest stretch the event loop spends on one client's text before serving the others.
LOOP_SLICE_S = 0.002
#: Seconds a close frame may take to leave before the connection is dropped instead.
CLOSE_TIMEOUT_S = 2.0


def max_frame_bytes(max_token_chars: int) -> int:
    """Largest WebSocket frame accepted: a ``max_token_chars`` token, every character JSON-escaped
    as a surrogate pair (12 bytes), and the other fields. Larger frames close the socket (1009)."""
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


#: Cheap, bounded answers that do not count against a client's streams (every other path does).
UNMETERED_PATHS = ("/health", "/voices", "/metrics", "/v1/models", "/v1/audio/voices")

CONFIG = web.AppKey("config", Config)
PIPELINE = web.AppKey("pipeline", Pipeline)
GUARDS = web.AppKey("guards", Guards)
#: The open /ws/stream sessions (closed with 1001 at shutdown).
SESSIONS: web.AppKey[set[_Session]] = web.AppKey("sessions")
STOPPING = web.AppKey("stopping", asyncio.Event)


def create_app(
    config: Config,
    *,
    engine: TTSEngine | None = None,
    voices: VoiceProvider | None = None,
    pipeline: Pipeline | None = None,
) -> web.Application:
    """Build the application; the engine loads (off the event loop) when it starts.

    Args:
        config: validated settings.
        engine: an already-loaded engine (tests); loaded from ``config`` when ``None``.
        voices: the voices streams may choose; from ``[rvc]`` when ``None``.
        pipeline: serve this running pipeline (the bot's own, for debugging) instead of
            building one; the application then neither warms it up nor stops it.

    Raises (at start-up, from the runner):
        EngineLoadError: the engine's files are missing or corrupt.
    """
    app = web.Application(client_max_size=MAX_BODY_BYTES, handler_args=handler_args(config.server))
    app[CONFIG] = config
    open_paths = ("/health", "/metrics") if config.server.metrics_public else ("/health",)
    guards = Guards(config.server, open_paths=open_paths, unmetered_paths=UNMETERED_PATHS)
    guards.install(app)
    app[GUARDS] = guards
    app[SESSIONS] = set[_Session]()

    async def pipeline_ctx(app: web.Application) -> AsyncIterator[None]:
        app[STOPPING] = asyncio.Event()
        warn_if_exposed(config.server)
        if pipeline is not None:
            app[PIPELINE] = pipeline
            yield
            return
        built = await asyncio.to_thread(build_pipeline, config, engine=engine, voices=voices)
        try:
            if config.engine.warmup:
                await built.speak("Hello there.")
            app[PIPELINE] = built
            log.info("engine %s (%s) on %s ready", built.engine.name, built.engine.model, built.engine.device)
            yield
        finally:
            await asyncio.to_thread(built.stop)

    async def shut_down(app: web.Application) -> None:
        await _shut_down(app, owns_pipeline=pipeline is None)

    app.cleanup_ctx.append(pipeline_ctx)
    if config.server.agent_port:  # HAProxy's agent-check (tts_server.agent), once the pipeline runs
        app.cleanup_ctx.append(
            agent_context(
                config.server.host, config.server.agent_port, lambda: app[PIPELINE], lambda: app[STOPPING].is_set()
            )
        )
    app.on_shutdown.append(shut_down)
    app.router.add_get("/ws/stream", ws_stream)
    app.router.add_post("/api/speak", api_speak)
    app.router.add_get("/health", health)
    app.router.add_get("/voices", list_voices)
    app.router.add_get("/metrics", metrics)
    # The other seeds' protocols, one module each; they build on this module's pieces
    # (hence imported here, once this module is complete).
    from .protocols import kokoro_live, kokorox, openai_speech, soprano_ws

    openai_speech.add_routes(app)
    soprano_ws.add_routes(app)
    kokoro_live.add_routes(app)
    kokorox.add_routes(app)
    return app


async def _shut_down(app: web.Application, owns_pipeline: bool) -> None:
    """SIGTERM/SIGINT (aiohttp's ``on_shutdown``, after it stopped accepting connections).

    New requests get 503. The inference thread stops after the chunk in flight; what
    was synthesized is sent; then every WebSocket gets 1001 and ``/api/speak`` responses
    end. All within about half of ``shutdown_timeout_s``: aiohttp's own wait for the
    handlers and the cleanup take the rest.
    """
    settings = app[CONFIG].server
    app[GUARDS].shutting_down = True
    app[STOPPING].set()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.shutdown_timeout_s / 2
    open_sessions = app[SESSIONS]
    sessions = list(open_sessions)
    log.info("shutting down: %d WebSocket streams open", len(sessions))
    if owns_pipeline and PIPELINE in app:
        await asyncio.to_thread(app[PIPELINE].stop, max(0.0, deadline - loop.time()))
    else:
        for session in sessions:
            session.stream.close()  # not ours to stop: drop what its thread would still make
    await asyncio.gather(*(session.shut_down(deadline) for session in sessions))


# -- /ws/stream ------------------------------------------------------------------------------


class _Session:
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
            await self.ws.send_json({"error": str(exc)})
            return
        if message.events is not None:
            self.events = message.events
        if message.cancel:
            self.stream.cancel()
            if self.events:
                await self.ws.send_str(event_json(Cancelled()))
        if message.voice is not msgspec.UNSET:
            try:
                await self.switch_voice(message.voice)
            except UnknownVoice as exc:
                await self.ws.send_json({"error": str(exc)})
        if message.token is not None or message.pitch_shift is not None:
            token = message.token or ""
            try:
                if len(token) > INLINE_TEXT_CHARS:
                    await push_sliced(self.stream, token, message.pitch_shift)
                else:
                    self.stream.push(token, message.pitch_shift)
            except PendingTextFull as exc:
                self.stream.count_error("pending_text_full")
                await self.ws.send_json({"error": str(exc)})
        if message.flush:
            self.stream.flush()

    async def handle_binary(self, data: bytes) -> None:
        """A binary frame: this protocol takes none (subclasses may answer in their own format)."""
        await self.ws.send_json({"error": "binary frames are not accepted: send JSON text frames"})

    async def _send(self, send: Callable[[Any], Any], data: Any) -> None:
        self.sending_since = time.monotonic()
        try:
            await send(data)
        finally:
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


async def ws_stream(request: web.Request) -> web.WebSocketResponse:
    """``GET /ws/stream``: the seed-004 streaming protocol (see :mod:`tts_server.protocol`)."""
    return await serve_websocket(request, _Session)


async def serve_websocket(
    request: web.Request, session_type: type[_Session], sample_rate: int = OUTPUT_SAMPLE_RATE
) -> web.WebSocketResponse:
    """Serve one WebSocket client with a ``session_type`` over a stream of ``sample_rate`` Hz.

    Every WebSocket protocol shares this: the stream limit (1013 when none is free), the
    idle and not-reading timeouts, the frame size limit, shutdown with 1001, and one
    message handled at a time (text by ``handle_text``, binary by ``handle_binary``).
    """
    app = request.app
    settings = app[CONFIG].server
    client = request[CLIENT]
    ws = web.WebSocketResponse(compress=False, max_msg_size=max_frame_bytes(settings.max_token_chars), heartbeat=30.0)
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
    try:
        async for msg in ws:
            session.last_activity = time.monotonic()
            if session.shutting_down:
                continue
            if msg.type == WSMsgType.TEXT:
                await session.handle_text(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await session.handle_binary(msg.data)
            elif msg.type == WSMsgType.ERROR:
                lost = f"connection error ({ws.exception() or 'unknown'})"
                break
            if sender.done():
                break
            await asyncio.sleep(0)  # let other clients' messages in before this client's next one
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


def _client_close_reason(ws: web.WebSocketResponse) -> str:
    if ws.close_code is None:
        return "connection lost"
    return f"client closed ({ws.close_code})"


# -- /api/speak and /health ------------------------------------------------------------------


class SpeakRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /api/speak``."""

    text: Annotated[str, msgspec.Meta(min_length=1)]
    pitch_shift: PitchShift = 0.0
    voice: str | None = None


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


async def api_speak(request: web.Request) -> web.StreamResponse:
    """``POST /api/speak`` ``{"text", "pitch_shift", "voice"}`` → ``audio/wav`` at 48 kHz, streamed.

    ``?format=s16`` for 16-bit PCM (default IEEE float32). Refused with 400 (malformed
    JSON or fields, invalid UTF-8), 413 (more than ``max_pending_chars`` characters, or
    an estimated ``max_speak_s`` of speech), 415 (not JSON, or not UTF-8), 404 (unknown
    voice), 503 (no stream free).
    """
    app = request.app
    settings: ServerSettings = app[CONFIG].server
    fmt = request.query.get("format", "f32")
    if fmt not in ("f32", "s16"):
        return json_error(400, f"format must be f32 or s16, got {fmt!r}")
    try:
        raw = await read_json_body(request)
    except BadRequest as exc:
        return json_error(exc.status, str(exc))
    try:
        body = msgspec.convert(raw, SpeakRequest)
    except msgspec.ValidationError as exc:
        return json_error(400, f"invalid request: {exc}")
    if not np.isfinite(body.pitch_shift):
        return json_error(400, "pitch_shift must be a finite number")
    text = body.text
    if len(text) > settings.max_pending_chars:
        return json_error(413, f"text is {len(text)} characters; the limit is {settings.max_pending_chars}")
    estimate = await estimate_speech_s(text)
    if estimate > settings.max_speak_s:
        return json_error(
            413,
            f"the text would take about {estimate:.0f} s to speak; the limit is {settings.max_speak_s:g} s "
            "(max_speak_s): split it, or stream it through /ws/stream",
        )
    pipeline = app[PIPELINE]
    try:
        await asyncio.to_thread(pipeline.preload_voice, body.voice)  # off the loop and the inference thread
        stream = pipeline.open_stream(voice=body.voice)
    except PipelineBusy as exc:
        return json_error(503, str(exc))
    except UnknownVoice as exc:
        return json_error(404, str(exc))
    try:
        await push_sliced(stream, text, body.pitch_shift)
        stream.flush()
        return await stream_audio_body(
            request,
            stream,
            RawEncoder(OUTPUT_SAMPLE_RATE, fmt, wav=True),
            content_type="audio/wav",
            max_speak_s=settings.max_speak_s,
            idle_timeout_s=settings.idle_timeout_s,
            stopping=app[STOPPING],
            error=json_error,
        )
    finally:
        stream.close()


async def health(request: web.Request) -> web.Response:
    """``GET /health``: engine, model, device, sample rate, active streams, every endpoint's path."""
    pipeline = request.app[PIPELINE]
    engine = pipeline.engine
    return web.json_response(
        {
            "status": "ok",
            "engine": engine.name,
            "model": engine.model,
            "device": engine.device,
            "sample_rate": OUTPUT_SAMPLE_RATE,
            "engine_sample_rate": engine.sample_rate,
            "active_streams": pipeline.active_streams,
            "max_streams": pipeline.max_streams,
            "voice": pipeline.voices.default,
            "endpoints": sorted({route.resource.canonical for route in request.app.router.routes() if route.resource}),
        }
    )


async def list_voices(request: web.Request) -> web.Response:
    """``GET /voices``: the RVC voices a stream may choose (``{"voice": name}``), and the default."""
    voices = request.app[PIPELINE].voices
    return web.json_response({"default": voices.default, "voices": voices.describe()})


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: the pipeline's Prometheus metrics (text format; see :mod:`tts_server.metrics`).

    Behind the API key like every route, unless ``[server] metrics_public``.
    """
    registry = request.app[PIPELINE].metrics.registry
    return web.Response(body=generate_latest(registry), headers={hdrs.CONTENT_TYPE: CONTENT_TYPE_LATEST})

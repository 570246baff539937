"""Transport: the aiohttp application (``/ws/stream``, ``/api/speak``, ``/health``, ``/voices``,
``/metrics``, the demo page at ``/`` from :mod:`tts_server.demo`; the other seeds' protocols
are added from :mod:`tts_server.protocols`).

A thin adapter over :class:`~tts_server.scheduler.Pipeline`: it parses messages
(:mod:`tts_server.protocol`), feeds the client's stream and writes its events back.
Protocol parsing never reaches inference; inference never sees JSON. Every request
first passes :mod:`tts_server.guards` (keys, origins, hosts, fair shares, timeouts).

The WebSocket session, its serving loop and the slicing of long text live in
:mod:`tts_server.transport`, shared with the other protocols.

``POST /api/speak`` streams its WAV (chunked) as the audio is synthesized. Peak memory
per request: the queued audio of one stream (``stream_queue_s``, 5.8 MB of float32 at
the default 30 s: a client that does not read pauses synthesis), one chunk being encoded,
and the text (at most ``max_pending_chars``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Annotated

import msgspec
import numpy as np
from aiohttp import hdrs, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import demo
from .agent import agent_context
from .config import Config, ServerSettings
from .engines import TTSEngine
from .events import OUTPUT_SAMPLE_RATE, PipelineBusy, UnknownVoice
from .guards import Guards, handler_args, json_error, warn_if_exposed
from .protocol import PitchShift
from .protocols import kokoro_live, kokorox, openai_speech, soprano_ws, ttsfm_socketio
from .protocols.common import BadRequest, RawEncoder, read_json_body, stream_audio_body
from .scheduler import Pipeline
from .service import build_pipeline
from .transport import (
    CONFIG,
    GUARDS,
    MAX_BODY_BYTES,
    PIPELINE,
    SESSIONS,
    STOPPING,
    Session,
    estimate_speech_s,
    push_sliced,
    serve_websocket,
)
from .voice_stage import VoiceProvider

log = logging.getLogger(__name__)

#: Cheap, bounded answers that do not count against a client's streams (every other path does).
# Socket.IO's HTTP requests are not streams: its generations take a client's share instead.
UNMETERED_PATHS = (
    "/health",
    "/voices",
    "/metrics",
    "/v1/models",
    "/v1/audio/voices",
    "/socket.io/",
    "/api/websocket/status",
)


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
    guards = Guards(
        config.server,
        open_paths=open_paths,
        unmetered_paths=UNMETERED_PATHS,
        page_paths=demo.PUBLIC_PATHS,
        self_reading_paths=(ttsfm_socketio.PATH,),
    )
    guards.install(app)
    app[GUARDS] = guards
    app[SESSIONS] = set[Session]()

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
    # The other seeds' protocols, one module each, over the same transport pieces.
    openai_speech.add_routes(app)
    soprano_ws.add_routes(app)
    kokoro_live.add_routes(app)
    kokorox.add_routes(app)
    ttsfm_socketio.add_routes(app)
    # The browser page at / (a WebSocket upgrade of / stays kokorox-websocket's) and /websocket-demo.
    demo.add_routes(app, websocket_root=kokorox.ws_kokorox)
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


async def ws_stream(request: web.Request) -> web.WebSocketResponse:
    """``GET /ws/stream``: the seed-004 streaming protocol (see :mod:`tts_server.protocol`)."""
    return await serve_websocket(request, Session)


# -- /api/speak and /health ------------------------------------------------------------------


class SpeakRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /api/speak``."""

    text: Annotated[str, msgspec.Meta(min_length=1)]
    pitch_shift: PitchShift = 0.0
    voice: str | None = None


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

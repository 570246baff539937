"""Transport: the aiohttp application (``/ws/stream``, ``/api/speak``, ``/health``, ``/voices``).

A thin adapter over :class:`~tts_server.scheduler.Pipeline`: it parses messages
(:mod:`tts_server.protocol`), feeds the client's stream and writes its events back.
Protocol parsing never reaches inference; inference never sees JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated

import msgspec
import numpy as np
from aiohttp import WSCloseCode, WSMsgType, web

from .config import Config
from .engines import TTSEngine
from .events import OUTPUT_SAMPLE_RATE, Audio, Cancelled, PendingTextFull, PipelineBusy, StreamError, UnknownVoice
from .protocol import PitchShift, ProtocolError, audio_frames, event_json, parse_message
from .scheduler import Pipeline
from .service import build_pipeline
from .stream import Stream
from .voice_stage import VoiceProvider

log = logging.getLogger(__name__)

CONFIG = web.AppKey("config", Config)
PIPELINE = web.AppKey("pipeline", Pipeline)
MAX_FRAME_BYTES = 1 << 20


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
    app = web.Application(client_max_size=MAX_FRAME_BYTES)
    app[CONFIG] = config

    async def pipeline_ctx(app: web.Application) -> AsyncIterator[None]:
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

    app.cleanup_ctx.append(pipeline_ctx)
    app.router.add_get("/ws/stream", ws_stream)
    app.router.add_post("/api/speak", api_speak)
    app.router.add_get("/health", health)
    app.router.add_get("/voices", list_voices)
    return app


# -- /ws/stream ------------------------------------------------------------------------------


class _Session:
    """One WebSocket client: its stream and whether it opted in to JSON events."""

    def __init__(self, ws: web.WebSocketResponse, stream: Stream, max_token_chars: int) -> None:
        self.ws = ws
        self.stream = stream
        self.max_token_chars = max_token_chars
        self.events = False

    async def handle_text(self, data: str) -> None:
        try:
            message = parse_message(data, self.max_token_chars)
        except ProtocolError as exc:
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
                self.stream.set_voice(message.voice)
            except UnknownVoice as exc:
                await self.ws.send_json({"error": str(exc)})
        if message.token is not None or message.pitch_shift is not None:
            try:
                self.stream.push(message.token or "", message.pitch_shift)
            except PendingTextFull as exc:
                await self.ws.send_json({"error": str(exc)})
        if message.flush:
            self.stream.flush()

    async def send_events(self) -> None:
        """Write the stream's audio (binary) and events (text) to the socket, in order.

        A cancel between two frames of one event stops the rest of it, so nothing of
        the cancelled audio follows the ``cancelled`` acknowledgement.
        """
        async for event in self.stream.events():
            if isinstance(event, Audio):
                generation = self.stream.generation
                for frame in audio_frames(event.pcm):
                    if self.stream.generation != generation:
                        break
                    await self.ws.send_bytes(frame)
            elif isinstance(event, StreamError) or self.events:
                await self.ws.send_str(event_json(event))


async def ws_stream(request: web.Request) -> web.WebSocketResponse:
    """``GET /ws/stream``: the seed-004 streaming protocol (see :mod:`tts_server.protocol`)."""
    config = request.app[CONFIG]
    pipeline = request.app[PIPELINE]
    ws = web.WebSocketResponse(compress=False, max_msg_size=MAX_FRAME_BYTES, heartbeat=30.0)
    await ws.prepare(request)
    try:
        stream = pipeline.open_stream()
    except PipelineBusy as exc:
        await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=str(exc).encode())
        return ws
    session = _Session(ws, stream, config.server.max_token_chars)
    sender = asyncio.create_task(session.send_events())
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await session.handle_text(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_json({"error": "binary frames are not accepted: send JSON text frames"})
            elif msg.type == WSMsgType.ERROR:
                break
            if sender.done():
                break
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        stream.close()
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionResetError):
            await sender
    return ws


# -- /api/speak and /health ------------------------------------------------------------------


class SpeakRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /api/speak``."""

    text: Annotated[str, msgspec.Meta(min_length=1)]
    pitch_shift: PitchShift = 0.0
    voice: str | None = None


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


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


async def api_speak(request: web.Request) -> web.Response:
    """``POST /api/speak`` ``{"text", "pitch_shift"}`` → ``audio/wav`` at 48 kHz (``?format=s16`` for 16-bit)."""
    config = request.app[CONFIG]
    fmt = request.query.get("format", "f32")
    if fmt not in ("f32", "s16"):
        return _json_error(400, f"format must be f32 or s16, got {fmt!r}")
    try:
        raw = json.loads(await request.text())
    except ValueError as exc:
        return _json_error(400, f"malformed JSON: {exc}")
    try:
        body = msgspec.convert(raw, SpeakRequest)
    except msgspec.ValidationError as exc:
        return _json_error(400, f"invalid request: {exc}")
    if not np.isfinite(body.pitch_shift):
        return _json_error(400, "pitch_shift must be a finite number")
    if len(body.text) > config.server.max_pending_chars:
        return _json_error(413, f"text is {len(body.text)} characters; the limit is {config.server.max_pending_chars}")
    try:
        audio = await request.app[PIPELINE].speak(body.text, body.pitch_shift, body.voice)
    except PipelineBusy as exc:
        return _json_error(503, str(exc))
    except UnknownVoice as exc:
        return _json_error(404, str(exc))
    except RuntimeError as exc:
        return _json_error(500, str(exc))
    return web.Response(body=encode_wav(audio, OUTPUT_SAMPLE_RATE, fmt), content_type="audio/wav")


async def health(request: web.Request) -> web.Response:
    """``GET /health``: engine, model, device, sample rate, active streams."""
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
        }
    )


async def list_voices(request: web.Request) -> web.Response:
    """``GET /voices``: the RVC voices a stream may choose (``{"voice": name}``), and the default."""
    voices = request.app[PIPELINE].voices
    return web.json_response({"default": voices.default, "voices": voices.describe()})

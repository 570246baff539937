"""OpenAI-compatible speech: ``POST /v1/audio/speech``, ``GET /v1/models``, ``GET /v1/audio/voices``.

What Open WebUI, SillyTavern and the ``openai`` client speak (OpenAI's API reference,
"Create speech"). The body ``{"model", "input", "voice", "response_format", "speed"}``
is answered with audio streamed as it is synthesized (chunked transfer), 24 kHz mono
as OpenAI's own output: ``pcm`` (raw 16-bit little-endian), ``wav`` (16-bit, with the
"length unknown" header of ``/api/speak``), ``mp3``, ``opus`` (in Ogg), ``aac`` (ADTS)
and ``flac``, the compressed ones encoded by FFmpeg through PyAV. The stream is opened
at 24 kHz, so the pipeline's resampler is the only rate conversion.

``model`` is accepted whatever it names (clients send ``tts-1``); ``voice`` maps to the
server's voices through :class:`~tts_server.protocols.common.VoiceNames` (a Kokoro voice
name also sets the language: ``ff_siwis`` is French where the engine has French);
``speed`` (0.25–4.0, else 400) is applied by the engine (espeak-ng) or the pipeline's
pitch-keeping time stretch (:mod:`tts_server.stretch`);
``instructions`` is accepted and ignored; ``stream_format: "sse"`` is refused (400).
Errors before the first audio are JSON in OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``; a failure after it ends the body.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any, Literal

import av
import msgspec
import numpy as np
from aiohttp import web

from ..events import PipelineBusy, UnknownVoice
from ..transport import CONFIG, PIPELINE, STOPPING, estimate_speech_s, push_sliced
from .common import (
    VOICE_NAMES,
    BadRequest,
    Encoder,
    RawEncoder,
    install,
    kokoro_voice_language,
    read_json_body,
    stream_audio_body,
)

log = logging.getLogger(__name__)

#: Sample rate of every response (OpenAI's speech output is 24 kHz mono).
SAMPLE_RATE = 24_000
#: Model ids listed by ``GET /v1/models`` beside the engine's own (any id is accepted).
MODEL_IDS = ("tts-1", "tts-1-hd")

ResponseFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]

CONTENT_TYPES: dict[str, str] = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
#: PyAV (FFmpeg) container and codec of each compressed format.
CODECS: dict[str, tuple[str, str]] = {
    "mp3": ("mp3", "libmp3lame"),
    "opus": ("ogg", "libopus"),
    "aac": ("adts", "aac"),
    "flac": ("flac", "flac"),
}


class VoiceId(msgspec.Struct):
    """``voice`` as an object (newer OpenAI clients): ``{"id": name}``."""

    id: str


class SpeechRequest(msgspec.Struct):
    """Body of ``POST /v1/audio/speech`` (unknown fields are ignored, as clients add their own)."""

    input: Annotated[str, msgspec.Meta(min_length=1)]
    model: str = "tts-1"
    voice: str | VoiceId | None = None
    response_format: ResponseFormat = "mp3"
    speed: Annotated[float, msgspec.Meta(ge=0.25, le=4.0)] = 1.0
    instructions: str | None = None
    stream_format: Literal["audio", "sse"] = "audio"


class _Sink:
    """A write-only file for PyAV's muxer: collects what it writes until taken."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


class AVEncoder:
    """A compressed format through PyAV (FFmpeg's encoders and muxers), streamed.

    The muxer writes to a non-seekable sink, so every container is written front to back
    (FFmpeg then leaves out what it would seek back to fill in, such as FLAC's total length).

    Args:
        fmt: one of :data:`CODECS`.
        sample_rate: Hz of the input, and of the encoded stream (no conversion).
    """

    #: FFmpeg's encoders cost up to ~0.4 ms per 1000 samples (mp3, measured): a thread's job.
    blocking = True

    def __init__(self, fmt: str, sample_rate: int) -> None:
        container, codec = CODECS[fmt]
        self.sample_rate = sample_rate
        self._sink = _Sink()
        self._output = av.open(self._sink, "w", format=container)
        self._stream: Any = self._output.add_stream(codec, rate=sample_rate, layout="mono")

    def _mux(self, frame: av.AudioFrame | None) -> bytes:
        for packet in self._stream.encode(frame):
            self._output.mux(packet)
        return self._sink.take()

    def encode(self, pcm: np.ndarray) -> bytes:
        if pcm.size == 0:
            return b""
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm, dtype=np.float32)[None, :], format="flt", layout="mono"
        )
        frame.sample_rate = self.sample_rate
        return self._mux(frame)

    def finish(self) -> bytes:
        data = self._mux(None)
        self._output.close()
        return data + self._sink.take()


def make_encoder(fmt: str, sample_rate: int = SAMPLE_RATE) -> Encoder:
    """The encoder of ``response_format`` ``fmt``."""
    if fmt in ("pcm", "wav"):
        return RawEncoder(sample_rate, "s16", wav=fmt == "wav")
    return AVEncoder(fmt, sample_rate)


def openai_error(status: int, message: str, param: str | None = None) -> web.Response:
    """An error in OpenAI's shape."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return web.json_response(body, status=status)


async def create_speech(request: web.Request) -> web.StreamResponse:
    """``POST /v1/audio/speech``: see the module docstring.

    Refused with 400 (malformed JSON or fields, ``speed`` out of range, ``sse``), 413
    (more than ``max_pending_chars`` characters, or an estimated ``max_speak_s`` of
    speech), 415 (not JSON), 503 (no stream free).
    """
    app = request.app
    settings = app[CONFIG].server
    try:
        raw = await read_json_body(request)
    except BadRequest as exc:
        return openai_error(exc.status, str(exc))
    try:
        body = msgspec.convert(raw, SpeechRequest)
    except msgspec.ValidationError as exc:
        return openai_error(400, f"invalid request: {exc}")
    if body.stream_format == "sse":
        return openai_error(400, 'stream_format "sse" is not supported: use "audio"', "stream_format")
    text = body.input
    if len(text) > settings.max_pending_chars:
        return openai_error(413, f"input is {len(text)} characters; the limit is {settings.max_pending_chars}")
    estimate = await estimate_speech_s(text)
    if estimate > settings.max_speak_s:
        return openai_error(
            413, f"the input would take about {estimate:.0f} s to speak; the limit is {settings.max_speak_s:g} s"
        )
    pipeline = app[PIPELINE]
    name = body.voice.id if isinstance(body.voice, VoiceId) else body.voice
    voice = app[VOICE_NAMES].resolve(name, pipeline.voices)
    try:
        await asyncio.to_thread(pipeline.preload_voice, voice)  # off the loop and the inference thread
        stream = pipeline.open_stream(voice=voice, sample_rate=SAMPLE_RATE)
    except PipelineBusy as exc:
        return openai_error(503, str(exc))
    except UnknownVoice as exc:  # an alias names a voice that went away: the resolver logged it
        return openai_error(400, str(exc), "voice")
    try:
        stream.set_speed(body.speed)
        stream.set_language(kokoro_voice_language(name))
        await push_sliced(stream, text)
        stream.flush()
        settings = request.app[CONFIG].server
        return await stream_audio_body(
            request,
            stream,
            make_encoder(body.response_format),
            content_type=CONTENT_TYPES[body.response_format],
            max_speak_s=settings.max_speak_s,
            idle_timeout_s=settings.idle_timeout_s,
            stopping=request.app[STOPPING],
            error=openai_error,
        )
    finally:
        stream.close()


async def list_models(request: web.Request) -> web.Response:
    """``GET /v1/models``: the engine's model and OpenAI's speech model ids (all speak the same)."""
    engine = request.app[PIPELINE].engine
    ids = [engine.name, *MODEL_IDS]
    data = [{"id": model, "object": "model", "created": 0, "owned_by": "tts-server"} for model in ids]
    return web.json_response({"object": "list", "data": data})


async def list_voices(request: web.Request) -> web.Response:
    """``GET /v1/audio/voices``: ``{"voices": [names...], "default": name}`` (voices, then aliases)."""
    voices = request.app[PIPELINE].voices
    return web.json_response({"voices": request.app[VOICE_NAMES].names(voices), "default": voices.default})


def add_routes(app: web.Application) -> None:
    """Serve this protocol on ``app`` (its guards apply: every route passes them)."""
    install(app, app[CONFIG].voices)
    app.router.add_post("/v1/audio/speech", create_speech)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/audio/voices", list_voices)

"""Seed 001, Kokoro live streaming: ``GET /ws/tts/live``.

1. The client's first message is JSON ``{"voice", "language", "speed"}`` (all optional);
   the server answers ``{"type": "ready", "sample_rate": 24000, "format": "pcm_s16le"}``.
   A first frame that is not such an object gets an error, not ``ready``, and the
   client may try again.
2. Then every text frame is raw text (no JSON wrapper), spoken as soon as it completes a
   sentence; an empty frame (``""``) ends the utterance: what is left is spoken.
3. Each piece of audio is ``{"type": "audio", "size": N}`` (N bytes) followed by exactly one
   binary frame of raw 16-bit little-endian PCM (no WAV header), as the seed's example
   client reads it; ``{"type": "end", "total_chunks": N}`` follows the utterance's last
   audio. Text sent after that starts the next utterance, with the same settings.
4. Errors: ``{"type": "error", "message"}``; the connection stays usable.

``voice`` maps to the server's voices (:class:`~tts_server.protocols.common.VoiceNames`:
Kokoro's ``ff_siwis`` is spoken in the default voice). ``language`` (``"fr-fr"``,
Kokoro's ``"f"``; without it, the first letter of a Kokoro voice name) is honoured where
the engine has it (espeak-ng), else logged once. ``speed`` must be 0.5–2.0 and is
applied by the engine (espeak-ng) or the pipeline's pitch-keeping time stretch
(:mod:`tts_server.stretch`). The stream is opened at 24 kHz (Kokoro's rate), so the
pipeline's resampler is the only rate conversion.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Annotated, Any

import msgspec
from aiohttp import web

from ..events import Audio, Flushed, PendingTextFull, StreamError, UnknownVoice
from ..transport import CONFIG, INLINE_TEXT_CHARS, PIPELINE, Session, push_sliced, serve_websocket
from .common import VOICE_NAMES, install, int16_bytes, kokoro_voice_language

log = logging.getLogger(__name__)

#: The rate announced in ``ready`` (Kokoro's).
SAMPLE_RATE = 24_000

Speed = Annotated[float, msgspec.Meta(ge=0.5, le=2.0)]


class LiveInit(msgspec.Struct):
    """The first message (unknown fields are ignored)."""

    voice: str | None = None
    language: str | None = None
    speed: Speed = 1.0


class LiveSession(Session):
    """One ``/ws/tts/live`` client (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ready = False
        self.chunks = 0  # audio frames of the utterance being spoken
        self._writing = asyncio.Lock()  # an audio message and its binary frame go out together

    async def send_message(self, message: dict[str, Any]) -> None:
        """Send a JSON message between audio frame pairs, never inside one."""
        async with self._writing:
            await self._send(self.ws.send_json, message)

    async def error(self, message: str) -> None:
        """Send this protocol's error message."""
        await self.send_message({"type": "error", "message": message})

    async def handle_text(self, data: str) -> None:
        if not self.ready:
            await self._initialize(data)
            return
        if data == "":
            self.stream.flush()
            return
        try:
            if len(data) > INLINE_TEXT_CHARS:
                await push_sliced(self.stream, data)
            else:
                self.stream.push(data)
        except PendingTextFull as exc:
            await self.error(str(exc))

    async def _initialize(self, data: str) -> None:
        try:
            init = msgspec.convert(json.loads(data), LiveInit)
        except msgspec.ValidationError as exc:  # before ValueError: it is one
            await self.error(f"invalid first message: {exc}")
            return
        except (ValueError, RecursionError):
            await self.error('the first message must be JSON: {"voice": ..., "language": ..., "speed": ...}')
            return
        assert self.app is not None
        try:
            voice = self.app[VOICE_NAMES].resolve(init.voice, self.app[PIPELINE].voices)
            if voice is not None:
                await self.switch_voice(voice)
        except UnknownVoice as exc:  # only if the voices changed meanwhile
            await self.error(str(exc))
            return
        self.stream.set_language(init.language or kokoro_voice_language(init.voice))
        self.stream.set_speed(init.speed)
        self.ready = True
        await self.send_message({"type": "ready", "sample_rate": self.stream.sample_rate, "format": "pcm_s16le"})

    async def handle_binary(self, data: bytes) -> None:
        await self.error("binary frames are not accepted: send text frames")

    async def send_events(self) -> None:
        """Audio as ``audio`` + binary pairs; ``end`` after each utterance; synthesis errors."""
        while True:
            if not self.stream.pending_events:
                self._drained.set()
            event = await self.stream.get()
            self._drained.clear()
            if isinstance(event, Audio):
                data = int16_bytes(event.pcm)
                async with self._writing:
                    await self._send(self.ws.send_json, {"type": "audio", "size": len(data)})
                    await self._send(self.ws.send_bytes, data)
                self.chunks += 1
            elif isinstance(event, Flushed):
                await self.send_message({"type": "end", "total_chunks": self.chunks})
                self.chunks = 0
            elif isinstance(event, StreamError):
                await self.error(event.message)


async def ws_tts_live(request: web.Request) -> web.WebSocketResponse:
    """``GET /ws/tts/live``: the seed-001 protocol (see the module docstring)."""
    return await serve_websocket(request, LiveSession, SAMPLE_RATE)


def add_routes(app: web.Application) -> None:
    """Serve this protocol on ``app`` (its guards apply: every route passes them)."""
    install(app, app[CONFIG].voices)
    app.router.add_get("/ws/tts/live", ws_tts_live)

"""Seed 002, the Soprano TTS WebSocket: ``GET /ws/tts``.

The client sends ``{"type": "synthesize", "text", "stream", "min_text_length"}`` (JSON
text frames); for each request the server answers ``{"type": "metadata", "sample_rate":
32000, "channels": 1, "format": "int16"}``, then the audio as binary frames of raw 16-bit
little-endian PCM of :data:`FRAME_SAMPLES` samples (the last one shorter), then
``{"type": "end"}``. Errors are ``{"type": "error", "message"}`` and leave the
connection usable; requests sent while one is being spoken are answered in order.

- ``stream`` (default true): frames are sent as the audio is synthesized; false sends
  them once the request's audio is complete.
- ``min_text_length`` (characters, ≥ 0) is accepted and not used: the server's
  segmenter cuts the text at sentence ends, which is what the Soprano server's minimum
  chunk length approximates.
- ``voice`` (an addition): one of the server's voices, mapped as for every protocol
  (:class:`~tts_server.protocols.common.VoiceNames`).

The stream is opened at 32 kHz, the rate the seed announces (Soprano's own: without an
RVC voice nothing is resampled). Backpressure as the seed promises: a client that does
not read fills its stream's bounded queue (``stream_queue_s``), which pauses its
synthesis, and is closed (1008) after ``idle_timeout_s`` without reading.
"""

from __future__ import annotations

import collections
import json
import logging
from typing import Annotated, Any

import msgspec
import numpy as np
from aiohttp import web

from ..events import Audio, Flushed, PendingTextFull, StreamError, UnknownVoice
from ..transport import CONFIG, INLINE_TEXT_CHARS, PIPELINE, Session, push_sliced, serve_websocket
from .common import VOICE_NAMES, install, int16_bytes

log = logging.getLogger(__name__)

#: The sample rate announced in ``metadata`` (the seed's, Soprano's own).
SAMPLE_RATE = 32_000
#: Samples per binary frame ("small chunks (~1024 samples)").
FRAME_SAMPLES = 1024


class SynthesizeMessage(msgspec.Struct):
    """``{"type": "synthesize", ...}`` (unknown fields are ignored)."""

    type: str
    text: str
    stream: bool = True
    min_text_length: Annotated[int, msgspec.Meta(ge=0)] = 0
    voice: str | None = None


class SopranoSession(Session):
    """One ``/ws/tts`` client (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._streamed: collections.deque[bool] = collections.deque()  # one per request in flight

    async def error(self, message: str) -> None:
        """Send this protocol's error message."""
        await self._send(self.ws.send_json, {"type": "error", "message": message})

    async def handle_text(self, data: str) -> None:
        try:
            raw = json.loads(data)
        except (ValueError, RecursionError):
            await self.error('malformed JSON: send {"type": "synthesize", "text": ...}')
            return
        if not isinstance(raw, dict):
            await self.error("a message must be a JSON object")
            return
        if raw.get("type") != "synthesize":
            await self.error(f'unknown message type {raw.get("type")!r}: the only one is "synthesize"')
            return
        try:
            message = msgspec.convert(raw, SynthesizeMessage)
        except msgspec.ValidationError as exc:
            await self.error(f"invalid request: {exc}")
            return
        if not message.text.strip():
            await self.error("text is empty")
            return
        try:
            if message.voice is not None:
                assert self.app is not None
                await self.switch_voice(self.app[VOICE_NAMES].resolve(message.voice, self.app[PIPELINE].voices))
            if len(message.text) > INLINE_TEXT_CHARS:
                await push_sliced(self.stream, message.text)
            else:
                self.stream.push(message.text)
        except (PendingTextFull, UnknownVoice) as exc:  # UnknownVoice: only if the voices changed meanwhile
            await self.error(str(exc))
            return
        self._streamed.append(message.stream)
        self.stream.flush()

    async def handle_binary(self, data: bytes) -> None:
        await self.error('binary frames are not accepted: send {"type": "synthesize", ...} as text')

    async def _frames(self, pcm: np.ndarray) -> None:
        generation = self.stream.generation
        for start in range(0, pcm.size, FRAME_SAMPLES):
            if self.stream.generation != generation:
                return
            await self._send(self.ws.send_bytes, int16_bytes(pcm[start : start + FRAME_SAMPLES]))

    async def send_events(self) -> None:
        """Per request: metadata, its frames (as synthesized, or at its end), ``end``."""
        metadata = {"type": "metadata", "sample_rate": self.stream.sample_rate, "channels": 1, "format": "int16"}
        announced = False
        held: list[np.ndarray] = []
        while True:
            if not self.stream.pending_events:
                self._drained.set()
            event = await self.stream.get()
            self._drained.clear()
            if isinstance(event, StreamError):
                await self._send(self.ws.send_json, {"type": "error", "message": event.message})
                continue
            if not isinstance(event, Audio | Flushed):
                continue
            if not announced:
                await self._send(self.ws.send_json, metadata)
                announced = True
            streamed = self._streamed[0] if self._streamed else True
            if isinstance(event, Audio):
                if streamed:
                    await self._frames(event.pcm)
                else:
                    held.append(event.pcm)
                continue
            if held:
                await self._frames(np.concatenate(held))
                held = []
            if self._streamed:
                self._streamed.popleft()
            await self._send(self.ws.send_json, {"type": "end"})
            announced = False


async def ws_tts(request: web.Request) -> web.WebSocketResponse:
    """``GET /ws/tts``: the seed-002 protocol (see the module docstring)."""
    return await serve_websocket(request, SopranoSession, SAMPLE_RATE)


def add_routes(app: web.Application) -> None:
    """Serve this protocol on ``app`` (its guards apply: every route passes them)."""
    install(app, app[CONFIG].voices)
    app.router.add_get("/ws/tts", ws_tts)

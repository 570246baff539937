"""Seed 000, kokorox-websocket: ``GET /ws/kokorox``, and a WebSocket upgrade of ``/``.

All messages are JSON text frames; audio is base64 WAV, 16-bit PCM mono at 24 kHz (the
seed's format; the stream is opened at 24 kHz, so the pipeline's resampler is the only
rate conversion). Commands (``{"command": ...}``):

- ``list_voices`` → ``{"type": "voices", "voices": [...], "voice": current}``.
- ``set_voice`` ``{"voice"}`` → ``{"type": "voice_changed"}``; ``set_speed`` ``{"speed"}``
  (0.5–2.0) → ``{"type": "speed_changed"}``: the text sent from then on is spoken at that
  speed (by the engine, or the pipeline's pitch-keeping time stretch). A Kokoro voice name
  sets the language too (its first letter, Kokoro's convention: ``ff_siwis`` is French),
  honoured where the engine has it (espeak-ng), else logged.
- ``synthesize`` ``{"text"}`` → ``synthesis_started``, one ``audio_chunk`` per segment
  (``chunk``, ``index``, ``total``, ``sample_rate``), ``synthesis_completed``. ``total`` is
  the number of segments the text was cut into, known before the first chunk; there are
  exactly that many chunks (a segment that fails to synthesize gets an ``error`` and an
  empty chunk).
- ``stream_start`` ``{"voice", "speed"}`` → ``{"type": "stream_started", "stream_id"}``;
  ``stream_append`` ``{"stream_id", "text"}``: each complete sentence is spoken at once,
  as ``{"type": "stream_chunk", "stream_id", "chunk", "index", "sample_rate"}``;
  ``stream_end`` ``{"stream_id"}``: the rest is spoken, then ``{"type": "stream_ended",
  "stream_id", "total_chunks"}``; ``stream_cancel`` ``{"stream_id"}``: unspoken text and
  unsent audio are dropped at once, ``{"type": "stream_cancelled", "stream_id"}``, and
  nothing of the stream follows it.
- Errors: ``{"type": "error", "message"}``; the connection stays usable.

Requests are answered in order, one after the other (a connection is one stream
through the pipeline, as on every protocol). While a stream is open (started, not
ended), ``synthesize`` and another ``stream_start`` are refused. A cancel drops all the
connection's pending audio: a request still queued before the cancelled stream ends with
an ``error`` saying so.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import numpy as np
from aiohttp import web

from ..events import Audio, Flushed, PendingTextFull, SegmentDone, StreamError, UnknownVoice
from ..transport import CONFIG, INLINE_TEXT_CHARS, PIPELINE, Session, encode_wav, push_sliced, serve_websocket
from .common import VOICE_NAMES, install, kokoro_voice_language

log = logging.getLogger(__name__)

#: The seed's sample rate (Kokoro's).
SAMPLE_RATE = 24_000

Speed = Annotated[float, msgspec.Meta(ge=0.5, le=2.0)]


class Command(msgspec.Struct):
    """Any message: its ``command`` (the other fields are checked per command)."""

    command: str


class SetVoice(msgspec.Struct):
    command: str
    voice: str


class SetSpeed(msgspec.Struct):
    command: str
    speed: Speed


class Synthesize(msgspec.Struct):
    command: str
    text: str


class StreamStart(msgspec.Struct):
    command: str
    voice: str | None = None
    speed: Speed = 1.0


class StreamAppend(msgspec.Struct):
    command: str
    stream_id: str
    text: str


class StreamRef(msgspec.Struct):
    command: str
    stream_id: str


@dataclass
class _Job:
    """A request being answered: a one-shot synthesis (``stream_id`` None) or a stream."""

    stream_id: str | None
    total: int = 0
    chunks: int = 0
    started: bool = False  # synthesis_started sent
    ended: bool = False  # stream_end received (one-shot: at once)


class KokoroxSession(Session):
    """One kokorox client (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.voice_name: str | None = None  # as the client named it
        self.jobs: collections.deque[_Job] = collections.deque()
        self._parts: list[np.ndarray] = []  # audio of the segment being spoken
        self._writing = asyncio.Lock()  # a cancel and its acknowledgement happen between two sends
        self._commands: dict[str, Callable[[Any], Awaitable[None]]] = {
            "list_voices": self._list_voices,
            "set_voice": self._set_voice_command,
            "set_speed": self._set_speed,
            "synthesize": self._synthesize,
            "stream_start": self._stream_start,
            "stream_append": self._stream_append,
            "stream_end": self._stream_end,
            "stream_cancel": self._stream_cancel,
        }

    async def send_message(self, message: dict[str, Any]) -> None:
        async with self._writing:
            await self._send(self.ws.send_json, message)

    async def error(self, message: str) -> None:
        """Send this protocol's error message."""
        await self.send_message({"type": "error", "message": message})

    @property
    def open_stream(self) -> _Job | None:
        """The stream started and not yet ended, if any (the last job)."""
        if self.jobs and self.jobs[-1].stream_id is not None and not self.jobs[-1].ended:
            return self.jobs[-1]
        return None

    async def handle_text(self, data: str) -> None:
        try:
            raw = json.loads(data)
            command = msgspec.convert(raw, Command).command
        except msgspec.ValidationError:  # before ValueError: it is one
            await self.error('a message is a JSON object with a "command"')
            return
        except (ValueError, RecursionError):
            await self.error("malformed JSON")
            return
        handler = self._commands.get(command)
        if handler is None:
            await self.error(f"unknown command {command!r}: {', '.join(self._commands)}")
            return
        try:
            await handler(raw)
        except msgspec.ValidationError as exc:
            await self.error(f"invalid {command}: {exc}")
        except (PendingTextFull, UnknownVoice) as exc:  # UnknownVoice: only if the voices changed meanwhile
            await self.error(str(exc))

    async def handle_binary(self, data: bytes) -> None:
        await self.error("binary frames are not accepted: all messages are JSON text")

    # -- commands ----------------------------------------------------------------------

    async def _set_voice(self, name: str | None) -> None:
        assert self.app is not None
        await self.switch_voice(self.app[VOICE_NAMES].resolve(name, self.app[PIPELINE].voices))
        self.voice_name = name
        self.stream.set_language(kokoro_voice_language(name))

    async def _push(self, text: str) -> None:
        if len(text) > INLINE_TEXT_CHARS:
            await push_sliced(self.stream, text)
        else:
            self.stream.push(text)

    async def _list_voices(self, raw: Any) -> None:
        assert self.app is not None
        voices = self.app[PIPELINE].voices
        current = self.voice_name or voices.default
        await self.send_message(
            {"type": "voices", "voices": self.app[VOICE_NAMES].names(voices), "voice": current or "default"}
        )

    async def _set_voice_command(self, raw: Any) -> None:
        await self._set_voice(msgspec.convert(raw, SetVoice).voice)
        await self.send_message({"type": "voice_changed"})

    async def _set_speed(self, raw: Any) -> None:
        self.stream.set_speed(msgspec.convert(raw, SetSpeed).speed)
        await self.send_message({"type": "speed_changed"})

    async def _synthesize(self, raw: Any) -> None:
        text = msgspec.convert(raw, Synthesize).text
        if not text.strip():
            await self.error("text is empty")
            return
        if self.open_stream is not None:
            await self.error("a stream is open: end or cancel it before synthesize")
            return
        async with self._writing:  # no chunk goes out before its total is known
            before = self.stream.segments_cut
            await self._push(text)
            self.stream.flush()
            self.jobs.append(_Job(None, total=self.stream.segments_cut - before, ended=True))

    async def _stream_start(self, raw: Any) -> None:
        start = msgspec.convert(raw, StreamStart)
        if self.open_stream is not None:
            await self.error(f"stream {self.open_stream.stream_id} is open: end or cancel it first")
            return
        if start.voice is not None:
            await self._set_voice(start.voice)
        self.stream.set_speed(start.speed)
        job = _Job(str(uuid.uuid4()))
        self.jobs.append(job)
        await self.send_message({"type": "stream_started", "stream_id": job.stream_id})

    def _job(self, stream_id: str, open_only: bool) -> _Job | None:
        for job in self.jobs:
            if job.stream_id == stream_id and not (open_only and job.ended):
                return job
        return None

    async def _stream_append(self, raw: Any) -> None:
        append = msgspec.convert(raw, StreamAppend)
        if self._job(append.stream_id, open_only=True) is None:
            await self.error(f"unknown stream_id {append.stream_id!r}: no open stream has it")
            return
        await self._push(append.text)

    async def _stream_end(self, raw: Any) -> None:
        ref = msgspec.convert(raw, StreamRef)
        job = self._job(ref.stream_id, open_only=True)
        if job is None:
            await self.error(f"unknown stream_id {ref.stream_id!r}: no open stream has it")
            return
        job.ended = True
        self.stream.flush()

    async def _stream_cancel(self, raw: Any) -> None:
        ref = msgspec.convert(raw, StreamRef)
        job = self._job(ref.stream_id, open_only=False)
        if job is None:
            await self.error(f"unknown stream_id {ref.stream_id!r}: no stream being spoken has it")
            return
        async with self._writing:  # not between two frames: nothing of it is sent after this
            self.stream.cancel()
            self._parts = []
            dropped = list(self.jobs)
            self.jobs.clear()
            for other in dropped:
                if other is not job:
                    what = "synthesize" if other.stream_id is None else f"stream {other.stream_id}"
                    message = f"{what} was dropped by stream_cancel of {ref.stream_id}"
                    await self._send(self.ws.send_json, {"type": "error", "message": message})
            await self._send(self.ws.send_json, {"type": "stream_cancelled", "stream_id": ref.stream_id})

    # -- audio out ---------------------------------------------------------------------

    async def send_events(self) -> None:
        """One chunk per segment, each request's messages in order (see the module docstring)."""
        while True:
            if not self.stream.pending_events:
                self._drained.set()
            event = await self.stream.get()
            self._drained.clear()
            generation = self.stream.generation
            async with self._writing:
                if self.stream.generation != generation or not self.jobs:
                    continue  # cancelled meanwhile
                await self._answer(self.jobs[0], event)

    async def _answer(self, job: _Job, event: Any) -> None:
        """Called with the write lock held."""
        if job.stream_id is None and not job.started:
            job.started = True
            await self._send(self.ws.send_json, {"type": "synthesis_started"})
        if isinstance(event, Audio):
            self._parts.append(event.pcm)
        elif isinstance(event, SegmentDone):
            await self._chunk(job)
        elif isinstance(event, StreamError):
            await self._send(self.ws.send_json, {"type": "error", "message": event.message})
            if event.segment is not None and event.segment >= 0:
                await self._chunk(job)  # the failed segment's chunk, empty: the count stays right
        elif isinstance(event, Flushed):
            if job.stream_id is not None and not job.ended:
                return  # not this job's end (cannot happen: only stream_end flushes an open stream)
            self.jobs.popleft()
            if job.stream_id is None:
                await self._send(self.ws.send_json, {"type": "synthesis_completed"})
            else:
                message = {"type": "stream_ended", "stream_id": job.stream_id, "total_chunks": job.chunks}
                await self._send(self.ws.send_json, message)

    async def _chunk(self, job: _Job) -> None:
        pcm = np.concatenate(self._parts) if self._parts else np.zeros(0, np.float32)
        self._parts = []
        chunk = base64.b64encode(encode_wav(pcm, self.stream.sample_rate, "s16")).decode("ascii")
        message: dict[str, Any]
        if job.stream_id is None:
            message = {"type": "audio_chunk", "chunk": chunk, "index": job.chunks, "total": job.total}
        else:
            message = {"type": "stream_chunk", "stream_id": job.stream_id, "chunk": chunk, "index": job.chunks}
        message["sample_rate"] = self.stream.sample_rate
        job.chunks += 1
        await self._send(self.ws.send_json, message)


async def ws_kokorox(request: web.Request) -> web.StreamResponse:
    """``GET /ws/kokorox`` (and ``GET /`` with a WebSocket upgrade): the seed-000 protocol.

    Raises:
        HTTPNotFound: a request without a WebSocket upgrade (``GET /`` without one is the
            demo page of :mod:`tts_server.demo`, which hands only upgrades to this handler).
    """
    if not web.WebSocketResponse().can_prepare(request).ok:
        raise web.HTTPNotFound(text="this server's endpoints are listed by GET /health")
    return await serve_websocket(request, KokoroxSession, SAMPLE_RATE)


def add_routes(app: web.Application) -> None:
    """Serve this protocol on ``app`` (its guards apply: every route passes them)."""
    install(app, app[CONFIG].voices)
    app.router.add_get("/ws/kokorox", ws_kokorox)
    # ``/`` is shared with the demo page: tts_server.demo hands its WebSocket upgrades to ws_kokorox.

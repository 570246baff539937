"""What every protocol adapter shares: voice names from other servers' clients, and 16-bit PCM.

Voice names. Clients written for other servers send their own voice names (OpenAI's
``alloy``, Kokoro's ``af_heart``). :class:`VoiceNames` maps a name to one of this
server's voices: a voice of that name, else ``[voices] aliases``, else the default voice,
with one log line per such name, so a client never fails on its voice setting.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from aiohttp import hdrs, web

from ..config import VoicesSettings
from ..events import Audio, Flushed, StreamError
from ..guards import CLIENT
from ..stream import Stream
from ..voice_stage import VoiceProvider

log = logging.getLogger(__name__)

#: Distinct unknown voice names remembered (each logged once); past it they are not logged.
MAX_LOGGED_NAMES = 1024


class VoiceNames:
    """Maps clients' voice names to this server's voices (see the module docstring).

    Args:
        settings: ``[voices]``.
    """

    def __init__(self, settings: VoicesSettings) -> None:
        self.aliases = dict(settings.aliases)
        self._logged: set[str] = set()

    def resolve(self, name: str | None, voices: VoiceProvider) -> str | None:
        """The voice of ``voices`` for ``name`` (``None``: the default voice). Never raises."""
        if not name:
            return None
        known = voices.names()
        if name in known:
            return name
        if name in self.aliases:
            target = self.aliases[name] or None
            if target is None or target in known:
                return target
            self._log_once(name, f"voice {name!r} is aliased to {target!r}, which this server does not have")
            return None
        self._log_once(name, f"voice {name!r} is not one of this server's voices")
        return None

    def names(self, voices: VoiceProvider) -> list[str]:
        """The server's voices, then the aliases (what a client may ask for by name)."""
        known = voices.names()
        return [*known, *(alias for alias in self.aliases if alias not in known)]

    def _log_once(self, name: str, reason: str) -> None:
        if name in self._logged or len(self._logged) >= MAX_LOGGED_NAMES:
            return
        self._logged.add(name)
        log.info("%s: speaking it in the default voice (map it in [voices] aliases)", reason)


VOICE_NAMES = web.AppKey("voice_names", VoiceNames)


def kokoro_voice_language(name: str | None) -> str | None:
    """The language of a Kokoro voice name, its first letter (``af_heart`` → ``"a"``,
    ``ff_siwis`` → ``"f"``: Kokoro's convention), or ``None`` for any other name."""
    if name is not None and len(name) > 3 and name[0].isalpha() and name[1] in "fm" and name[2] == "_":
        return name[0].lower()
    return None


def install(app: web.Application, settings: VoicesSettings) -> None:
    """Give ``app`` its :class:`VoiceNames` (once, whichever protocol module asks first)."""
    if VOICE_NAMES not in app:
        app[VOICE_NAMES] = VoiceNames(settings)


def int16_bytes(pcm: np.ndarray) -> bytes:
    """``(N,)`` float32 in [-1, 1] → little-endian 16-bit PCM (clipped, rounded), ``2 N`` bytes."""
    return np.round(np.clip(pcm, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def pcm_bytes(pcm: np.ndarray, fmt: str) -> bytes:
    """``(N,)`` float32 → little-endian samples: ``"s16"`` (:func:`int16_bytes`) or ``"f32"`` (IEEE float)."""
    return int16_bytes(pcm) if fmt == "s16" else pcm.astype("<f4", copy=False).tobytes()


_UNKNOWN_SIZE = 0xFFFFFFFF


def wav_stream_header(sample_rate: int, fmt: str = "f32") -> bytes:
    """The header of a mono WAV whose length is not known yet (its sizes are ``0xFFFFFFFF``).

    ``"f32"``: IEEE float (format 3, with the ``fact`` chunk it requires); ``"s16"``: 16-bit
    PCM. Readers take the data up to the end of the body (scipy warns and reads it).
    Layout from the RIFF WAVE specification (Microsoft, 1991; float in its 1994 update).
    """
    if fmt == "s16":
        fmt_chunk = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
        extra = b""
    else:
        fmt_chunk = struct.pack("<4sIHHIIHHH", b"fmt ", 18, 3, 1, sample_rate, sample_rate * 4, 4, 32, 0)
        extra = struct.pack("<4sII", b"fact", 4, _UNKNOWN_SIZE)
    return (
        struct.pack("<4sI4s", b"RIFF", _UNKNOWN_SIZE, b"WAVE")
        + fmt_chunk
        + extra
        + struct.pack("<4sI", b"data", _UNKNOWN_SIZE)
    )


class Encoder(Protocol):
    """Float32 mono audio in, the response's bytes out, chunk by chunk."""

    #: ``encode``/``finish`` cost enough to run in a worker thread (FFmpeg), not on the loop.
    blocking: bool

    def encode(self, pcm: np.ndarray) -> bytes:
        """Encode the next ``(N,)`` float32 chunk; returns the bytes ready (may be empty)."""
        ...

    def finish(self) -> bytes:
        """End of the audio: the bytes still held."""
        ...


class RawEncoder:
    """Raw little-endian samples (``fmt`` ``"s16"`` or ``"f32"``), after a streaming WAV header if ``wav``."""

    blocking = False

    def __init__(self, sample_rate: int, fmt: str = "s16", *, wav: bool) -> None:
        self.fmt = fmt
        self._header = wav_stream_header(sample_rate, fmt) if wav else b""

    def encode(self, pcm: np.ndarray) -> bytes:
        header, self._header = self._header, b""
        return header + pcm_bytes(pcm, self.fmt)

    def finish(self) -> bytes:
        header, self._header = self._header, b""
        return header  # an empty WAV is still a WAV


async def next_event(stream: Stream, stopping: asyncio.Event) -> Any | None:
    """The stream's next event, or ``None`` once the server stops and nothing more is queued."""
    if stopping.is_set():
        return await stream.get() if stream.pending_events else None
    getter = asyncio.ensure_future(stream.get())
    stopper = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not getter.done():
            getter.cancel()
    if getter.done() and not getter.cancelled():
        return getter.result()
    return await stream.get() if stream.pending_events else None


async def stream_audio_body(
    request: web.Request,
    stream: Stream,
    encoder: Encoder,
    *,
    content_type: str,
    max_speak_s: float,
    idle_timeout_s: float,
    stopping: asyncio.Event,
    error: Callable[[int, str], web.Response],
) -> web.StreamResponse:
    """Write a flushed stream's audio as a chunked HTTP body, until its ``Flushed``,
    ``max_speak_s`` of audio (at the stream's sample rate) or shutdown.

    The status goes out with the first audio, so a synthesis error before it is answered
    with ``error(500, message)``; after it the body just ends. A client that stops reading
    for ``idle_timeout_s`` is dropped; one that disconnects is logged at INFO.
    """
    client = request[CLIENT]
    where = f"{request.path} for {client.label}"
    limit = int(max_speak_s * stream.sample_rate)
    written = 0

    async def encode(pcm: np.ndarray | None) -> bytes:
        call = encoder.finish if pcm is None else (lambda: encoder.encode(pcm))
        return await asyncio.to_thread(call) if encoder.blocking else call()

    response = web.StreamResponse(headers={hdrs.CONTENT_TYPE: content_type})
    response.enable_chunked_encoding()
    try:
        while written < limit:
            event = await next_event(stream, stopping)
            if event is None or isinstance(event, Flushed):
                break
            if isinstance(event, StreamError):
                if not response.prepared:
                    return error(500, f"synthesis failed: {event.message}")
                log.warning("%s: %s (the audio ends here)", where, event.message)
                break
            if not isinstance(event, Audio):
                continue
            pcm = event.pcm[: limit - written]
            written += pcm.size
            data = await encode(pcm)
            if not response.prepared:
                await response.prepare(request)
            if data:
                async with asyncio.timeout(idle_timeout_s):
                    await response.write(data)
        if written >= limit:
            log.info("%s stopped at max_speak_s (%g s)", where, max_speak_s)
        if not response.prepared:  # nothing speakable in the text: an empty body (or WAV)
            await response.prepare(request)
        await response.write(await encode(None))
        await response.write_eof()
    except TimeoutError:
        log.info("%s: the client stopped reading; dropped", where)
        if request.transport is not None:
            request.transport.abort()
    except ConnectionError:
        log.info("%s: the client disconnected", where)
    return response


class BadRequest(Exception):
    """A request refused before any work: HTTP ``status`` and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def read_json_body(request: web.Request) -> Any:
    """The request's JSON body (UTF-8; ``Content-Type`` JSON or absent), parsed.

    Raises:
        BadRequest: 415 (not JSON or not UTF-8), 400 (invalid UTF-8 or malformed JSON).
    """
    if hdrs.CONTENT_TYPE in request.headers:
        ctype = request.content_type
        if ctype != "application/json" and not ctype.endswith("+json"):
            raise BadRequest(415, f"the body must be JSON (Content-Type: application/json), got {ctype!r}")
    charset = (request.charset or "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise BadRequest(415, f"the body must be UTF-8 (as JSON is), got charset={charset!r}")
    try:
        return json.loads((await request.read()).decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BadRequest(400, f"the body is not valid UTF-8: {exc}") from None
    except ValueError as exc:
        raise BadRequest(400, f"malformed JSON: {exc}") from None
    except RecursionError:
        raise BadRequest(400, "malformed JSON: nested too deeply") from None

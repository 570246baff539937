"""TTS backends: the pipeline embedded in the bot's process, or a remote ``tts-server``.

Both give the bot the same :class:`TTSStream` per reply: tokens in as the LLM writes
them, and the pipeline's events out (:class:`tts_server.Audio` with ``(N,)``
float32 mono 48 kHz PCM, :class:`tts_server.SegmentDone`, :class:`tts_server.Flushed`,
:class:`tts_server.StreamError`).

* :class:`EmbeddedTTS` wraps a :class:`tts_server.Pipeline` (inference on the
  pipeline's own thread) and opens one pipeline stream per reply.
* :class:`RemoteTTS` keeps one :class:`tts_server.StreamClient` per server (Discord
  guild) to ``/ws/stream`` (with events, cancel and voice); a dropped or refused
  connection is re-established in the background with exponential backoff, and a
  reply that needs it meanwhile fails fast with a message saying so.

Failover (``[tts] urls`` with several ``tts-server`` replicas). Each reply opens its
stream on the least loaded live server, as their ``GET /health`` (``active_streams`` of
``max_streams``) tells at that moment; a server that does not answer is skipped, and one
that answers again is used again. The reply's :class:`FailoverStream` cuts the text it
sends with the pipeline's own :class:`tts_server.Segmenter` (the same ``[segmenter]``
settings as the servers') and counts the segments the server completed; when the server
is lost mid-reply, the segments not yet completed (the one being spoken starts again from
its beginning) and the unfinished text go to the next live server, with the reply's
flush, and the reply goes on: the listener hears at most that one sentence's gap. Each
failover is logged (WARNING). With one URL (a single server, or HAProxy in front of
replicas) the reply goes on the same way over a new connection to that URL, if one opens
within ``connect_timeout_s``; otherwise it fails with a message saying the connection was lost.

Voices are plain names handed to the pipeline (``open_stream(voice=...)``, or
``{"voice": name}`` on the socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from yarl import URL

from tts_server import (
    API_KEY_ENV,
    Audio,
    Cancelled,
    ConnectionClosed,
    Event,
    Flushed,
    PendingTextFull,
    Pipeline,
    PipelineBusy,
    ProtocolError,
    SegmentDone,
    Segmenter,
    Stream,
    StreamClient,
    StreamError,
    UnknownVoice,
)

from .errors import TTSError, TTSUnavailable, UnknownVoiceError
from .pacing import RateEstimate

log = logging.getLogger(__name__)
#: Events buffered per remote connection before its reader stops reading the socket
#: (the server then pauses synthesis for it: backpressure, nothing is dropped).
REMOTE_EVENT_QUEUE = 256
#: First pause before reconnecting; it doubles up to ``reconnect_max_s``.
RECONNECT_INITIAL_S = 0.5
#: A connection that lasted this long resets the backoff.
STABLE_CONNECTION_S = 10.0
#: A reply moves to another server at most this many times (then it fails with the last error).
MAX_FAILOVERS = 5


class TTSStream(Protocol):
    """One reply's way through the TTS pipeline."""

    async def push(self, token: str, pitch_shift: float | None = None) -> None:
        """Send LLM text; ``pitch_shift`` in semitones (−24…24). Raises :class:`TTSError`."""
        ...

    async def flush(self) -> int:
        """Speak everything sent so far; returns the id of the :class:`Flushed` event to come."""
        ...

    async def cancel(self) -> None:
        """Barge-in: drop buffered text, queued segments and unsent audio."""
        ...

    async def get(self) -> Event:
        """The next event. Raises :class:`TTSUnavailable` when the connection is lost."""
        ...

    async def close(self) -> None:
        """The reply is over (finished or interrupted); frees the stream."""
        ...


class TTSBackend(Protocol):
    """Where replies are synthesized: :class:`EmbeddedTTS` or :class:`RemoteTTS`."""

    description: str

    async def open_stream(self, key: Hashable, voice: str | None) -> TTSStream:
        """A stream for one reply of server ``key``, speaking in ``voice`` (``None``: default).

        Raises:
            TTSError: the pipeline is busy or unreachable (:class:`TTSUnavailable`).
            UnknownVoiceError: no such voice.
        """
        ...

    async def check_voice(self, voice: str | None) -> None:
        """Raise :class:`UnknownVoiceError` unless ``voice`` can be used."""
        ...

    async def release(self, key: Hashable) -> None:
        """Server ``key`` no longer speaks (left voice): free what it holds."""
        ...

    async def aclose(self) -> None:
        """Free everything (the bot is shutting down)."""
        ...


# -- embedded -------------------------------------------------------------------------------


class EmbeddedStream:
    """A :class:`TTSStream` over a pipeline :class:`tts_server.Stream`."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream

    async def push(self, token: str, pitch_shift: float | None = None) -> None:
        """Queue text; segments it completes go to the inference thread at once."""
        try:
            self.stream.push(token, pitch_shift)
        except PendingTextFull as exc:
            raise TTSError(str(exc)) from None

    async def flush(self) -> int:
        """Cut everything buffered into segments."""
        return self.stream.flush()

    async def cancel(self) -> None:
        """Drop everything not yet played (takes effect at the next chunk boundary)."""
        self.stream.cancel()

    async def get(self) -> Event:
        """The next event from the inference thread."""
        return await self.stream.get()

    async def close(self) -> None:
        """Close the pipeline stream (synthesis stops at the next chunk boundary)."""
        self.stream.close()


class EmbeddedTTS:
    """The TTS pipeline running in the bot's process.

    Args:
        pipeline: a started pipeline (:func:`tts_server.build_pipeline`).
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        engine = pipeline.engine
        self.description = f"embedded {engine.name} ({engine.model}) on {engine.device}"

    async def open_stream(self, key: Hashable, voice: str | None) -> EmbeddedStream:
        """Open a pipeline stream (the voice stage is built off the event loop)."""
        loop = asyncio.get_running_loop()
        try:
            stream = await asyncio.to_thread(self.pipeline.open_stream, loop, voice)
        except PipelineBusy as exc:
            raise TTSError(f"the TTS pipeline is busy ({exc}); try again in a moment") from None
        except UnknownVoice as exc:
            raise UnknownVoiceError(str(exc)) from None
        return EmbeddedStream(stream)

    async def check_voice(self, voice: str | None) -> None:
        """Check the name, then load the voice once off the event loop (so that its first
        reply does not load it on the inference thread, which all servers share)."""
        try:
            self.pipeline.check_voice(voice)
            await asyncio.to_thread(self.pipeline.preload_voice, voice)
        except UnknownVoice as exc:
            raise UnknownVoiceError(str(exc)) from None

    async def release(self, key: Hashable) -> None:
        """Nothing is held per server: streams live for one reply."""

    async def aclose(self) -> None:
        """Stop the inference thread."""
        await asyncio.to_thread(self.pipeline.stop)


# -- remote ---------------------------------------------------------------------------------


class _Lost:
    """Queued when a connection drops: replies of that connection fail with ``reason``."""

    def __init__(self, generation: int, reason: str) -> None:
        self.generation = generation
        self.reason = reason


class RemoteConnection:
    """One server's :class:`tts_server.StreamClient`, re-established with backoff when it drops.

    Args:
        session: the HTTP client session.
        url: ``ws://host:port/ws/stream``.
        reconnect_max_s: longest pause between connection attempts.
        name: used in log lines.
        api_key: sent to servers with API keys (``None``: none).
    """

    def __init__(
        self, session: aiohttp.ClientSession, url: str, reconnect_max_s: float, name: str, api_key: str | None = None
    ) -> None:
        self.url = url
        self.api_key = api_key
        self.name = name
        self.reconnect_max_s = reconnect_max_s
        self.last_error = "not connected yet"
        self.next_attempt_at = time.monotonic()
        self.generation = 0  # incremented at every successful connection
        self._session = session
        self._client: StreamClient | None = None
        self._connected = asyncio.Event()
        self._disconnected = asyncio.Event()
        self._disconnected.set()
        self._events: asyncio.Queue[tuple[int, Event] | _Lost] = asyncio.Queue(maxsize=REMOTE_EVENT_QUEUE)
        self._epoch = 0  # incremented by cancel(): queued events of older epochs are stale
        self._unacked_cancels = 0  # events received before the server's "cancelled" are stale
        self.voice: str | None = None  # the voice the server speaks in on this connection
        self._closed = False
        self._task = asyncio.create_task(self._run(), name=f"tts-remote-{name}")

    @property
    def connected(self) -> bool:
        """True while the WebSocket is open."""
        return self._connected.is_set()

    async def wait_connected(self, timeout_s: float) -> int:
        """Wait for the connection; returns its generation.

        Raises:
            TTSUnavailable: not connected within ``timeout_s`` (the message has the last error).
        """
        try:
            await asyncio.wait_for(self._connected.wait(), timeout_s)
        except TimeoutError:
            retry = max(0.0, self.next_attempt_at - time.monotonic())
            raise TTSUnavailable(
                f"the TTS server at {self.url} is unreachable ({self.last_error}); "
                f"reconnecting in the background (next attempt in {retry:.0f} s)"
            ) from None
        return self.generation

    async def wait_lost(self, generation: int) -> None:
        """Return once connection ``generation`` is gone (at once if it is already)."""
        if generation == self.generation and self.connected:
            await self._disconnected.wait()

    def client(self, generation: int) -> StreamClient:
        """The client of connection ``generation``.

        Raises:
            TTSUnavailable: that connection is gone.
        """
        client = self._client
        if client is None or client.closed or generation != self.generation:
            raise TTSUnavailable(f"lost the connection to the TTS server at {self.url} ({self.last_error})")
        return client

    def lost(self, exc: ConnectionClosed) -> TTSUnavailable:
        """The error a reply gets when sending on a connection failed."""
        return TTSUnavailable(f"lost the connection to the TTS server at {self.url} ({exc.reason})")

    async def set_voice(self, generation: int, voice: str | None) -> None:
        """Speak the following text in ``voice`` (``None``: the server's default)."""
        if voice != self.voice:
            try:
                await self.client(generation).set_voice(voice)
            except ConnectionClosed as exc:
                raise self.lost(exc) from None
            self.voice = voice

    async def cancel(self, generation: int) -> None:
        """Barge-in: tell the server, and drop everything received until it confirms."""
        self._epoch += 1
        while not self._events.empty():
            self._events.get_nowait()
        if generation == self.generation and self.connected:
            self._unacked_cancels += 1
            with contextlib.suppress(TTSUnavailable, ConnectionClosed):
                await self.client(generation).cancel()

    async def get(self, generation: int) -> Event:
        """The next event of connection ``generation``.

        Raises:
            TTSUnavailable: that connection dropped.
        """
        while True:
            if generation != self.generation or not self.connected:
                raise TTSUnavailable(f"lost the connection to the TTS server at {self.url} ({self.last_error})")
            item = await self._events.get()
            if isinstance(item, _Lost):
                if item.generation == generation:
                    raise TTSUnavailable(f"lost the connection to the TTS server at {self.url} ({item.reason})")
                continue
            epoch, event = item
            if epoch == self._epoch:
                return event

    async def aclose(self) -> None:
        """Close the socket and stop reconnecting; a reply still waiting on it gets :class:`TTSUnavailable`."""
        self._closed = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self._client is not None:
            await self._client.close()
        self._connected.clear()
        self._disconnected.set()
        while not self._events.empty():
            self._events.get_nowait()
        self._events.put_nowait(_Lost(self.generation, "closed by the bot"))

    async def _run(self) -> None:
        delay = RECONNECT_INITIAL_S
        while not self._closed:
            try:
                client = await StreamClient.connect(self.url, session=self._session, events=True, api_key=self.api_key)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if isinstance(exc, aiohttp.WSServerHandshakeError):
                    self.last_error = _refusal(exc)
                self.next_attempt_at = time.monotonic() + delay
                log.warning(
                    "%s: cannot connect to the TTS server at %s (%s); retrying in %.1f s",
                    self.name,
                    self.url,
                    self.last_error,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.reconnect_max_s)
                continue
            while not self._events.empty():  # left over from the previous connection
                self._events.get_nowait()
            self._client = client
            self.voice = None
            self._unacked_cancels = 0
            self.generation += 1
            self._disconnected.clear()
            self._connected.set()
            log.info("%s: connected to the TTS server at %s", self.name, self.url)
            opened = time.monotonic()
            try:
                reason = await self._read(client)
                self.last_error = reason  # before the loss shows: replies waiting on it say why
            finally:
                self._connected.clear()
                self._disconnected.set()
                self._client = None
                await client.close()
            self.last_error = reason
            while not self._events.empty():
                self._events.get_nowait()
            self._events.put_nowait(_Lost(self.generation, reason))
            if self._closed:
                break
            if time.monotonic() - opened >= STABLE_CONNECTION_S:
                delay = RECONNECT_INITIAL_S  # it was working: the first retry comes quickly
            self.next_attempt_at = time.monotonic() + delay
            log.warning("%s: TTS server connection lost (%s); reconnecting in %.1f s", self.name, reason, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.reconnect_max_s)

    async def _read(self, client: StreamClient) -> str:
        """Read events into the queue until the connection closes; returns why it closed."""
        while True:
            try:
                event = await client.receive()
            except ConnectionClosed as exc:
                if exc.code == aiohttp.WSCloseCode.TRY_AGAIN_LATER:
                    return "the server is busy: all its streams are in use"
                return exc.reason
            except ProtocolError as exc:
                return f"ProtocolError: {exc}"
            if isinstance(event, Cancelled):
                self._unacked_cancels = max(0, self._unacked_cancels - 1)
            elif not self._unacked_cancels:
                await self._events.put((self._epoch, event))


def _refusal(exc: aiohttp.WSServerHandshakeError) -> str:
    """Why a tts-server refused the WebSocket, in words."""
    reasons = {
        401: f"it wants an API key: set {API_KEY_ENV}",
        403: "it refused this origin or host name",
        429: "this bot holds all the streams its key or address may (raise max_streams for its key)",
    }
    return f"refused with {exc.status}: {reasons.get(exc.status, exc.message)}"


class RemoteStream:
    """A :class:`TTSStream` for one reply over a server's :class:`RemoteConnection`."""

    def __init__(self, connection: RemoteConnection, generation: int) -> None:
        self.connection = connection
        self.generation = generation

    async def push(self, token: str, pitch_shift: float | None = None) -> None:
        """Send ``{"token", "pitch_shift"}``."""
        try:
            await self.connection.client(self.generation).push(token, pitch_shift)
        except ConnectionClosed as exc:
            raise self.connection.lost(exc) from None

    async def flush(self) -> int:
        """Send ``{"flush": true}``; returns the id the server gives its ``flushed`` event."""
        try:
            return await self.connection.client(self.generation).flush()
        except ConnectionClosed as exc:
            raise self.connection.lost(exc) from None

    async def cancel(self) -> None:
        """Send ``{"cancel": true}``; audio still in flight is dropped on arrival."""
        await self.connection.cancel(self.generation)

    async def get(self) -> Event:
        """The next event of this reply."""
        return await self.connection.get(self.generation)

    async def close(self) -> None:
        """Nothing to free: the connection serves the server's next reply."""


class FailoverStream:
    """A :class:`TTSStream` for one reply that moves to another server when its server is lost.

    See the module docstring. Text is sent as it comes (the server segments it and may
    prefill it as usual); the stream keeps what it needs to send it again: the segments cut
    so far and the unfinished text.

    Args:
        backend: the backend that opened it (it picks the next server).
        key: the Discord guild.
        voice: the reply's voice.
        stream: the reply's stream on the first server.
        segmenter: cuts the text as the servers do.
    """

    def __init__(
        self, backend: RemoteTTS, key: Hashable, voice: str | None, stream: RemoteStream, segmenter: Segmenter
    ) -> None:
        self.backend = backend
        self.key = key
        self.voice = voice
        self.stream = stream
        self._segmenter = segmenter
        self._segments: list[str] = []  # every segment cut so far, in order
        self._done = 0  # segments the servers completed (spoken or reported failed)
        self._pitch_shift: float | None = None
        self._flush_id: int | None = None  # the reply's flush, once sent
        self._server_flush: int | None = None  # the current server's id for it
        # Held while text goes to the server and during a failover: the feeder's push and
        # the consumer's get may both see the loss; one fails over, and no text slips
        # between the re-sent text and the new server.
        self._lock = asyncio.Lock()
        #: Failovers this reply went through.
        self.failovers = 0

    @property
    def url(self) -> str:
        """The server speaking the reply now."""
        return self.stream.connection.url

    async def push(self, token: str, pitch_shift: float | None = None) -> None:
        """Send text (see :meth:`RemoteStream.push`); moves to another server if this one is lost."""
        async with self._lock:
            if pitch_shift is not None:
                self._pitch_shift = pitch_shift
            self._segments.extend(self._segmenter.push(token))
            try:
                await self.stream.push(token, pitch_shift)
            except TTSUnavailable as exc:
                await self._fail_over(exc)  # sends this token too: it is in the segmenter already

    async def flush(self) -> int:
        """Speak everything sent; returns the id of the :class:`Flushed` that will end the reply."""
        async with self._lock:
            self._segments.extend(self._segmenter.flush())
            flush_id = self._flush_id = 1 if self._flush_id is None else self._flush_id + 1
            try:
                self._server_flush = await self.stream.flush()
            except TTSUnavailable as exc:
                await self._fail_over(exc)
        return flush_id

    async def cancel(self) -> None:
        """Barge-in: nothing of this reply is to be spoken any more."""
        self._segmenter.clear()
        self._segments.clear()
        self._done = 0
        self._flush_id = self._server_flush = None
        await self.stream.cancel()

    async def get(self) -> Event:
        """The next event of the reply (its flush under the id :meth:`flush` returned)."""
        while True:
            stream = self.stream
            try:
                event = await stream.get()
            except TTSUnavailable as exc:
                async with self._lock:
                    if self.stream is stream:  # not moved by the feeder meanwhile
                        await self._fail_over(exc)
                continue
            if isinstance(event, SegmentDone) or (isinstance(event, StreamError) and event.segment is not None):
                self._done += 1
            elif isinstance(event, Flushed):
                if self._server_flush is None or event.flush_id != self._server_flush or self._flush_id is None:
                    continue  # a flush of re-sent segments: not the reply's
                return Flushed(self._flush_id, event.segments, event.audio_samples)
            return event

    async def close(self) -> None:
        """Nothing to free: the connection serves the guild's next reply."""
        await self.stream.close()

    async def _fail_over(self, exc: TTSUnavailable) -> None:
        """Move the reply to another live server and send it what was not spoken yet (under ``_lock``).

        Raises:
            TTSUnavailable: ``exc``, when no other server is live, or after
                :data:`MAX_FAILOVERS` failovers in this reply.
        """
        if self.failovers >= MAX_FAILOVERS:
            raise exc
        lost = self.url
        unspoken = self._segments[self._done :]
        stream = await self.backend.fail_over(self.key, self.voice, self.stream, exc)
        log.warning(
            "guild %s: TTS server %s lost mid-reply (%s); %d sentences and %d characters of unfinished text go to %s",
            self.key,
            lost,
            exc,
            len(unspoken),
            len(self._segmenter.pending_text),
            stream.connection.url,
        )
        self.stream = stream
        self.failovers += 1
        self._server_flush = None
        try:
            for text in unspoken:  # each cut exactly where it was cut before
                await stream.push(text, self._pitch_shift)
                await stream.flush()
            pending = self._segmenter.pending_text
            if pending:
                await stream.push(pending, self._pitch_shift)
            if self._flush_id is not None:
                self._server_flush = await stream.flush()
        except TTSUnavailable as again:
            await self._fail_over(again)


@dataclass(frozen=True)
class ServerLoad:
    """One server's answer to ``GET /health`` (``None`` fields: it did not answer)."""

    url: str
    active_streams: int | None
    max_streams: int | None
    error: str = ""

    @property
    def live(self) -> bool:
        """It answered ``{"status": "ok"}``."""
        return self.active_streams is not None

    def load(self, own_connection: bool) -> float:
        """Share of its stream slots in use, not counting the guild's own connection to it."""
        if self.active_streams is None or not self.max_streams:
            return float("inf")
        return (self.active_streams - (1 if own_connection else 0)) / self.max_streams


class RemoteTTS:
    """Running ``tts-server`` replicas reached over ``/ws/stream`` (one URL, or several with failover).

    Args:
        url: ``ws://host:port/ws/stream``, or a list of them (replicas: see the module docstring).
        connect_timeout_s: how long a reply waits for the connection before failing.
        reconnect_max_s: longest pause between reconnection attempts.
        api_key: sent to a server with API keys (``Authorization: Bearer``); the bot passes
            the ``TTS_API_KEY`` environment variable.
        make_segmenter: makes the segmenter a reply's text is cut with (the servers'
            ``[segmenter]`` settings); the default settings when ``None``.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        connect_timeout_s: float = 5.0,
        reconnect_max_s: float = 30.0,
        api_key: str | None = None,
        *,
        make_segmenter: Callable[[], Segmenter] | None = None,
    ) -> None:
        self.urls = [url] if isinstance(url, str) else list(url)
        if not self.urls:
            raise ValueError("RemoteTTS needs at least one URL")
        self.url = self.urls[0]
        self.api_key = api_key
        self.connect_timeout_s = connect_timeout_s
        self.reconnect_max_s = reconnect_max_s
        self.make_segmenter: Callable[[], Segmenter] = make_segmenter or Segmenter
        self.description = (
            f"remote tts-server at {self.url}"
            if len(self.urls) == 1
            else f"remote tts-servers at {', '.join(self.urls)} (least loaded, with failover)"
        )
        self._session: aiohttp.ClientSession | None = None
        self._connections: dict[Hashable, RemoteConnection] = {}

    def _http_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    def connection(self, key: Hashable, url: str | None = None) -> RemoteConnection:
        """The connection of server ``key`` to ``url`` (default: the first URL), created (and
        connecting) on first use. Close one to another URL first (:meth:`release`)."""
        url = url or self.url
        conn = self._connections.get(key)
        if conn is None:
            conn = RemoteConnection(self._http_session(), url, self.reconnect_max_s, f"guild {key}", self.api_key)
            self._connections[key] = conn
        return conn

    async def loads(self) -> list[ServerLoad]:
        """Every server's ``GET /health``, asked at once (each within ``connect_timeout_s``, at most 2 s)."""
        return list(await asyncio.gather(*(self._health(url) for url in self.urls)))

    async def _health(self, url: str) -> ServerLoad:
        timeout = aiohttp.ClientTimeout(total=min(2.0, self.connect_timeout_s))
        try:
            async with self._http_session().get(_http_url(url, "/health"), timeout=timeout) as r:
                r.raise_for_status()
                data = await r.json()
            if data.get("status") != "ok":
                return ServerLoad(url, None, None, f"status {data.get('status')!r}")
            return ServerLoad(url, int(data["active_streams"]), int(data["max_streams"]))
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError, TypeError) as exc:
            return ServerLoad(url, None, None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)

    async def pick(self, key: Hashable, exclude: Sequence[str] = ()) -> str:
        """The least loaded live server for guild ``key`` (its current one wins a tie).

        Raises:
            TTSUnavailable: none is live (the message names each and why).
        """
        current = self._connections.get(key)
        own = current.url if current is not None and current.connected else None
        loads = [load for load in await self.loads() if load.url not in exclude]
        live = [load for load in loads if load.live]
        if not live:
            reasons = "; ".join(f"{load.url}: {load.error}" for load in loads) or "none left to try"
            raise TTSUnavailable(f"no TTS server is reachable ({reasons})")
        best = min(live, key=lambda load: (load.load(load.url == own), load.url != own))
        return best.url

    async def open_stream(self, key: Hashable, voice: str | None) -> FailoverStream:
        """A stream for one reply of guild ``key``, on the least loaded live server.

        Waits up to ``connect_timeout_s`` for the connection. The voice is chosen with
        ``{"voice": ...}``; a name the server does not know comes back as a ``StreamError``
        event (``check_voice`` catches it earlier).

        Raises:
            TTSUnavailable: no server can be reached.
        """
        url = self.url if len(self.urls) == 1 else await self.pick(key)
        stream = await self._open_on(key, voice, url)
        return FailoverStream(self, key, voice, stream, self.make_segmenter())

    async def _open_on(self, key: Hashable, voice: str | None, url: str) -> RemoteStream:
        current = self._connections.get(key)
        if current is not None and current.url != url:
            await self.release(key)  # the guild moves to another server
        conn = self.connection(key, url)
        generation = await conn.wait_connected(self.connect_timeout_s)
        await conn.set_voice(generation, voice)
        return RemoteStream(conn, generation)

    async def fail_over(
        self, key: Hashable, voice: str | None, lost: RemoteStream, exc: TTSUnavailable
    ) -> RemoteStream:
        """A stream for guild ``key`` to replace ``lost``, whose connection failed with ``exc``.

        With one URL (one server, or a load balancer such as HAProxy in front of replicas)
        it is a new connection to that URL, if one opens within ``connect_timeout_s`` (a
        load balancer routes it to a live replica). With several, it is the least loaded
        live server other than ``lost``'s.

        Raises:
            TTSUnavailable: ``exc``, when no server can take the reply over.
        """
        if len(self.urls) == 1:
            conn = lost.connection
            try:
                async with asyncio.timeout(self.connect_timeout_s):
                    await conn.wait_lost(lost.generation)  # the reader may not have seen the loss yet
                return await self._open_on(key, voice, conn.url)
            except (TTSUnavailable, TimeoutError):
                raise exc from None
        try:
            url = await self.pick(key, exclude=(lost.connection.url,))
            return await self._open_on(key, voice, url)
        except TTSUnavailable as other:
            raise TTSUnavailable(f"{exc}; and no other TTS server could take the reply over ({other})") from None

    def voices_url(self) -> str:
        """``GET /voices`` of the server behind :attr:`url` (same host, port and path prefix)."""
        return _http_url(self.url, "/voices")

    async def check_voice(self, voice: str | None) -> None:
        """Ask the servers' ``GET /voices`` (the first that answers) whether it has ``voice``.

        Raises:
            UnknownVoiceError: it does not.
            TTSUnavailable: no server can be asked.
        """
        if voice is None:
            return
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None
        errors = []
        for url in self.urls:
            voices_url = _http_url(url, "/voices")
            try:
                async with self._http_session().get(
                    voices_url, headers=headers, timeout=aiohttp.ClientTimeout(total=self.connect_timeout_s)
                ) as r:
                    r.raise_for_status()
                    listing = await r.json()
                break
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                errors.append(f"{voices_url}: {exc}")
        else:
            raise TTSUnavailable(f"cannot ask the TTS server for its voices ({'; '.join(errors)})")
        names = [v.get("name") for v in listing.get("voices", [])]
        if voice not in names:
            raise UnknownVoiceError(f"unknown voice {voice!r}: available voices: {', '.join(names) or 'none'}")

    async def release(self, key: Hashable) -> None:
        """Close server ``key``'s connection."""
        conn = self._connections.pop(key, None)
        if conn is not None:
            await conn.aclose()

    async def aclose(self) -> None:
        """Close every connection and the HTTP session."""
        for key in list(self._connections):
            await self.release(key)
        if self._session is not None:
            await self._session.close()
            self._session = None


def _http_url(ws_url: str, path: str) -> str:
    """The HTTP URL of ``path`` on the server of ``ws_url`` (same host, port and path prefix)."""
    url = URL(ws_url)
    prefix = url.path[: -len("/ws/stream")] if url.path.endswith("/ws/stream") else url.path.rstrip("/")
    return str(url.with_scheme("https" if url.scheme == "wss" else "http").with_path(prefix + path))


async def measure(
    backend: TTSBackend,
    text: str = "Hello there. This is a warm-up.",
    timeout_s: float = 120.0,
    estimate: RateEstimate | None = None,
    voice: str | None = None,
) -> RateEstimate:
    """Synthesize ``text`` once in ``voice`` and return the measured rtf, speech rate and chunk size.

    Used at start-up and when a server picks a new voice: it warms the pipeline up and
    gives the start-delay planner (:mod:`bot.pacing`) a real rtf before the first reply.

    Raises:
        TTSError: the backend failed; TimeoutError: no ``Flushed`` within ``timeout_s``.
    """
    estimate = estimate or RateEstimate()
    stream = await backend.open_stream("warm-up", voice)
    try:
        await stream.push(text)
        flush_id = await stream.flush()
        async with asyncio.timeout(timeout_s):
            while True:
                event = await stream.get()
                if isinstance(event, Audio):
                    estimate.observe_chunk(event.pcm.size)
                elif isinstance(event, SegmentDone):
                    estimate.observe_segment(event.text, event.audio_samples, event.synth_ms)
                elif isinstance(event, StreamError):
                    raise TTSError(f"warm-up synthesis failed: {event.message}")
                elif isinstance(event, Flushed) and event.flush_id == flush_id:
                    break
    finally:
        await stream.close()
        await backend.release("warm-up")
    return estimate

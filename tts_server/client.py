"""The one ``/ws/stream`` client: what ``tts-server say`` and the bot's remote mode speak through.

:class:`StreamClient` holds one WebSocket (aiohttp) and speaks the wire format of
:mod:`tts_server.protocol`: text goes out with :meth:`~StreamClient.push`,
:meth:`~StreamClient.flush`, :meth:`~StreamClient.cancel` and
:meth:`~StreamClient.set_voice`; audio and events come back from
:meth:`~StreamClient.receive` as the pipeline's own event types
(:class:`~tts_server.events.Audio` at 48 kHz, :class:`~tts_server.events.SegmentDone`,
:class:`~tts_server.events.Flushed`, :class:`~tts_server.events.StreamError`, and
:class:`~tts_server.events.Cancelled` once a cancel took effect).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec

from .events import Audio, Cancelled, Flushed, SegmentDone, StreamError
from .protocol import client_message, decode_audio, decode_event

#: Environment variable a client's API key is read from (``tts-server say``, the bot's remote
#: mode); the server's own list is ``TTS_API_KEYS``.
API_KEY_ENV = "TTS_API_KEY"

#: What :meth:`StreamClient.receive` returns.
ServerEvent = Audio | SegmentDone | Flushed | StreamError | Cancelled


def text_pieces(text: str) -> list[str]:
    """Split text as LLMs stream it: words with their leading space, punctuation apart.

    ``"Hello, world!"`` → ``["Hello", ",", " world", "!"]``; the pieces join back to
    ``text`` exactly.
    """
    return re.findall(r"\s*[\w'’]+|\s*[^\w\s]|\s+", text)


class ConnectionClosed(ConnectionError):
    """The WebSocket closed (or broke); ``code`` is the close code if the server sent one.

    Attributes:
        code: the WebSocket close code (``1013``: the server is busy), or ``None``.
        reason: what happened, for messages.
    """

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class StreamClient:
    """A client of one ``/ws/stream`` connection (see the module docstring).

    Open it with :meth:`connect`; close it with :meth:`close` (or ``async with``).

    Args:
        ws: an open WebSocket to ``/ws/stream``.
        session: the HTTP session to close with the client (``None``: the caller's).
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session: aiohttp.ClientSession | None = None) -> None:
        self._ws = ws
        self._own_session = session
        self._flushes = 0

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        session: aiohttp.ClientSession | None = None,
        events: bool = True,
        wait_s: float = 0.0,
        heartbeat_s: float | None = 30.0,
        headers: dict[str, str] | None = None,
        api_key: str | None = None,
    ) -> StreamClient:
        """Connect to ``url`` (``ws://host:port/ws/stream``).

        Args:
            session: an aiohttp session to use (a new one, closed with the client, if ``None``).
            events: ask for JSON events (``segment``, ``flushed``, ``cancelled``).
            wait_s: keep retrying a refused connection this long (a server still starting).
            heartbeat_s: WebSocket ping interval (``None``: no pings).
            headers: extra HTTP headers of the upgrade request.
            api_key: sent as ``Authorization: Bearer KEY`` (servers with ``[server] api_keys``
                want one; callers usually pass ``os.environ.get(API_KEY_ENV)``).

        Raises:
            aiohttp.WSServerHandshakeError: the server refused the upgrade (``status`` 401:
                missing or wrong key; 403: origin or host refused; 429: too many streams).
            aiohttp.ClientError: no server answers (after ``wait_s``).
        """
        if api_key:
            headers = {**(headers or {}), "Authorization": f"Bearer {api_key}"}
        own = session is None
        http = session or aiohttp.ClientSession()
        deadline = time.monotonic() + wait_s
        try:
            while True:
                try:
                    ws = await http.ws_connect(url, max_msg_size=0, heartbeat=heartbeat_s, headers=headers)
                    break
                except aiohttp.ClientConnectorError:
                    if time.monotonic() >= deadline:
                        raise
                    await asyncio.sleep(0.5)
            client = cls(ws, http if own else None)
            if events:
                await client._send(client_message(events=True))
            return client
        except BaseException:
            if own:
                await http.close()
            raise

    async def __aenter__(self) -> StreamClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        """True once the WebSocket is closed."""
        return self._ws.closed

    @property
    def close_code(self) -> int | None:
        """The close code the server sent, if it closed the connection."""
        return self._ws.close_code

    async def _send(self, text: str) -> None:
        try:
            await self._ws.send_str(text)
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            raise ConnectionClosed(f"connection lost: {exc or type(exc).__name__}", self._ws.close_code) from None

    async def push(self, token: str, pitch_shift: float | None = None) -> None:
        """Send LLM text; ``pitch_shift`` in semitones (kept by the server until changed).

        Raises:
            ConnectionClosed: the connection is gone.
        """
        await self._send(client_message(token=token, pitch_shift=pitch_shift))

    async def flush(self) -> int:
        """Ask for everything sent so far to be spoken; returns the id of its ``Flushed`` event."""
        self._flushes += 1
        await self._send(client_message(flush=True))
        return self._flushes

    async def cancel(self) -> None:
        """Barge-in: drop buffered text and unsent audio; a :class:`Cancelled` event confirms it."""
        await self._send(client_message(cancel=True))

    async def set_voice(self, name: str | None) -> None:
        """Speak the following segments in voice ``name`` (``None``: the server's default)."""
        await self._send(client_message(voice=name))

    async def send_raw(self, message: dict[str, Any]) -> None:
        """Send a JSON object as it is (protocol extensions this client does not wrap)."""
        await self._send(msgspec.json.encode(message).decode())

    async def receive(self) -> ServerEvent:
        """The next audio chunk or event (frames of unknown event types are skipped).

        Raises:
            ConnectionClosed: the connection closed or broke (``code`` says why).
            ProtocolError: the server sent something that is not the protocol.
        """
        while True:
            msg = await self._ws.receive()
            if msg.type == aiohttp.WSMsgType.BINARY:
                return Audio(decode_audio(msg.data), -1)
            if msg.type == aiohttp.WSMsgType.TEXT:
                event = decode_event(msg.data)
                if event is not None:
                    return event
                continue
            if msg.type == aiohttp.WSMsgType.ERROR:
                raise ConnectionClosed(f"connection broke: {msg.data}", self._ws.close_code)
            code = self._ws.close_code
            extra = f": {msg.extra}" if msg.extra else ""
            raise ConnectionClosed(f"the server closed the connection (code {code}{extra})", code)

    async def events(self) -> AsyncIterator[ServerEvent]:
        """:meth:`receive` until the connection closes (which ends the iteration)."""
        while True:
            try:
                yield await self.receive()
            except ConnectionClosed:
                return

    async def close(self) -> None:
        """Close the WebSocket (and the session, if the client made it)."""
        await self._ws.close()
        if self._own_session is not None:
            await self._own_session.close()

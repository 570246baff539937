"""Discord without the network, for tests and the benchmark.

:class:`RecordingVoiceClient` is discord.py's real :class:`discord.VoiceClient` (real
``play()``, ``AudioPlayer`` thread, Opus encoder, RTP headers and transport encryption)
whose connection state is replaced by :class:`RecordingConnection`: packets are kept
with the time they were sent instead of going to a socket. :func:`decode_packets`
decrypts them (PyNaCl, ``aead_xchacha20_poly1305_rtpsize``) and decodes them (libopus)
back to the PCM that a listener would hear.

The guild, member, channel and context classes are the small part of discord.py's
models the voice cog touches; they carry just those attributes.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import discord
import nacl.secret
import nacl.utils
import numpy as np

_ids = itertools.count(1000)


# -- the voice connection --------------------------------------------------------------------


class _RecordingSocket:
    """The voice gateway socket: only ``speak`` is used (by the player)."""

    def __init__(self) -> None:
        self.speaking: list[Any] = []

    async def speak(self, state: Any = None) -> None:
        """Record a speaking-state change."""
        self.speaking.append(state)


class RecordingConnection:
    """Stands in for discord.py's ``VoiceConnectionState``: connected, and recording packets.

    Attributes:
        packets: ``(time.perf_counter(), bytes)`` of every encrypted RTP packet sent.
        secret_key: the transport key (32 random bytes, as a list of ints as Discord sends it).
    """

    mode = "aead_xchacha20_poly1305_rtpsize"

    def __init__(self, voice_client: discord.VoiceClient, timeout_s: float = 1.0) -> None:
        self.voice_client = voice_client
        self.ws = _RecordingSocket()
        self.ssrc = 4242
        self.secret_key = list(nacl.utils.random(32))
        self.timeout = timeout_s
        self.dave_session = None
        self.can_encrypt = False
        self.session_id = self.token = self.endpoint = None
        self.packets: list[tuple[float, bytes]] = []
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._connected.set()

    def is_connected(self) -> bool:
        """True until :meth:`drop` or :meth:`disconnect`."""
        return self._connected.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block up to ``timeout`` seconds for the connection (the player waits so after a drop)."""
        return self._connected.wait(timeout)

    def send_packet(self, packet: bytes) -> None:
        """Record one encrypted RTP packet. Raises ``OSError`` when not connected (as a socket)."""
        if not self._connected.is_set():
            raise OSError("not connected")
        with self._lock:
            self.packets.append((time.perf_counter(), bytes(packet)))

    def drop(self) -> None:
        """Simulate a dropped voice connection (the player waits ``timeout``, then gives up)."""
        self._connected.clear()

    def restore(self) -> None:
        """The connection is back."""
        self._connected.set()

    async def disconnect(self, *, force: bool = True, cleanup: bool = True, wait: bool = False) -> None:
        """As discord.py's: disconnected, and the client's player stopped."""
        self._connected.clear()
        if cleanup:
            self.voice_client.stop()

    async def move_to(self, channel: Any, timeout: float | None) -> None:
        """Move to ``channel`` at once."""
        self.voice_client.channel = channel

    def snapshot(self) -> list[tuple[float, bytes]]:
        """A copy of the packets so far."""
        with self._lock:
            return list(self.packets)


class RecordingVoiceClient(discord.VoiceClient):
    """The real ``VoiceClient`` with the network replaced by a :class:`RecordingConnection`."""

    _connection: RecordingConnection  # type: ignore[assignment]  # the recorder stands in for the connection state

    def create_connection_state(self) -> RecordingConnection:  # type: ignore[override]
        """The recorder instead of discord.py's connection state (no socket, no gateway)."""
        return RecordingConnection(self)

    @property
    def recorder(self) -> RecordingConnection:
        """Where the packets went."""
        return self._connection


class _State:
    def __init__(self, loop: asyncio.AbstractEventLoop, user: Any) -> None:
        self.loop = loop
        self.user = user
        self.removed: list[int] = []

    def _remove_voice_client(self, key: int) -> None:
        self.removed.append(key)


class OfflineClient:
    """The few ``discord.Client`` attributes ``VoiceClient`` uses."""

    def __init__(self, loop: asyncio.AbstractEventLoop, user: Any = None) -> None:
        self.loop = loop
        self._connection = _State(loop, user)


@dataclass
class Decoded:
    """Packets decrypted and decoded back to audio.

    Attributes:
        times: ``(P,)`` send time of each packet (``time.perf_counter()``).
        frames: ``(P, 960)`` float32 mono (left channel) at 48 kHz, one row per packet.
        sequence, timestamp: ``(P,)`` RTP header fields.
    """

    times: np.ndarray
    frames: np.ndarray
    sequence: np.ndarray
    timestamp: np.ndarray

    @property
    def pcm(self) -> np.ndarray:
        """All frames concatenated: ``(P·960,)`` float32 at 48 kHz."""
        return self.frames.reshape(-1)

    def rms(self) -> np.ndarray:
        """``(P,)`` RMS level of each packet."""
        return np.sqrt(np.mean(self.frames.astype(np.float64) ** 2, axis=1)) if len(self.frames) else np.zeros(0)


def decode_packets(packets: list[tuple[float, bytes]], secret_key: list[int]) -> Decoded:
    """Decrypt (``aead_xchacha20_poly1305_rtpsize``) and decode (libopus) recorded RTP packets.

    Raises:
        nacl.exceptions.CryptoError: a packet does not authenticate with ``secret_key``.
    """
    box = nacl.secret.Aead(bytes(secret_key))
    decoder = discord.opus.Decoder()
    times, frames, seqs, stamps = [], [], [], []
    for sent_at, packet in packets:
        header, ciphertext, nonce = packet[:12], packet[12:-4], packet[-4:] + bytes(20)
        opus_data = box.decrypt(bytes(ciphertext), bytes(header), bytes(nonce))
        pcm = np.frombuffer(decoder.decode(opus_data, fec=False), dtype="<i2").reshape(-1, 2)[:, 0]
        times.append(sent_at)
        frames.append(pcm.astype(np.float32) / 32768.0)
        seq, stamp = struct.unpack_from(">HI", header, 2)
        seqs.append(seq)
        stamps.append(stamp)
    return Decoded(
        np.asarray(times),
        np.asarray(frames, dtype=np.float32).reshape(-1, 960),
        np.asarray(seqs),
        np.asarray(stamps),
    )


# -- the models the cog touches --------------------------------------------------------------


@dataclass(eq=False)
class OfflineMessage:
    """A posted message; ``edits`` holds every content it had, first included."""

    content: str
    channel: OfflineTextChannel
    edits: list[str] = field(default_factory=list)

    async def edit(self, *, content: str) -> OfflineMessage:
        """Change the content (kept in ``edits``)."""
        self.content = content
        self.edits.append(content)
        return self


@dataclass(eq=False)
class OfflineTextChannel:
    """A text channel that keeps what is sent to it."""

    id: int = field(default_factory=lambda: next(_ids))
    name: str = "general"
    messages: list[OfflineMessage] = field(default_factory=list)

    @property
    def mention(self) -> str:
        """``<#id>``."""
        return f"<#{self.id}>"

    async def send(self, content: str | None = None, **_: Any) -> OfflineMessage:
        """Post a message."""
        message = OfflineMessage(content or "", self, [content or ""])
        self.messages.append(message)
        return message

    def texts(self) -> list[str]:
        """Current content of every message, in order."""
        return [m.content for m in self.messages]


@dataclass(eq=False)
class OfflineVoiceState:
    """A member's voice state: the channel they are in."""

    channel: OfflineVoiceChannel | None


@dataclass(eq=False)
class OfflineMember:
    """A member (or the bot itself)."""

    id: int = field(default_factory=lambda: next(_ids))
    display_name: str = "Ada"
    guild: OfflineGuild | None = None
    voice: OfflineVoiceState | None = None

    def __str__(self) -> str:
        return self.display_name


@dataclass(eq=False)
class OfflineGuild:
    """A guild; ``me`` is the bot's member."""

    id: int = field(default_factory=lambda: next(_ids))
    name: str = "guild"
    me: OfflineMember = field(default_factory=lambda: OfflineMember(display_name="voice-bot"))

    def __post_init__(self) -> None:
        self.me.guild = self


@dataclass(eq=False)
class OfflineVoiceChannel:
    """A voice channel; :meth:`connect` gives a :class:`RecordingVoiceClient`.

    Attributes:
        permissions: what the bot may do here.
        connect_error: raised by :meth:`connect` instead of connecting, if set.
        voice_clients: every client connected here.
    """

    guild: OfflineGuild
    client: OfflineClient
    id: int = field(default_factory=lambda: next(_ids))
    name: str = "voice"
    permissions: discord.Permissions = field(default_factory=lambda: discord.Permissions(connect=True, speak=True))
    connect_error: BaseException | None = None
    player_timeout_s: float = 1.0
    voice_clients: list[RecordingVoiceClient] = field(default_factory=list)

    @property
    def mention(self) -> str:
        """``<#id>``."""
        return f"<#{self.id}>"

    def permissions_for(self, member: Any) -> discord.Permissions:
        """The bot's permissions here (the same for every member)."""
        return self.permissions

    def _get_voice_client_key(self) -> tuple[int, str]:
        return self.guild.id, "guild_id"

    async def connect(
        self,
        *,
        timeout: float = 30.0,
        reconnect: bool = True,
        self_deaf: bool = False,
        self_mute: bool = False,
        **_: Any,
    ) -> RecordingVoiceClient:
        """Connect: a :class:`RecordingVoiceClient`, or ``connect_error`` raised."""
        if self.connect_error is not None:
            raise self.connect_error
        vc = RecordingVoiceClient(self.client, self)  # type: ignore[arg-type]
        vc.recorder.timeout = self.player_timeout_s
        self.voice_clients.append(vc)
        return vc


@dataclass(eq=False)
class OfflineContext:
    """A command context: who asked, where, and what was answered."""

    guild: OfflineGuild
    author: OfflineMember
    channel: OfflineTextChannel
    command: Any = None
    clean_prefix: str = "!"
    interaction: Any = None
    deferred: int = 0

    async def send(self, content: str | None = None, **kwargs: Any) -> OfflineMessage:
        """Answer in the channel."""
        return await self.channel.send(content, **kwargs)

    async def defer(self, **_: Any) -> None:
        """Acknowledge (counted)."""
        self.deferred += 1


class OfflineWorld:
    """Builds guilds with a voice and a text channel, and members in them.

    Args:
        loop: the running event loop (the player thread posts to it).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, player_timeout_s: float = 1.0) -> None:
        self.bot_user = OfflineMember(display_name="voice-bot")
        self.client = OfflineClient(loop, self.bot_user)
        self.player_timeout_s = player_timeout_s

    def guild(self, name: str = "guild") -> tuple[OfflineGuild, OfflineVoiceChannel, OfflineTextChannel]:
        """A guild with one voice and one text channel."""
        guild = OfflineGuild(name=name, me=OfflineMember(id=self.bot_user.id, display_name="voice-bot"))
        voice = OfflineVoiceChannel(guild, self.client, name=f"{name}-voice", player_timeout_s=self.player_timeout_s)
        return guild, voice, OfflineTextChannel(name=f"{name}-text")

    def context(
        self, guild: OfflineGuild, text: OfflineTextChannel, voice: OfflineVoiceChannel | None, name: str = "Ada"
    ) -> OfflineContext:
        """A command context of a member who is in ``voice`` (or in no voice channel)."""
        member = OfflineMember(display_name=name, guild=guild, voice=OfflineVoiceState(voice) if voice else None)
        return OfflineContext(guild, member, text)

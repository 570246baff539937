"""An offline bot for tests: the real cog, sessions, TTS backend and LLM client, with
Discord's network replaced by recording voice clients (:mod:`testing.discord_voice`)."""

from __future__ import annotations

import asyncio
import types
from dataclasses import dataclass, field

import numpy as np
from discord.ext import commands

from bot.audio import FRAME_SAMPLES, BufferSource
from bot.cog import VoiceCog
from bot.config import BotConfig, BotSettings, LLMSettings, TTSSettings
from bot.history import ConversationHistory
from bot.llm import LLMClient
from bot.pacing import RateEstimate
from bot.session import GuildSession, Services, SessionManager
from bot.tts import EmbeddedTTS, measure
from testing.discord_voice import (
    Decoded,
    OfflineContext,
    OfflineGuild,
    OfflineTextChannel,
    OfflineVoiceChannel,
    OfflineWorld,
    decode_packets,
)
from testing.llm_server import LocalLLM
from tts_server import Pipeline

#: A packet is "voice" above this RMS (espeak speech and Soprano audio are far above it).
VOICE_RMS = 1e-3
WINDOW = 4800  # 100 ms


@dataclass
class Match:
    """Where a reference signal was found in the decoded output, and how well it matches.

    Attributes:
        lag: samples between the first packet searched and the reference's start
            (Opus adds ~6.5 ms of decoder delay).
        corr: normalised correlation over the whole reference.
        window_corrs: correlation per 100 ms window where the reference is not quiet.
        tail_corr: correlation over the last quarter of the reference.
    """

    lag: int
    corr: float
    window_corrs: np.ndarray
    tail_corr: float


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    a, b = a[:n].astype(np.float64), b[:n].astype(np.float64)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else 0.0


def find(decoded: Decoded, reference: np.ndarray, from_packet: int, max_lag: int = 1500) -> Match:
    """Locate ``reference`` (float32 48 kHz) in the decoded audio from packet ``from_packet`` on."""
    out = decoded.pcm[from_packet * FRAME_SAMPLES :]
    ref = np.clip(reference, -1.0, 1.0)
    probe = ref[: min(len(ref), 24_000)]
    scores = np.correlate(out[: len(probe) + max_lag], probe, mode="valid")
    lag = int(np.argmax(scores))
    seg = out[lag : lag + len(ref)]
    windows = []
    for start in range(0, min(len(seg), len(ref)) - WINDOW + 1, WINDOW):
        r = ref[start : start + WINDOW]
        if np.sqrt(np.mean(r**2)) > 0.01:
            windows.append(correlation(seg[start : start + WINDOW], r))
    tail = len(ref) * 3 // 4
    return Match(lag, correlation(seg, ref), np.asarray(windows), correlation(seg[tail:], ref[tail : len(seg)]))


class Tap:
    """Records the audio written into a server's buffer, per reply."""

    def __init__(self, source: BufferSource) -> None:
        self.replies: list[list[np.ndarray]] = []
        self.playbacks: list = []
        begin, write = source.begin_reply, source.write

        def begin_reply(hold: bool = False):
            self.replies.append([])
            playback = begin(hold)
            self.playbacks.append(playback)
            return playback

        def tapped_write(pcm: np.ndarray) -> None:
            self.replies[-1].append(np.array(pcm, dtype=np.float32))
            write(pcm)

        source.begin_reply = begin_reply  # type: ignore[method-assign]
        source.write = tapped_write  # type: ignore[method-assign]

    def audio(self, reply: int = -1) -> np.ndarray:
        parts = self.replies[reply]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


@dataclass
class GuildHandle:
    """A guild with a voice and a text channel, a member in the voice channel, and a tap."""

    harness: Harness
    guild: OfflineGuild
    voice: OfflineVoiceChannel
    text: OfflineTextChannel
    ctx: OfflineContext
    tap: Tap
    session: GuildSession

    @property
    def vc(self):
        return self.voice.voice_clients[-1]

    def decoded(self) -> Decoded:
        rec = self.vc.recorder
        return decode_packets(rec.snapshot(), rec.secret_key)

    def packet_at(self, decoded: Decoded, when: float) -> int:
        """Index of the first packet sent at or after ``when`` (perf_counter)."""
        return int(np.searchsorted(decoded.times, when))

    def match_reply(self, reply: int = -1, decoded: Decoded | None = None) -> Match:
        decoded = decoded or self.decoded()
        playback = self.tap.playbacks[reply]
        assert playback.started_at is not None, "the reply never started playing"
        return find(decoded, self.tap.audio(reply), self.packet_at(decoded, playback.started_at))

    async def wait_idle(self, timeout_s: float = 60.0) -> None:
        async with asyncio.timeout(timeout_s):
            while self.session.busy:
                await asyncio.sleep(0.02)

    def context(self, name: str = "Ada", in_voice: bool = True):
        return self.harness.world.context(self.guild, self.text, self.voice if in_voice else None, name)


class Harness:
    """The bot without Discord. Build with :meth:`create`."""

    def __init__(self, world: OfflineWorld, services: Services, llm_server: LocalLLM) -> None:
        self.world = world
        self.services = services
        self.sessions = SessionManager(services)
        self.bot = types.SimpleNamespace(user=world.bot_user)
        self.cog = VoiceCog(self.bot, self.sessions)  # type: ignore[arg-type]
        self.llm_server = llm_server

    @classmethod
    async def create(
        cls,
        backend,
        llm_server: LocalLLM,
        *,
        bot: dict | None = None,
        llm: dict | None = None,
        tts: dict | None = None,
        estimate: RateEstimate | None = None,
        warm: bool = True,
        player_timeout_s: float = 1.0,
    ) -> Harness:
        if isinstance(backend, Pipeline):
            backend = EmbeddedTTS(backend)
        config = BotConfig(
            bot=BotSettings(**{"edit_interval_s": 0.3, **(bot or {})}),
            llm=LLMSettings(**{"base_url": llm_server.base_url, "timeout_s": 10.0, **(llm or {})}),
            tts=TTSSettings(**(tts or {})),
        )
        if estimate is None:
            estimate = await measure(backend) if warm else RateEstimate()
        services = Services(
            config, backend, LLMClient(config.llm), ConversationHistory(config.bot.history_messages), estimate
        )
        return cls(OfflineWorld(asyncio.get_running_loop(), player_timeout_s), services, llm_server)

    def guild(self, name: str = "guild") -> GuildHandle:
        guild, voice, text = self.world.guild(name)
        session = self.sessions.get(guild.id)
        return GuildHandle(
            self, guild, voice, text, self.world.context(guild, text, voice), Tap(session.source), session
        )

    async def invoke(self, command_name: str, ctx, /, *args, **kwargs) -> None:
        """Run a command as discord.py does: its callback, and failures through ``cog_command_error``."""
        command = next(c for c in self.cog.get_commands() if c.name == command_name)
        ctx.command = command
        try:
            await command.callback(self.cog, ctx, *args, **kwargs)  # type: ignore[arg-type]  # an offline context
        except Exception as exc:
            error = exc if isinstance(exc, commands.CommandError) else commands.CommandInvokeError(exc)
            await self.cog.cog_command_error(ctx, error)

    async def aclose(self) -> None:
        await self.sessions.aclose()
        await self.services.llm.aclose()
        if not isinstance(self.services.tts, EmbeddedTTS):
            await self.services.tts.aclose()


@dataclass
class Speech:
    """Texts used across tests (espeak speaks them in about 1–2 s each)."""

    three: str = "Hello there. This is the second sentence. And here is a third one."
    other: list[str] = field(default_factory=lambda: ["Good morning to the other server.", "Numbers seven and nine."])

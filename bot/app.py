"""Assemble and run the bot: TTS backend, LLM client, sessions, the Discord client.

:func:`run` is what ``voice-bot`` runs: it builds the TTS backend (the embedded
pipeline, loaded off the event loop, or a remote ``tts-server``), measures its speed
once (which also warms it up), optionally serves the pipeline's HTTP endpoints for
debugging, and runs the Discord client until it is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

import discord
from aiohttp import web
from discord.ext import commands

from tts_server import API_KEY_ENV, Pipeline, Segmenter, build_pipeline, create_app

from .cog import VoiceCog
from .config import BotConfig, Settings
from .errors import TTSError
from .guild_store import GuildStore
from .history import ConversationHistory
from .llm import LLMClient
from .pacing import RateEstimate
from .session import Services, SessionManager
from .tts import EmbeddedTTS, RemoteTTS, TTSBackend, measure

log = logging.getLogger(__name__)


def intents() -> discord.Intents:
    """Guilds and voice states (default) plus Message Content, which prefix commands need."""
    value = discord.Intents.default()
    value.message_content = True
    return value


class VoiceBot(commands.Bot):
    """The Discord client with the voice cog.

    Args:
        config: the bot's settings.
        sessions: the guild sessions the cog drives.
    """

    def __init__(self, config: BotConfig, sessions: SessionManager) -> None:
        super().__init__(command_prefix=commands.when_mentioned_or(config.bot.command_prefix), intents=intents())
        self.config = config
        self.sessions = sessions
        self._homes_rejoined = False

    async def setup_hook(self) -> None:
        """Add the cog and register the slash commands."""
        await self.add_cog(VoiceCog(self, self.sessions))
        if self.config.bot.sync_commands:
            synced = await self.tree.sync()
            log.info("registered %d slash commands", len(synced))

    async def on_ready(self) -> None:
        """Log who we are and where; the first time, rejoin each guild's home voice channel."""
        log.info("logged in as %s in %d servers", self.user, len(self.guilds))
        if not self._homes_rejoined:
            self._homes_rejoined = True
            joined = await self.sessions.rejoin_homes(self._voice_channel)
            if joined:
                log.info("rejoined %d home voice channels", joined)

    def _voice_channel(self, channel_id: int) -> discord.VoiceChannel | discord.StageChannel | None:
        channel = self.get_channel(channel_id)
        return channel if isinstance(channel, (discord.VoiceChannel, discord.StageChannel)) else None

    async def on_command_error(self, context: commands.Context[Any], exception: commands.CommandError, /) -> None:
        """Unknown commands are ignored; everything else is answered by the cog."""
        if isinstance(exception, commands.CommandNotFound):
            return
        if context.cog is None:
            log.warning("command error outside the voice cog: %s", exception)

    async def close(self) -> None:
        """Leave every voice channel, then disconnect."""
        with contextlib.suppress(Exception):
            await self.sessions.aclose()
        await super().close()


def debug_app(settings: Settings, pipeline: Pipeline) -> web.Application:
    """The pipeline's ``/ws/stream``, ``/api/speak``, ``/health`` and ``/voices`` over the bot's own pipeline."""
    return create_app(settings.pipeline, pipeline=pipeline)


async def build_tts(settings: Settings) -> TTSBackend:
    """The configured TTS backend (embedded: the model loads off the event loop).

    Raises:
        EngineLoadError: the embedded engine's files are missing or corrupt.
    """
    tts = settings.bot.tts
    if tts.mode == "remote":
        cuts = settings.pipeline.segmenter
        return RemoteTTS(
            tts.server_urls,
            tts.connect_timeout_s,
            tts.reconnect_max_s,
            os.environ.get(API_KEY_ENV) or None,
            make_segmenter=lambda: Segmenter(cuts.max_chars, cuts.min_clause_chars, cuts.newline_breaks),
        )
    pipeline = await asyncio.to_thread(build_pipeline, settings.pipeline)
    return EmbeddedTTS(pipeline)


async def warm_up(backend: TTSBackend, voice: str | None = None) -> RateEstimate:
    """Measure the backend once in ``voice``; the defaults (with a warning) if it fails."""
    try:
        estimate = await measure(backend, voice=voice)
    except (TTSError, TimeoutError) as exc:
        log.warning("TTS warm-up failed (%s); replies will tell", exc)
        return RateEstimate()
    log.info(
        "TTS %s: rtf %.2f, %.3f s of speech per character", backend.description, estimate.rtf, estimate.seconds_per_char
    )
    return estimate


class SignalStop:
    """SIGTERM and SIGINT stop the bot gracefully: it leaves every voice channel (saying
    nothing anywhere), disconnects from Discord, and :func:`run` returns (exit status 0).

    A signal that arrives before the Discord client exists (during the warm-up) is kept and
    acted on as soon as it does. Use as a context manager around the bot's life; the
    default handlers come back on exit.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested = False
        self._bot: commands.Bot | None = None
        self._closing: asyncio.Task[None] | None = None

    def __enter__(self) -> SignalStop:
        loop = asyncio.get_running_loop()
        for signum in self.SIGNALS:
            loop.add_signal_handler(signum, self._on_signal, signum.name)
        return self

    def __exit__(self, *exc: object) -> None:
        loop = asyncio.get_running_loop()
        for signum in self.SIGNALS:
            loop.remove_signal_handler(signum)

    def attach(self, bot: commands.Bot) -> None:
        """The bot to close; closed at once if a signal came already."""
        self._bot = bot
        if self.requested:
            self._close()

    async def wait_closed(self) -> None:
        """Wait for a close started by a signal (voice left, Discord disconnected)."""
        if self._closing is not None:
            await self._closing

    def _on_signal(self, name: str) -> None:
        log.info("%s: leaving voice and disconnecting", name)
        self.requested = True
        self._close()

    def _close(self) -> None:
        if self._bot is not None and self._closing is None:
            self._closing = asyncio.create_task(self._bot.close())


async def run(
    settings: Settings, token: str, make_bot: Callable[[BotConfig, SessionManager], VoiceBot] = VoiceBot
) -> None:
    """Run the bot until it is stopped (SIGTERM, SIGINT / Ctrl-C, or the Discord client closing).

    Args:
        settings: everything the bot runs with.
        token: the Discord bot token.
        make_bot: builds the Discord client (tests give one that needs no network).

    Raises:
        EngineLoadError: the embedded TTS engine cannot load.
        discord.LoginFailure: Discord rejected the token.
        discord.PrivilegedIntentsRequired: the Message Content intent is not enabled.
    """
    with SignalStop() as stop:
        await _run(settings, token, make_bot, stop)


async def _run(
    settings: Settings, token: str, make_bot: Callable[[BotConfig, SessionManager], VoiceBot], stop: SignalStop
) -> None:
    path = settings.bot.bot.settings_db
    store = await GuildStore.open(path) if path else None
    backend = await build_tts(settings)
    runner: web.AppRunner | None = None
    llm = LLMClient(settings.bot.llm)
    try:
        warm = settings.pipeline.engine.warmup or settings.bot.tts.mode == "remote"
        voice = settings.bot.tts.voice or None
        estimate = await warm_up(backend, voice) if warm else RateEstimate()
        # The model, torch and discord.py are loaded for good: keep their objects out of the
        # garbage collector's full scans, which otherwise stall the event loop for ~0.3 s.
        gc.collect()
        gc.freeze()
        if isinstance(backend, EmbeddedTTS) and settings.bot.tts.serve_http:
            runner = web.AppRunner(debug_app(settings, backend.pipeline))
            await runner.setup()
            server = settings.pipeline.server
            await web.TCPSite(runner, server.host, server.port).start()
            log.info(
                "debug HTTP: http://%s:%d/health, ws://%s:%d/ws/stream",
                server.host,
                server.port,
                server.host,
                server.port,
            )
        services = Services(
            settings.bot,
            backend,
            llm,
            ConversationHistory(settings.bot.bot.history_messages),
            estimate,
            {voice: estimate} if estimate.segments else {},
        )
        sessions = SessionManager(services, store)
        await sessions.restore()
        bot = make_bot(settings.bot, sessions)
        log.info("TTS: %s; LLM: %s at %s", backend.description, settings.bot.llm.model, settings.bot.llm.base_url)
        async with bot:
            stop.attach(bot)
            if not stop.requested:
                await bot.start(token)
        await stop.wait_closed()
    finally:
        if runner is not None:
            await runner.cleanup()
        await llm.aclose()
        await backend.aclose()
        if store is not None:
            await store.close()

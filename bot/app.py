"""Assemble and run the bot: TTS backend, LLM client, sessions, the Discord client.

:func:`run` is what ``voice-bot`` runs: it builds the TTS backend (the embedded
pipeline, loaded off the event loop, or a remote ``tts-server``), measures its speed
once (which also warms it up), optionally serves the pipeline's HTTP endpoints for
debugging, and runs the Discord client until it is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import discord
from aiohttp import web
from discord.ext import commands

from tts_server import Pipeline, build_pipeline, create_app

from .cog import VoiceCog
from .config import BotConfig, Settings
from .errors import TTSError
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

    async def setup_hook(self) -> None:
        """Add the cog and register the slash commands."""
        await self.add_cog(VoiceCog(self, self.sessions))
        if self.config.bot.sync_commands:
            synced = await self.tree.sync()
            log.info("registered %d slash commands", len(synced))

    async def on_ready(self) -> None:
        """Log who we are and where."""
        log.info("logged in as %s in %d servers", self.user, len(self.guilds))

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
        return RemoteTTS(tts.url, tts.connect_timeout_s, tts.reconnect_max_s)
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


async def run(settings: Settings, token: str) -> None:
    """Run the bot until it is stopped (Ctrl-C, or the Discord client closing).

    Raises:
        EngineLoadError: the embedded TTS engine cannot load.
        discord.LoginFailure: Discord rejected the token.
        discord.PrivilegedIntentsRequired: the Message Content intent is not enabled.
    """
    backend = await build_tts(settings)
    runner: web.AppRunner | None = None
    llm = LLMClient(settings.bot.llm)
    try:
        warm = settings.pipeline.engine.warmup or settings.bot.tts.mode == "remote"
        voice = settings.bot.tts.voice or None
        estimate = await warm_up(backend, voice) if warm else RateEstimate()
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
        bot = VoiceBot(settings.bot, SessionManager(services))
        log.info("TTS: %s; LLM: %s at %s", backend.description, settings.bot.llm.model, settings.bot.llm.base_url)
        async with bot:
            await bot.start(token)
    finally:
        if runner is not None:
            await runner.cleanup()
        await llm.aclose()
        await backend.aclose()

"""The voice commands: ``join``, ``leave``, ``speak``, ``say``, ``stop``, ``voice``, ``pitch``.

Hybrid commands (``!speak …`` and ``/speak …``). Each command is a thin method that
checks who asked and where, then calls the guild's :class:`~bot.session.GuildSession`.
Every failure lands in :meth:`VoiceCog.cog_command_error`: expected faults
(:class:`~bot.errors.BotError`, bad arguments) are answered with their message, bugs
are logged and answered with a generic line.
"""

from __future__ import annotations

import logging
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from tts_server import PITCH_SHIFT_LIMIT

from .errors import BotError, NotInVoice
from .session import Job, SessionManager

log = logging.getLogger(__name__)

#: Names that select the default voice in the ``voice`` command.
DEFAULT_VOICE_NAMES = ("default", "none", "off", "reset")
MAX_PROMPT_CHARS = 4000
#: The ``pitch`` command's argument: semitones within the pipeline's range.
Semitones = commands.Range[float, -PITCH_SHIFT_LIMIT, PITCH_SHIFT_LIMIT]


def _unwrap(error: BaseException) -> BaseException:
    """The exception a command really raised (discord.py wraps it once or twice)."""
    while isinstance(
        error, (commands.CommandInvokeError, commands.HybridCommandError, app_commands.CommandInvokeError)
    ):
        error = error.original
    return error


class VoiceCog(commands.Cog, name="Voice"):
    """Speaks LLM replies (and given text) in the voice channel of each server.

    Args:
        bot: the bot (its user is needed to recognise its own voice-state changes).
        sessions: the guild sessions.
    """

    def __init__(self, bot: commands.Bot, sessions: SessionManager) -> None:
        self.bot = bot
        self.sessions = sessions

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _author_channel(ctx: commands.Context[Any]) -> discord.VoiceChannel | discord.StageChannel:
        voice = getattr(ctx.author, "voice", None)
        if voice is None or voice.channel is None:
            raise NotInVoice("Join a voice channel first, then ask me again.")
        return voice.channel

    async def _voice_for(self, ctx: commands.Context[Any]) -> None:
        """Make sure the bot is in the author's voice channel (joining or moving when idle)."""
        assert ctx.guild is not None
        channel = self._author_channel(ctx)
        session = self.sessions.get(ctx.guild.id)
        current = session.channel
        if current is None or (current.id != channel.id and not session.busy):
            await session.join(channel)
            await self.sessions.save(ctx.guild.id)
        elif current.id != channel.id:
            raise BotError(f"I'm speaking in {current.mention} right now; join it to listen, or wait until I'm done.")

    def _job(self, ctx: commands.Context[Any], kind: str, text: str) -> Job:
        assert ctx.guild is not None
        author = getattr(ctx.author, "display_name", None) or str(ctx.author)
        return Job(kind=kind, text=text, author=author, channel_id=ctx.channel.id, send=ctx.send)  # type: ignore[arg-type]

    @staticmethod
    def _queued_note(ahead: int) -> str:
        return f" (after {ahead} other {'reply' if ahead == 1 else 'replies'})" if ahead else ""

    # -- commands ----------------------------------------------------------------------------
    # discord.py types a command callback as a union of two ParamSpec callables (with and
    # without the cog); pyright solves it, mypy infers Never, hence the ignores below.

    @commands.hybrid_command()  # type: ignore[arg-type]  # mypy cannot solve discord.py's ParamSpec callback union
    @commands.guild_only()
    async def join(self, ctx: commands.Context[Any]) -> None:
        """Join your voice channel."""
        assert ctx.guild is not None
        channel = self._author_channel(ctx)
        await ctx.defer()
        await self.sessions.get(ctx.guild.id).join(channel)
        await self.sessions.save(ctx.guild.id)
        await ctx.send(f"🔊 Joined {channel.mention}.")

    @commands.hybrid_command()  # type: ignore[arg-type]  # mypy cannot solve discord.py's ParamSpec callback union
    @commands.guild_only()
    async def leave(self, ctx: commands.Context[Any]) -> None:
        """Stop speaking and leave the voice channel."""
        assert ctx.guild is not None
        session = self.sessions.find(ctx.guild.id)
        if session is not None:
            session.home_channel_id = None  # asked to leave: not rejoined at the next start
            await self.sessions.save(ctx.guild.id)
        if session is None or not await session.leave():
            await ctx.send("I'm not in a voice channel.")
            return
        await ctx.send("👋 Left the voice channel.")

    @commands.hybrid_command()  # type: ignore[arg-type]  # mypy cannot solve discord.py's ParamSpec callback union
    @commands.guild_only()
    @app_commands.describe(prompt="What to ask the assistant")
    async def speak(self, ctx: commands.Context[Any], *, prompt: commands.Range[str, 1, MAX_PROMPT_CHARS]) -> None:
        """Ask the LLM; its reply is spoken in your voice channel as it is written."""
        assert ctx.guild is not None
        await ctx.defer()
        await self._voice_for(ctx)
        ahead = self.sessions.get(ctx.guild.id).submit(self._job(ctx, "speak", prompt))
        if ahead:
            await ctx.send(f"⏳ Queued{self._queued_note(ahead)}.")

    @commands.hybrid_command()  # type: ignore[arg-type]  # mypy cannot solve discord.py's ParamSpec callback union
    @commands.guild_only()
    @app_commands.describe(text="What to say")
    async def say(self, ctx: commands.Context[Any], *, text: commands.Range[str, 1, MAX_PROMPT_CHARS]) -> None:
        """Speak the given text in your voice channel (no LLM)."""
        assert ctx.guild is not None
        await ctx.defer()
        await self._voice_for(ctx)
        ahead = self.sessions.get(ctx.guild.id).submit(self._job(ctx, "say", text))
        await ctx.send(f"🔊 Saying it{self._queued_note(ahead)}.", ephemeral=True)

    @commands.hybrid_command()  # type: ignore[arg-type]  # mypy cannot solve discord.py's ParamSpec callback union
    @commands.guild_only()
    async def stop(self, ctx: commands.Context[Any]) -> None:
        """Stop speaking now and drop the queued replies."""
        assert ctx.guild is not None
        session = self.sessions.find(ctx.guild.id)
        report = await session.stop() if session is not None else None
        if report is None or not (report.interrupted or report.dropped):
            await ctx.send("Nothing to stop.")
            return
        dropped = (
            f" Dropped {report.dropped} queued {'reply' if report.dropped == 1 else 'replies'}."
            if report.dropped
            else ""
        )
        await ctx.send(f"⏹ Stopped.{dropped}")

    @commands.hybrid_command()  # type: ignore[arg-type]  # mypy cannot solve discord.py's ParamSpec callback union
    @commands.guild_only()
    @app_commands.describe(name="Voice name; 'default' for the default voice; empty to show the current one")
    async def voice(self, ctx: commands.Context[Any], name: str | None = None) -> None:
        """Show or set this server's voice."""
        assert ctx.guild is not None
        session = self.sessions.get(ctx.guild.id)
        if name is None:
            await ctx.send(f"Voice: **{session.voice or 'default'}**.")
            return
        chosen = None if name.lower() in DEFAULT_VOICE_NAMES else name
        await ctx.defer()
        await self.sessions.services.tts.check_voice(chosen)
        session.voice = chosen
        await self.sessions.save(ctx.guild.id)
        self.sessions.services.learn_voice(chosen)
        await ctx.send(f"🗣️ Voice set to **{chosen or 'default'}** (from the next reply).")

    @commands.hybrid_command()  # type: ignore[arg-type]  # mypy cannot solve discord.py's ParamSpec callback union
    @commands.guild_only()
    @app_commands.describe(
        semitones=f"Pitch shift from -{PITCH_SHIFT_LIMIT:g} to {PITCH_SHIFT_LIMIT:g} semitones; "
        "empty to show the current one"
    )
    async def pitch(self, ctx: commands.Context[Any], semitones: Semitones | None = None) -> None:
        """Show or set this server's pitch shift, in semitones."""
        assert ctx.guild is not None
        session = self.sessions.get(ctx.guild.id)
        if semitones is None:
            await ctx.send(f"Pitch shift: **{session.pitch_shift:+g}** semitones.")
            return
        session.pitch_shift = float(semitones)
        await self.sessions.save(ctx.guild.id)
        await ctx.send(f"🎚️ Pitch shift set to **{session.pitch_shift:+g}** semitones (from the next reply).")

    # -- events and errors -------------------------------------------------------------------

    @commands.Cog.listener()
    async def on_voice_state_update(
        self, member: discord.Member, before: discord.VoiceState, after: discord.VoiceState
    ) -> None:
        """Notice when the bot itself is disconnected from voice by someone else."""
        if self.bot.user is None or member.id != self.bot.user.id:
            return
        if before.channel is not None and after.channel is None:
            session = self.sessions.find(member.guild.id)
            if session is not None:
                session.on_disconnected()

    async def cog_command_error(self, ctx: commands.Context[Any], error: Exception) -> None:
        """Answer every command failure in the channel; log the unexpected ones."""
        error = _unwrap(error)  # type: ignore[assignment]
        if isinstance(error, BotError):
            message = str(error)
        elif isinstance(error, commands.NoPrivateMessage):
            message = "Voice commands work in a server, not in direct messages."
        elif isinstance(error, commands.RangeError):
            name = ctx.command.name if ctx.command else "That"
            message = f"{name}: the value must be between {error.minimum} and {error.maximum}."
        elif isinstance(error, commands.UserInputError):
            usage = f"`{ctx.clean_prefix}{ctx.command.qualified_name} {ctx.command.signature}`" if ctx.command else ""
            message = f"{error} Usage: {usage}".strip()
        elif isinstance(error, commands.CheckFailure):
            message = str(error) or "You can't use that command here."
        else:
            log.error("command %s in guild %s failed", ctx.command, getattr(ctx.guild, "id", None), exc_info=error)
            message = "Something went wrong on my side (see the bot's log)."
        try:
            await ctx.send(f"⚠️ {message}", ephemeral=True)
        except discord.DiscordException as exc:
            log.warning("cannot answer in channel %s: %s", getattr(ctx.channel, "id", None), exc)


async def setup(bot: commands.Bot) -> None:
    """Extension entry point: ``bot.sessions`` must hold the :class:`SessionManager`."""
    await bot.add_cog(VoiceCog(bot, bot.sessions))  # type: ignore[attr-defined]

"""Errors the bot reports to users: each message is the text shown in the channel.

Every class derives from :class:`BotError`, so the cog's one error handler (and the
per-server reply worker) can tell expected faults, which get their message shown, from
bugs, which are logged with a traceback and answered with a generic line.
"""

from __future__ import annotations

from discord.ext import commands


class BotError(commands.CommandError):
    """A fault the user can understand or fix; ``str(error)`` is shown in the channel."""


class NotInVoice(BotError):
    """The command needs the author in a voice channel of this server."""


class VoicePermissionError(BotError):
    """The bot lacks Connect or Speak permission in the voice channel."""


class VoiceConnectError(BotError):
    """Connecting to the voice channel failed or timed out."""


class VoiceConnectionLost(BotError):
    """The voice connection dropped (or the bot was disconnected) during a reply."""


class QueueFull(BotError):
    """This server already has ``max_queued_replies`` replies waiting."""


class LLMError(BotError):
    """The LLM endpoint is unreachable, refused the request or failed mid-reply."""


class TTSError(BotError):
    """The TTS pipeline or the remote ``tts-server`` cannot serve the reply."""


class TTSUnavailable(TTSError):
    """The remote ``tts-server`` is unreachable, busy or dropped the connection."""


class UnknownVoiceError(BotError):
    """The requested voice does not exist (or cannot be loaded)."""

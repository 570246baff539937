"""The bot's typed settings: its sections of ``config.toml`` (:class:`BotConfig`).

The same file holds the TTS pipeline's sections; one loader
(:class:`tts_server.ConfigFile`) reads it, and each package validates its own sections
with its own schema (this one is declared as the ``bot`` entry point of the
``llm_voice.config`` group in ``pyproject.toml``). Unknown keys in the bot's sections
are errors, so a typo does not silently fall back to a default. Secrets never live in
the file: the Discord token comes from ``DISCORD_TOKEN`` and the LLM API key from the
variable named by ``[llm] api_key_env``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from tts_server import PITCH_SHIFT_LIMIT, Config, ConfigError, ConfigFile

PosFloat = Annotated[float, msgspec.Meta(gt=0)]
PosInt = Annotated[int, msgspec.Meta(gt=0)]


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class BotSettings(_Section):
    """``[bot]``: Discord commands, conversation history and playback."""

    command_prefix: Annotated[str, msgspec.Meta(min_length=1)] = "!"
    history_messages: Annotated[int, msgspec.Meta(ge=0, le=200)] = 12
    edit_interval_s: Annotated[float, msgspec.Meta(ge=0.2)] = 1.2
    opus_library: str = ""
    max_queued_replies: Annotated[int, msgspec.Meta(ge=0, le=100)] = 5
    prefetch_next_reply: bool = True
    buffer_s: Annotated[float, msgspec.Meta(ge=1, le=600)] = 60.0
    connect_timeout_s: PosFloat = 15.0
    sync_commands: bool = True
    settings_db: str = "voice-bot.sqlite3"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class LLMSettings(_Section):
    """``[llm]``: an OpenAI-compatible streaming chat endpoint."""

    base_url: Annotated[str, msgspec.Meta(min_length=1)] = "http://127.0.0.1:8080/v1"
    model: Annotated[str, msgspec.Meta(min_length=1)] = "local-model"
    api_key_env: str = "OPENAI_API_KEY"
    system_prompt: str = (
        "You are a friendly voice assistant in a Discord voice channel. Answer in a few short "
        "spoken sentences, without markdown, lists or emoji."
    )
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] = 0.7
    max_tokens: PosInt = 400
    timeout_s: PosFloat = 60.0

    def api_key(self) -> str:
        """The API key from the environment variable ``api_key_env``; local servers accept any.

        Returns ``"not-needed"`` when the variable is unset or empty (the ``openai`` client
        insists on a non-empty key).
        """
        return (os.environ.get(self.api_key_env, "") if self.api_key_env else "") or "not-needed"


class TTSSettings(_Section):
    """``[tts]``: embedded pipeline or a remote ``tts-server``, and the default voice."""

    mode: Literal["embedded", "remote"] = "embedded"
    url: str = "ws://127.0.0.1:8765/ws/stream"
    urls: list[str] = msgspec.field(default_factory=list)
    serve_http: bool = False
    voice: str = ""
    pitch_shift: Annotated[float, msgspec.Meta(ge=-PITCH_SHIFT_LIMIT, le=PITCH_SHIFT_LIMIT)] = 0.0
    connect_timeout_s: PosFloat = 5.0
    reconnect_max_s: Annotated[float, msgspec.Meta(ge=0.1)] = 30.0

    @property
    def server_urls(self) -> list[str]:
        """The remote servers: ``urls`` when given, else ``url`` alone."""
        return list(self.urls) or [self.url]


class BotConfig(_Section):
    """The bot's three sections (see ``config.toml`` for each setting's meaning)."""

    bot: BotSettings = msgspec.field(default_factory=BotSettings)
    llm: LLMSettings = msgspec.field(default_factory=LLMSettings)
    tts: TTSSettings = msgspec.field(default_factory=TTSSettings)


class Settings(msgspec.Struct, frozen=True):
    """Everything the bot runs with.

    Attributes:
        bot: ``[bot]``, ``[llm]``, ``[tts]``.
        pipeline: the TTS pipeline's settings (used when ``tts.mode == "embedded"``).
    """

    bot: BotConfig
    pipeline: Config


def load_settings(path: str | Path | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> Settings:
    """Load and validate the bot's sections and the pipeline's sections of one file.

    Args:
        path: a TOML file; ``None`` gives the defaults.
        overrides: ``{section: {key: value}}`` applied on top of the file; ``None``
            values are ignored. Sections of the bot and of the pipeline may both appear.

    Raises:
        ConfigError: unreadable TOML, an unknown section or key, or a value of the
            wrong type or out of range; the message names the file and the setting.
    """
    file = ConfigFile.read(path)
    pipeline = file.load(Config, overrides)
    bot = file.load(BotConfig, overrides)
    if bot.tts.mode == "remote":
        for url in bot.tts.server_urls:
            if not url.startswith(("ws://", "wss://")):
                raise ConfigError(f"{file.where}: [tts] url must be a ws:// or wss:// URL of /ws/stream, got {url!r}")
    return Settings(bot=bot, pipeline=pipeline)

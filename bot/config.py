"""The bot's typed settings: ``[bot]``, ``[llm]`` and ``[tts]`` of ``config.toml``.

The same file holds the TTS pipeline's sections (``[server]``, ``[engine]``, ``[soprano]``,
``[rvc]``, ...); those are loaded by :func:`tts_server.config.load_config`, which leaves
these three sections to the bot. Unknown keys in the bot's sections are errors, so a
typo does not silently fall back to a default. Secrets never live in the file: the
Discord token comes from ``DISCORD_TOKEN`` and the LLM API key from the variable named
by ``[llm] api_key_env``.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from tts_server.config import Config, ConfigError, load_config

#: Sections this module validates; every other section belongs to the TTS pipeline.
BOT_SECTIONS = ("bot", "llm", "tts")

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
    buffer_s: Annotated[float, msgspec.Meta(ge=1, le=600)] = 60.0
    connect_timeout_s: PosFloat = 15.0
    sync_commands: bool = True
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
    serve_http: bool = False
    voice: str = ""
    pitch_shift: Annotated[float, msgspec.Meta(ge=-24, le=24)] = 0.0
    connect_timeout_s: PosFloat = 5.0
    reconnect_max_s: Annotated[float, msgspec.Meta(ge=0.1)] = 30.0


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
        ConfigError: unreadable TOML, an unknown key in any section, or a value of the
            wrong type or out of range; the message names the file and the setting.
    """
    overrides = overrides or {}
    pipeline = load_config(path, {k: v for k, v in overrides.items() if k not in BOT_SECTIONS})
    data: dict[str, Any] = {}
    where = str(path) if path else "defaults"
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:  # load_config reported it first
            raise ConfigError(f"{path}: {exc}") from None
    own: dict[str, Any] = {k: data[k] for k in BOT_SECTIONS if k in data}
    for section, values in overrides.items():
        if section in BOT_SECTIONS and isinstance(own.setdefault(section, {}), dict):
            own[section] = {**own[section], **{k: v for k, v in values.items() if v is not None}}
    try:
        bot = msgspec.convert(own, BotConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if bot.tts.mode == "remote" and not bot.tts.url.startswith(("ws://", "wss://")):
        raise ConfigError(f"{where}: [tts] url must be a ws:// or wss:// URL of /ws/stream, got {bot.tts.url!r}")
    return Settings(bot=bot, pipeline=pipeline)

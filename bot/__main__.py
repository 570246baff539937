"""``voice-bot`` / ``python -m bot``: run the Discord voice bot.

Reads ``DISCORD_TOKEN`` (and the LLM API key named by ``[llm] api_key_env``) from the
environment and everything else from ``config.toml``. Exits with status 2 and a message
saying what to fix when something needed is missing (libopus, the token, the model).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

DEFAULT_CONFIG = Path("config.toml")


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="voice-bot", description="Discord bot that speaks an LLM's reply as it is written."
    )
    parser.add_argument("--config", type=Path, help="TOML settings file (default: ./config.toml if present)")
    parser.add_argument("--tts-url", help="use a running tts-server at this ws:// URL instead of the embedded pipeline")
    parser.add_argument("--llm-url", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:11434/v1")
    parser.add_argument("--model", help="LLM model name")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    from tts_server import ConfigError

    from .config import load_settings
    from .opus import OpusMissing, load_opus

    config_path = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    overrides = {
        "tts": {"url": args.tts_url, "mode": "remote" if args.tts_url else None},
        "llm": {"base_url": args.llm_url, "model": args.model},
    }
    try:
        settings = load_settings(config_path, overrides)
    except ConfigError as exc:
        print(f"voice-bot: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.bot.bot.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        load_opus(settings.bot.bot.opus_library)
    except OpusMissing as exc:
        print(f"voice-bot: cannot start: {exc}", file=sys.stderr)
        return 2
    token = os.environ.get("DISCORD_TOKEN", "").strip()
    if not token:
        print(
            "voice-bot: set DISCORD_TOKEN to the bot token from the Discord Developer Portal "
            "(Applications → your app → Bot → Reset Token)",
            file=sys.stderr,
        )
        return 2

    import discord

    from tts_server import EngineLoadError

    from .app import run
    from .guild_store import GuildStoreError

    try:
        asyncio.run(run(settings, token))
    except KeyboardInterrupt:
        return 0
    except EngineLoadError as exc:
        print(f"voice-bot: cannot start the TTS engine: {exc}", file=sys.stderr)
        return 2
    except GuildStoreError as exc:
        print(f"voice-bot: {exc}", file=sys.stderr)
        return 2
    except discord.LoginFailure:
        print(
            "voice-bot: Discord rejected DISCORD_TOKEN (reset it in the Developer Portal and try again)",
            file=sys.stderr,
        )
        return 2
    except discord.PrivilegedIntentsRequired:
        print(
            "voice-bot: enable the Message Content intent for the bot in the Discord Developer Portal "
            "(Applications → your app → Bot → Privileged Gateway Intents)",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The bot's sections of config.toml, and the start-up checks of ``voice-bot``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import LLMSettings, load_settings
from tts_server.config import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_the_repository_config_loads_with_every_setting():
    settings = load_settings(REPO / "config.toml")
    assert settings.bot.bot.command_prefix == "!"
    assert settings.bot.tts.mode == "embedded"
    assert settings.bot.llm.base_url.endswith("/v1")
    assert settings.pipeline.server.port == 8765  # the pipeline's sections come along


def test_defaults_without_a_file():
    settings = load_settings(None)
    assert settings.bot.bot.max_queued_replies == 5 and settings.bot.tts.voice == ""


@pytest.mark.parametrize(
    "text, named",
    [
        ("[bot]\ncommand_prefx = '!'\n", "command_prefx"),
        ("[llm]\ntemperature = 5.0\n", "temperature"),
        ("[tts]\nmode = 'cloud'\n", "mode"),
        ("[tts]\nmode = 'remote'\nurl = 'http://x/ws/stream'\n", "url"),
        ("[bot]\nedit_interval_s = 0.05\n", "edit_interval_s"),
    ],
)
def test_bad_settings_are_errors_that_name_the_setting(tmp_path, text, named):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=named):
        load_settings(path)


def test_overrides_win_over_the_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[llm]\nmodel = 'a'\n")
    settings = load_settings(path, {"llm": {"model": "b", "base_url": None}, "tts": {"mode": "remote"}})
    assert settings.bot.llm.model == "b" and settings.bot.tts.mode == "remote"


def test_the_api_key_comes_from_the_named_environment_variable(monkeypatch):
    monkeypatch.setenv("MY_LLM_KEY", "sk-test")
    assert LLMSettings(api_key_env="MY_LLM_KEY").api_key() == "sk-test"
    monkeypatch.delenv("MY_LLM_KEY")
    assert LLMSettings(api_key_env="MY_LLM_KEY").api_key() == "not-needed"


def _run_bot(tmp_path, config: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    path = tmp_path / "c.toml"
    path.write_text(config)
    return subprocess.run(
        [sys.executable, "-m", "bot", "--config", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def test_a_missing_libopus_stops_start_up_naming_the_package(tmp_path):
    result = _run_bot(tmp_path, "[bot]\nopus_library = '/nonexistent/libopus.so.0'\n", {"DISCORD_TOKEN": "x"})
    assert result.returncode == 2
    assert "libopus could not be loaded" in result.stderr and "apt-get install libopus0" in result.stderr


def test_a_missing_token_stops_start_up_saying_where_to_get_one(tmp_path):
    result = _run_bot(tmp_path, "", {"DISCORD_TOKEN": ""})
    assert result.returncode == 2 and "DISCORD_TOKEN" in result.stderr


def test_the_opus_loader_reports_what_it_tried(monkeypatch):
    import discord

    from bot.opus import OpusMissing, load_opus

    monkeypatch.setattr(discord.opus, "is_loaded", lambda: False)
    with pytest.raises(OpusMissing, match="libopus0"):
        load_opus("/nonexistent/libopus.so.0")

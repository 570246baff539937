"""Configuration: the shipped config.toml is complete and valid; mistakes are named."""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec
import pytest

from tts_server.config import Config, ConfigError, ConfigFile, declared_sections, load_config

CONFIG_TOML = Path(__file__).parents[2] / "config.toml"


def test_shipped_config_lists_every_setting_with_its_default():
    data = tomllib.loads(CONFIG_TOML.read_text())
    defaults = msgspec.to_builtins(Config())
    for section, values in defaults.items():
        assert section in data, f"[{section}] missing from config.toml"
        assert data[section] == values, f"[{section}] in config.toml differs from the defaults"
    assert set(data) <= set(declared_sections())  # every other section belongs to another package
    assert load_config(CONFIG_TOML) == Config()


def test_every_setting_is_commented():
    lines = CONFIG_TOML.read_text().splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.lstrip().startswith("#"):
            block = [lines[j] for j in range(i - 1, -1, -1)]
            previous = next((b for b in block if not (b.strip() and "=" in b and not b.lstrip().startswith("#"))), "")
            assert previous.lstrip().startswith("#"), f"setting without a comment above it: {line}"


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[server]\nprot = 1\n", "unknown field `prot`"),
        ("[server]\nport = 'x'\n", "Expected `int`, got `str` - at `$.server.port`"),
        ("[server]\nport = 70000\n", "$.server.port"),
        ("[engine]\nname = 'festival'\n", "$.engine.name"),
        ("[nonsense]\n", "unknown field `nonsense`"),
        ("[server\n", "Expected ']'"),
    ],
)
def test_invalid_settings_are_named(tmp_path, toml, expected):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_command_line_overrides_win_and_none_means_unset(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[server]\nport = 9000\nhost = '0.0.0.0'\n")
    config = load_config(path, {"server": {"port": 9100, "host": None}, "engine": {"name": "espeak"}})
    assert (config.server.port, config.server.host, config.engine.name) == (9100, "0.0.0.0", "espeak")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")


def test_each_package_declares_its_own_sections():
    owners = declared_sections()
    assert {owners[s] for s in Config.__struct_fields__} == {"tts_server"}
    assert {owners[s] for s in ("bot", "llm", "tts")} == {"bot"}


def test_one_file_serves_each_schema_its_own_sections(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[server]\nport = 9001\n[bot]\nanything_the_bot_checks = 1\n")
    file = ConfigFile.read(path)
    assert file.load(Config).server.port == 9001  # the bot's section is not the server's to judge


def test_inference_threads_leave_a_core_to_the_event_loop(monkeypatch):
    import os

    from tts_server.service import inference_threads

    assert inference_threads(3) == 3  # a setting is taken as it is
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert inference_threads(0) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert inference_threads(0) == 1  # never none
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert inference_threads(0) == 15

"""Typed, validated settings loaded once from ``config.toml``.

Every setting lives in ``config.toml`` (commented there); the command line overrides a
few of them. Secrets never live here: the bot reads ``DISCORD_TOKEN`` and LLM API keys
from the environment. Unknown keys are errors, so a typo does not silently fall back to
a default.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

#: Top-level sections owned by other parts of the project (the Discord bot); the server
#: accepts their presence and leaves them to their owners.
FOREIGN_SECTIONS = frozenset({"bot", "llm", "tts"})

NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
PosInt = Annotated[int, msgspec.Meta(gt=0)]
PosFloat = Annotated[float, msgspec.Meta(gt=0)]
Semitones = Annotated[float, msgspec.Meta(ge=-24, le=24)]


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerSettings(_Section):
    """``[server]``: the HTTP/WebSocket front end."""

    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8765
    max_streams: PosInt = 16
    max_token_chars: PosInt = 10_000
    max_pending_chars: PosInt = 50_000
    stream_queue_s: PosFloat = 30.0
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class EngineSettings(_Section):
    """``[engine]``: which TTS engine runs, and where."""

    name: Literal["auto", "soprano", "espeak"] = "auto"
    device: str = "auto"
    threads: NonNegInt = 0
    warmup: bool = True
    prefill: bool = True


class SopranoSettings(_Section):
    """``[soprano]``: the Soprano model and its sampling."""

    model: str = "ekwek/Soprano-1.1-80M"
    model_path: str = ""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    temperature: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    top_p: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.95
    repetition_penalty: Annotated[float, msgspec.Meta(ge=1)] = 1.2
    max_new_tokens: Annotated[int, msgspec.Meta(ge=1, le=512)] = 512
    max_tokens_per_char: PosFloat = 6.0
    chunk_tokens: Annotated[int, msgspec.Meta(ge=1, le=16)] = 4


class EspeakSettings(_Section):
    """``[espeak]``: the offline espeak-ng engine."""

    voice: str = "en-us"
    rate_wpm: Annotated[int, msgspec.Meta(ge=80, le=450)] = 175
    pitch: Annotated[int, msgspec.Meta(ge=0, le=99)] = 50


class SegmenterSettings(_Section):
    """``[segmenter]``: how the token stream is cut into speakable segments."""

    max_chars: Annotated[int, msgspec.Meta(ge=20)] = 200
    min_clause_chars: NonNegInt = 12
    newline_breaks: bool = True


class RVCSettings(_Section):
    """``[rvc]``: voice conversion (empty ``voice`` = none)."""

    voice: str = ""
    index: str = ""
    index_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.75
    voices_dir: str = ""
    hubert: str = "hubert_base.pt"
    f0_method: Literal["pm", "rmvpe"] = "pm"
    rmvpe: str = ""
    protect: Annotated[float, msgspec.Meta(ge=0, le=0.5)] = 0.33
    block_ms: Annotated[float, msgspec.Meta(ge=20, le=2000)] = 250
    context_ms: Annotated[float, msgspec.Meta(ge=0, le=10000)] = 2500
    crossfade_ms: Annotated[float, msgspec.Meta(ge=0, le=500)] = 50
    device: str = "auto"
    precision: Literal["auto", "float32", "float16"] = "auto"


class Config(_Section):
    """The whole server configuration (see ``config.toml`` for every setting's meaning)."""

    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    engine: EngineSettings = msgspec.field(default_factory=EngineSettings)
    soprano: SopranoSettings = msgspec.field(default_factory=SopranoSettings)
    espeak: EspeakSettings = msgspec.field(default_factory=EspeakSettings)
    segmenter: SegmenterSettings = msgspec.field(default_factory=SegmenterSettings)
    rvc: RVCSettings = msgspec.field(default_factory=RVCSettings)


class ConfigError(ValueError):
    """The configuration file is unreadable or holds an invalid setting (message names it)."""


def load_config(path: str | Path | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> Config:
    """Load and validate a configuration.

    Args:
        path: a TOML file; ``None`` gives the defaults.
        overrides: ``{section: {key: value}}`` applied on top of the file (command-line flags).

    Raises:
        ConfigError: unreadable TOML, an unknown section or key, or a value of the wrong
            type or out of range; the message names the file and the setting.
    """
    data: dict[str, Any] = {}
    where = str(path) if path else "defaults"
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: configuration file not found") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
    data = {k: v for k, v in data.items() if k not in FOREIGN_SECTIONS}
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
    try:
        return msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where}: {exc}") from None

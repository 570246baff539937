"""Typed, validated settings loaded once from ``config.toml``: the one loader for every package.

Every setting lives in ``config.toml`` (commented there); the command line overrides a
few of them. Secrets never live here: the bot reads ``DISCORD_TOKEN`` and LLM API keys
from the environment. Unknown keys are errors, so a typo does not silently fall back to
a default.

One file, several owners. :class:`ConfigFile` reads the file once; each package loads
its own sections from it with a schema of its own (a ``msgspec.Struct`` whose fields
are the sections: :class:`Config` for the TTS pipeline and server, ``bot.config.BotConfig``
for the bot). The schemas are declared as entry points of the ``llm_voice.config``
group in ``pyproject.toml``, so a top-level section that no package declares (a typo
such as ``[sever]``) is an error, while no package needs to know another's sections.
"""

from __future__ import annotations

import logging
import tomllib
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec

log = logging.getLogger(__name__)

#: Entry-point group under which each package declares its schema of sections.
SCHEMA_ENTRY_POINTS = "llm_voice.config"

NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
PosInt = Annotated[int, msgspec.Meta(gt=0)]
PosFloat = Annotated[float, msgspec.Meta(gt=0)]


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class APIKey(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One entry of ``[server] api_keys`` written as a table (a plain string is a key alone).

    Attributes:
        key: the secret clients send.
        max_streams: concurrent streams this key may hold (``None``: ``max_streams_per_client``).
        name: shown in logs instead of the key (default: the entry's position, ``key #2``).
    """

    key: Annotated[str, msgspec.Meta(min_length=1)]
    max_streams: PosInt | None = None
    name: str = ""

    def __repr__(self) -> str:
        return f"APIKey(name={self.name!r}, max_streams={self.max_streams!r})"  # never the key itself


class ServerSettings(_Section):
    """``[server]``: the HTTP/WebSocket front end and what protects it (see ``tts_server.guards``)."""

    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8765
    max_streams: PosInt = 16
    max_streams_per_client: PosInt = 4
    max_token_chars: PosInt = 10_000
    max_pending_chars: PosInt = 50_000
    stream_queue_s: PosFloat = 30.0
    max_speak_s: PosFloat = 120.0
    idle_timeout_s: PosFloat = 120.0
    request_timeout_s: PosFloat = 10.0
    shutdown_timeout_s: PosFloat = 5.0
    api_keys: list[Annotated[str, msgspec.Meta(min_length=1)] | APIKey] = msgspec.field(default_factory=list)
    allowed_origins: list[str] = msgspec.field(default_factory=list)
    allowed_hosts: list[str] = msgspec.field(default_factory=list)
    metrics_public: bool = False
    agent_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    gil_switch_interval_ms: Annotated[float, msgspec.Meta(ge=0.1, le=100)] = 1.0
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={'[...]' if name == 'api_keys' and self.api_keys else repr(getattr(self, name))}"
            for name in self.__struct_fields__
        )
        return f"ServerSettings({fields})"  # keys never reach a log line through a repr


class EngineSettings(_Section):
    """``[engine]``: which TTS engine runs, and where."""

    name: Literal["auto", "soprano", "espeak"] = "auto"
    device: str = "auto"
    threads: NonNegInt = 0
    warmup: bool = True
    prefill: bool = True
    batching: bool = True
    max_batch: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 16
    prefill_chunk_tokens: Annotated[int, msgspec.Meta(ge=1, le=512)] = 32
    segments_ahead: Annotated[int, msgspec.Meta(ge=0, le=64)] = 2
    overlap: bool = True


class SopranoSettings(_Section):
    """``[soprano]``: the Soprano model and its sampling."""

    model: str = "ekwek/Soprano-1.1-80M"
    model_path: str = ""
    dtype: Literal["auto", "float32", "bfloat16", "float16", "int8"] = "auto"
    decoder_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
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
    f0_method: Literal["pm", "harvest", "dio", "crepe", "crepe-tiny", "fcpe", "rmvpe"] = "pm"
    rmvpe: str = ""
    protect: Annotated[float, msgspec.Meta(ge=0, le=0.5)] = 0.33
    block_ms: Annotated[float, msgspec.Meta(ge=20, le=2000)] = 250
    context_ms: Annotated[float, msgspec.Meta(ge=0, le=10000)] = 2500
    crossfade_ms: Annotated[float, msgspec.Meta(ge=0, le=500)] = 50
    auto_block: bool = True
    device: str = "auto"
    runtime: Literal["auto", "torch", "openvino"] = "auto"
    precision: Literal["auto", "float32", "float16", "bfloat16"] = "auto"


class VoicesSettings(_Section):
    """``[voices]``: how voice names that other servers' clients send map to this server's voices.

    Attributes:
        aliases: client voice name → a voice of this server (``""``: the default voice).
            A name that is neither a voice nor an alias (``af_heart``, ``alloy``) is spoken
            in the default voice, with one log line per name.
    """

    aliases: dict[str, str] = msgspec.field(default_factory=dict)


class Config(_Section):
    """The whole server configuration (see ``config.toml`` for every setting's meaning)."""

    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    engine: EngineSettings = msgspec.field(default_factory=EngineSettings)
    soprano: SopranoSettings = msgspec.field(default_factory=SopranoSettings)
    espeak: EspeakSettings = msgspec.field(default_factory=EspeakSettings)
    segmenter: SegmenterSettings = msgspec.field(default_factory=SegmenterSettings)
    rvc: RVCSettings = msgspec.field(default_factory=RVCSettings)
    voices: VoicesSettings = msgspec.field(default_factory=VoicesSettings)


class ConfigError(ValueError):
    """The configuration file is unreadable or holds an invalid setting (message names it)."""


Schema = TypeVar("Schema", bound=msgspec.Struct)


def declared_sections() -> dict[str, str]:
    """Every top-level section some installed package declares, mapped to its owner.

    Read from the ``llm_voice.config`` entry points; empty when the project is not
    installed (then only the sections of the schema being loaded are checked).
    """
    owners: dict[str, str] = {}
    for ep in entry_points(group=SCHEMA_ENTRY_POINTS):
        try:
            schema = ep.load()
        except Exception as exc:  # a broken optional package must not stop the others
            log.warning("configuration schema %s (%s) cannot be loaded: %s", ep.name, ep.value, exc)
            continue
        for section in getattr(schema, "__struct_fields__", ()):
            owners[section] = ep.name
    return owners


class ConfigFile:
    """One configuration file, read once; each package loads its own sections from it.

    Use :meth:`read`, then :meth:`load` once per schema.

    Args:
        data: the parsed TOML document.
        where: the file's path (``"defaults"`` without a file), used in messages.
    """

    def __init__(self, data: dict[str, Any], where: str) -> None:
        self.data = data
        self.where = where

    @classmethod
    def read(cls, path: str | Path | None = None) -> ConfigFile:
        """Read and parse ``path`` (``None``: no file, all defaults).

        Raises:
            ConfigError: the file is missing or not valid TOML, or holds a section that no
                package declares; the message names the file.
        """
        if path is None:
            return cls({}, "defaults")
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: configuration file not found") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
        known = declared_sections()
        if known:
            unknown = [name for name in data if name not in known]
            if unknown:
                raise ConfigError(f"{path}: unknown field `{unknown[0]}`: the sections are {', '.join(sorted(known))}")
        return cls(data, str(path))

    def load(self, schema: type[Schema], overrides: dict[str, dict[str, Any]] | None = None) -> Schema:
        """Validate the sections ``schema`` declares (its fields), with ``overrides`` on top.

        Args:
            schema: a ``msgspec.Struct`` whose fields are sections (each a ``Struct``).
            overrides: ``{section: {key: value}}`` (command-line flags); sections the
                schema does not declare are ignored, and so are ``None`` values.

        Raises:
            ConfigError: an unknown key, a value of the wrong type or out of range (named),
                or a section that no package declares (when the project is not installed).
        """
        fields = schema.__struct_fields__
        if not declared_sections():
            unknown = [name for name in self.data if name not in fields]
            if unknown:
                raise ConfigError(f"{self.where}: unknown field `{unknown[0]}`")
        data: dict[str, Any] = {k: v for k, v in self.data.items() if k in fields}
        for section, values in (overrides or {}).items():
            current = data.get(section, {})
            if section in fields and isinstance(current, dict):  # a non-table is named by validation
                data[section] = {**current, **{k: v for k, v in values.items() if v is not None}}
        try:
            return msgspec.convert(data, schema)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{self.where}: {exc}") from None


def load_config(path: str | Path | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> Config:
    """Load and validate the TTS server's sections (:class:`Config`).

    Args:
        path: a TOML file; ``None`` gives the defaults.
        overrides: ``{section: {key: value}}`` applied on top of the file (command-line flags).

    Raises:
        ConfigError: unreadable TOML, an unknown section or key, or a value of the wrong
            type or out of range; the message names the file and the setting.
    """
    return ConfigFile.read(path).load(Config, overrides)

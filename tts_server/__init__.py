"""The streaming TTS server: LLM tokens in, 48 kHz speech out, chunk by chunk.

The stages, one module each, in the order audio flows::

    segmenter.py      stage 1: LLM tokens → speakable segments (text in, sentences out)
    engines/          stage 2: TTS engines behind one protocol (Soprano, espeak-ng)
    voice_stage.py    stage 3: voice conversion (RVC voices from voice_catalog.py)
    stretch.py        stage 3b: a client's speed, pitch kept, where the engine has no rate
    resample.py       stage 4: streaming resampling to the output rate (48 kHz)
    renderer.py       one stream's segment through stages 2-4, chunk by chunk
    stream.py         one client's handle: text in, events out, backpressure
    scheduler.py      the Pipeline: the inference thread, earliest deadline first
    events.py         what flows out of a stream, and the pipeline's errors
    protocol.py       the /ws/stream wire format, both directions
    app.py            the aiohttp application (/ws/stream, /api/speak, /health, /voices)
    guards.py         what every request passes first: keys, origins, hosts, fair shares
    client.py         the /ws/stream client (``tts-server say``, the bot's remote mode)
    config.py         the one loader of config.toml, and the server's sections
    service.py        assembling a running pipeline from the configuration
    cli.py            the ``tts-server`` command

The names below are the package's public face: other packages import only these.
"""

from __future__ import annotations

from rvc import PITCH_SHIFT_LIMIT

from .app import create_app
from .client import API_KEY_ENV, ConnectionClosed, ServerEvent, StreamClient, text_pieces
from .config import Config, ConfigError, ConfigFile, load_config
from .engines import EngineLoadError, PrefillingEngine, StyledEngine, TTSEngine, load_engine
from .events import (
    OUTPUT_SAMPLE_RATE,
    Audio,
    Cancelled,
    Event,
    Flushed,
    PendingTextFull,
    PipelineBusy,
    Segment,
    SegmentDone,
    StreamError,
    UnknownVoice,
)
from .protocol import ProtocolError
from .scheduler import Pipeline
from .segmenter import Segmenter
from .service import build_pipeline
from .stream import Stream
from .stretch import TimeStretcher
from .voice_catalog import VoiceCatalog
from .voice_stage import DefaultVoiceOnly, Passthrough, VoiceProvider, VoiceStage

__all__ = [
    "API_KEY_ENV",
    "OUTPUT_SAMPLE_RATE",
    "PITCH_SHIFT_LIMIT",
    "Audio",
    "Cancelled",
    "Config",
    "ConfigError",
    "ConfigFile",
    "ConnectionClosed",
    "DefaultVoiceOnly",
    "EngineLoadError",
    "Event",
    "Flushed",
    "Passthrough",
    "PendingTextFull",
    "Pipeline",
    "PipelineBusy",
    "PrefillingEngine",
    "ProtocolError",
    "Segment",
    "SegmentDone",
    "Segmenter",
    "ServerEvent",
    "Stream",
    "StreamClient",
    "StreamError",
    "StyledEngine",
    "TTSEngine",
    "TimeStretcher",
    "UnknownVoice",
    "VoiceCatalog",
    "VoiceProvider",
    "VoiceStage",
    "build_pipeline",
    "create_app",
    "load_config",
    "load_engine",
    "text_pieces",
]

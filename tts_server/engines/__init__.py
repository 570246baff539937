"""TTS engines behind one protocol (:class:`~tts_server.engines.base.TTSEngine`)."""

from __future__ import annotations

import logging

from ..config import Config
from .base import (
    BatchedEngine,
    BatchOutOfMemory,
    EngineLoadError,
    EngineSequence,
    PrefillingEngine,
    StyledEngine,
    TTSEngine,
)

log = logging.getLogger(__name__)

__all__ = [
    "BatchOutOfMemory",
    "BatchedEngine",
    "EngineLoadError",
    "EngineSequence",
    "PrefillingEngine",
    "StyledEngine",
    "TTSEngine",
    "load_engine",
]


def _soprano(config: Config) -> TTSEngine:
    from .soprano import SopranoEngine, resolve_model_dir

    s = config.soprano
    model_dir = resolve_model_dir(s.model, s.model_path or None)
    return SopranoEngine(
        model_dir,
        device=config.engine.device,
        dtype=s.dtype,
        decoder_dtype=s.decoder_dtype,
        max_batch=config.engine.max_batch,
        prefill_chunk_tokens=config.engine.prefill_chunk_tokens,
        model_name=s.model_path or s.model,
        temperature=s.temperature,
        top_p=s.top_p,
        repetition_penalty=s.repetition_penalty,
        max_new_tokens=s.max_new_tokens,
        max_tokens_per_char=s.max_tokens_per_char,
        chunk_tokens=s.chunk_tokens,
    )


def _espeak(config: Config) -> TTSEngine:
    from .espeak import EspeakEngine

    e = config.espeak
    return EspeakEngine(voice=e.voice, rate_wpm=e.rate_wpm, pitch=e.pitch)


def load_engine(config: Config) -> TTSEngine:
    """Load the configured engine (blocking: call it off the event loop).

    ``engine.name = "auto"`` uses Soprano when its weights load and otherwise espeak-ng,
    with a warning that says how to get Soprano. A Soprano directory given explicitly
    (``model_path``) that is missing or corrupt is an error, not a fallback.

    Raises:
        EngineLoadError: the engine cannot load; the message names the file and the problem.
    """
    name = config.engine.name
    if name == "espeak":
        return _espeak(config)
    if name == "soprano":
        return _soprano(config)
    from .soprano import EngineUnavailable

    try:
        return _soprano(config)
    except EngineUnavailable as exc:
        log.warning("%s Falling back to the espeak-ng engine.", exc)
        return _espeak(config)

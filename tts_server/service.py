"""Assemble a running pipeline from the configuration (shared by the server and the bot)."""

from __future__ import annotations

from collections.abc import Callable

from .config import Config
from .engines import TTSEngine, load_engine
from .scheduler import Pipeline
from .segmenter import Segmenter
from .voice_catalog import VoiceCatalog
from .voice_stage import VoiceProvider


def segmenter_factory(config: Config) -> Callable[[], Segmenter]:
    """A factory of segmenters with the ``[segmenter]`` settings."""
    s = config.segmenter
    return lambda: Segmenter(
        max_chars=s.max_chars, min_clause_chars=s.min_clause_chars, newline_breaks=s.newline_breaks
    )


def build_pipeline(
    config: Config,
    *,
    engine: TTSEngine | None = None,
    voices: VoiceProvider | None = None,
) -> Pipeline:
    """Load what the configuration names and return a started :class:`Pipeline`.

    Blocking (model loading): call it off the event loop, e.g. ``asyncio.to_thread``.

    Args:
        config: validated settings.
        engine: an already-loaded engine; loaded from ``[engine]`` when ``None``.
        voices: the voices streams may choose; from ``[rvc]`` when ``None``
            (:class:`~tts_server.voice_catalog.VoiceCatalog`; passthrough if no voice is configured).

    Raises:
        EngineLoadError: an engine file is missing or corrupt (the message names it).
        rvc.VoiceFileError: a configured RVC file is missing or unusable (named).
    """
    if config.engine.threads:
        import torch

        torch.set_num_threads(config.engine.threads)
    engine = engine or load_engine(config)
    if voices is None:
        catalog = VoiceCatalog(config.rvc, engine.sample_rate, engine.device)
        voices = catalog if catalog.enabled else None
    pipeline = Pipeline(
        engine,
        voices=voices,
        max_streams=config.server.max_streams,
        queue_s=config.server.stream_queue_s,
        max_pending_chars=config.server.max_pending_chars,
        segmenter_factory=segmenter_factory(config),
        prefill=config.engine.prefill,
        batching=config.engine.batching,
        prefill_chunk_tokens=config.engine.prefill_chunk_tokens,
        segments_ahead=config.engine.segments_ahead,
    )
    pipeline.start()
    return pipeline

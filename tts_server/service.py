"""Assemble a running pipeline from the configuration (shared by the server and the bot)."""

from __future__ import annotations

import os
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


def inference_threads(setting: int = 0) -> int:
    """Torch threads for inference on CPU: ``setting``, or for 0 all usable cores but one.

    The inference thread shares the machine with the event loop (every client's socket),
    the resampler and the voice stage. With torch on every core its threads were
    preempted by the loop mid-operation: on 2 cores, 2 threads made a Soprano step of
    four streams 1.6× slower than 1 thread and the time to first audio of one stream
    2-4× longer (``python -m benchmarks.capacity --threads 2`` against ``--threads 1``).
    """
    if setting:
        return setting
    try:
        cores = len(os.sched_getaffinity(0))  # the cores this process may use (containers)
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


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
    if config.engine.threads or engine is None:  # a given engine's owner chose its threads
        import torch

        torch.set_num_threads(inference_threads(config.engine.threads))
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
        overlap=config.engine.overlap,
    )
    pipeline.start()
    return pipeline

"""Prometheus metrics of one pipeline (``GET /metrics``, with ``prometheus-client``).

Each :class:`~tts_server.scheduler.Pipeline` owns one :class:`Metrics`, with its own
``CollectorRegistry`` (not the process-wide default), so several servers in one process
(the tests, the bot serving its embedded pipeline) never share or clash over series.

Where the facts are counted, and what it costs there:

- the event loop, as a stream's events are delivered (:meth:`Metrics.observe_event`): time
  to first audio and real-time factor per segment (from ``SegmentDone``), the interval
  between a segment's chunks, errors by kind. A dictionary look-up and a histogram
  observation each (a lock and a few additions).
- the inference thread: the size of each batched model call (one histogram observation
  per step) and RVC conversions (one counter increment per segment).
- scrape time, read from the pipeline (:class:`_PipelineCollector`): active streams, free
  stream slots, seconds of audio queued for clients. Nothing is kept up to date for them.

Metric names follow the Prometheus conventions (base units: seconds; ``_total`` counters).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .events import OUTPUT_SAMPLE_RATE, Audio, SegmentDone

#: Buckets of time to first audio and of the interval between chunks, in seconds.
LATENCY_BUCKETS_S = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)
#: Buckets of the real-time factor (synthesis time / audio duration; below 1 is faster than real time).
RTF_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)
#: Buckets of the number of sequences in one batched model call.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

#: The kinds ``tts_errors_total`` counts.
ERROR_KINDS = ("synthesis", "voice", "protocol", "pending_text_full")


class PipelineGauges(Protocol):
    """What :class:`Metrics` reads from the pipeline at scrape time."""

    @property
    def active_streams(self) -> int:
        """Open streams."""
        ...

    @property
    def max_streams(self) -> int:
        """Streams allowed at once."""
        ...

    @property
    def queued_audio_s(self) -> float:
        """Seconds of synthesized audio queued for all clients, not yet taken."""
        ...


class _PipelineCollector(Collector):
    def __init__(self, source: PipelineGauges) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        active = self._source.active_streams
        yield GaugeMetricFamily(
            "tts_streams_active", "Open streams (WebSocket clients and /api/speak requests).", active
        )
        yield GaugeMetricFamily(
            "tts_stream_slots_free",
            "Streams that may still be opened (max_streams - active).",
            max(0, self._source.max_streams - active),
        )
        yield GaugeMetricFamily(
            "tts_queued_audio_seconds",
            "Seconds of synthesized audio queued for clients, not yet sent.",
            self._source.queued_audio_s,
        )


class Metrics:
    """The instruments of one pipeline, in their own registry.

    Args:
        source: read at scrape time for the gauges (the pipeline).

    Attributes:
        registry: what ``GET /metrics`` exposes (``prometheus_client.generate_latest(registry)``).
    """

    def __init__(self, source: PipelineGauges) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_PipelineCollector(source))
        self.streams_opened = Counter("tts_streams_opened", "Streams opened.", registry=self.registry)
        self.streams_closed = Counter("tts_streams_closed", "Streams closed.", registry=self.registry)
        self.streams_refused = Counter(
            "tts_streams_refused", "Streams refused because max_streams were open.", registry=self.registry
        )
        self.ttfa = Histogram(
            "tts_ttfa_seconds",
            "Time to first audio of a segment: from its text being complete to its first chunk.",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.chunk_interval = Histogram(
            "tts_chunk_interval_seconds",
            "Time between consecutive audio chunks of one segment.",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.rtf = Histogram(
            "tts_real_time_factor",
            "Synthesis time of a segment divided by its audio duration.",
            buckets=RTF_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "tts_batch_size",
            "Sequences advanced by one batched model call.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.audio_seconds = Counter("tts_audio_seconds", "Seconds of audio synthesized.", registry=self.registry)
        self.errors = Counter("tts_errors", "Errors reported to clients, by kind.", ["kind"], registry=self.registry)
        for kind in ERROR_KINDS:
            self.errors.labels(kind)  # every kind is exported from the start, at 0
        self.rvc_conversions = Counter(
            "tts_rvc_conversions", "Segments converted by an RVC voice.", registry=self.registry
        )

    def error(self, kind: str) -> None:
        """Count an error of ``kind`` (one of :data:`ERROR_KINDS`)."""
        self.errors.labels(kind).inc()


class StreamMetrics:
    """One stream's view of :class:`Metrics`: the event-loop side, as its events are delivered.

    Args:
        metrics: the pipeline's instruments.
        sample_rate: Hz of the stream's audio (its protocol's rate; 48 kHz by default).
    """

    def __init__(self, metrics: Metrics, sample_rate: int = OUTPUT_SAMPLE_RATE) -> None:
        self.metrics = metrics
        self.sample_rate = sample_rate
        self._last_chunk: tuple[int, float] | None = None  # (segment, time.monotonic())

    def observe_event(self, event: object) -> None:
        """Count what ``event`` tells (event loop only)."""
        if isinstance(event, Audio):
            now = time.monotonic()
            last = self._last_chunk
            if last is not None and last[0] == event.segment:
                self.metrics.chunk_interval.observe(now - last[1])
            self._last_chunk = (event.segment, now)
        elif isinstance(event, SegmentDone):
            if event.ttfa_ms is not None:
                self.metrics.ttfa.observe(event.ttfa_ms / 1000)
            if event.audio_samples:
                duration_s = event.audio_samples / self.sample_rate
                self.metrics.audio_seconds.inc(duration_s)
                self.metrics.rtf.observe(event.synth_ms / 1000 / duration_s)

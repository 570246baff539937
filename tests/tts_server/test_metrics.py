"""``GET /metrics``: the Prometheus text parses, its series move with the streams, and the API key guards it."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tts_server.app import PIPELINE
from tts_server.engines.espeak import EspeakEngine

KEY = "m3trics-0123456789abcdef"


@pytest.fixture(scope="module")
def espeak() -> EspeakEngine:
    return EspeakEngine()


async def scrape(http: aiohttp.ClientSession, base: str, **kwargs) -> dict[str, float]:
    """Every sample of ``/metrics`` as ``{"name{label=value}": value}``."""
    async with http.get(base + "/metrics", **kwargs) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "text/plain"
        text = await response.text()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


async def speak_sentences(ws: aiohttp.ClientWebSocketResponse, text: str) -> int:
    """Send ``text`` and a flush; read until the flush is acknowledged; return the audio bytes."""
    await ws.send_json({"events": True})
    await ws.send_json({"token": text, "flush": True})
    received = 0
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.BINARY:
            received += len(msg.data)
        elif json.loads(msg.data).get("type") == "flushed":
            return received
    raise AssertionError("the stream ended before its flush")


async def test_series_move_as_streams_open_speak_and_close(make_server, espeak):
    base, app = await make_server(espeak, {"server": {"max_streams": 1}})
    pipeline = app[PIPELINE]
    async with aiohttp.ClientSession() as http:
        before = await scrape(http, base)
        assert before["tts_streams_active"] == 0
        assert before["tts_stream_slots_free"] == 1
        assert before["tts_streams_opened_total"] == 0
        assert before["tts_errors_total{kind=protocol}"] == 0
        async with http.ws_connect(base.replace("http", "ws") + "/ws/stream") as ws:
            assert await speak_sentences(ws, "Hello there. How are you today?") > 0
            during = await scrape(http, base)
            assert during["tts_streams_active"] == 1
            assert during["tts_stream_slots_free"] == 0
            assert during["tts_streams_opened_total"] == 1
            # Two sentences: each has a TTFA and an RTF; espeak's audio came in several chunks.
            assert during["tts_ttfa_seconds_count"] == 2
            assert during["tts_real_time_factor_count"] == 2
            assert during["tts_real_time_factor_sum"] > 0
            assert during["tts_chunk_interval_seconds_count"] >= 1
            assert during["tts_audio_seconds_total"] > 0.5
            # A second stream is refused while the one slot is held.
            async with http.ws_connect(base.replace("http", "ws") + "/ws/stream") as refused:
                msg = await refused.receive()
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            # A malformed message is an error of kind "protocol".
            await ws.send_str("{not json")
            reply = await ws.receive_json()
            assert "error" in reply
            counted = await scrape(http, base)
            assert counted["tts_streams_refused_total"] == 1
            assert counted["tts_errors_total{kind=protocol}"] == 1
        for _ in range(100):  # the handler closes the stream after the socket closes
            if pipeline.active_streams == 0:
                break
            await asyncio.sleep(0.02)
        after = await scrape(http, base)
        assert after["tts_streams_active"] == 0
        assert after["tts_stream_slots_free"] == 1
        assert after["tts_streams_closed_total"] == 1
        assert after["tts_queued_audio_seconds"] == 0


async def test_queued_audio_counts_what_a_client_has_not_read(make_server, espeak):
    base, app = await make_server(espeak)
    pipeline = app[PIPELINE]
    stream = pipeline.open_stream()
    try:
        stream.push("One sentence that nobody reads yet.")
        stream.flush()
        for _ in range(200):
            if stream.queued_audio_s > 1.0:
                break
            await asyncio.sleep(0.02)
        async with aiohttp.ClientSession() as http:
            samples = await scrape(http, base)
        assert samples["tts_queued_audio_seconds"] == pytest.approx(stream.queued_audio_s, abs=0.5)
        assert samples["tts_queued_audio_seconds"] > 1.0
    finally:
        stream.close()


async def test_with_keys_metrics_want_one_unless_public(make_server, espeak):
    base, _ = await make_server(espeak, {"server": {"api_keys": [KEY]}})
    public, _ = await make_server(espeak, {"server": {"api_keys": [KEY], "metrics_public": True}})
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/metrics") as response:
            assert response.status == 401
        assert "tts_streams_active" in await scrape(http, base, headers={"Authorization": f"Bearer {KEY}"})
        assert "tts_streams_active" in await scrape(http, public)
        async with http.get(public + "/voices") as response:
            assert response.status == 401  # only /metrics became public


def test_each_pipeline_has_its_own_registry(espeak):
    from tts_server.scheduler import Pipeline

    first, second = Pipeline(espeak), Pipeline(espeak)
    first.metrics.streams_refused.inc()
    assert first.metrics.registry.get_sample_value("tts_streams_refused_total") == 1
    assert second.metrics.registry.get_sample_value("tts_streams_refused_total") == 0

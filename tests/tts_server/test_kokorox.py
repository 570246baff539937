"""Seed 000, kokorox-websocket (/ws/kokorox and / upgraded), spoken to by a client written from the seed alone.

Every message is JSON; audio chunks are base64 WAV (PCM 16-bit, mono, 24 000 Hz). The
seed's LLM example calls streamStart, streamAppend per token, streamEnd; ``Kokorox``
below does the same over a WebSocket and records every message in order.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json

import numpy as np
import pytest
import soxr
import websockets
from scipy.io import wavfile

from tests.conftest import EXACT
from tts_server import text_pieces

TEXT = "The first sentence. And then a second one!"
SENTENCES = ["The first sentence.", "And then a second one!"]


def ws_url(base: str, path: str = "/ws/kokorox") -> str:
    return base.replace("http://", "ws://") + path


async def send(ws, **message) -> None:
    await ws.send(json.dumps(message))


async def recv(ws, timeout_s: float = 60.0) -> dict:
    frame = await asyncio.wait_for(ws.recv(), timeout_s)
    assert isinstance(frame, str), "all messages are JSON text"
    return json.loads(frame)


async def recv_until(ws, kind: str) -> list[dict]:
    messages = []
    while True:
        messages.append(await recv(ws))
        if messages[-1]["type"] in (kind, "error"):
            return messages


def wav_of(message: dict) -> np.ndarray:
    """A chunk's WAV, checked to be what the seed says: 16-bit PCM mono at 24 000 Hz."""
    rate, pcm = wavfile.read(io.BytesIO(base64.b64decode(message["chunk"])))
    assert rate == 24_000 == message["sample_rate"] and pcm.dtype == np.int16 and pcm.ndim == 1
    return pcm


def reference_24k(engine) -> np.ndarray:
    native = np.concatenate([np.concatenate(list(engine.synthesize(t))) for t in SENTENCES])
    return soxr.resample(native, engine.sample_rate, 24_000, quality="HQ")


def assert_pipeline_audio(pcm: np.ndarray, reference: np.ndarray) -> None:
    """16-bit rounding (half a step) plus float32 reordering between two syntheses (EXACT of the peak)."""
    assert pcm.size == reference.size
    assert np.abs(pcm - reference.astype(np.float64) * 32767).max() <= 0.5 + EXACT * np.abs(reference).max() * 32767


@pytest.mark.numerical
@pytest.mark.parametrize("path", ["/ws/kokorox", "/"])
async def test_one_shot_total_is_known_first_and_chunks_match_it(make_server, soprano_engine, path):
    base, _ = await make_server(soprano_engine)
    async with websockets.connect(ws_url(base, path)) as ws:
        for _ in range(2):  # a second request on the same connection
            await send(ws, command="synthesize", text=TEXT)
            messages = await recv_until(ws, "synthesis_completed")
            assert messages[0] == {"type": "synthesis_started"}
            assert messages[-1] == {"type": "synthesis_completed"}
            chunks = messages[1:-1]
            assert [m["type"] for m in chunks] == ["audio_chunk"] * 2  # one per sentence
            assert [m["index"] for m in chunks] == [0, 1] and {m["total"] for m in chunks} == {2}
            assert_pipeline_audio(np.concatenate([wav_of(m) for m in chunks]), reference_24k(soprano_engine))


@pytest.mark.numerical
async def test_stream_mode_speaks_each_sentence_while_the_text_is_still_arriving(make_server, soprano_engine):
    base, _ = await make_server(soprano_engine)
    async with websockets.connect(ws_url(base)) as ws:
        await send(ws, command="stream_start", voice="af_heart", speed=1.0)
        started = await recv(ws)
        assert started["type"] == "stream_started" and started["stream_id"]
        stream_id = started["stream_id"]
        pieces = list(text_pieces(TEXT))
        first_sentence = len(list(text_pieces(SENTENCES[0] + " ")))
        for token in pieces[:first_sentence]:
            await send(ws, command="stream_append", stream_id=stream_id, text=token)
        first = await recv(ws)  # before the second sentence is even sent
        assert first["type"] == "stream_chunk" and first["stream_id"] == stream_id and first["index"] == 0
        for token in pieces[first_sentence:]:
            await send(ws, command="stream_append", stream_id=stream_id, text=token)
        await send(ws, command="stream_end", stream_id=stream_id)
        messages = [first, *await recv_until(ws, "stream_ended")]
        assert messages[-1] == {"type": "stream_ended", "stream_id": stream_id, "total_chunks": 2}
        assert [m["index"] for m in messages[:-1]] == [0, 1]
    pcm = np.concatenate([wav_of(m) for m in messages[:-1]])
    # The first sentence may finish before the second arrives: the stages are then flushed between
    # them (as on /ws/stream), and the audio is each sentence resampled alone; else it is continuous.
    separate = np.concatenate(
        [
            soxr.resample(np.concatenate(list(soprano_engine.synthesize(t))), soprano_engine.sample_rate, 24_000)
            for t in SENTENCES
        ]
    )
    for reference in (reference_24k(soprano_engine), separate):
        try:
            assert_pipeline_audio(pcm, reference)
            return
        except AssertionError:
            continue
    raise AssertionError("the audio is neither the continuous nor the sentence-by-sentence synthesis")


async def test_cancel_drops_unspoken_text_at_once_and_nothing_follows_it(make_server, soprano_engine):
    base, _ = await make_server(soprano_engine)
    async with websockets.connect(ws_url(base)) as ws:
        await send(ws, command="stream_start")
        stream_id = (await recv(ws))["stream_id"]
        text = " ".join(f"Sentence number {i} is here." for i in range(20))
        await send(ws, command="stream_append", stream_id=stream_id, text=text)
        first = await recv(ws)
        assert first["type"] == "stream_chunk"
        await send(ws, command="stream_cancel", stream_id=stream_id)
        messages = await recv_until(ws, "stream_cancelled")
        assert messages[-1] == {"type": "stream_cancelled", "stream_id": stream_id}
        assert len(messages) < 19  # most of the 20 sentences were never spoken
        # Nothing of the cancelled stream after the acknowledgement: the next message is the answer to this.
        await send(ws, command="list_voices")
        assert (await recv(ws))["type"] == "voices"
        await send(ws, command="stream_append", stream_id=stream_id, text="More.")
        assert "unknown stream_id" in (await recv(ws))["message"]


async def test_voices_and_speed_commands(make_server, soprano_engine):
    base, _ = await make_server(soprano_engine, {"voices": {"aliases": {"af_sky": ""}}})
    async with websockets.connect(ws_url(base)) as ws:
        await send(ws, command="list_voices")
        assert await recv(ws) == {"type": "voices", "voices": ["af_sky"], "voice": "default"}
        await send(ws, command="set_voice", voice="af_sky")
        assert await recv(ws) == {"type": "voice_changed"}
        await send(ws, command="list_voices")
        assert (await recv(ws))["voice"] == "af_sky"
        await send(ws, command="set_speed", speed=1.2)
        assert await recv(ws) == {"type": "speed_changed"}


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("{bad", "malformed JSON"),
        ('{"text": "Hi."}', "command"),
        ('{"command": "dance"}', "unknown command"),
        ('{"command": "synthesize"}', "text"),
        ('{"command": "synthesize", "text": 5}', "text"),
        ('{"command": "synthesize", "text": "  "}', "empty"),
        ('{"command": "set_speed", "speed": 3}', "speed"),
        ('{"command": "set_voice"}', "voice"),
        ('{"command": "stream_append", "stream_id": "nope", "text": "Hi."}', "unknown stream_id"),
        ('{"command": "stream_end", "stream_id": "nope"}', "unknown stream_id"),
        ('{"command": "stream_cancel", "stream_id": "nope"}', "unknown stream_id"),
        ('{"command": "stream_append", "text": "Hi."}', "stream_id"),
        (b"\x00", "binary"),
    ],
)
async def test_bad_commands_get_an_error_and_the_connection_stays_usable(
    make_server, soprano_engine, message, expected
):
    base, _ = await make_server(soprano_engine)
    async with websockets.connect(ws_url(base)) as ws:
        await ws.send(message)
        reply = await recv(ws)
        assert reply["type"] == "error" and expected in reply["message"], reply
        await send(ws, command="synthesize", text="Hello there.")
        messages = await recv_until(ws, "synthesis_completed")
        assert messages[-1]["type"] == "synthesis_completed" and len(messages) == 3


async def test_synthesize_is_refused_while_a_stream_is_open_and_over_the_limit(make_server, soprano_engine):
    base, _ = await make_server(soprano_engine, {"server": {"max_pending_chars": 100}})
    async with websockets.connect(ws_url(base)) as ws:
        await send(ws, command="stream_start")
        stream_id = (await recv(ws))["stream_id"]
        await send(ws, command="synthesize", text="Hi.")
        assert "stream" in (await recv(ws))["message"]
        await send(ws, command="stream_append", stream_id=stream_id, text="Hello ")
        await send(ws, command="stream_append", stream_id=stream_id, text="x" * 120)
        assert "limit is 100" in (await recv(ws))["message"]
        await send(ws, command="stream_append", stream_id=stream_id, text="there.")
        await send(ws, command="stream_end", stream_id=stream_id)
        messages = await recv_until(ws, "stream_ended")
        assert messages[-1]["total_chunks"] == 1 and wav_of(messages[0]).size > 0  # nothing buffered was lost


async def test_the_bare_path_serves_the_demo_page_and_its_upgrade_stays_kokorox(make_server, soprano_engine):
    import aiohttp

    base, _ = await make_server(soprano_engine)
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/") as r:  # a plain GET of / is the browser demo page
            assert r.status == 200 and r.content_type == "text/html" and "/ws/stream" in await r.text()
        async with http.get(base + "/ws/kokorox") as r:  # the protocol's own path still needs an upgrade
            assert r.status == 404 and "/health" in (await r.json())["error"]
    async with websockets.connect(ws_url(base, "/")) as ws:  # and an upgrade of / is kokorox-websocket
        await send(ws, command="list_voices")
        assert (await recv(ws))["type"] == "voices"

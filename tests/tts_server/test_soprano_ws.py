"""Seed 002, the Soprano TTS WebSocket (/ws/tts), spoken to by a client written from the seed alone.

The seed's example (JavaScript) sends ``{"type": "synthesize", "text", "stream": true,
"min_text_length": 30}`` and then reads: text frames are JSON (``metadata``, ``end``,
``error``), binary frames are raw PCM in the announced format. ``SeedClient`` does the
same and records what arrives, in order.
"""

from __future__ import annotations

import json

import aiohttp
import numpy as np
import pytest

from tests.conftest import EXACT

TEXT = "The first sentence. And then a second one!"
SENTENCES = ["The first sentence.", "And then a second one!"]


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/ws/tts"


async def read_reply(ws: aiohttp.ClientWebSocketResponse, timeout_s: float = 60.0) -> list:
    """Frames until ``end`` or ``error`` as the seed's onmessage sees them: dicts (JSON) and bytes (PCM)."""
    frames: list = []
    while True:
        msg = await ws.receive(timeout=timeout_s)
        if msg.type == aiohttp.WSMsgType.TEXT:
            message = json.loads(msg.data)
            frames.append(message)
            if message["type"] in ("end", "error"):
                return frames
        elif msg.type == aiohttp.WSMsgType.BINARY:
            frames.append(msg.data)
        else:
            raise AssertionError(f"connection ended: {msg.type}")


def synthesize(text: str = TEXT, **fields) -> dict:
    return {"type": "synthesize", "text": text, "stream": True, "min_text_length": 30, **fields}


def pcm_of(frames: list) -> np.ndarray:
    return np.concatenate([np.frombuffer(f, dtype="<i2") for f in frames if isinstance(f, bytes)])


def assert_pipeline_audio(pcm: np.ndarray, engine) -> None:
    """Soprano speaks at 32 kHz, the rate announced: the samples are the engine's, rounded to 16 bits
    (± half a step, plus float32 reordering between two syntheses: EXACT of the peak)."""
    reference = np.concatenate([np.concatenate(list(engine.synthesize(t))) for t in SENTENCES])
    assert pcm.size == reference.size
    bound = 0.5 + EXACT * np.abs(reference).max() * 32767
    assert np.abs(pcm - reference.astype(np.float64) * 32767).max() <= bound


@pytest.mark.numerical
async def test_metadata_then_int16_frames_then_end_twice_on_one_connection(make_server, soprano_engine):
    base, _ = await make_server(soprano_engine)
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(base)) as ws:
        for _ in range(2):  # a second request on the same connection
            await ws.send_str(json.dumps(synthesize()))
            frames = await read_reply(ws)
            assert frames[0] == {"type": "metadata", "sample_rate": 32_000, "channels": 1, "format": "int16"}
            assert frames[-1] == {"type": "end"}
            audio = frames[1:-1]
            assert len(audio) > 2 and all(isinstance(f, bytes) for f in audio)
            sizes = [len(f) // 2 for f in audio]
            assert all(len(f) % 2 == 0 for f in audio) and max(sizes) == 1024  # "small chunks (~1024 samples)"
            assert_pipeline_audio(pcm_of(frames), soprano_engine)


@pytest.mark.numerical
async def test_requests_sent_together_are_answered_in_order_and_stream_false_gives_the_same_audio(
    make_server, soprano_engine
):
    base, _ = await make_server(soprano_engine)
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(base)) as ws:
        await ws.send_str(json.dumps(synthesize()))
        await ws.send_str(json.dumps(synthesize(stream=False)))
        first, second = await read_reply(ws), await read_reply(ws)
    for frames in (first, second):
        assert frames[0]["type"] == "metadata" and frames[-1] == {"type": "end"}
        assert_pipeline_audio(pcm_of(frames), soprano_engine)


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ("{bad", "malformed JSON"),
        ("[1, 2]", "JSON object"),
        ('{"type": "speak", "text": "Hi."}', "unknown message type"),
        ('{"text": "Hi."}', "unknown message type"),
        ('{"type": "synthesize"}', "text"),
        ('{"type": "synthesize", "text": 3}', "text"),
        ('{"type": "synthesize", "text": "   "}', "empty"),
        ('{"type": "synthesize", "text": "Hi.", "stream": "yes"}', "stream"),
        ('{"type": "synthesize", "text": "Hi.", "min_text_length": -1}', "min_text_length"),
        (b"\x00\x01", "binary frames"),
    ],
)
async def test_bad_messages_get_an_error_and_the_connection_stays_usable(make_server, soprano_engine, frame, expected):
    base, _ = await make_server(soprano_engine)
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(base)) as ws:
        await (ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_str(frame))
        reply = await read_reply(ws)
        assert reply[0]["type"] == "error" and expected in reply[0]["message"], reply
        await ws.send_str(json.dumps(synthesize("Hello there.")))
        frames = await read_reply(ws)
        assert frames[0]["type"] == "metadata" and frames[-1] == {"type": "end"} and pcm_of(frames).size > 0


async def test_text_over_the_limit_is_refused_and_nothing_buffered_is_lost(make_server, soprano_engine):
    base, _ = await make_server(soprano_engine, {"server": {"max_pending_chars": 100}})
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(base)) as ws:
        await ws.send_str(json.dumps(synthesize("Hello there.")))
        await ws.send_str(json.dumps(synthesize("word " * 40)))
        frames = [frame for _ in range(2) for frame in await read_reply(ws)]
        errors = [f for f in frames if isinstance(f, dict) and f["type"] == "error"]
        assert len(errors) == 1 and "limit is 100" in errors[0]["message"]
        assert {"type": "end"} in frames and pcm_of(frames).size > 0  # the first request was spoken

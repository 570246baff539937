"""Seed 001, Kokoro live streaming (/ws/tts/live), spoken to by a client written from the seed alone.

The seed's example (``kokoro_live_streaming_example``) connects, sends ``{"voice",
"language", "speed"}``, reads the ready message, sends raw text chunks with a delay
between them, reads ``{"type": "audio"}`` + one binary frame pairs as they come, and ends
with ``""``. The same client here records what it receives and when.
"""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest
import soxr
import websockets

from tests.conftest import EXACT
from tts_server.stretch import TimeStretcher

SENTENCES = ["The first sentence.", "And then a second one!"]


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/ws/tts/live"


async def read_until_end(ws, timeout_s: float = 60.0) -> list:
    """Messages until ``end`` (JSON as dicts, binary as bytes), checking that each ``audio``
    message is followed by exactly one binary frame of its announced size."""
    received: list = []
    async with asyncio.timeout(timeout_s):
        while True:
            frame = await ws.recv()
            assert isinstance(frame, str), "a binary frame without its audio message"
            message = json.loads(frame)
            received.append(message)
            if message["type"] == "audio":
                data = await ws.recv()
                assert isinstance(data, bytes) and len(data) == message["size"]
                received.append(data)
            elif message["type"] in ("end", "error"):
                return received


def pcm_of(received: list) -> np.ndarray:
    return np.concatenate([np.frombuffer(f, dtype="<i2") for f in received if isinstance(f, bytes)])


async def initialize(ws, **init) -> dict:
    await ws.send(json.dumps({"voice": "ff_siwis", "language": "fr-fr", "speed": 0.8, **init}))
    return json.loads(await ws.recv())


@pytest.mark.numerical
async def test_the_seeds_client_gets_ready_then_audio_while_it_still_sends_text(make_server, soprano_engine):
    base, _ = await make_server(soprano_engine)
    async with websockets.connect(ws_url(base)) as ws:
        assert await initialize(ws) == {"type": "ready", "sample_rate": 24_000, "format": "pcm_s16le"}
        await ws.send("The first ")
        await ws.send("sentence. And then")
        # The first sentence is complete: its audio comes while the second is still being written.
        first = json.loads(await asyncio.wait_for(ws.recv(), 30))
        assert first["type"] == "audio" and isinstance(await ws.recv(), bytes)
        await ws.send(" a second one!")
        await ws.send("")
        received = [first, b"", *await read_until_end(ws)]
        end = received[-1]
        audio_messages = [m for m in received if isinstance(m, dict) and m["type"] == "audio"]
        assert end == {"type": "end", "total_chunks": len(audio_messages)}
    natives = [np.concatenate(list(soprano_engine.synthesize(t))) for t in SENTENCES]

    def spoken(native: np.ndarray) -> np.ndarray:  # the seed's speed 0.8: the pipeline's stretch, then resampling
        stretcher = TimeStretcher(soprano_engine.sample_rate, 0.8)
        stretched = np.concatenate([stretcher.process(native), stretcher.flush()])
        return soxr.resample(stretched, soprano_engine.sample_rate, 24_000, quality="HQ")

    continuous = spoken(np.concatenate(natives))
    # If the first sentence was done before the second arrived, the stages were flushed between them
    # (as on /ws/stream): each sentence is then stretched and resampled alone.
    separate = np.concatenate([spoken(n) for n in natives])
    pcm = pcm_of(received)
    # The first binary frame was read above without keeping it: compare the rest, aligned at the end.
    bound = 0.5 + EXACT * np.abs(continuous).max() * 32767
    assert 0 < pcm.size < continuous.size
    errors = [np.abs(pcm - ref[-pcm.size :].astype(np.float64) * 32767).max() for ref in (continuous, separate)]
    assert min(errors) <= bound


async def test_a_second_utterance_on_the_same_connection(make_server, soprano_engine):
    base, _ = await make_server(soprano_engine)
    async with websockets.connect(ws_url(base)) as ws:
        await initialize(ws, speed=1.0)
        for _ in range(2):
            await ws.send("Hello there.")
            await ws.send("")
            received = await read_until_end(ws)
            chunks = sum(isinstance(f, bytes) for f in received)
            assert chunks > 0 and received[-1] == {"type": "end", "total_chunks": chunks}


@pytest.mark.parametrize(
    ("first", "expected"),
    [
        ("Hello there.", "must be JSON"),
        ("[1]", "invalid first message"),
        ('{"speed": 3}', "speed"),
        ('{"speed": "fast"}', "speed"),
        ('{"voice": 7}', "voice"),
    ],
)
async def test_a_bad_first_message_gets_an_error_not_ready_and_may_be_retried(
    make_server, soprano_engine, first, expected
):
    base, _ = await make_server(soprano_engine)
    async with websockets.connect(ws_url(base)) as ws:
        await ws.send(first)
        reply = json.loads(await ws.recv())
        assert reply["type"] == "error" and expected in reply["message"]
        assert (await initialize(ws))["type"] == "ready"


async def test_binary_frames_and_text_over_the_limit_get_errors_and_nothing_buffered_is_lost(
    make_server, soprano_engine
):
    base, _ = await make_server(soprano_engine, {"server": {"max_pending_chars": 100}})
    async with websockets.connect(ws_url(base)) as ws:
        await initialize(ws)
        await ws.send("Hello ")
        await ws.send(b"\x00\x01")
        assert "binary" in json.loads(await ws.recv())["message"]
        await ws.send("x" * 120)
        assert "limit is 100" in json.loads(await ws.recv())["message"]
        await ws.send("there.")
        await ws.send("")
        received = await read_until_end(ws)
        assert received[-1]["type"] == "end" and pcm_of(received).size > 0  # "Hello there." was spoken


async def test_idle_clients_are_closed(make_server, soprano_engine):
    base, _ = await make_server(soprano_engine, {"server": {"idle_timeout_s": 0.4}})
    async with websockets.connect(ws_url(base)) as ws:
        await initialize(ws)
        started = time.monotonic()
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1000 and time.monotonic() - started < 5

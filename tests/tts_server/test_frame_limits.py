"""WebSocket frames over the size limit, on every WebSocket protocol (tts_server/transport.py).

A frame over ``max_frame_bytes`` (what a ``max_token_chars`` token can take) gets the
protocol's own error and is dropped; the connection stays usable and the text it had
buffered is spoken as if the frame had never come. Past ``MAX_FRAME_HARD_BYTES`` the
frame is not read whole: the connection is closed with 1009.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import numpy as np
import pytest
import websockets

from tests.conftest import EXACT
from tts_server.transport import MAX_FRAME_HARD_BYTES, max_frame_bytes

MAX_TOKEN_CHARS = 100
LIMIT = max_frame_bytes(MAX_TOKEN_CHARS)
OVERSIZED_TEXT = json.dumps({"token": "x" * LIMIT})  # JSON, so only its size is wrong
OVERSIZED_BINARY = b"\x00" * (LIMIT + 1)
FIRST, REST = "Hello ", "there, how are you?"


async def recv_json(ws) -> dict:
    frame = await asyncio.wait_for(ws.recv(), 60)
    assert isinstance(frame, str)
    return json.loads(frame)


async def ws_stream(ws, oversized) -> tuple[str, np.ndarray]:
    await ws.send(json.dumps({"events": True, "token": FIRST}))
    error = ""
    if oversized is not None:
        await ws.send(oversized)
        error = (await recv_json(ws))["error"]
    await ws.send(json.dumps({"token": REST, "flush": True}))
    parts = []
    async with asyncio.timeout(60):
        while True:
            frame = await ws.recv()
            if isinstance(frame, bytes):
                parts.append(np.frombuffer(frame, dtype="<f4"))
            elif json.loads(frame).get("type") == "flushed":
                return error, np.concatenate(parts) * 32767


async def soprano_ws(ws, oversized) -> tuple[str, np.ndarray]:
    error = ""
    if oversized is not None:
        await ws.send(oversized)
        message = await recv_json(ws)
        assert message["type"] == "error"
        error = message["message"]
    await ws.send(json.dumps({"type": "synthesize", "text": FIRST + REST}))
    parts = []
    async with asyncio.timeout(60):
        while True:
            frame = await ws.recv()
            if isinstance(frame, bytes):
                parts.append(np.frombuffer(frame, dtype="<i2"))
            elif json.loads(frame)["type"] == "end":
                return error, np.concatenate(parts).astype(np.float64)


async def kokoro_live(ws, oversized) -> tuple[str, np.ndarray]:
    await ws.send(json.dumps({"voice": "af_heart"}))
    assert (await recv_json(ws))["type"] == "ready"
    await ws.send(FIRST)
    error = ""
    if oversized is not None:
        await ws.send(oversized)
        message = await recv_json(ws)
        assert message["type"] == "error"
        error = message["message"]
    await ws.send(REST)
    await ws.send("")
    parts = []
    while True:
        message = await recv_json(ws)
        if message["type"] == "audio":
            parts.append(np.frombuffer(await ws.recv(), dtype="<i2"))
        elif message["type"] == "end":
            return error, np.concatenate(parts).astype(np.float64)


async def kokorox(ws, oversized) -> tuple[str, np.ndarray]:
    import base64
    import io

    from scipy.io import wavfile

    await ws.send(json.dumps({"command": "stream_start"}))
    stream_id = (await recv_json(ws))["stream_id"]
    await ws.send(json.dumps({"command": "stream_append", "stream_id": stream_id, "text": FIRST}))
    error = ""
    if oversized is not None:
        await ws.send(oversized)
        message = await recv_json(ws)
        assert message["type"] == "error"
        error = message["message"]
    await ws.send(json.dumps({"command": "stream_append", "stream_id": stream_id, "text": REST}))
    await ws.send(json.dumps({"command": "stream_end", "stream_id": stream_id}))
    parts = []
    while True:
        message = await recv_json(ws)
        if message["type"] == "stream_chunk":
            parts.append(wavfile.read(io.BytesIO(base64.b64decode(message["chunk"])))[1])
        elif message["type"] == "stream_ended":
            return error, np.concatenate(parts).astype(np.float64)


Client = Callable[[object, object], Awaitable[tuple[str, np.ndarray]]]
PROTOCOLS: dict[str, Client] = {
    "/ws/stream": ws_stream,
    "/ws/tts": soprano_ws,
    "/ws/tts/live": kokoro_live,
    "/ws/kokorox": kokorox,
}


async def session(base: str, path: str, oversized) -> tuple[str, np.ndarray]:
    async with websockets.connect(base.replace("http://", "ws://") + path) as ws:
        return await PROTOCOLS[path](ws, oversized)


@pytest.mark.parametrize("oversized", [OVERSIZED_TEXT, OVERSIZED_BINARY], ids=["text", "binary"])
@pytest.mark.parametrize("path", sorted(PROTOCOLS))
async def test_a_frame_over_the_limit_gets_the_protocols_error_and_loses_nothing(
    make_server, soprano_engine, path, oversized
):
    base, _ = await make_server(soprano_engine, {"server": {"max_token_chars": MAX_TOKEN_CHARS}})
    _, clean = await session(base, path, None)
    error, pcm = await session(base, path, oversized)
    size = len(oversized.encode()) if isinstance(oversized, str) else len(oversized)
    assert error == f"frame of {size} bytes is over the limit of {LIMIT} bytes: it was dropped"
    # The text before and after the dropped frame is spoken as one: the same audio as a
    # session without it (in 16-bit steps: half a step of rounding, plus EXACT of the peak
    # for float32 reordering between two syntheses).
    assert pcm.size == clean.size > 0
    assert np.abs(pcm - clean).max() <= 1.0 + 2 * EXACT * np.abs(clean).max()


@pytest.mark.parametrize("path", sorted(PROTOCOLS))
async def test_a_frame_over_the_hard_cap_closes_the_connection_with_1009(make_server, soprano_engine, path):
    base, _ = await make_server(soprano_engine, {"server": {"max_token_chars": MAX_TOKEN_CHARS}})
    async with websockets.connect(base.replace("http://", "ws://") + path) as ws:
        with pytest.raises(websockets.ConnectionClosed):  # while sending it, or right after
            await ws.send("x" * (MAX_FRAME_HARD_BYTES + 1))
            await asyncio.wait_for(ws.recv(), 30)
        assert ws.close_code == 1009

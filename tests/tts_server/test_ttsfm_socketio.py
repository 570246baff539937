"""Seed 003 (TTSFM streaming over Socket.IO): a client written from the seed's event list.

python-socketio's ``AsyncClient`` plays the seed's JavaScript client: it sends
``generate_stream`` / ``cancel_stream`` and records every event the server emits.
"""

from __future__ import annotations

import asyncio
import io

import av
import numpy as np
import pytest
import socketio

from tts_server.app import PIPELINE
from tts_server.engines.espeak import EspeakEngine
from tts_server.protocols.ttsfm_socketio import MAX_CHUNK_CHARS, SAMPLE_RATE, split_chunks

EVENTS = ("stream_started", "audio_chunk", "stream_progress", "stream_complete", "stream_error")
TEXT = (
    "The first sentence is short. The second one is a little longer than the first. A third sentence closes the reply!"
)


class SeedClient:
    """The seed's client: connects, sends events, records what comes back per request id."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[str, dict]] = []
        self.changed = asyncio.Event()
        for name in EVENTS:
            self.sio.on(name, self._recorder(name))

    def _recorder(self, name: str):
        async def record(data):
            self.events.append((name, data))
            self.changed.set()

        return record

    async def connect(self, base: str, transport: str = "websocket", query: str = "", headers=None) -> None:
        await self.sio.connect(base + query, transports=[transport], headers=headers or {}, wait_timeout=10)

    def of(self, request_id: str, name: str | None = None) -> list[dict]:
        return [d for n, d in self.events if d.get("request_id") == request_id and (name is None or n == name)]

    async def until(self, predicate, timeout_s: float = 60.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    async def generate(self, request_id: str, timeout_s: float = 60.0, **fields) -> None:
        await self.sio.emit("generate_stream", {"request_id": request_id, **fields})
        await self.until(
            lambda: self.of(request_id, "stream_complete") or self.of(request_id, "stream_error"), timeout_s
        )


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """A complete audio file (any of the three formats) → float32 samples, sample rate."""
    with av.open(io.BytesIO(data), "r") as container:
        stream = container.streams.audio[0]
        frames = [f.to_ndarray().reshape(-1).astype(np.float32) for f in container.decode(stream)]
        return np.concatenate(frames), stream.rate


@pytest.fixture
async def server(make_server):
    base, app = await make_server(EspeakEngine())
    return base, app


@pytest.fixture
async def client():
    c = SeedClient()
    yield c
    if c.sio.connected:
        await c.sio.disconnect()


def test_chunks_keep_sentences_whole_where_they_fit():
    chunks = split_chunks(TEXT, 64)
    assert all(len(c) <= 64 for c in chunks)
    assert " ".join(chunks).split() == TEXT.split()
    assert chunks[0] == "The first sentence is short."  # the second one does not fit beside it
    assert split_chunks(TEXT, 1024) == [TEXT]
    word = "x" * 300  # no white space: cut at most every chunk_size characters, nothing lost
    pieces = split_chunks(word, 128)
    assert all(len(c) <= 128 for c in pieces) and "".join(pieces) == word


@pytest.mark.parametrize("fmt", ["wav", "mp3", "opus"])
async def test_every_event_in_order_with_playable_audio_of_each_format(server, client, fmt):
    base, _ = server
    await client.connect(base)
    await client.generate("req-1", text=TEXT, voice="alloy", format=fmt, chunk_size=64)
    names = [n for n, d in client.events if d.get("request_id") == "req-1"]
    chunks = client.of("req-1", "audio_chunk")
    total = len(split_chunks(TEXT, 64))
    assert names[0] == "stream_started" and names[-1] == "stream_complete" and "stream_error" not in names
    assert [c["chunk_index"] for c in chunks] == list(range(total))
    assert {c["total_chunks"] for c in chunks} == {total}
    for chunk in chunks:
        assert chunk["format"] == fmt and chunk["chunk_text"] and chunk["generation_time"] >= 0
        samples, rate = decode(bytes.fromhex(chunk["audio_data"]))
        assert rate in (SAMPLE_RATE, 48_000)  # opus decodes at 48 kHz
        assert np.sqrt(np.mean(samples**2)) > 0.01  # speech, not silence
        assert abs(samples.size / rate - chunk["duration"]) < 0.1  # encoder padding only
    progress = client.of("req-1", "stream_progress")
    values = [p["progress"] for p in progress]
    assert values == sorted(values) and values[-1] == 100 and len(progress) == total
    assert progress[-1]["chunks_completed"] == total
    done = client.of("req-1", "stream_complete")[0]
    assert done["total_chunks"] == total and done["status"] == "completed" and done["timestamp"] > 0


async def test_the_polling_transport_and_a_generated_request_id(server, client):
    base, _ = server
    await client.connect(base, transport="polling")
    await client.sio.emit("generate_stream", {"text": "Polling works too.", "format": "wav"})
    await client.until(lambda: any(n == "stream_complete" for n, _ in client.events))
    request_id = client.events[0][1]["request_id"]
    assert request_id and all(d["request_id"] == request_id for _, d in client.events)
    chunk = next(d for n, d in client.events if n == "audio_chunk")
    assert bytes.fromhex(chunk["audio_data"])[:4] == b"RIFF"


async def test_cancel_stops_at_once_and_the_session_goes_on(server, client):
    base, app = server
    await client.connect(base)
    long_text = " ".join(f"This is sentence number {i} of a long reply." for i in range(25))
    await client.sio.emit(
        "generate_stream", {"request_id": "long", "text": long_text, "format": "wav", "chunk_size": 64}
    )
    await client.until(lambda: client.of("long", "audio_chunk"))
    await client.sio.emit("cancel_stream", {"request_id": "long"})
    await client.until(lambda: client.of("long", "stream_error"))
    assert client.of("long", "stream_error")[0]["error"] == "cancelled"
    after = len(client.of("long", "audio_chunk"))
    assert after < len(split_chunks(long_text, 64))
    await asyncio.sleep(0.5)
    assert len(client.of("long", "audio_chunk")) == after  # nothing of it after the answer
    assert not client.of("long", "stream_complete")
    assert app[PIPELINE].active_streams == 0
    await client.generate("next", text="Still here.", format="wav")
    assert client.of("next", "stream_complete")


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"text": ""}, "text is empty"),
        ({"format": "wav"}, "text is missing"),
        ({"text": 5}, "text is missing or not a string"),
        ({"text": "Hi.", "format": "flac"}, "format must be one of"),
        ({"text": "Hi.", "chunk_size": "big"}, "chunk_size must be an integer"),
        ({"text": "Hi.", "chunk_size": MAX_CHUNK_CHARS + 1}, "chunk_size must be"),
        ({"text": "Hi.", "chunk_size": 10}, "chunk_size must be"),
        ({"text": "Hi.", "voice": 3}, "voice must be a string"),
    ],
)
async def test_bad_requests_get_stream_error_naming_the_problem_and_the_session_stays(server, client, fields, expected):
    base, _ = server
    await client.connect(base)
    await client.sio.emit("generate_stream", {"request_id": "bad", **fields})
    await client.until(lambda: client.of("bad", "stream_error"))
    assert expected in client.of("bad", "stream_error")[0]["error"]
    await client.generate("good", text="Fine now.", format="wav")
    assert client.of("good", "stream_complete")


async def test_cancel_of_an_unknown_id_and_a_second_request_while_one_runs(server, client):
    base, _ = server
    await client.connect(base)
    await client.sio.emit("cancel_stream", {"request_id": "nobody"})
    await client.until(lambda: client.of("nobody", "stream_error"))
    assert "no request 'nobody'" in client.of("nobody", "stream_error")[0]["error"]
    long_text = " ".join(f"Sentence {i} is here." for i in range(30))
    await client.sio.emit(
        "generate_stream", {"request_id": "one", "text": long_text, "format": "wav", "chunk_size": 64}
    )
    await client.sio.emit("generate_stream", {"request_id": "two", "text": "Me too.", "format": "wav"})
    await client.until(lambda: client.of("two", "stream_error"))
    assert "is still running" in client.of("two", "stream_error")[0]["error"]
    await client.until(lambda: client.of("one", "stream_complete"), timeout_s=120)


async def test_a_closed_tab_frees_its_stream(server, client):
    base, app = server
    await client.connect(base)
    long_text = " ".join(f"This is sentence number {i} of a long reply." for i in range(25))
    await client.sio.emit(
        "generate_stream", {"request_id": "gone", "text": long_text, "format": "wav", "chunk_size": 64}
    )
    await client.until(lambda: client.of("gone", "audio_chunk"))
    assert app[PIPELINE].active_streams == 1
    await client.sio.disconnect()
    async with asyncio.timeout(5):
        while app[PIPELINE].active_streams:
            await asyncio.sleep(0.05)


async def test_status_endpoint(server, client):
    import aiohttp

    base, _ = server
    await client.connect(base)
    async with aiohttp.ClientSession() as http, http.get(base + "/api/websocket/status") as response:
        status = await response.json()
    assert status["transports"] == ["websocket", "polling"] and status["active_sessions"] == 1


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_the_api_key_is_required_over_both_transports(make_server, transport):
    base, _ = await make_server(EspeakEngine(), {"server": {"api_keys": ["sekrit"]}})
    refused = SeedClient()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await refused.connect(base, transport)
    wrong = SeedClient()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await wrong.connect(base, transport, query="?api_key=wrong")
    # Every HTTP request needs the key. python-socketio's client sends its custom headers
    # with its first polling request only, so over polling the key goes in the query.
    ways = [{"query": "?api_key=sekrit"}]
    if transport == "websocket":
        ways.append({"headers": {"X-API-Key": "sekrit"}})
    for kwargs in ways:
        allowed = SeedClient()
        await allowed.connect(base, transport, **kwargs)
        await allowed.generate("k", text="With a key.", format="wav")
        assert allowed.of("k", "stream_complete")
        await allowed.sio.disconnect()


async def test_a_foreign_origin_is_refused(server):
    base, _ = server
    foreign = SeedClient()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await foreign.connect(base, headers={"Origin": "http://evil.example"})


async def test_generations_count_against_the_clients_share_of_streams(make_server, client):
    import aiohttp

    base, _ = await make_server(EspeakEngine(), {"server": {"max_streams_per_client": 1}})
    async with aiohttp.ClientSession() as http, http.ws_connect(base.replace("http", "ws", 1) + "/ws/stream"):
        await client.connect(base)  # the Socket.IO session itself holds no share
        await client.sio.emit("generate_stream", {"request_id": "r", "text": "Hello.", "format": "wav"})
        await client.until(lambda: client.of("r", "stream_error"))
        assert "too many streams" in client.of("r", "stream_error")[0]["error"]
    await client.generate("r2", text="Now there is room.", format="wav")
    assert client.of("r2", "stream_complete")


async def test_an_idle_session_is_disconnected(make_server):
    base, _ = await make_server(EspeakEngine(), {"server": {"idle_timeout_s": 0.5}})
    idle = SeedClient()
    await idle.connect(base)
    async with asyncio.timeout(10):
        while idle.sio.connected:
            await asyncio.sleep(0.1)

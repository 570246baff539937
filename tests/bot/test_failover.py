"""Remote mode with several tts-server replicas: least loaded first, failover mid-reply, a returning server."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from bot.errors import TTSUnavailable
from bot.tts import RemoteTTS
from tts_server import OUTPUT_SAMPLE_RATE, Segmenter, create_app, load_config
from tts_server.app import PIPELINE, SESSIONS
from tts_server.engines.espeak import EspeakEngine

#: Twelve sentences (24 segments, about 40 s of espeak speech): long enough to be mid-reply for seconds.
REPLY = " ".join(
    f"This is sentence number {n}, spoken by whichever server is alive."
    for n in ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")
)


class Replicas:
    """tts-server apps (espeak) on loopback, each on its own port; crash and restart them."""

    def __init__(self) -> None:
        self.servers: dict[str, TestServer] = {}
        self.ports: dict[str, int] = {}

    async def start(self, name: str, server: dict | None = None, port: int | None = None) -> str:
        """Start replica ``name`` (on ``port``, else its old port if it ran before, else a free one)
        with these ``[server]`` settings; returns its /ws/stream URL."""
        # A small queue per stream: the server synthesizes only a second ahead of what the
        # bot reads, so most of a long reply is still to be synthesized when it dies.
        settings = {"stream_queue_s": 1.0, **(server or {})}
        config = load_config(None, {"engine": {"warmup": False}, "server": settings})
        port = port if port is not None else self.ports.get(name, 0)
        test_server = TestServer(create_app(config, engine=EspeakEngine()), host="127.0.0.1", port=port)
        await test_server.start_server()
        self.servers[name] = test_server
        assert test_server.port is not None
        self.ports[name] = test_server.port
        return self.url(name)

    def url(self, name: str) -> str:
        return f"ws://127.0.0.1:{self.ports[name]}/ws/stream"

    def app(self, name: str):
        return self.servers[name].app

    async def crash(self, name: str) -> None:
        """Kill replica ``name`` as a crash would: its connections are cut, nothing is said."""
        server = self.servers.pop(name)
        sessions: set = server.app[SESSIONS]
        for session in list(sessions):
            if session.transport is not None:
                session.transport.abort()
        await server.close()

    async def close(self) -> None:
        for server in self.servers.values():
            with contextlib.suppress(Exception):
                await server.close()


@pytest.fixture
async def replicas():
    made = Replicas()
    yield made
    await made.close()


def sentences(text: str) -> list[str]:
    segmenter = Segmenter()
    return segmenter.push(text) + segmenter.flush()


def done_segments(app) -> float:
    """Segments the replica completed (its /metrics counter, read in-process)."""
    return app[PIPELINE].metrics.registry.get_sample_value("tts_ttfa_seconds_count") or 0.0


async def test_a_replica_killed_mid_reply_hands_the_rest_to_the_other(harness, replicas, caplog):
    a, b = await replicas.start("a"), await replicas.start("b")
    backend = RemoteTTS([a, b], connect_timeout_s=3.0, reconnect_max_s=1.0)
    h = await harness(backend, bot={"buffer_s": 1.0})
    g = h.guild()
    before_b = done_segments(replicas.app("b"))
    caplog.set_level(logging.WARNING, logger="bot.tts")
    await h.invoke("say", g.ctx, text=REPLY)
    async with asyncio.timeout(30):  # mid-reply: it plays, a has finished a few sentences only
        while not (g.session.current and g.session.current.reply and len(g.session.current.reply.segments) >= 2):
            await asyncio.sleep(0.01)
    # What the bot has taken so far; the rest (synthesized or not) is still on its way from a.
    heard_from_a = len(g.session.current.reply.segments)
    await replicas.crash("a")
    await g.wait_idle(60)
    job = g.session.last_job
    assert job is not None and job.outcome == "done", g.text.texts()
    reply = job.reply
    assert reply is not None and not reply.tts_errors
    # Every sentence reached Discord once, in order: those a spoke, then b's.
    assert [text for _, text in reply.segments] == sentences(REPLY)
    # b spoke what the bot had not taken from a when a died (audio in flight is lost with a).
    assert 1 <= done_segments(replicas.app("b")) - before_b <= len(sentences(REPLY)) - heard_from_a
    assert not any("⚠️" in t for t in g.text.texts())
    # At most one sentence of silence: the stall is no longer than the longest sentence.
    ends = [0] + [end for end, _ in reply.segments]
    longest_s = max(later - earlier for earlier, later in itertools.pairwise(ends)) / OUTPUT_SAMPLE_RATE
    assert reply.underrun_frames * 0.02 <= longest_s
    warnings = [r.getMessage() for r in caplog.records if "lost mid-reply" in r.getMessage()]
    assert len(warnings) == 1 and a in warnings[0] and b in warnings[0]


async def test_streams_go_to_the_least_loaded_live_server_and_a_returning_one_is_used_again(replicas):
    a, b = await replicas.start("a"), await replicas.start("b")
    backend = RemoteTTS([a, b], connect_timeout_s=3.0, reconnect_max_s=1.0)
    try:
        async with aiohttp.ClientSession() as http:
            assert await backend.pick("guild") == a  # both idle: the first
            held = [await http.ws_connect(a)]  # another client's stream on a
            assert await backend.pick("guild") == b
            stream = await backend.open_stream("guild", None)
            assert stream.url == b
            await stream.close()
            await replicas.crash("a")
            loads = {load.url: load for load in await backend.loads()}
            assert not loads[a].live and loads[a].error and loads[b].live
            assert await backend.pick("guild") == b
            await replicas.start("a")  # a comes back on its port
            held += [await http.ws_connect(b) for _ in range(2)]  # b is busy now
            assert await backend.pick("guild") == a
            stream = await backend.open_stream("guild", None)
            assert stream.url == a
            await stream.push("Back again.", 0.0)
            flush_id = await stream.flush()
            got_audio = False
            async with asyncio.timeout(20):
                while True:
                    event = await stream.get()
                    got_audio |= type(event).__name__ == "Audio"
                    if type(event).__name__ == "Flushed" and event.flush_id == flush_id:
                        break
            assert got_audio
            for ws in held:
                await ws.close()
    finally:
        await backend.aclose()


async def test_with_every_server_down_a_reply_is_refused_with_each_named(replicas):
    a, b = await replicas.start("a"), await replicas.start("b")
    backend = RemoteTTS([a, b], connect_timeout_s=1.0, reconnect_max_s=1.0)
    try:
        await replicas.crash("a")
        await replicas.crash("b")
        with pytest.raises(TTSUnavailable) as caught:
            await backend.open_stream("guild", None)
        message = str(caught.value)
        assert "no TTS server is reachable" in message
        assert str(replicas.ports["a"]) in message and str(replicas.ports["b"]) in message
    finally:
        await backend.aclose()


async def test_a_replica_killed_while_the_llm_is_still_writing(harness, replicas, llm_server):
    from testing.llm_server import Script
    from tts_server import text_pieces

    a, b = await replicas.start("a"), await replicas.start("b")
    backend = RemoteTTS([a, b], connect_timeout_s=3.0, reconnect_max_s=1.0)
    h = await harness(backend)
    g = h.guild()
    pieces = text_pieces(REPLY)
    llm_server.queue(Script(pieces, delay_s=0.04))  # about 10 s of writing
    await h.invoke("speak", g.ctx, prompt="count the sentences")
    async with asyncio.timeout(30):  # the first sentence is heard, most of the text is still to come
        while not (g.session.current and g.session.current.reply and g.session.current.reply.segments):
            await asyncio.sleep(0.01)
    reply = g.session.current.reply
    assert reply.pushed_chars < len(REPLY) / 2
    await replicas.crash("a")
    await g.wait_idle(90)
    job = g.session.last_job
    assert job is not None and job.outcome == "done", g.text.texts()
    assert reply.text == REPLY and not reply.tts_errors
    assert [text for _, text in reply.segments] == sentences(REPLY)

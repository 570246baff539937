"""Every fault gives a clear message (or log line) and the bot keeps serving, in that guild
and in the others."""

from __future__ import annotations

import asyncio
import logging

import discord
import numpy as np

from testing.discord_voice import OfflineVoiceState
from testing.llm_server import Script
from tts_server import text_pieces

LONG = "This reply goes on for quite a while. It has several sentences in it. " * 3


async def _speaking(g, timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not (g.tap.playbacks and g.tap.playbacks[-1].started_at):
            await asyncio.sleep(0.01)


async def _say_works(h, g) -> None:
    """The guild still speaks: a fresh reply plays through and matches the pipeline's audio."""
    await h.invoke("say", g.ctx, text="Still here.")
    await g.wait_idle()
    assert g.tap.playbacks[-1].done and not g.tap.playbacks[-1].interrupted
    assert g.match_reply(-1).corr > 0.9


# -- where the user and the bot are ----------------------------------------------------------------


async def test_a_user_outside_voice_is_told_to_join_one(harness, espeak_pipeline):
    h = await harness(espeak_pipeline)
    g = h.guild()
    ctx = g.context(in_voice=False)
    for command, kwargs in (("speak", {"prompt": "hi"}), ("say", {"text": "hi"}), ("join", {})):
        await h.invoke(command, ctx, **kwargs)
    assert ctx.channel.texts() == ["⚠️ Join a voice channel first, then ask me again."] * 3
    assert g.voice.voice_clients == []
    assert h.llm_server.requests == []


async def test_missing_connect_or_speak_permission_is_named(harness, espeak_pipeline):
    h = await harness(espeak_pipeline)
    g = h.guild()
    g.voice.permissions = discord.Permissions(connect=False, speak=True)
    await h.invoke("speak", g.ctx, prompt="hi")
    g.voice.permissions = discord.Permissions(connect=True, speak=False)
    await h.invoke("join", g.ctx)
    assert g.text.texts() == [
        f"⚠️ I don't have permission to connect to {g.voice.mention}.",
        f"⚠️ I don't have permission to speak in {g.voice.mention}.",
    ]
    assert g.voice.voice_clients == []


async def test_a_voice_connection_that_times_out_is_reported(harness, espeak_pipeline):
    h = await harness(espeak_pipeline, bot={"connect_timeout_s": 3.0})
    g = h.guild()
    g.voice.connect_error = TimeoutError()
    await h.invoke("join", g.ctx)
    assert g.text.texts() == [f"⚠️ connecting to {g.voice.mention} timed out after 3 s."]
    g.voice.connect_error = None
    await h.invoke("join", g.ctx)
    assert g.text.texts()[-1] == f"🔊 Joined {g.voice.mention}."


async def test_a_dropped_voice_connection_fails_that_reply_only(harness, espeak_pipeline):
    h = await harness(espeak_pipeline)
    a, b = h.guild("a"), h.guild("b")
    await h.invoke("say", a.ctx, text=LONG)
    await h.invoke("say", b.ctx, text="The other server keeps talking while the first one loses its voice connection.")
    await _speaking(a)
    a.vc.recorder.drop()  # the player waits the client's timeout (1 s here), then gives up
    await asyncio.gather(a.wait_idle(10), b.wait_idle(30))
    assert a.text.texts()[-1].startswith("⚠️ the voice connection dropped")
    assert b.tap.playbacks[0].done and not b.tap.playbacks[0].interrupted
    assert b.match_reply(0).corr > 0.9
    assert b.tap.playbacks[0].underrun_frames == 0
    # Once the connection is back, the guild speaks again (a new player on the same client).
    a.vc.recorder.restore()
    await _say_works(h, a)


async def test_being_disconnected_by_someone_else_is_reported(harness, espeak_pipeline):
    h = await harness(espeak_pipeline)
    g = h.guild()
    await h.invoke("say", g.ctx, text=LONG)
    await _speaking(g)
    # What discord.py does on a VOICE_STATE_UPDATE without a channel, then the event.
    await g.vc.recorder.disconnect()
    await h.cog.on_voice_state_update(g.guild.me, OfflineVoiceState(g.voice), OfflineVoiceState(None))
    await g.wait_idle(5)
    assert g.text.texts()[-1] == "⚠️ I was disconnected from the voice channel."
    await h.invoke("join", g.ctx)
    await _say_works(h, g)


# -- the LLM ---------------------------------------------------------------------------------------


async def test_an_unreachable_llm_is_reported_and_the_guild_keeps_working(harness, espeak_pipeline):
    h = await harness(espeak_pipeline, llm={"base_url": "http://127.0.0.1:9/v1"})
    g = h.guild()
    await h.invoke("speak", g.ctx, prompt="hello?")
    await g.wait_idle()
    assert g.text.texts()[-1].startswith("⚠️ cannot reach the LLM at http://127.0.0.1:9/v1")
    assert h.services.history.turns(g.text.id) == []
    await _say_works(h, g)


async def test_an_llm_http_error_is_reported(harness, espeak_pipeline, llm_server):
    h = await harness(espeak_pipeline)
    g = h.guild()
    llm_server.queue(Script(status=500))
    await h.invoke("speak", g.ctx, prompt="hello?")
    await g.wait_idle()
    assert g.text.texts()[-1].startswith(f"⚠️ the LLM at {llm_server.base_url} answered HTTP 500")


async def test_an_llm_failing_mid_reply_speaks_what_it_wrote_then_says_so(harness, espeak_pipeline, llm_server):
    h = await harness(espeak_pipeline)
    g = h.guild()
    llm_server.queue(Script(text_pieces("The first sentence made it. The second never ends"), fail_after=7))
    await h.invoke("speak", g.ctx, prompt="hello?")
    await g.wait_idle()
    texts = g.text.texts()
    assert texts[0] == "The first sentence made it. The  ⚠️ *cut off*"
    assert texts[1].startswith("⚠️ the LLM at") and "failed mid-reply" in texts[1]
    assert g.tap.audio().size > 0.8 * 48_000  # what was written was spoken
    (turn,) = h.services.history.turns(g.text.id)
    assert turn.interrupted and turn.note == "[cut off by an error]"


# -- the TTS ---------------------------------------------------------------------------------------


class FailsOnBoom:
    """The espeak engine, except that a segment containing "boom" fails mid-synthesis."""

    def __init__(self) -> None:
        from tts_server.engines.espeak import EspeakEngine

        self.inner = EspeakEngine()
        self.name, self.model, self.device, self.sample_rate = "boom", "boom", "cpu", self.inner.sample_rate

    def synthesize(self, text):
        if "boom" in text.lower():
            raise RuntimeError("the engine tripped over this segment")
        yield from self.inner.synthesize(text)


async def test_a_segment_the_tts_cannot_speak_is_skipped_and_the_channel_is_told(harness):
    from tts_server import Pipeline

    pipeline = Pipeline(FailsOnBoom())
    pipeline.start()
    try:
        h = await harness(pipeline)
        g = h.guild()
        await h.invoke(
            "say", g.ctx, text="The first sentence is fine. Then boom goes this one. The last one is fine too."
        )
        await g.wait_idle()
        assert g.tap.playbacks[-1].done and not g.tap.playbacks[-1].interrupted
        assert g.text.texts()[-1] == (
            "⚠️ 1 part of the reply could not be spoken "
            "(synthesis failed for segment 1: the engine tripped over this segment)."
        )
        assert g.tap.audio().size > 1.0 * 48_000  # the two good sentences were spoken
    finally:
        pipeline.stop()


class FailingOnce:
    """A backend whose first stream cannot be opened because of a bug (not a BotError)."""

    def __init__(self, inner) -> None:
        self.inner, self.failed = inner, False
        self.description = "failing once"

    async def open_stream(self, key, voice):
        if not self.failed:
            self.failed = True
            raise RuntimeError("a bug in the backend")
        return await self.inner.open_stream(key, voice)

    def __getattr__(self, name):
        return getattr(self.inner, name)


async def test_an_unexpected_error_is_logged_and_answered_generically(harness, espeak_pipeline, caplog):
    from bot.tts import EmbeddedTTS

    backend = EmbeddedTTS(espeak_pipeline)
    h = await harness(FailingOnce(backend), estimate=None, warm=False)
    g = h.guild()
    with caplog.at_level(logging.ERROR, logger="bot.session"):
        await h.invoke("say", g.ctx, text="Hello.")
        await g.wait_idle()
    assert g.text.texts()[-1] == "⚠️ something went wrong on my side (see the bot's log)."
    assert any("a bug in the backend" in (r.exc_text or "") for r in caplog.records)
    await _say_works(h, g)


async def test_a_full_queue_refuses_new_replies_without_dropping_queued_ones(harness, espeak_pipeline, llm_server):
    h = await harness(espeak_pipeline, bot={"max_queued_replies": 1})
    g = h.guild()
    llm_server.queue(Script(text_pieces("A short first reply."), delay_s=0.02))
    await h.invoke("speak", g.ctx, prompt="short one")
    await h.invoke("say", g.ctx, text="Queued.")
    await h.invoke("say", g.ctx, text="One too many.")
    assert g.text.texts()[-2:] == [
        "🔊 Saying it (after 1 other reply).",
        "⚠️ 1 reply is already waiting in this server; wait for them or use `stop`.",
    ]
    await g.wait_idle()
    assert len(g.tap.replies) == 2


async def test_unknown_voice_and_out_of_range_pitch_are_refused(harness, espeak_pipeline):
    from discord.ext import commands

    h = await harness(espeak_pipeline)
    g = h.guild()
    await h.invoke("voice", g.ctx, name="nobody")
    assert g.text.texts()[-1] == "⚠️ unknown voice 'nobody': available voices: none are configured"
    assert g.session.voice is None
    # discord.py's converter raises RangeError before the callback; the handler answers it.
    g.ctx.command = h.cog.pitch
    await h.cog.cog_command_error(g.ctx, commands.RangeError(30.0, minimum=-24.0, maximum=24.0))
    assert g.text.texts()[-1] == "⚠️ pitch: the value must be between -24.0 and 24.0."


async def test_an_unreachable_tts_server_is_reported_then_reconnected_with_backoff(
    harness, espeak_pipeline, unused_tcp_port
):
    from aiohttp.test_utils import TestServer

    from bot.tts import RemoteTTS
    from tts_server.app import create_app
    from tts_server.config import load_config
    from tts_server.engines.espeak import EspeakEngine

    url = f"ws://127.0.0.1:{unused_tcp_port}/ws/stream"
    backend = RemoteTTS(url, connect_timeout_s=0.5, reconnect_max_s=1.0)
    h = await harness(backend, warm=False)
    g = h.guild()
    try:
        await h.invoke("say", g.ctx, text="Is anyone there?")
        await g.wait_idle()
        assert g.text.texts()[-1].startswith(f"⚠️ the TTS server at {url} is unreachable (")
        assert "reconnecting in the background" in g.text.texts()[-1]
        server = TestServer(
            create_app(load_config(None, {"engine": {"warmup": False}}), engine=EspeakEngine()),
            host="127.0.0.1",
            port=unused_tcp_port,
        )
        await server.start_server()
        try:
            conn = backend.connection(g.guild.id)
            async with asyncio.timeout(5):  # the next attempt comes within reconnect_max_s
                while not conn.connected:
                    await asyncio.sleep(0.05)
            await _say_works(h, g)
        finally:
            await backend.aclose()  # first: the server waits for open sockets when closing
            await server.close()
    finally:
        await backend.aclose()


async def test_a_remote_tts_connection_lost_mid_reply_goes_on_over_a_new_one(harness, make_server):
    from bot.tts import RemoteTTS
    from tts_server import Segmenter
    from tts_server.engines.espeak import EspeakEngine

    base, _app = await make_server(EspeakEngine())
    backend = RemoteTTS(base.replace("http", "ws") + "/ws/stream", connect_timeout_s=2.0, reconnect_max_s=1.0)
    h = await harness(backend)
    g = h.guild()
    try:
        await h.invoke("say", g.ctx, text=LONG)
        await _speaking(g)
        conn = backend.connection(g.guild.id)
        await conn.client(conn.generation).close()  # the socket goes away mid-reply
        await g.wait_idle(60)  # about 12 s of speech
        job = g.session.last_job
        assert job is not None and job.outcome == "done" and not any("⚠️" in t for t in g.text.texts())
        segmenter = Segmenter()
        assert [text for _, text in job.reply.segments] == segmenter.push(LONG) + segmenter.flush()
        assert conn.connected and conn.generation == 2
        await _say_works(h, g)
        assert np.any(g.decoded().rms() > 0)
    finally:
        await backend.aclose()


async def test_a_remote_tts_server_gone_mid_reply_is_reported(harness):
    from bot.tts import RemoteTTS
    from tests.bot.test_failover import Replicas

    replicas = Replicas()
    url = await replicas.start("only")
    backend = RemoteTTS(url, connect_timeout_s=1.0, reconnect_max_s=1.0)
    try:
        h = await harness(backend, bot={"buffer_s": 1.0})
        g = h.guild()
        await h.invoke("say", g.ctx, text=LONG * 2)
        await _speaking(g)
        await replicas.crash("only")
        await g.wait_idle(20)
        assert g.text.texts()[-1].startswith(f"⚠️ lost the connection to the TTS server at {url}")
    finally:
        await backend.aclose()
        await replicas.close()


async def test_an_llm_connection_dropped_mid_reply_speaks_what_it_wrote_then_says_so(
    harness, espeak_pipeline, llm_server
):
    h = await harness(espeak_pipeline)
    g = h.guild()
    llm_server.queue(Script(text_pieces("The first sentence made it. The second never ends"), drop_after=7))
    await h.invoke("speak", g.ctx, prompt="hello?")
    await g.wait_idle()
    texts = g.text.texts()
    assert texts[0] == "The first sentence made it. The  ⚠️ *cut off*"
    assert texts[1].startswith(f"⚠️ the connection to the LLM at {llm_server.base_url} broke mid-reply")
    assert g.tap.audio().size > 0.8 * 48_000  # what was written was spoken

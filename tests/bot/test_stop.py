"""Barge-in: ``stop`` silences the voice within 100 ms and cancels the LLM and the TTS."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from testing.llm_server import Script
from tests.bot.bot_harness import VOICE_RMS
from tts_server import text_pieces

ENDLESS = "And then the story went on, and on, with more and more to tell. "


async def _speaking(g, timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not (g.tap.playbacks and g.tap.playbacks[-1].started_at):
            await asyncio.sleep(0.01)


async def test_stop_silences_within_100_ms_and_cancels_the_llm_and_the_tts(harness, espeak_pipeline, llm_server):
    h = await harness(espeak_pipeline)
    g = h.guild()
    llm_server.queue(Script(text_pieces(ENDLESS), delay_s=0.03, repeat=True))  # writes until told to stop
    await h.invoke("speak", g.ctx, prompt="tell me a long story")
    await _speaking(g)
    await asyncio.sleep(1.0)  # well into the reply, with audio buffered ahead

    buffered_before = g.session.source.buffered_s
    stop_ctx = g.context("Bob")
    stopped_at = time.perf_counter()
    await h.invoke("stop", stop_ctx)
    await asyncio.sleep(0.5)

    assert buffered_before > 0.2  # there was audio to drop
    decoded = g.decoded()
    late = decoded.times > stopped_at + 0.100
    assert late.sum() >= 15  # the player kept running: silence frames after the stop
    assert np.all(decoded.rms()[late] < VOICE_RMS), decoded.rms()[late][:10]
    assert np.any(decoded.rms()[decoded.times < stopped_at] > VOICE_RMS)
    # The LLM request was abandoned (the server saw the client go), the pipeline stream closed.
    request = llm_server.requests[0]
    assert request.finished_at is None and request.client_gone_at is not None
    assert request.client_gone_at - stopped_at < 1.0
    assert espeak_pipeline.active_streams == 0
    assert stop_ctx.channel.texts()[-1] == "⏹ Stopped."
    # The reply text in the channel says it was interrupted.
    assert g.text.messages[0].content.endswith("⏹ *interrupted*")


async def test_an_interrupted_reply_is_recorded_as_interrupted_with_only_what_was_heard(
    harness, espeak_pipeline, llm_server
):
    h = await harness(espeak_pipeline)
    g = h.guild()
    sentences = [f"Sentence number {n} of the story." for n in ("one", "two", "three", "four", "five", "six")]
    llm_server.queue(Script(text_pieces(" ".join(sentences))))  # the whole text arrives at once
    await h.invoke("speak", g.ctx, prompt="count sentences")
    await _speaking(g)
    await asyncio.sleep(2.5)  # about one and a half sentences heard
    await h.invoke("stop", g.context())
    (turn,) = h.services.history.turns(g.text.id)
    assert turn.interrupted
    heard = turn.reply
    assert heard.startswith(sentences[0])
    assert sentences[-1] not in heard  # not recorded as if it had all been spoken
    assert len(heard) < len(" ".join(sentences)) / 2
    # The next request tells the LLM the reply was interrupted.
    llm_server.queue(Script(text_pieces("Sure.")))
    await h.invoke("speak", g.ctx, prompt="go on")
    await g.wait_idle()
    messages = llm_server.requests[-1].body["messages"]
    assert "[interrupted by the user]" in messages[-2]["content"]
    assert messages[-2]["role"] == "assistant"


async def test_stop_drops_queued_replies_and_the_next_reply_plays_cleanly(harness, espeak_pipeline, llm_server):
    h = await harness(espeak_pipeline)
    g = h.guild()
    llm_server.queue(Script(text_pieces(ENDLESS), delay_s=0.03, repeat=True))
    await h.invoke("speak", g.ctx, prompt="first")
    await h.invoke("say", g.ctx, text="Queued one.")
    await h.invoke("say", g.ctx, text="Queued two.")
    await _speaking(g)
    await h.invoke("stop", g.ctx)
    assert g.text.texts()[-1] == "⏹ Stopped. Dropped 2 queued replies."
    assert not g.session.busy
    await h.invoke("say", g.ctx, text="A fresh reply after the stop.")
    await g.wait_idle()
    assert len(g.tap.replies) == 2  # the queued ones never ran
    playback = g.tap.playbacks[-1]
    assert playback.underrun_frames == 0
    m = g.match_reply(-1)
    assert m.corr > 0.9 and m.lag < 1000  # nothing of the stopped reply leaked into it


async def test_stop_with_nothing_playing_says_so(harness, espeak_pipeline):
    h = await harness(espeak_pipeline)
    g = h.guild()
    await h.invoke("stop", g.ctx)
    assert g.text.texts() == ["Nothing to stop."]

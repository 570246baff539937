"""Replies back to back: the next queued reply is prepared while the one before plays."""

from __future__ import annotations

import asyncio

import pytest

from testing.llm_server import Script
from tts_server import text_pieces

FIRST = "The first answer has a few sentences. It goes on for a while. Then it comes to an end."
SECOND = "The second answer follows."
LLM_FIRST_TOKEN_S = 0.4  # the second request's time to first token


@pytest.mark.parametrize("prefetch", [True, False], ids=["prefetch", "no-prefetch"])
async def test_the_next_reply_starts_while_the_one_before_plays_and_follows_without_a_gap(
    harness, espeak_pipeline, llm_server, prefetch
):
    h = await harness(espeak_pipeline, bot={"prefetch_next_reply": prefetch})
    g = h.guild()
    llm_server.queue(
        Script(text_pieces(FIRST)), Script(text_pieces(SECOND), first_delay_s=LLM_FIRST_TOKEN_S, delay_s=0.01)
    )
    await h.invoke("speak", g.ctx, prompt="first question")
    await h.invoke("speak", g.context("Bob"), prompt="second question")
    await g.wait_idle()
    first, second = g.tap.playbacks
    assert first.done and not first.interrupted and second.done and not second.interrupted
    assert first.underrun_frames == 0 and second.underrun_frames == 0
    assert g.match_reply(0).corr > 0.9 and g.match_reply(1).corr > 0.9
    second_request = llm_server.requests[1]
    gap_s = second.started_at - first.done_at
    if prefetch:
        # Asked while the first reply still had seconds to play; its audio follows in
        # the frame that ends the first reply.
        assert second_request.received_at < first.done_at - 1.0
        assert gap_s == 0.0
    else:
        assert second_request.received_at >= first.done_at
        assert gap_s > LLM_FIRST_TOKEN_S
    # Either way the second request sees the first reply as history.
    messages = second_request.body["messages"]
    assert [m["content"] for m in messages[1:]] == ["Ada: first question", FIRST, "Bob: second question"]
    assert [t.reply for t in h.services.history.turns(g.text.id)] == [FIRST, SECOND]
    assert espeak_pipeline.active_streams == 0


async def test_stop_drops_the_reply_prepared_behind_the_one_playing(harness, espeak_pipeline, llm_server):
    h = await harness(espeak_pipeline)
    g = h.guild()
    endless = "And the next one went on and on with more to tell. "
    llm_server.queue(Script(text_pieces(FIRST)), Script(text_pieces(endless), delay_s=0.03, repeat=True))
    await h.invoke("speak", g.ctx, prompt="first question")
    await h.invoke("speak", g.ctx, prompt="second question")
    async with asyncio.timeout(30):  # the second is written into the buffer while the first plays
        while not (len(g.tap.playbacks) == 2 and g.tap.playbacks[1].written_samples and not g.tap.playbacks[0].done):
            await asyncio.sleep(0.01)
    assert len(g.session.active) == 2
    await h.invoke("stop", g.context("Bob"))
    first, second = g.tap.playbacks
    assert first.interrupted and second.interrupted and second.played_samples == 0
    assert g.session.source.buffered_samples == 0 and not g.session.busy
    assert g.context("Bob").channel.texts()[-1] == "⏹ Stopped. Dropped 1 queued reply."
    request = llm_server.requests[1]
    async with asyncio.timeout(5):  # the prepared reply's LLM request was abandoned too
        while request.client_gone_at is None:
            await asyncio.sleep(0.02)
    assert espeak_pipeline.active_streams == 0
    # The next reply plays cleanly.
    await h.invoke("say", g.ctx, text="After the stop.")
    await g.wait_idle()
    assert g.tap.playbacks[-1].done and not g.tap.playbacks[-1].interrupted
    assert g.match_reply(-1).corr > 0.9


async def test_a_prepared_reply_that_fails_leaves_the_one_playing_untouched(harness, espeak_pipeline, llm_server):
    h = await harness(espeak_pipeline)
    g = h.guild()
    llm_server.queue(Script(text_pieces(FIRST)), Script(status=500))
    await h.invoke("speak", g.ctx, prompt="first question")
    await h.invoke("speak", g.ctx, prompt="second question")
    await g.wait_idle()
    first, second = g.tap.playbacks
    assert second.written_samples == 0 and second.played_samples == 0  # it never had any audio
    assert first.done and not first.interrupted and first.played_samples == first.written_samples
    assert first.underrun_frames == 0
    assert llm_server.requests[1].received_at < first.done_at  # it failed while the first played
    assert any(t.startswith("⚠️") for t in g.text.texts())
    assert [t.reply for t in h.services.history.turns(g.text.id)] == [FIRST]

"""The growing reply message and the conversation history."""

from __future__ import annotations

import asyncio
import time

import discord

from bot.history import ConversationHistory, Turn
from bot.live_text import PAGE_CHARS, LiveText, pages
from testing.discord_voice import OfflineTextChannel


async def test_edits_are_spaced_by_the_interval_and_the_last_text_always_shows():
    channel = OfflineTextChannel()
    live = LiveText(channel.send, interval_s=0.2)
    text = ""
    started = time.monotonic()
    for i in range(40):  # 40 updates over ~1 s
        text += f"word{i} "
        live.update(text)
        await asyncio.sleep(0.025)
    await live.finish(text + "(done)")
    elapsed = time.monotonic() - started
    (message,) = channel.messages
    assert message.content == text + "(done)"
    assert 3 <= len(message.edits) <= elapsed / 0.2 + 2


async def test_a_long_reply_continues_in_a_new_message():
    channel = OfflineTextChannel()
    live = LiveText(channel.send, interval_s=0.2)
    text = "word " * 600  # 3000 characters
    live.update(text)
    await live.finish()
    assert len(channel.messages) == 2
    assert all(len(m.content) <= PAGE_CHARS for m in channel.messages)
    assert " ".join(m.content.strip() for m in channel.messages) == text.strip()
    assert pages("short") == ["short"]


async def test_failing_to_post_does_not_raise():
    async def forbidden(content):
        raise discord.DiscordException("Missing Permissions")

    live = LiveText(forbidden, interval_s=0.2)
    live.update("hello")
    await live.finish("hello world")
    assert live.messages == []


def test_history_keeps_the_last_turns_per_channel_and_marks_interruptions():
    history = ConversationHistory(max_messages=4)
    for i in range(3):
        history.record(1, Turn("Ada", f"q{i}", f"a{i}"))
    history.record(2, Turn("Bob", "q", "Half of it", interrupted=True, note="[interrupted by the user]"))
    assert [m["content"] for m in history.messages(1)] == ["Ada: q1", "a1", "Ada: q2", "a2"]
    assert history.messages(2)[1] == {"role": "assistant", "content": "Half of it … [interrupted by the user]"}
    history.record(3, Turn("Cy", "q", "", interrupted=True, note="[interrupted by the user]"))
    assert history.messages(3)[1]["content"] == "[interrupted by the user]"
    assert ConversationHistory(0).messages(1) == []

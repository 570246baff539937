"""Commands: join/leave, the posted reply text, history, queueing, per-guild voice and pitch."""

from __future__ import annotations

from typing import ClassVar

import pytest

from testing.llm_server import Script
from tts_server import text_pieces
from tts_server.voice_stage import Passthrough


class PitchRecorder(Passthrough):
    """Passthrough voice stage that remembers the pitch shift of every chunk it converts."""

    seen: ClassVar[list[tuple[str | None, float]]] = []

    def __init__(self, sample_rate: int, name: str | None) -> None:
        super().__init__(sample_rate)
        self.name = name

    def process(self, audio, pitch_shift):
        PitchRecorder.seen.append((self.name, pitch_shift))
        return audio


class Voices:
    """A voice provider offering ``alto`` and ``bass`` (passthrough stages that record their use)."""

    default = None

    def describe(self) -> list[dict]:
        return [{"name": n} for n in self.names()]

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate

    def names(self) -> list[str]:
        return ["alto", "bass"]

    def __call__(self, name):
        from tts_server import UnknownVoice

        if name is not None and name not in self.names():
            raise UnknownVoice(f"unknown voice {name!r}")
        return PitchRecorder(self.sample_rate, name)


@pytest.fixture
def voiced_pipeline():
    from tts_server import Pipeline
    from tts_server.engines.espeak import EspeakEngine

    engine = EspeakEngine()
    pipeline = Pipeline(engine, voices=Voices(engine.sample_rate))
    pipeline.start()
    PitchRecorder.seen = []
    yield pipeline
    pipeline.stop()


async def test_join_and_leave(harness, espeak_pipeline):
    h = await harness(espeak_pipeline)
    g = h.guild()
    await h.invoke("join", g.ctx)
    assert g.text.texts() == [f"🔊 Joined {g.voice.mention}."]
    vc = g.vc
    assert vc.is_connected() and vc.is_playing()
    await h.invoke("leave", g.ctx)
    assert g.text.texts()[-1] == "👋 Left the voice channel."
    assert not vc.is_connected() and not vc.is_playing()
    await h.invoke("leave", g.ctx)
    assert g.text.texts()[-1] == "I'm not in a voice channel."
    # speak/say join the author's channel again by themselves.
    await h.invoke("say", g.ctx, text="Back again.")
    await g.wait_idle()
    assert len(g.voice.voice_clients) == 2 and g.match_reply(-1).corr > 0.9


async def test_speak_posts_the_reply_and_edits_it_as_it_grows_within_the_rate_limit(
    harness, espeak_pipeline, llm_server
):
    h = await harness(espeak_pipeline, bot={"edit_interval_s": 0.4})
    g = h.guild()
    text = "A reply that is written slowly. Word by word it grows in the channel. It ends here."
    llm_server.queue(Script(text_pieces(text), delay_s=0.1))
    await h.invoke("speak", g.ctx, prompt="write slowly")
    await g.wait_idle()
    (message,) = g.text.messages
    assert message.content == text
    request = llm_server.requests[0]
    writing_s = request.finished_at - request.received_at
    assert len(message.edits) >= 3  # it grew in place
    assert len(message.edits) <= writing_s / 0.4 + 3  # never faster than edit_interval_s
    assert all(text.startswith(e) for e in message.edits)
    assert g.ctx.deferred == 1


async def test_a_second_speak_queues_behind_the_first_and_sees_its_history(harness, espeak_pipeline, llm_server):
    h = await harness(espeak_pipeline)
    g = h.guild()
    llm_server.queue(
        Script(text_pieces("The first answer is short.")), Script(text_pieces("The second answer follows."))
    )
    await h.invoke("speak", g.ctx, prompt="first question")
    await h.invoke("speak", g.context("Bob"), prompt="second question")
    assert g.text.texts()[-1] == "⏳ Queued (after 1 other reply)."
    await g.wait_idle()
    first, second = g.tap.playbacks
    assert first.done_at <= second.started_at  # one after the other, never mixed
    assert g.match_reply(0).corr > 0.9 and g.match_reply(1).corr > 0.9
    messages = llm_server.requests[1].body["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1]["content"] == "Ada: first question"
    assert messages[2]["content"] == "The first answer is short."
    assert messages[3]["content"] == "Bob: second question"
    assert messages[0]["content"] == h.services.config.llm.system_prompt


async def test_history_is_per_channel_and_bounded(harness, espeak_pipeline, llm_server):
    h = await harness(espeak_pipeline, bot={"history_messages": 2})
    a, b = h.guild("a"), h.guild("b")
    for i in range(3):
        llm_server.queue(Script(text_pieces(f"Answer {i}.")))
        await h.invoke("speak", a.ctx, prompt=f"question {i}")
        await a.wait_idle()
    llm_server.queue(Script(text_pieces("Other.")))
    await h.invoke("speak", b.ctx, prompt="elsewhere")
    await b.wait_idle()
    assert [t.reply for t in h.services.history.turns(a.text.id)] == ["Answer 2."]
    assert llm_server.requests[-1].body["messages"][1:] == [{"role": "user", "content": "Ada: elsewhere"}]
    assert h.services.config.llm.model == llm_server.requests[0].body["model"]
    assert llm_server.requests[0].body["stream"] is True


async def test_voice_and_pitch_are_per_guild_and_reach_the_pipeline(harness, voiced_pipeline):
    h = await harness(voiced_pipeline, tts={"voice": "alto", "pitch_shift": 2.0})
    a, b = h.guild("a"), h.guild("b")
    await h.invoke("voice", a.ctx)
    assert a.text.texts()[-1] == "Voice: **alto**."
    await h.invoke("voice", a.ctx, name="bass")
    await h.invoke("pitch", a.ctx, semitones=-5.0)
    await h.invoke("pitch", a.ctx)
    assert a.text.texts()[-3:] == [
        "🗣️ Voice set to **bass** (from the next reply).",
        "🎚️ Pitch shift set to **-5** semitones (from the next reply).",
        "Pitch shift: **-5** semitones.",
    ]
    await h.services.measured()  # the new voice's speed, measured in the background
    PitchRecorder.seen.clear()
    await h.invoke("say", a.ctx, text="Spoken low by the bass.")
    await a.wait_idle()
    assert PitchRecorder.seen and set(PitchRecorder.seen) == {("bass", -5.0)}
    PitchRecorder.seen.clear()
    await h.invoke("say", b.ctx, text="The other guild keeps the configured voice.")
    await b.wait_idle()
    assert set(PitchRecorder.seen) == {("alto", 2.0)}
    await h.invoke("voice", a.ctx, name="default")
    assert a.session.voice is None
    await h.invoke("voice", a.ctx, name="tenor")
    assert a.text.texts()[-1] == "⚠️ unknown voice 'tenor': available voices: alto, bass"


async def test_commands_outside_a_guild_are_refused(harness, espeak_pipeline):
    from discord.ext import commands

    h = await harness(espeak_pipeline)
    g = h.guild()
    assert all(isinstance(c, commands.HybridCommand) for c in h.cog.get_commands())
    assert {c.name for c in h.cog.get_commands()} == {"join", "leave", "speak", "say", "stop", "voice", "pitch"}
    await h.cog.cog_command_error(g.ctx, commands.NoPrivateMessage())
    assert g.text.texts() == ["⚠️ Voice commands work in a server, not in direct messages."]
    for command in h.cog.get_commands():
        assert any(getattr(check, "__qualname__", "").startswith("guild_only") for check in command.checks)

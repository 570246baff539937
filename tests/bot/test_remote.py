"""The bot with a remote tts-server: the real server, over /ws/stream."""

from __future__ import annotations

import asyncio
from typing import ClassVar

import pytest

from bot.tts import RemoteTTS
from tts_server.voice_stage import Passthrough


class Voices:
    """The server's voices: ``alto`` and ``bass``, passthrough stages that record the pitch they get."""

    seen: ClassVar[list[tuple[str | None, float]]] = []
    default = None

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate

    def names(self) -> list[str]:
        return ["alto", "bass"]

    def describe(self) -> list[dict]:
        return [{"name": n} for n in self.names()]

    def __call__(self, name):
        from tts_server import UnknownVoice

        if name is not None and name not in self.names():
            raise UnknownVoice(f"unknown voice {name!r}")
        stage = Passthrough(self.sample_rate)
        stage.process = lambda audio, pitch_shift: (Voices.seen.append((name, pitch_shift)), audio)[1]
        return stage


@pytest.fixture
async def remote(make_server):
    """``await remote(overrides)``: a tts-server with espeak and two voices, and a RemoteTTS to it."""
    from tts_server.engines.espeak import EspeakEngine

    backends = []

    async def make(overrides: dict | None = None) -> RemoteTTS:
        engine = EspeakEngine()
        base, _ = await make_server(engine, overrides, voices=Voices(engine.sample_rate))
        backend = RemoteTTS(base.replace("http://", "ws://") + "/ws/stream", connect_timeout_s=3.0, reconnect_max_s=1.0)
        backends.append(backend)
        return backend

    Voices.seen = []
    yield make
    for backend in backends:
        await backend.aclose()


async def test_a_reply_through_a_remote_server_reaches_discord_intact(harness, remote):
    h = await harness(await remote())
    g = h.guild()
    await h.invoke("say", g.ctx, text="Hello from the remote server. It streams as it speaks.")
    await g.wait_idle()
    reply = g.session.last_job.reply
    # audio_ms travels rounded to 0.1 ms: equal within a few samples
    assert reply.flushed is not None and abs(reply.written_samples - reply.flushed.audio_samples) < 48
    assert g.tap.playbacks[0].underrun_frames == 0
    m = g.match_reply(0)
    assert m.corr > 0.9 and m.tail_corr > 0.9


async def test_after_a_stop_no_stale_remote_audio_reaches_the_next_reply(harness, remote):
    h = await harness(await remote())
    g = h.guild()
    for _ in range(3):
        await h.invoke("say", g.ctx, text="A long reply that is cut off. " * 6)
        async with asyncio.timeout(10):
            while not (g.tap.playbacks and g.tap.playbacks[-1].started_at):
                await asyncio.sleep(0.01)
        await h.invoke("stop", g.ctx)
        await h.invoke("say", g.ctx, text="Only this.")
        await g.wait_idle()
        reply = g.session.last_job.reply
        assert abs(reply.written_samples - reply.flushed.audio_samples) < 48  # nothing but its own audio
        assert g.match_reply(-1).corr > 0.9


async def test_voice_and_pitch_travel_to_the_remote_server(harness, remote):
    h = await harness(await remote())
    g = h.guild()
    await h.invoke("voice", g.ctx, name="tenor")
    assert g.text.texts()[-1] == "⚠️ unknown voice 'tenor': available voices: alto, bass"
    await h.invoke("voice", g.ctx, name="bass")
    await h.invoke("pitch", g.ctx, semitones=3.0)
    await h.services.measured()  # the new voice's speed, measured in the background
    Voices.seen.clear()
    await h.invoke("say", g.ctx, text="In the bass voice.")
    await g.wait_idle()
    assert Voices.seen and set(Voices.seen) == {("bass", 3.0)}
    await h.invoke("voice", g.ctx, name="default")
    await h.services.measured()
    Voices.seen.clear()
    await h.invoke("say", g.ctx, text="Back to the default voice.")
    await g.wait_idle()
    assert set(Voices.seen) == {(None, 3.0)}


async def test_a_busy_remote_server_is_reported_and_other_guilds_keep_speaking(harness, remote):
    backend = await remote({"server": {"max_streams": 1}})
    h = await harness(backend, warm=False)
    a, b = h.guild("a"), h.guild("b")
    await h.invoke("say", a.ctx, text="The first server holds the only stream.")
    await a.wait_idle()
    await h.invoke("say", b.ctx, text="The second server cannot get one.")
    await b.wait_idle()
    assert "the server is busy: all its streams are in use" in b.text.texts()[-1]
    await h.invoke("say", a.ctx, text="The first server still speaks.")
    await a.wait_idle()
    assert a.match_reply(-1).corr > 0.9


async def test_a_server_with_keys_is_used_with_the_bots_key_and_names_a_missing_one(harness, make_server):
    """The bot's remote mode sends TTS_API_KEY (``build_tts`` passes it); without one it says so."""
    from tts_server.engines.espeak import EspeakEngine

    base, _ = await make_server(EspeakEngine(), {"server": {"api_keys": ["bot-key-0123456789"]}}, voices=Voices(22050))
    url = base.replace("http://", "ws://") + "/ws/stream"
    keyed = RemoteTTS(url, connect_timeout_s=3.0, reconnect_max_s=1.0, api_key="bot-key-0123456789")
    keyless = RemoteTTS(url, connect_timeout_s=1.0, reconnect_max_s=1.0)
    try:
        h = await harness(keyed)
        g = h.guild()
        await keyed.check_voice("alto")  # GET /voices with the key
        await h.invoke("say", g.ctx, text="Spoken with a key.")
        await g.wait_idle()
        assert g.match_reply(-1).corr > 0.9
        h2 = await harness(keyless, warm=False)
        g2 = h2.guild("other")
        await h2.invoke("say", g2.ctx, text="No key here.")
        await g2.wait_idle()
        assert "refused with 401: it wants an API key: set TTS_API_KEY" in g2.text.texts()[-1]
    finally:
        await keyed.aclose()
        await keyless.aclose()


async def test_build_tts_takes_the_key_from_the_environment(monkeypatch):
    from bot.app import build_tts
    from bot.config import load_settings

    monkeypatch.setenv("TTS_API_KEY", "from-the-environment")
    backend = await build_tts(load_settings(None, {"tts": {"mode": "remote"}}))
    try:
        assert isinstance(backend, RemoteTTS) and backend.api_key == "from-the-environment"
    finally:
        await backend.aclose()

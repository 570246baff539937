"""Assembling the bot: the TTS backend from the settings, the warm-up, the debug HTTP app."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from aiohttp.test_utils import TestClient, TestServer

from bot.app import SignalStop, VoiceBot, build_tts, debug_app, intents, warm_up
from bot.config import load_settings
from bot.history import ConversationHistory
from bot.llm import LLMClient
from bot.session import Services, SessionManager
from bot.tts import EmbeddedTTS, RemoteTTS


async def test_the_debug_http_app_serves_the_bots_own_pipeline(espeak_pipeline):
    settings = load_settings(None)
    client = TestClient(TestServer(debug_app(settings, espeak_pipeline)))
    await client.start_server()
    try:
        health = await (await client.get("/health")).json()
        assert health["engine"] == "espeak" and health["sample_rate"] == 48_000
        response = await client.post("/api/speak", json={"text": "Debugging the bot."})
        assert response.status == 200 and response.content_type == "audio/wav"
        async with client.ws_connect("/ws/stream") as ws:
            await ws.send_json({"token": "Hello.", "pitch_shift": 0})
            await ws.send_json({"flush": True})
            frame = await ws.receive_bytes(timeout=30)
            assert np.frombuffer(frame, "<f4").size > 0
        assert (await client.get("/voices")).status == 200
    finally:
        await client.close()


async def test_the_backend_follows_tts_mode(espeak_pipeline):
    remote = await build_tts(
        load_settings(None, {"tts": {"mode": "remote", "url": "ws://127.0.0.1:9/ws/stream", "connect_timeout_s": 0.3}})
    )
    try:
        assert isinstance(remote, RemoteTTS) and remote.url == "ws://127.0.0.1:9/ws/stream"
        estimate = await warm_up(remote)  # unreachable: the defaults, and the bot still starts
        assert estimate.segments == 0
    finally:
        await remote.aclose()
    measured = await warm_up(EmbeddedTTS(espeak_pipeline))
    assert measured.segments >= 1 and 0 < measured.rtf < 1


async def test_the_bot_has_the_voice_cog_and_the_intents_it_needs(espeak_pipeline):
    settings = load_settings(None, {"bot": {"sync_commands": False}})
    services = Services(settings.bot, EmbeddedTTS(espeak_pipeline), LLMClient(settings.bot.llm), ConversationHistory(4))
    bot = VoiceBot(settings.bot, SessionManager(services))
    try:
        await bot.setup_hook()
        assert {c.name for c in bot.tree.get_commands()} == {"join", "leave", "speak", "say", "stop", "voice", "pitch"}
        assert bot.get_cog("Voice") is not None
        assert intents().message_content and intents().voice_states and intents().guilds
    finally:
        await services.llm.aclose()


async def test_a_signal_makes_the_bot_leave_voice_silently_and_disconnect(harness, espeak_pipeline):
    """SIGTERM mid-reply: every voice channel is left, no channel is told, the Discord client closes."""
    h = await harness(espeak_pipeline)
    g = h.guild()
    await h.invoke("say", g.ctx, text="A reply that is still being spoken when the signal comes. " * 3)
    async with asyncio.timeout(30):
        while not (g.tap.playbacks and g.tap.playbacks[-1].started_at):
            await asyncio.sleep(0.01)
    vc, posted = g.vc, list(g.text.texts())
    assert vc.is_connected()
    bot = VoiceBot(load_settings(None).bot, h.sessions)
    with SignalStop() as stop:
        stop.attach(bot)
        os.kill(os.getpid(), signal.SIGTERM)
        async with asyncio.timeout(10):
            while not stop.requested:
                await asyncio.sleep(0.01)
            await stop.wait_closed()
    assert bot.is_closed()
    assert not vc.is_connected() and not vc.is_playing()
    assert g.text.texts()[: len(posted)] == posted and all("Left" not in t for t in g.text.texts())


def test_voice_bot_exits_0_on_sigterm(tmp_path):
    """``voice-bot`` as a process, with a Discord client that needs no network: SIGTERM → status 0."""
    script = tmp_path / "run_bot.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, functools, sys
            import bot.app

            class OfflineBot(bot.app.VoiceBot):
                async def start(self, token, *, reconnect=True):  # logged in: wait until closed
                    print("started", flush=True)
                    while not self.is_closed():
                        await asyncio.sleep(0.02)

            bot.app.run = functools.partial(bot.app.run, make_bot=OfflineBot)
            from bot.__main__ import main
            sys.exit(main(["--config", sys.argv[1]]))
            """
        )
    )
    config = tmp_path / "config.toml"
    store = tmp_path / "guilds.sqlite3"
    config.write_text(
        f'[engine]\nname = "espeak"\nwarmup = false\n[bot]\nsync_commands = false\nsettings_db = "{store}"\n'
    )
    process = subprocess.Popen(
        [sys.executable, str(script), str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "DISCORD_TOKEN": "offline", "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "started"
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        _, stderr = process.communicate(timeout=30)
    assert "SIGTERM: leaving voice and disconnecting" in stderr and "Traceback" not in stderr

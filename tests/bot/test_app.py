"""Assembling the bot: the TTS backend from the settings, the warm-up, the debug HTTP app."""

from __future__ import annotations

import numpy as np
from aiohttp.test_utils import TestClient, TestServer

from bot.app import VoiceBot, build_tts, debug_app, intents, warm_up
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

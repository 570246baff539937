"""Fixtures for the bot: libopus, a local LLM server, pipelines, and an offline bot harness."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def opus_loaded() -> None:
    """libopus, loaded as the bot loads it (Debian: apt-get install libopus0)."""
    from bot.opus import load_opus

    load_opus()


@pytest.fixture
async def llm_server():
    """The scripted OpenAI-compatible streaming server, on a free port."""
    from testing.llm_server import LocalLLM

    server = LocalLLM()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
def espeak_pipeline():
    """A started pipeline over the real espeak-ng engine (real speech, fast)."""
    from tts_server import Pipeline
    from tts_server.engines.espeak import EspeakEngine

    pipeline = Pipeline(EspeakEngine())
    pipeline.start()
    yield pipeline
    pipeline.stop()


@pytest.fixture
async def harness(llm_server):
    """``await harness(backend_or_pipeline, **config)``: an offline bot; closed after the test."""
    from tests.bot.bot_harness import Harness

    made: list[Harness] = []

    async def make(backend, **overrides) -> Harness:
        h = await Harness.create(backend, llm_server, **overrides)
        made.append(h)
        return h

    yield make
    for h in made:
        await h.aclose()

"""Shared fixtures: random-weight Soprano models in the Hub layout, and a running server."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from testing.soprano_model import build_soprano_dir

#: Audio tokens every sentence of the default test model generates (0.704 s of audio).
TEST_AUDIO_TOKENS = 12
#: Soprano engine settings of the equality tests: float32 throughout, the precision in which
#: the engine reproduces soprano-tts to rounding (the default on a CPU with native bfloat16
#: is bfloat16, within 30 dB SNR of it: tested on its own).
FLOAT32: dict[str, Any] = {"dtype": "float32", "decoder_dtype": "float32"}

#: Bound, as a fraction of the peak, on the difference between two float32 computations of
#: the same audio that differ only in how the arithmetic is ordered: decode windows of other
#: lengths, kernels oneDNN chooses by shape, reductions MKL splits by thread count. Measured
#: over 1 to 4 threads and ATen default/AVX2/AVX-512, oneDNN SSE4.1/AVX2/AVX-512 and MKL
#: SSE4.2/AVX2/AVX-512 kernels, the worst such difference in this suite is 1.8e-6 (Soprano
#: with and without prefill, two streamed decodes); streamed vs one-shot decoding alone 1.7e-6.
EXACT = 1e-5


def pytest_configure(config: pytest.Config) -> None:
    # CI runs the numerical tests a second time on one thread (see .ci/run): kernels and the
    # order of sums change with the thread count, so a bound tuned to one split fails there.
    threads = os.environ.get("TORCH_NUM_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))


@pytest.fixture(autouse=True)
def _keep_torch_threads() -> Iterator[None]:
    """A server or bot that loads its own engine sets torch's threads for the whole process
    (``tts_server.service.inference_threads``): put them back, so that every test runs on
    the thread count of its CI pass."""
    import torch

    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def soprano_dir(tmp_path_factory: pytest.TempPathFactory):
    """A small random-weight Soprano directory: every sentence yields TEST_AUDIO_TOKENS tokens."""
    return build_soprano_dir(tmp_path_factory.mktemp("soprano"), audio_tokens=TEST_AUDIO_TOKENS)


@pytest.fixture(scope="session")
def soprano_engine(soprano_dir):
    """The real Soprano engine loaded from :func:`soprano_dir`, float32 throughout (:data:`FLOAT32`)."""
    from tts_server.engines.soprano import SopranoEngine

    return SopranoEngine(soprano_dir, device="cpu", **FLOAT32)


@pytest.fixture(scope="session")
def make_soprano_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable:
    """Build (and cache) a random Soprano directory for a given number of audio tokens."""
    cache = {}

    def make(audio_tokens: int | None, **kwargs):
        key = (audio_tokens, repr(sorted(kwargs.items())))  # repr: config dicts are not hashable
        if key not in cache:
            cache[key] = build_soprano_dir(tmp_path_factory.mktemp("soprano"), audio_tokens=audio_tokens, **kwargs)
        return cache[key]

    return make


@pytest.fixture
async def make_server() -> AsyncIterator[Callable]:
    """Start the real aiohttp server on a free port: ``await make_server(engine, overrides)``.

    Returns ``(base_url, app)``; every server started is closed after the test.
    """
    from aiohttp.test_utils import TestServer

    from tts_server.app import create_app
    from tts_server.config import load_config

    servers: list[TestServer] = []

    async def start(engine, overrides: dict | None = None, **app_kwargs):
        config = load_config(None, {"engine": {"warmup": False}, **(overrides or {})})
        server = TestServer(create_app(config, engine=engine, **app_kwargs), host="127.0.0.1", port=0)
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/"), server.app

    yield start
    for server in servers:
        with contextlib.suppress(Exception):
            await server.close()
